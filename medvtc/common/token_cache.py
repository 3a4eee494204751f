"""A shared on-disk cache of a frozen encoder's tokens.

When the encoder is frozen (Argus' stage 1, a pretrained vision tower under a robot policy),
every run that compares compressors would compute the same encoder output again, epoch after
epoch and variant after variant. `TokenCache.get_or_build` encodes every sample of a dataset
once, stores the tokens as fp16 safetensors shards (read back memory-mapped), and hands the
same store to every run whose encoder weights, preprocessing, samples and views match:

    fingerprint = {"encoder": module_fingerprint(vit), "preprocessing": {...}, "samples": ids}
    cache = TokenCache.get_or_build(root, fingerprint, encode, dataset, views=1)
    cache.tokens(i, view=0)        # [N, D] float32 (stored fp16)
    CachedTokenDataset(cache, fields)   # items {"tokens": [N, D], **fields[i]} for a trainer

- The store lives in `root/<sha256 of the fingerprint>[:16]`; a changed fingerprint (new
  weights, other preprocessing, other samples) is another folder, so it is rebuilt, never mixed.
- It is built in a hidden folder beside it (`.<key>.partial`, shard by shard, each shard written
  atomically) and renamed into place when complete: a killed or failed encoding leaves no store
  that looks complete, and the next call with the same fingerprint resumes after the last
  finished shard (views are seeded per sample, so a resumed store equals an uninterrupted one).
  Encoding a large dataset with a large encoder takes hours on a CPU; a stop should not lose them.
  One process builds a given store at a time: the build holds a file lock beside it
  (`.<key>.lock`, the `filelock` package), so a second process asking for the same store (two
  bench variants started together, a second DDP rank) waits for the first and then reuses what
  it wrote instead of writing the same shards beside it (DDP ranks may also `wait_for` it).
- Augmentation: `views=V` with `augment(item, view, rng)` stores V encodings per sample (view 0
  is the item unaugmented, views 1.. pass through `augment` with a generator seeded by
  (seed, sample, view)); `CachedTokenDataset(view="random")` then draws one per access.
  Augmentation in token space needs nothing from the cache: the consumer applies it to
  `tokens(i)`.

Written here because no library we use offers a fingerprinted, atomically built feature store
(MONAI's PersistentDataset caches transform outputs by item hash, not model outputs, and
keeps them as pickles).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from medvtc.common.io import atomic_path, atomic_write_json

META_FILE = "cache.json"
PROGRESS_FILE = "progress.json"  # in an interrupted build's folder: what it was building
FORMAT = 1


def module_fingerprint(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and values), in key order."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():  # raw bytes (0-d tensors, e.g. BatchNorm's num_batches_tracked, reshaped first)
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def fingerprint_key(fingerprint: Mapping[str, Any]) -> str:
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class TokenCache:
    """A complete store of encoder tokens [num_samples, views, N, D] (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.path} is not a complete token cache (no {META_FILE})")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: token cache format {self.meta.get('format')!r}, expected {FORMAT}")
        self.num_samples: int = int(self.meta["num_samples"])
        self.views: int = int(self.meta["views"])
        self.shard_size: int = int(self.meta["shard_size"])
        self._shards: dict[int, Any] = {}

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.meta["fingerprint"]

    def __len__(self) -> int:
        return self.num_samples

    def _shard(self, s: int):
        if s not in self._shards:
            from safetensors import safe_open

            self._shards[s] = safe_open(str(self.path / f"shard_{s:05d}.safetensors"), framework="pt")  # memory-mapped
        return self._shards[s]

    def tokens(self, index: int, view: int = 0) -> torch.Tensor:
        """Sample `index`'s tokens for `view`, [N, D] float32."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} out of range for a cache of {self.num_samples}")
        if not 0 <= view < self.views:
            raise IndexError(f"view {view} out of range for a cache of {self.views} views")
        shard, row = divmod(index, self.shard_size)
        return self._shard(shard).get_slice("tokens")[row : row + 1, view : view + 1][0, 0].float()

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the shards themselves
        state = dict(self.__dict__)
        state["_shards"] = {}
        return state

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def get_or_build(
        cls,
        root: str | Path,
        fingerprint: Mapping[str, Any],
        encode: Callable[[list[Any]], torch.Tensor],
        dataset: Sequence[Any],
        *,
        views: int = 1,
        augment: Callable[[Any, int, np.random.Generator], Any] | None = None,
        seed: int = 0,
        batch_size: int = 16,
        shard_size: int = 256,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ) -> "TokenCache":
        """The store for `fingerprint` under `root`: reused when complete, built otherwise.

        `encode(items)` maps a list of dataset items to tokens [B, N, D] (the caller puts its
        encoder in eval mode; it runs here under no_grad). `fingerprint` must name everything
        the tokens depend on (encoder weights, preprocessing, which samples); `views` and
        `seed` are added to it here."""
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        if views > 1 and augment is None:
            raise ValueError("views > 1 needs an augment(item, view, rng) function")
        full = cls._full_fingerprint(fingerprint, views, seed, len(dataset))
        path = Path(root) / fingerprint_key(full)
        reused = cls._complete(path, full, log)
        if reused is not None:
            return reused
        from filelock import FileLock, Timeout

        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path.with_name(f".{path.name}.lock")))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log(f"medvtc: token cache {path} is being built by another process; waiting for it")
            lock.acquire()
        try:
            reused = cls._complete(path, full, log)  # the other process may have finished it
            if reused is not None:
                return reused
            return cls._build(path, full, encode, dataset, views=views, augment=augment, seed=seed,
                              batch_size=batch_size, shard_size=shard_size, progress=progress, log=log)
        finally:
            lock.release()

    @classmethod
    def _complete(cls, path: Path, full: Mapping[str, Any], log: Callable[[str], None]) -> "TokenCache | None":
        """The finished store at `path` if it holds `full`'s tokens, else None (a store with another
        fingerprint under the same key, a hash collision or a hand edit, is removed)."""
        if not (path / META_FILE).is_file():
            return None
        cache = cls(path)
        if cache.fingerprint == full:
            log(f"medvtc: token cache reused: {path} ({cache.num_samples} samples x {cache.views} views)")
            return cache
        shutil.rmtree(path)
        return None

    @classmethod
    def _build(cls, path: Path, full: Mapping[str, Any], encode: Callable[[list[Any]], torch.Tensor],
               dataset: Sequence[Any], *, views: int, augment, seed: int, batch_size: int, shard_size: int,
               progress: bool, log: Callable[[str], None]) -> "TokenCache":
        """Encode `dataset` into `path` (resuming an interrupted build); the caller holds the lock."""
        from safetensors.torch import save_file
        from tqdm.auto import tqdm

        partial = path.with_name(f".{path.name}.partial")
        n_shards = cls._resumable_shards(partial, full, shard_size, len(dataset))
        first = n_shards * shard_size
        if first:
            log(f"medvtc: token cache resumed: {partial} has {n_shards} finished shards ({first} of {len(dataset)} samples)")
        shape: list[int] | None = None
        shard_rows: list[torch.Tensor] = []

        def write_shard(rows: list[torch.Tensor], index: int) -> None:
            with atomic_path(partial / f"shard_{index:05d}.safetensors") as tmp:
                save_file({"tokens": torch.stack(rows).contiguous()}, str(tmp))

        bar = tqdm(total=len(dataset) * views, initial=first * views, desc="encode tokens", unit="sample",
                   disable=not progress, dynamic_ncols=True)
        with torch.no_grad():
            for start in range(first, len(dataset), batch_size):
                idx = list(range(start, min(len(dataset), start + batch_size)))
                items = [dataset[i] for i in idx]
                per_view = []
                for v in range(views):
                    batch = items if v == 0 else [augment(it, v, np.random.default_rng([seed, i, v])) for it, i in zip(items, idx)]
                    out = encode(batch)
                    if out.ndim != 3 or out.shape[0] != len(batch):
                        raise ValueError(f"encode returned shape {tuple(out.shape)}; expected [{len(batch)}, N, D]")
                    half = out.detach().to("cpu", torch.float16)
                    if not torch.isfinite(half).all():
                        raise ValueError(f"encoder tokens of samples {idx[0]}-{idx[-1]} are not finite in float16 "
                                         f"(|max| {float(out.detach().abs().max()):.3g}; fp16 holds up to 65504)")
                    per_view.append(half)
                    bar.update(len(batch))
                block = torch.stack(per_view, dim=1)  # [B, V, N, D]
                if shape is None:
                    shape = list(block.shape[2:])
                shard_rows.extend(block.unbind(0))
                while len(shard_rows) >= shard_size:
                    write_shard(shard_rows[:shard_size], n_shards)
                    shard_rows, n_shards = shard_rows[shard_size:], n_shards + 1
        if shard_rows:
            write_shard(shard_rows, n_shards)
            n_shards += 1
        bar.close()
        if shape is None:  # everything came from the resumed shards
            shape = list(cls._shard_shape(partial / "shard_00000.safetensors")[2:])
        atomic_write_json(partial / META_FILE, {"format": FORMAT, "fingerprint": full, "num_samples": len(dataset),
                                                "views": views, "shard_size": shard_size, "shards": n_shards,
                                                "token_shape": shape})
        (partial / PROGRESS_FILE).unlink()
        if path.exists():
            shutil.rmtree(path)
        os.replace(partial, path)
        log(f"medvtc: token cache written: {path} ({len(dataset)} samples x {views} views, tokens {shape})")
        return cls(path)


    @staticmethod
    def _shard_shape(file: Path) -> list[int]:
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            return list(f.get_slice("tokens").get_shape())

    @classmethod
    def _resumable_shards(cls, partial: Path, full: Mapping[str, Any], shard_size: int, num_samples: int) -> int:
        """How many leading full shards of an interrupted build of `full` in `partial` can be kept
        (0 after clearing it when it belongs to another fingerprint or shard size); it is left
        ready for the build, with its progress record."""
        record = {"fingerprint": dict(full), "shard_size": shard_size}
        progress = partial / PROGRESS_FILE
        if partial.is_dir():
            try:
                same = json.loads(progress.read_text()) == json.loads(json.dumps(record, default=str))
            except (OSError, ValueError):
                same = False
            if not same:
                shutil.rmtree(partial)
        if not partial.is_dir():
            partial.mkdir(parents=True)
            atomic_write_json(progress, record)
            return 0
        done = 0
        while (done + 1) * shard_size <= num_samples:  # full shards only: the last, short one is rewritten
            file = partial / f"shard_{done:05d}.safetensors"
            try:
                if not file.is_file() or cls._shard_shape(file)[0] != shard_size:
                    break
            except Exception:  # noqa: BLE001 - an unreadable shard is rebuilt, whatever safetensors raises
                break
            done += 1
        return done

    @staticmethod
    def _full_fingerprint(fingerprint: Mapping[str, Any], views: int, seed: int, num_samples: int) -> dict[str, Any]:
        full = {**dict(fingerprint), "views": views, "seed": seed, "num_samples": num_samples, "dtype": "float16"}
        return json.loads(json.dumps(full, sort_keys=True, default=str))

    @classmethod
    def wait_for(cls, root: str | Path, fingerprint: Mapping[str, Any], num_samples: int, *, views: int = 1,
                 seed: int = 0, poll_s: float = 5.0, timeout_s: float = 24 * 3600.0) -> "TokenCache":
        """The store another process (DDP rank 0) is building, once it is complete. Ranks wait by
        polling the file system rather than in a collective, which NCCL would time out after 10
        minutes while a large dataset is being encoded."""
        import time

        full = cls._full_fingerprint(fingerprint, views, seed, num_samples)
        path = Path(root) / fingerprint_key(full)
        deadline = time.monotonic() + timeout_s
        while not (path / META_FILE).is_file():
            if time.monotonic() > deadline:
                raise TimeoutError(f"token cache {path} was not completed within {timeout_s:.0f} s")
            time.sleep(poll_s)
        return cls(path)


class CachedTokenDataset(torch.utils.data.Dataset):
    """Items {"tokens": [N, D], **fields[i]} from a TokenCache, for a trainer's DataLoader.

    `view`: a fixed view index, or "random" (one of the cached views per access, drawn from
    Python's `random`, which the trainer seeds and checkpoints)."""

    def __init__(self, cache: TokenCache, fields: Sequence[Mapping[str, Any]] | None = None,
                 view: int | Literal["random"] = 0, key: str = "tokens") -> None:
        if fields is not None and len(fields) != len(cache):
            raise ValueError(f"{len(fields)} field records for a cache of {len(cache)} samples")
        self.cache, self.fields, self.view, self.key = cache, fields, view, key

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> dict[str, Any]:
        view = random.randrange(self.cache.views) if self.view == "random" else int(self.view)
        item = dict(self.fields[index]) if self.fields is not None else {}
        item[self.key] = self.cache.tokens(index, view)
        return item


__all__ = ["CachedTokenDataset", "TokenCache", "fingerprint_key", "module_fingerprint"]

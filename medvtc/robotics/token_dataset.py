"""Training a LIBERO policy on cached encoder tokens: every frame's images are encoded once by the
frozen backbone into a `medvtc.common.token_cache` store, and training reads the tokens instead of
decoding and encoding the images at every step.

    frames = load_demonstrations(root, delta_timestamps={"action": [...]})   # LeRobotDataset v3
    cache = build_token_cache(policy, pre, frames, root=cache_root(...), views=4, image_shift=4)
    data = TokenDemonstrations(frames, cache, policy.model.image_keys)
    data[i]   # LeRobot's item without the images: observation.state, action [chunk, A],
              # action_is_pad, timestamp, frame_index, episode_index, index, task_index, task,
              # + observation.image_tokens.<camera> [N, C] (one cached view, drawn at random)

`TokenDemonstrations` reads the non-image columns of the dataset's parquet files once into memory
(`hf_dataset.select_columns`, no image is ever decoded) and reproduces `LeRobotDataset.__getitem__`
(LeRobot 0.4.4): the `delta_timestamps` chunk of every queried key, its indices clamped to the
episode and `<key>_is_pad` True past either end, the task string (and subtask) from the metadata.
Each item equals LeRobot's own on every non-image key (tests/robotics/test_token_dataset.py).

The tokens are what the policy computes from the images: `build_token_cache` runs each batch of
frames through the policy's own preprocessor and `CompressorVLA.backbone_tokens` (images resized
to the policy's size, the frozen backbone in eval mode), so the cached tokens equal the image path
(up to the cache's float16). The policy's random-shift augmentation (`image_shift`) cannot run on
tokens: with `views=K > 1` the cache holds K encodings per frame, view 0 unshifted and views
1..K-1 with an independent random shift per camera of up to `image_shift` pixels (replicate-pad
and crop, as `CompressorVLA._shift`, drawn by TokenCache's per-(sample, view) seeded generator),
and `TokenDemonstrations` draws one view per access (Python's `random`, which the trainer seeds
and checkpoints).

Store identity (`cache_fingerprint`): the backbone's own `token_cache_fingerprint()` (weights,
cut level, normalisation, image size, cameras), the dataset (resolved root, frame and episode
counts, the sha256 of every file under meta/ (info.json, stats.json, episodes, tasks, the
recording summary) and the size and mtime of every data/ and videos/ file) and the
augmentation; TokenCache adds the view count and seed. A re-recorded dataset, another cut level or
other weights is another store; every compressor variant with the same backbone shares one.

    python scripts/token_cache_throughput.py --root data/libero_object_demos   # samples/s, images vs cache
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from medvtc.common.token_cache import TokenCache
from medvtc.robotics.policies.compressor_vla.modeling_compressor_vla import image_tokens_key

CACHE_DIRNAME = "token_cache"
# The augmented views are drawn with a fixed seed, so runs of every training seed share one store
# (which view a sample reads at a step follows the training seed).
CACHE_SEED = 0


def cache_root(data_root: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where token stores live: `cache_dir`, or `token_cache/` beside the dataset folder (so
    `data/libero_object_demos` -> `data/token_cache/<hash>`)."""
    return Path(cache_dir) if cache_dir else Path(data_root).resolve().parent / CACHE_DIRNAME


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dataset_identity(root: str | Path) -> dict[str, Any]:
    """What a LeRobotDataset folder's frames are: resolved root, counts from info.json, the hash of
    every metadata file and (path, size, mtime) of every data / video file (hashing gigabytes of
    frames at every start would cost more than it saves; a rewritten file has another mtime)."""
    root = Path(root).resolve()
    info = json.loads((root / "meta" / "info.json").read_text())
    meta = {p.relative_to(root).as_posix(): _sha256(p) for p in sorted((root / "meta").rglob("*")) if p.is_file()}
    files = []
    for sub in ("data", "videos"):
        for p in sorted((root / sub).rglob("*")) if (root / sub).is_dir() else []:
            if p.is_file():
                st = p.stat()
                files.append([p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    return {"root": str(root), "total_frames": info.get("total_frames"), "total_episodes": info.get("total_episodes"),
            "fps": info.get("fps"), "meta": meta, "files": files}


# ------------------------------------------------------------------------------------------------
# Items without images
# ------------------------------------------------------------------------------------------------
def _column_tensor(values: Any) -> torch.Tensor | list[Any]:
    """A whole column as LeRobot's `hf_transform_to_torch` makes its rows (`torch.tensor` of the
    Python values: floats -> the default dtype, integers -> int64, bools -> bool); object or
    string columns stay a list of per-row values, converted the same way."""
    arr = np.asarray(values)
    if arr.dtype.kind == "f":
        return torch.from_numpy(np.ascontiguousarray(arr)).to(torch.get_default_dtype())
    if arr.dtype.kind in "iu":
        return torch.from_numpy(np.ascontiguousarray(arr)).to(torch.int64)
    if arr.dtype.kind == "b":
        return torch.from_numpy(np.ascontiguousarray(arr))
    return [v if isinstance(v, str) or v is None else torch.tensor(v) for v in values]


def _row(column: torch.Tensor | list[Any], i: int) -> Any:
    return column[i].clone() if isinstance(column, torch.Tensor) else column[i]


def _rows(column: torch.Tensor | list[Any], idx: list[int]) -> torch.Tensor:
    return column[idx] if isinstance(column, torch.Tensor) else torch.stack([column[i] for i in idx])


class TokenDemonstrations(torch.utils.data.Dataset):
    """LeRobotDataset items without decoding any image, with the cameras' cached backbone tokens.

    Args:
        dataset: the `LeRobotDataset` (as `load_demonstrations` opens it, with the policy's
            `delta_timestamps`); only its metadata, delta indices and non-image columns are read.
        cache: a `TokenCache` of its frames in order (`build_token_cache`), one [cams * N, C]
            tensor per frame (the cameras' tokens concatenated in `image_keys` order), or None
            for the items without tokens.
        image_keys: the policy's cameras, `observation.images.<camera>`, in the cache's order.
        view: a fixed cached view, or "random" (one per access).

    Items: every non-image column of the frame (torch tensors as LeRobot's transform makes them),
    each `delta_timestamps` key as a chunk with `<key>_is_pad`, `task` (and `subtask`), and
    `observation.image_tokens.<camera>` [N, C] float32 per camera.
    """

    def __init__(self, dataset: Any, cache: TokenCache | None = None, image_keys: Sequence[str] = (),
                 view: int | Literal["random"] = "random") -> None:
        meta = dataset.meta
        self.meta = meta
        self.fps = int(meta.fps)
        self.episodes = dataset.episodes
        cameras = set(meta.camera_keys)
        self.delta_indices: dict[str, list[int]] | None = (
            {k: list(v) for k, v in dataset.delta_indices.items()} if dataset.delta_indices else None)
        if self.delta_indices and cameras & set(self.delta_indices):
            raise ValueError(f"delta_timestamps on cameras {sorted(cameras & set(self.delta_indices))}: "
                             "cached tokens hold the current frame only")
        hf = dataset.hf_dataset
        names = [c for c in hf.column_names if c not in cameras]
        table = hf.select_columns(names).with_format("numpy")[:]
        self.columns: dict[str, torch.Tensor | list[Any]] = {c: _column_tensor(table[c]) for c in names}
        for key in ("index", "episode_index", "task_index"):
            if key not in self.columns:
                raise ValueError(f"the dataset has no {key!r} column")
        index = self.columns["index"]
        self.length = len(index)
        self.abs_to_rel: dict[int, int] | None = (
            None if dataset.episodes is None else {int(a): r for r, a in enumerate(index.tolist())})
        # episode -> (dataset_from_index, dataset_to_index), as LeRobot reads meta.episodes[ep]
        self.bounds: dict[int, tuple[int, int]] = {}
        for ep in torch.unique(self.columns["episode_index"]).tolist():
            row = meta.episodes[int(ep)]
            self.bounds[int(ep)] = (int(row["dataset_from_index"]), int(row["dataset_to_index"]))
        self.task_names = [meta.tasks.iloc[i].name for i in range(len(meta.tasks))]
        subtasks = getattr(meta, "subtasks", None)
        self.subtask_names = ([subtasks.iloc[i].name for i in range(len(subtasks))]
                              if "subtask_index" in meta.features and subtasks is not None else None)

        self.cache = cache
        self.image_keys = list(image_keys)
        self.token_keys = [image_tokens_key(k) for k in self.image_keys]
        self.view = view
        if cache is not None:
            if not self.image_keys:
                raise ValueError("a token cache needs the cameras it holds (image_keys)")
            if len(cache) != self.length:
                raise ValueError(f"the token cache holds {len(cache)} frames, the dataset {self.length}")
            n_total = int(cache.meta["token_shape"][0])
            if n_total % len(self.image_keys):
                raise ValueError(f"the cache's {n_total} tokens per frame do not split over {len(self.image_keys)} cameras")
            self.tokens_per_camera = n_total // len(self.image_keys)

    # LeRobotDataset-like attributes the task reads
    @property
    def num_episodes(self) -> int:
        return len(self.episodes) if self.episodes is not None else int(self.meta.total_episodes)

    @property
    def num_frames(self) -> int:
        return self.length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: int) -> dict[str, Any]:
        idx = int(idx)
        if not 0 <= idx < self.length:
            raise IndexError(f"frame {idx} out of range for a dataset of {self.length}")
        item: dict[str, Any] = {c: _row(col, idx) for c, col in self.columns.items()}
        if self.delta_indices is not None:  # LeRobotDataset._get_query_indices / _query_hf_dataset
            abs_idx = int(item["index"])
            start, end = self.bounds[int(item["episode_index"])]
            for key, deltas in self.delta_indices.items():
                query = [max(start, min(end - 1, abs_idx + d)) for d in deltas]
                rel = query if self.abs_to_rel is None else [self.abs_to_rel[q] for q in query]
                item[f"{key}_is_pad"] = torch.BoolTensor([(abs_idx + d < start) | (abs_idx + d >= end) for d in deltas])
                item[key] = _rows(self.columns[key], rel)
        if self.cache is not None:
            view = random.randrange(self.cache.views) if self.view == "random" else int(self.view)
            flat = self.cache.tokens(idx, view)
            for i, key in enumerate(self.token_keys):
                item[key] = flat[i * self.tokens_per_camera:(i + 1) * self.tokens_per_camera].clone()
        item["task"] = self.task_names[int(item["task_index"])]
        if self.subtask_names is not None:
            item["subtask"] = self.subtask_names[int(item["subtask_index"])]
        return item


# ------------------------------------------------------------------------------------------------
# Building the cache
# ------------------------------------------------------------------------------------------------
class _Frames:
    """The dataset's frames as the cache encodes them: each item's images and task, read through
    LeRobot's own `__getitem__` (PNG or video decoding, done once per frame here)."""

    def __init__(self, dataset: Any, image_keys: Sequence[str]) -> None:
        self.dataset, self.image_keys = dataset, list(image_keys)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        return {**{k: item[k] for k in self.image_keys}, "task": item["task"]}


def shift_image(image: torch.Tensor, shift: int, rng: np.random.Generator) -> torch.Tensor:
    """DrQ random shift of one image [C, H, W]: replicate-pad by `shift`, crop back at an offset
    drawn from `rng` (`CompressorVLA._shift` on one sample)."""
    _, h, w = image.shape
    oy, ox = (int(v) for v in rng.integers(0, 2 * shift + 1, size=2))
    padded = F.pad(image.unsqueeze(0), (shift, shift, shift, shift), mode="replicate")[0]
    return padded[:, oy:oy + h, ox:ox + w].contiguous()


def shift_augment(image_keys: Sequence[str], shift: int) -> Callable[[dict[str, Any], int, np.random.Generator], dict[str, Any]]:
    """TokenCache's `augment(item, view, rng)`: an independent random shift per camera."""
    keys = list(image_keys)

    def augment(item: dict[str, Any], view: int, rng: np.random.Generator) -> dict[str, Any]:
        return {**item, **{k: shift_image(item[k], shift, rng) for k in keys}}

    return augment


def cache_fingerprint(model: Any, data_root: str | Path, num_frames: int, views: int, image_shift: int,
                      episodes: Sequence[int] | None = None) -> dict[str, Any]:
    """What the cached tokens depend on (see the module docstring)."""
    augment = ({"method": "replicate-pad random shift per camera (CompressorVLA._shift)", "image_shift": int(image_shift)}
               if views > 1 else None)
    return {"kind": "libero frames -> frozen backbone tokens", "encoder": model.token_cache_fingerprint(),
            "dataset": dataset_identity(data_root), "frames": int(num_frames),
            "episodes": None if episodes is None else [int(e) for e in episodes], "augment": augment,
            "layout": "cameras concatenated along tokens, in the policy's image_keys order"}


def encode_function(policy: Any, preprocessor: Any) -> Callable[[list[dict[str, Any]]], torch.Tensor]:
    """`encode(items) -> [B, cams * N, C]`: the items' images through the policy's preprocessor
    (tokenizer, device, VISUAL normalisation) and its frozen backbone (`backbone_tokens`)."""
    model = policy.model
    keys = list(model.image_keys)

    def encode(items: list[dict[str, Any]]) -> torch.Tensor:
        batch: dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in keys}
        batch["task"] = [it["task"] for it in items]
        tokens = model.backbone_tokens(preprocessor(batch))
        return torch.cat([tokens[image_tokens_key(k)] for k in keys], dim=1)

    return encode


def build_token_cache(policy: Any, preprocessor: Any, dataset: Any, root: str | Path, *, data_root: str | Path,
                      views: int = 1, image_shift: int = 0, batch_size: int = 32, progress: bool = True,
                      is_main: bool = True, log: Callable[[str], None] = print) -> TokenCache:
    """The store of `policy`'s frozen-backbone tokens for every frame of `dataset` (a LeRobotDataset
    of `data_root`) under `root`: reused when complete, built otherwise (on the main process; the
    others wait for it on the file system). One line is logged: built or reused, frames x views,
    size and seconds. With `image_shift` 0 a single view is cached (nothing to vary)."""
    model = policy.model
    if not model.backbone_frozen:
        raise ValueError("a token cache needs a frozen backbone (freeze_backbone)")
    views = int(views) if image_shift > 0 else 1
    fingerprint = cache_fingerprint(model, data_root, len(dataset), views, image_shift, dataset.episodes)
    t0 = time.perf_counter()
    if not is_main:
        return TokenCache.wait_for(root, fingerprint, len(dataset), views=views, seed=CACHE_SEED)
    quiet: list[str] = []
    frames = _Frames(dataset, model.image_keys)
    was = model.training
    model.eval()
    try:
        cache = TokenCache.get_or_build(root, fingerprint, encode_function(policy, preprocessor), frames, views=views,
                                        augment=shift_augment(model.image_keys, image_shift) if views > 1 else None,
                                        seed=CACHE_SEED, batch_size=batch_size, progress=progress, log=quiet.append)
    finally:
        model.train(was)
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in cache.path.iterdir() if p.is_file()) / 2**20
    reused = any(line.startswith("medvtc: token cache reused") for line in quiet)
    n, c = cache.meta["token_shape"]
    log(f"medvtc: token cache {'reused' if reused else 'built'}: {cache.path} ({cache.num_samples} frames x {cache.views} "
        f"views, {n // len(model.image_keys)} x {c} tokens per camera, {size:.1f} MB"
        + (f", encoded in {seconds:.0f} s)" if not reused else ")"))
    return cache


__all__ = [
    "CACHE_DIRNAME",
    "TokenDemonstrations",
    "build_token_cache",
    "cache_fingerprint",
    "cache_root",
    "dataset_identity",
    "encode_function",
    "shift_augment",
    "shift_image",
]

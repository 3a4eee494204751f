"""A persistent on-disk cache of preprocessed volumes, for datasets too large to preprocess every
epoch (CT-RATE: about 50,000 chest CTs, each decoded from NIfTI and resampled each time it is
read) and too large to hold in memory.

    cache = PersistentVolumeCache(root, settings={"spatial_size": [64, 64, 32], ...})
    image = cache.get(path, lambda: load_ct_volume(path, ...))   # computed once, then read back

Layout: `root/<settings key>/<ab>/<file key>.safetensors`, with `root/<settings key>/settings.json`
saying which settings the folder holds.
- The settings key is the sha256 (first 16 hex digits) of the preprocessing settings as sorted
  JSON: change any setting (size, spacing, HU window, ..., the reader's version) and every volume
  gets a new key, in a new folder; nothing computed under other settings is ever returned. Old
  folders are left for the user to delete.
- The file key is the sha256 of the source file's identity: its resolved path, size and
  modification time (ns). A volume rewritten in place is a miss and is computed again. A data
  folder that moves is a miss too (the path is part of the identity).
- Each entry is one safetensors file (the tensor as computed, dtype and all, so a cached read is
  bit-identical to a fresh one) whose metadata repeats the source identity and settings key; a
  read checks them.
- Writes are atomic (`medvtc.common.io.atomic_path`: a temporary file beside the target, fsynced,
  renamed): a killed run never leaves a half-written entry under a real name, and two processes
  (DataLoader workers, DDP ranks) computing the same volume both write complete files, the last
  rename winning.
- An entry that cannot be read back (truncated, overwritten, not safetensors, metadata of
  another source) is recomputed and rewritten, with a warning naming the file: a cache is
  derived data, so a bad entry should cost one recomputation, not the run.

Why not MONAI's `PersistentDataset`: it hashes the data item (here a path string) and, with
`hash_transform`, the transforms, but not the file's size or modification time, so a volume
replaced under the same name would be served stale; it writes through a temporary folder in
the system temp directory and `shutil.move`s the file, which is a copy, not an atomic rename,
when /tmp is another file system; it stores pickles (`torch.save`), where this project keeps
tensors as safetensors; and it would run MONAI's transforms without the reader's validation
(`load_ct_volume`'s one-line errors naming the file). The caching itself is short enough to own.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from medvtc.common.errors import UserError
from medvtc.common.io import atomic_path, atomic_write_json
from medvtc.datasets.nifti import one_line

__all__ = ["PersistentVolumeCache", "settings_key"]

FORMAT = 1
SETTINGS_FILE = "settings.json"
_TENSOR = "volume"


def settings_key(settings: Mapping[str, Any]) -> str:
    """sha256 (16 hex digits) of `settings` as sorted JSON (tuples and lists hash alike)."""
    text = json.dumps({"format": FORMAT, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PersistentVolumeCache:
    """Preprocessed volumes on disk, keyed by the preprocessing `settings` and each source
    file's identity (see the module docstring). `hits` / `misses` / `recomputed` count reads
    served from disk, volumes computed, and unreadable entries computed again."""

    def __init__(self, root: str | Path, settings: Mapping[str, Any]) -> None:
        self.root = Path(root)
        self.settings = json.loads(json.dumps(dict(settings), default=str))
        self.key = settings_key(self.settings)
        self.path = self.root / self.key
        self.hits = self.misses = self.recomputed = 0
        self._described = False

    def _identity(self, source: Path) -> dict[str, str] | None:
        try:
            st = os.stat(source)
        except OSError:
            return None  # a missing source: computing it raises the reader's own error
        return {"source": str(Path(source).resolve()), "size": str(st.st_size), "mtime_ns": str(st.st_mtime_ns)}

    def entry(self, source: str | Path) -> Path | None:
        """Where `source`'s volume is (or would be) stored under these settings; None when the
        source cannot be stat'ed."""
        ident = self._identity(Path(source))
        return None if ident is None else self._entry(ident)

    def _entry(self, ident: dict[str, str]) -> Path:
        key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
        return self.path / key[:2] / f"{key}.safetensors"

    def _read(self, file: Path, ident: dict[str, str]) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            expected = {**ident, "settings": self.key, "format": str(FORMAT)}
            wrong = [k for k, v in expected.items() if meta.get(k) != v]
            if wrong:
                raise ValueError(f"its metadata {wrong[0]}={meta.get(wrong[0])!r} is not {expected[wrong[0]]!r}")
            return f.get_tensor(_TENSOR)

    def _write(self, file: Path, volume: torch.Tensor, ident: dict[str, str]) -> None:
        from safetensors.torch import save_file

        try:
            if not self._described:
                if not (self.path / SETTINGS_FILE).is_file():
                    atomic_write_json(self.path / SETTINGS_FILE, {"format": FORMAT, "settings": self.settings})
                self._described = True
            with atomic_path(file) as tmp:
                save_file({_TENSOR: volume.detach().cpu().contiguous()}, str(tmp),
                          metadata={**ident, "settings": self.key, "format": str(FORMAT)})
        except OSError as e:
            raise UserError(f"persistent volume cache {self.root}: cannot write {file} ({one_line(e)}); "
                            "expected a writable folder with free space") from None

    def get(self, source: str | Path, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`source`'s preprocessed volume: read from the cache, or `compute()`d and stored."""
        source = Path(source)
        ident = self._identity(source)
        if ident is None:
            return compute()
        file = self._entry(ident)
        if file.is_file():
            try:
                volume = self._read(file, ident)
                self.hits += 1
                return volume
            except Exception as e:  # noqa: BLE001 - any unreadable entry is recomputed, never trusted
                warnings.warn(f"persistent volume cache: {file} (for {source}) is unreadable ({one_line(e)}); "
                              "recomputing it", stacklevel=2)
                self.recomputed += 1
        volume = compute()
        self.misses += 1
        self._write(file, volume, ident)
        return volume

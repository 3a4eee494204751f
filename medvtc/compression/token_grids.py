"""Token grids: the data the `compressors` task trains and measures learned compressors on.

On-disk format (one folder):

    meta.json             {"format": "medvtc-token-grids", "version": 1, "grid": [..], "dim": D,
                           "text_dim": Dt or null, "num_classes": C or null, ...}
    train.safetensors     tokens [M, N, D] float32     (required)
    val.safetensors       labels [M, N] int64          (optional: class of each token, 0 = background)
    test.safetensors      text [M, L, Dt] float32, text_mask [M, L] int64 (optional: instruction)
                          target [M] int64             (optional: the class the instruction names)

Users point `data.root` at token grids they dumped from their own encoder (ViT patch tokens of
their images or volumes) in this format; the embedded default is written by
`generate_token_grids`: synthetic scenes, deterministic from a seed, where objects of a few
classes (irregular blobs, each class with its own prototype feature and texture) lie on a
smoothly varying background, and the instruction names one class present in the scene. They
make the trade-offs measurable: uniform pooling blurs small objects, diversity methods find
them, and instruction-guided methods can spend tokens on the named class.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medvtc.common.errors import UserError
from medvtc.common.io import atomic_directory

FORMAT = "medvtc-token-grids"
SPLITS = ("train", "val", "test")
TEXT_LEN = 4


@dataclass
class TokenGridSpec:
    grid: tuple[int, ...] = (16, 16)
    dim: int = 64
    text_dim: int = 32
    num_classes: int = 4
    num_train: int = 512
    num_val: int = 64
    num_test: int = 64
    seed: int = 0


def _smooth_field(rng: np.random.Generator, grid: tuple[int, ...], dim: int, n_waves: int = 4) -> np.ndarray:
    """A low-frequency background: a few random plane waves mixed into D channels."""
    coords = np.stack(np.meshgrid(*[np.linspace(0, 1, g) for g in grid], indexing="ij"), -1).reshape(-1, len(grid))
    freqs = rng.normal(0, 2.0, size=(n_waves, len(grid)))
    phases = rng.uniform(0, 2 * math.pi, size=n_waves)
    waves = np.sin(coords @ freqs.T * 2 * math.pi / 2 + phases)  # [N, n_waves]
    mix = rng.normal(0, 1.0 / math.sqrt(n_waves), size=(n_waves, dim))
    return (waves @ mix).astype(np.float32) * 0.5


def _blob_mask(rng: np.random.Generator, grid: tuple[int, ...]) -> np.ndarray:
    """An irregular blob: an ellipsoid whose radius is modulated by random angular harmonics."""
    rank = len(grid)
    centre = np.array([rng.uniform(0.15 * g, 0.85 * g) for g in grid])
    base = rng.uniform(0.06, 0.2) * min(grid)
    radii = base * rng.uniform(0.6, 1.4, size=rank)
    pts = np.stack(np.meshgrid(*[np.arange(g) + 0.5 for g in grid], indexing="ij"), -1)
    rel = (pts - centre) / np.maximum(radii, 0.5)
    r = np.sqrt((rel**2).sum(-1))
    angle = np.arctan2(rel[..., 1], rel[..., 0]) if rank >= 2 else np.zeros_like(r)
    wobble = 1 + 0.25 * np.sin(3 * angle + rng.uniform(0, 6.3)) + 0.15 * np.sin(5 * angle + rng.uniform(0, 6.3))
    return (r <= wobble).reshape(-1)


def class_tables(spec: TokenGridSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng([spec.seed, 9_999])
    prototypes = rng.normal(0, 1.0, size=(spec.num_classes + 1, spec.dim)).astype(np.float32)
    textures = rng.normal(0, 0.6, size=(spec.num_classes + 1, 3, spec.dim)).astype(np.float32)
    words = rng.normal(0, 1.0, size=(spec.num_classes + 1 + 2, spec.text_dim)).astype(np.float32)
    return prototypes, textures, words


def sample_scene(spec: TokenGridSpec, split_id: int, index: int, tables) -> dict[str, np.ndarray]:
    prototypes, textures, words = tables
    rng = np.random.default_rng([spec.seed, split_id, index])
    n = math.prod(spec.grid)
    tokens = _smooth_field(rng, spec.grid, spec.dim) + prototypes[0] * 0.3
    labels = np.zeros(n, dtype=np.int64)
    n_obj = int(rng.integers(1, 5))
    for _ in range(n_obj):
        cls = int(rng.integers(1, spec.num_classes + 1))
        mask = _blob_mask(rng, spec.grid)
        if not mask.any():
            continue
        m = int(mask.sum())
        tex = rng.normal(0, 1, size=(m, 3)).astype(np.float32) @ textures[cls]
        tokens[mask] = prototypes[cls] * rng.uniform(0.8, 1.2) + tex
        labels[mask] = cls
    tokens += rng.normal(0, 0.1, size=tokens.shape).astype(np.float32)
    present = np.unique(labels[labels > 0])
    target = int(rng.choice(present)) if present.size else int(rng.integers(1, spec.num_classes + 1))
    # Instruction: [verb, class word, class word again with noise, padding]; the last slot is
    # masked for half the samples so text_mask is exercised.
    verb = words[spec.num_classes + 1 + int(rng.integers(0, 2))]
    cls_word = words[target]
    text = np.stack([verb, cls_word, cls_word + rng.normal(0, 0.1, spec.text_dim), np.zeros(spec.text_dim)]).astype(np.float32)
    text_mask = np.array([1, 1, 1, 0], dtype=np.int64)
    return {"tokens": tokens.astype(np.float32), "labels": labels, "text": text, "text_mask": text_mask, "target": np.int64(target)}


def generate_token_grids(root: str | Path, spec: TokenGridSpec, overwrite: bool = False) -> Path:
    """Write the embedded default dataset to `root` (atomically: all splits or nothing)."""
    root = Path(root)
    if root.exists() and not overwrite:
        raise UserError(f"{root} already exists; pass --overwrite to replace it or choose another data.root")
    tables = class_tables(spec)
    counts = {"train": spec.num_train, "val": spec.num_val, "test": spec.num_test}
    with atomic_directory(root, overwrite=overwrite) as tmp:
        for split_id, split in enumerate(SPLITS):
            samples = [sample_scene(spec, split_id, i, tables) for i in range(counts[split])]
            if not samples:
                continue
            arrays = {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}
            save_file({k: v.contiguous() for k, v in arrays.items()}, str(tmp / f"{split}.safetensors"))
        meta = {
            "format": FORMAT,
            "version": 1,
            "grid": list(spec.grid),
            "dim": spec.dim,
            "text_dim": spec.text_dim,
            "num_classes": spec.num_classes,
            "seed": spec.seed,
            "splits": counts,
            "generator": "medvtc.compression.token_grids.generate_token_grids",
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root


def read_meta(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    path = root / "meta.json"
    if not path.is_file():
        raise UserError(f"{path} not found: data.root must be a token-grid folder (meta.json + <split>.safetensors)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: expected \"format\": \"{FORMAT}\", got {meta.get('format')!r}")
    for key in ("grid", "dim"):
        if key not in meta:
            raise UserError(f"{path}: missing key {key!r}")
    return meta


class TokenGridDataset(torch.utils.data.Dataset):
    """One split of a token-grid folder; items are dicts of tensors."""

    def __init__(self, root: str | Path, split: str) -> None:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        self.root = Path(root)
        self.meta = read_meta(self.root)
        self.grid = tuple(int(g) for g in self.meta["grid"])
        path = self.root / f"{split}.safetensors"
        if not path.is_file():
            raise UserError(f"{path} not found (split {split!r} of the token grids at {self.root})")
        try:
            self.arrays = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"cannot read {path}: {e}") from None
        if "tokens" not in self.arrays:
            raise UserError(f"{path} has no 'tokens' tensor; found: {', '.join(sorted(self.arrays)) or 'nothing'}")
        tokens = self.arrays["tokens"]
        n = math.prod(self.grid)
        if tokens.ndim != 3 or tokens.shape[1] != n or tokens.shape[2] != int(self.meta["dim"]):
            raise UserError(
                f"{path}: 'tokens' must be [M, {n}, {self.meta['dim']}] for grid {self.grid}, got {tuple(tokens.shape)}"
            )
        if not torch.isfinite(tokens).all():
            raise UserError(f"{path}: 'tokens' contains NaN or Inf")
        self.length = tokens.shape[0]
        for key, value in self.arrays.items():
            if value.shape[0] != self.length:
                raise UserError(f"{path}: {key!r} has {value.shape[0]} rows, 'tokens' has {self.length}")

    @property
    def has_text(self) -> bool:
        return "text" in self.arrays

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.arrays.items()}


def describe(root: str | Path) -> str:
    meta = read_meta(root)
    lines = [f"token grids at {root}: grid {tuple(meta['grid'])}, D={meta['dim']}, text_dim={meta.get('text_dim')}"]
    for split in SPLITS:
        path = Path(root) / f"{split}.safetensors"
        if path.is_file():
            ds = TokenGridDataset(root, split)
            extra = ", ".join(f"{k} {tuple(v.shape[1:])}" for k, v in ds.arrays.items() if k != "tokens")
            lines.append(f"  {split}: {len(ds)} samples; also {extra or 'nothing else'}")
    return "\n".join(lines)

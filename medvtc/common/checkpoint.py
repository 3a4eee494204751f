"""Checkpoints: safetensors weights plus optimizer/scheduler/RNG/step state, written atomically.

Layout under a run's `checkpoints/` folder:

    step_00000100/model.safetensors    weights
    step_00000100/training_state.pt    optimizer, scheduler, RNG, step (tensors and plain data
                                       only; loaded with weights_only=True, so no code runs)
    latest                             name of the newest complete checkpoint

A checkpoint folder is built under a temporary name and renamed into place, and `latest` is
replaced atomically after it, so a kill at any moment leaves the previous latest intact.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model

from medvtc.common.errors import UserError
from medvtc.common.io import atomic_directory, atomic_write_text

STEP_DIR = re.compile(r"^step_(\d+)$")
WEIGHTS = "model.safetensors"
STATE = "training_state.pt"


def save_checkpoint(
    ckpt_root: str | Path,
    step: int,
    model: torch.nn.Module,
    state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    target = ckpt_root / name
    with atomic_directory(target, overwrite=True) as tmp:
        save_model(model, str(tmp / WEIGHTS))
        torch.save(state, tmp / STATE)
    atomic_write_text(ckpt_root / "latest", name + "\n")
    _prune(ckpt_root, keep_last)
    return target


def _prune(ckpt_root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    steps = list_checkpoints(ckpt_root)
    for path in steps[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    ckpt_root = Path(ckpt_root)
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    ckpt_root = Path(ckpt_root)
    pointer = ckpt_root / "latest"
    if pointer.is_file():
        candidate = ckpt_root / pointer.read_text().strip()
        if (candidate / WEIGHTS).is_file() and (candidate / STATE).is_file():
            return candidate
    complete = [p for p in list_checkpoints(ckpt_root) if (p / WEIGHTS).is_file() and (p / STATE).is_file()]
    return complete[-1] if complete else None


def resolve_weights_dir(path: str | Path, what: str = "a run") -> tuple[Path, Path | None]:
    """A run's output_dir (its final/, else its latest checkpoints/step_*), a final/ or a step_*
    folder -> (the folder holding the weights, the run's config.yaml or None)."""
    path = Path(path)
    if (path / "final" / WEIGHTS).is_file():
        path = path / "final"
    elif (path / "checkpoints").is_dir():
        latest = latest_checkpoint(path / "checkpoints")
        if latest is None:
            raise UserError(f"no checkpoint under {path / 'checkpoints'}")
        path = latest
    if not (path / WEIGHTS).is_file():
        raise UserError(f"{path} holds no {WEIGHTS}: pass {what}'s output_dir, its final/ or a step_* folder")
    config = next((p for p in (path / "config.yaml", path.parent.parent / "config.yaml") if p.is_file()), None)
    return path, config


def load_weights(model: torch.nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load safetensors weights into `model`; a missing or foreign file is a UserError."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS
    if not path.is_file():
        raise UserError(f"no weights at {path} (expected a {WEIGHTS} file)")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a corrupt or foreign file
        raise UserError(f"cannot read weights from {path}: {str(e).splitlines()[0]}") from None
    state = model.state_dict()
    own = {k: tuple(v.shape) for k, v in state.items()}
    mismatched = sorted(k for k in own.keys() & shapes.keys() if own[k] != shapes[k])
    # Tied tensors (an LM's input embedding and output head) are stored once by safetensors'
    # save_model; a key is not missing when a tensor sharing its storage is in the file.
    stored = {state[k].data_ptr() for k in own.keys() & shapes.keys()}
    missing = sorted(k for k in own.keys() - shapes.keys() if state[k].data_ptr() not in stored)
    unexpected = sorted(shapes.keys() - own.keys())
    if mismatched or (strict and (missing or unexpected)):
        detail = []
        if mismatched:
            k = mismatched[0]
            detail.append(f"{len(mismatched)} shape mismatches (e.g. {k}: file {shapes[k]}, model {own[k]})")
        if missing:
            detail.append(f"missing {missing[:3]}")
        if unexpected:
            detail.append(f"unexpected {unexpected[:3]}")
        raise UserError(
            f"weights in {path} do not match this model: {'; '.join(detail)} "
            f"(is it a checkpoint of another task or config?)"
        )
    load_model(model, str(path), strict=strict)


def load_training_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / STATE
    return torch.load(path, map_location="cpu", weights_only=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


__all__ = [
    "save_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_weights",
    "load_training_state",
    "unwrap",
]


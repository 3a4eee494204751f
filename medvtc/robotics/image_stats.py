"""Image statistics of LeRobot datasets computed in float: LeRobot 0.4.4 computes them in uint8.

LeRobot 0.4.4 (the last release for Python 3.11) loads sampled image frames as uint8 and its
`RunningQuantileStats.update` squares them before promoting the dtype: `uint8 ** 2` wraps around,
so the mean of squares is wrong and the stored image std comes out about 0.002 instead of about
0.14 (upstream issue huggingface/lerobot#3682, fixed by PR #3697 in later releases). A policy that
normalises images with MEAN_STD (LeRobot's ACT, our timm backbone) then sees inputs with a std of
about 60.

- `float_image_stats()`: a context manager applying PR #3697's fix (promote each batch to at
  least float32 before any arithmetic) while LeRobot computes statistics; `record_demonstrations`
  records under it and marks its summary ``"image_stats": "float"``.
- `image_stats(dataset)`: the image statistics of an existing dataset recomputed the way LeRobot
  computes them (its per-episode frame sample, `get_feature_stats`, `aggregate_stats`), in float;
  `dataset_stats` uses them in place of the stored ones for datasets not marked as recorded
  under the fix (older recordings, datasets made elsewhere with LeRobot 0.4.4).

Why by hand: the fix is upstream's, but no LeRobot release for Python 3.11 carries it; this module
applies it (a patch for the duration of a `with` block) and reuses LeRobot's own functions for the
rest.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

FLOAT_MARK = "float"  # the recording summary's "image_stats" value once computed under the fix


@contextmanager
def float_image_stats() -> Iterator[None]:
    """Inside the block LeRobot's `RunningQuantileStats` promotes integer batches to float before
    squaring them (the fix of huggingface/lerobot#3697); restored on exit."""
    from lerobot.datasets import compute_stats

    original = compute_stats.RunningQuantileStats.update

    def update(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch)
        return original(self, batch.astype(np.result_type(batch.dtype, np.float32), copy=False))

    compute_stats.RunningQuantileStats.update = update
    try:
        yield
    finally:
        compute_stats.RunningQuantileStats.update = original


def image_keys(dataset) -> list[str]:
    return [k for k, ft in dataset.meta.features.items() if ft.get("dtype") in ("image", "video")]


def _chw_unit(img) -> np.ndarray:
    """A frame as LeRobot's torch transform gives it (float [3, H, W] in [0, 1]) or as a PIL image /
    uint8 [H, W, 3] array -> float64 [3, H, W] in [0, 1]."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr.transpose(2, 0, 1).astype(np.float64) / 255.0 if arr.shape[-1] == 3 else arr.astype(np.float64) / 255.0
    return arr.astype(np.float64)


def image_stats(dataset, keys: list[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{image key: LeRobot-format stats (per channel, [3, 1, 1], pixel values in [0, 1])} of a
    LeRobotDataset, from LeRobot's per-episode sample of frames, computed in float."""
    from lerobot.datasets.compute_stats import aggregate_stats, get_feature_stats, sample_indices

    keys = image_keys(dataset) if keys is None else list(keys)
    if not keys:
        return {}
    frames = dataset.hf_dataset.select_columns(keys)
    per_episode = []
    for ep in dataset.meta.episodes:
        start, stop = int(ep["dataset_from_index"]), int(ep["dataset_to_index"])
        rows = frames[[start + i for i in sample_indices(stop - start)]]
        stats = {}
        for key in keys:
            pixels = np.stack([_chw_unit(img) for img in rows[key]])  # [n, 3, H, W] in [0, 1]
            stats[key] = {k: v if k == "count" else np.squeeze(v, axis=0)
                          for k, v in get_feature_stats(pixels, axis=(0, 2, 3), keepdims=True).items()}
        per_episode.append(stats)
    return aggregate_stats(per_episode)


def dataset_stats(dataset, recording: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
    """(the stats to normalise with, whether the image statistics were recomputed): the stored
    ones when `recording` (the dataset's medvtc summary) says they were computed in float, else a
    copy whose image entries are recomputed by `image_stats`."""
    stored = dataset.meta.stats
    if (recording or {}).get("image_stats") == FLOAT_MARK:
        return stored, False
    fixed = {k: dict(v) for k, v in stored.items()}
    fixed.update(image_stats(dataset))
    return fixed, True

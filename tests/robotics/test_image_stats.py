"""Image statistics in float (LeRobot 0.4.4 computes them in uint8 and overflows: lerobot#3682)."""

from __future__ import annotations

import numpy as np
import pytest

from medvtc.robotics.image_stats import FLOAT_MARK, dataset_stats, float_image_stats, image_stats


def _uint8_images(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(20, 3, 16, 16), dtype=np.uint8)


def test_lerobot_computes_uint8_image_stats_wrong_and_the_fix_corrects_them():
    from lerobot.datasets import compute_stats

    images = _uint8_images()
    expected = images.astype(np.float64).std(axis=(0, 2, 3))  # about 74 for uniform pixels
    broken = compute_stats.get_feature_stats(images, axis=(0, 2, 3), keepdims=True)["std"].reshape(-1)
    assert np.all(np.abs(broken - expected) > 10)  # the upstream bug, as shipped: squared in uint8
    original = compute_stats.RunningQuantileStats.update
    with float_image_stats():
        fixed = compute_stats.get_feature_stats(images, axis=(0, 2, 3), keepdims=True)
    assert compute_stats.RunningQuantileStats.update is original  # restored on exit
    np.testing.assert_allclose(fixed["std"].reshape(-1), expected, rtol=1e-4)  # float32
    np.testing.assert_allclose(fixed["mean"].reshape(-1), images.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-5)


def test_recordings_store_float_image_stats_and_recomputing_them_agrees(recorded_demos):
    from medvtc.robotics.demonstrations import load_demonstrations, read_recording_summary

    root, summary = recorded_demos
    assert summary.image_stats == FLOAT_MARK and read_recording_summary(root)["image_stats"] == FLOAT_MARK
    ds = load_demonstrations(root)
    stored = ds.meta.stats["observation.images.image"]
    assert np.all(np.asarray(stored["std"]) > 0.03)  # real pixel spread, not the overflowed ~0.002
    again = image_stats(ds)["observation.images.image"]
    # the same sample of frames; LeRobot accumulates in float32, so the std agrees to ~0.1 %
    for k in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(np.asarray(again[k]).reshape(-1), np.asarray(stored[k]).reshape(-1), rtol=2e-3, atol=1e-4)
    # a dataset not marked as recorded under the fix gets its image statistics recomputed
    stats, recomputed = dataset_stats(ds, {"image_stats": "uint8"})
    assert recomputed and stats is not ds.meta.stats and set(stats) == set(ds.meta.stats)
    np.testing.assert_allclose(np.asarray(stats["observation.images.image2"]["std"]).reshape(-1),
                               np.asarray(ds.meta.stats["observation.images.image2"]["std"]).reshape(-1), rtol=2e-3)
    assert dataset_stats(ds, read_recording_summary(root)) == (ds.meta.stats, False)


@pytest.mark.parametrize("shape", [(8, 8, 3)])
def test_frames_as_pil_or_uint8_arrays_are_read_in_unit_range(shape):
    from medvtc.robotics.image_stats import _chw_unit

    frame = np.full(shape, 255, dtype=np.uint8)
    out = _chw_unit(frame)
    assert out.shape == (3, 8, 8) and out.max() == 1.0

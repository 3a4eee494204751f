"""The persistent cache of preprocessed volumes (`medvtc.datasets.volume_cache`) behind
`CTReportDataset(persistent_cache=DIR)` and `data.persistent_cache_dir`: computed once and read
back (the reader is not called again), a new key when a preprocessing setting or the file
changes, bit-identical tensors, and an unreadable entry recomputed with a warning."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import medvtc.datasets.ct_rate as ct_rate
from medvtc.common.errors import UserError
from medvtc.datasets.ct_rate import CTReportDataset, CTReportRecord
from medvtc.datasets.nifti import centred_affine, save_nifti
from medvtc.datasets.volume_cache import PersistentVolumeCache

ARGS = dict(spatial_size=(12, 12, 8), hu_window=(-1000.0, 400.0), hu_bins=(-500.0, 0.0))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def records(folder: Path, n: int = 3) -> list[CTReportRecord]:
    out = []
    for i in range(n):
        hu = np.random.default_rng(i).normal(-300.0, 400.0, size=(20, 18, 10)).astype(np.int16)
        path = folder / f"train_{i}_a_1.nii.gz"
        save_nifti(path, hu, centred_affine(hu.shape, (1.5, 1.5, 3.0)))
        out.append(CTReportRecord(f"train_{i}_a_1.nii.gz", path, "Lungs clear.", "Normal.", "", ""))
    return out


@pytest.fixture
def counted(monkeypatch):
    """Count the calls of the NIfTI reader + preprocessing that the dataset makes."""
    calls: list[Path] = []
    real = ct_rate.load_ct_volume

    def load(path, **kw):
        calls.append(Path(path))
        return real(path, **kw)

    monkeypatch.setattr(ct_rate, "load_ct_volume", load)
    return calls


def images(ds: CTReportDataset) -> list[torch.Tensor]:
    return [ds[i]["image"] for i in range(len(ds))]


def test_volumes_are_computed_once_and_read_back_in_later_epochs_and_runs(tmp_path, counted):
    recs = records(tmp_path / "vols")
    uncached = images(CTReportDataset(recs, **ARGS))
    assert len(counted) == 3
    ds = CTReportDataset(recs, persistent_cache=tmp_path / "cache", **ARGS)
    first = images(ds)  # epoch 1: computed and stored
    assert len(counted) == 6 and ds.persistent_cache.misses == 3
    second = images(ds)  # epoch 2: read back, the reader is not called
    assert len(counted) == 6 and ds.persistent_cache.hits == 3
    again = CTReportDataset(recs, persistent_cache=tmp_path / "cache", **ARGS)  # a second run
    third = images(again)
    assert len(counted) == 6 and again.persistent_cache.hits == 3 and again.persistent_cache.misses == 0
    for a, b, c, d in zip(uncached, first, second, third):  # bit-identical to the uncached path
        assert a.dtype == c.dtype == d.dtype == torch.float32 and a.shape == (4, 12, 12, 8)
        assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)
    folder = ds.persistent_cache.path
    assert len(list(folder.rglob("*.safetensors"))) == 3 and (folder / "settings.json").is_file()
    assert not list(folder.rglob("*.tmp"))  # atomic writes leave no temporary file behind
    # with the in-memory cache as well, the disk is read once per volume
    both = CTReportDataset(recs, persistent_cache=tmp_path / "cache", cache=True, **ARGS)
    images(both), images(both)
    assert both.persistent_cache.hits == 3 and len(counted) == 6


@pytest.mark.parametrize("change", [
    dict(hu_window=(-1000.0, 500.0)), dict(spatial_size=(12, 12, 6)), dict(hu_bins=(-500.0,)),
    dict(spacing=(2.0, 2.0, 3.0)), dict(resize="crop_pad"), dict(resize_mode="trilinear"),
])
def test_a_changed_preprocessing_setting_is_a_new_key_and_recomputed(tmp_path, counted, change):
    recs = records(tmp_path / "vols", n=2)
    old = CTReportDataset(recs, persistent_cache=tmp_path / "cache", **ARGS)
    images(old)
    new = CTReportDataset(recs, persistent_cache=tmp_path / "cache", **{**ARGS, **change})
    assert new.persistent_cache.key != old.persistent_cache.key
    got = images(new)
    assert len(counted) == 4 and new.persistent_cache.misses == 2 and new.persistent_cache.hits == 0
    fresh = images(CTReportDataset(recs, **{**ARGS, **change}))
    assert all(torch.equal(a, b) for a, b in zip(got, fresh))
    assert len(list((tmp_path / "cache").glob("*/settings.json"))) == 2  # the old entries are kept, never mixed


def test_a_rewritten_file_is_a_miss(tmp_path, counted):
    recs = records(tmp_path / "vols", n=2)
    images(CTReportDataset(recs, persistent_cache=tmp_path / "cache", **ARGS))
    hu = np.full((20, 18, 10), 50, dtype=np.int16)  # the same name, new contents
    save_nifti(recs[0].path, hu, centred_affine(hu.shape, (1.5, 1.5, 3.0)))
    st = recs[0].path.stat()
    os.utime(recs[0].path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    ds = CTReportDataset(recs, persistent_cache=tmp_path / "cache", **ARGS)
    got = images(ds)
    assert ds.persistent_cache.misses == 1 and ds.persistent_cache.hits == 1 and counted[-1] == recs[0].path
    assert torch.equal(got[0], images(CTReportDataset(recs[:1], **ARGS))[0])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other_source"])
def test_an_unreadable_entry_is_recomputed_with_a_warning(tmp_path, counted, damage):
    recs = records(tmp_path / "vols", n=2)
    ds = CTReportDataset(recs, persistent_cache=tmp_path / "cache", **ARGS)
    want = images(ds)
    cache = ds.persistent_cache
    entry = cache.entry(recs[0].path)
    if damage == "truncate":
        entry.write_bytes(entry.read_bytes()[:200])
    elif damage == "garbage":
        entry.write_bytes(b"not a safetensors file")
    else:  # a well-formed entry that belongs to another volume
        entry.write_bytes(cache.entry(recs[1].path).read_bytes())
    again = CTReportDataset(recs, persistent_cache=tmp_path / "cache", **ARGS)
    with pytest.warns(UserWarning, match=r"persistent volume cache: .*\.safetensors \(for .*train_0_a_1\.nii\.gz\) is unreadable"):
        got = images(again)
    assert again.persistent_cache.recomputed == 1 and counted.count(recs[0].path) == 2
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    third = CTReportDataset(recs, persistent_cache=tmp_path / "cache", **ARGS)  # rewritten: read back again
    assert torch.equal(images(third)[0], want[0]) and third.persistent_cache.hits == 2


def test_a_missing_volume_still_fails_with_the_readers_error(tmp_path):
    recs = records(tmp_path / "vols", n=1)
    recs[0].path.unlink()
    ds = CTReportDataset(recs, persistent_cache=tmp_path / "cache", **ARGS)
    with pytest.raises(UserError, match="train_0_a_1.nii.gz"):
        ds[0]


def test_an_unwritable_cache_folder_is_one_clear_error(tmp_path):
    recs = records(tmp_path / "vols", n=1)
    (tmp_path / "cache").write_text("a file where the folder should be")
    ds = CTReportDataset(recs, persistent_cache=tmp_path / "cache", **ARGS)
    with pytest.raises(UserError, match=r"^persistent volume cache .*cache: cannot write .*expected a writable folder"):
        ds[0]


def test_settings_key_is_order_and_tuple_insensitive():
    a = PersistentVolumeCache("x", {"spatial_size": (1, 2, 3), "hu_window": [0.0, 1.0]})
    b = PersistentVolumeCache("x", {"hu_window": (0.0, 1.0), "spatial_size": [1, 2, 3]})
    assert a.key == b.key and a.key != PersistentVolumeCache("x", {"spatial_size": [1, 2, 4], "hu_window": [0.0, 1.0]}).key


def test_task_key_data_persistent_cache_dir(tmp_path, monkeypatch):
    from medvtc.tasks import get_task

    task = get_task("ct-report")
    root = tmp_path / "data"
    recs = records(root / "vols", n=2)
    cfg = task.load_config(None, [f"data.root={root}", "data.spatial_size=[12,12,8]"])
    assert cfg.data.persistent_cache_dir is None
    cfg = task.load_config(None, [f"data.root={root}", "data.spatial_size=[12,12,8]",
                                  f"data.persistent_cache_dir={tmp_path / 'cache'}", "data.cache=false"])
    # the task's datasets() on our records, without writing a whole CT-RATE layout
    monkeypatch.setattr(ct_rate, "read_ct_rate", lambda *a, **k: recs)
    ds = task.datasets(cfg, ("train",))["train"]
    assert ds.persistent_cache is not None and ds.persistent_cache.root == tmp_path / "cache"
    assert ds.persistent_cache.settings["hu_bins"] == list(cfg.data.hu_bins)
    images(ds)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2

"""The CT-RATE reader (medvtc.datasets.ct_rate) on a tiny CT-RATE-layout folder built here."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medvtc.common.errors import UserError
from medvtc.datasets.ct_rate import (
    CTReportDataset,
    ct_input_channels,
    ct_transforms,
    load_ct_volume,
    preprocess_ct_array,
    read_ct_rate,
    report_text,
)
from medvtc.datasets.ct_rate_layout import CT_RATE_LABELS, NOT_GIVEN, REPORT_COLUMNS, volume_relpath

TRAIN = ["train_1_a_1.nii.gz", "train_1_a_2.nii.gz", "train_2_a_1.nii.gz", "train_3_b_1.nii.gz"]
VALID = ["valid_1_a_1.nii.gz", "valid_2_a_1.nii.gz"]
SHAPE = (24, 24, 12)
AFFINE = np.array([[0.8, 0, 0, -10.0], [0, 0.8, 0, 5.0], [0, 0, 1.5, 2.0], [0, 0, 0, 1]])
SMALL = dict(spatial_size=(12, 12, 6))


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _volume(index: int) -> np.ndarray:
    """Air (-1000 HU) with a soft-tissue block whose HU depends on the index."""
    v = np.full(SHAPE, -1000, dtype=np.int16)
    v[6:18, 6:18, 3:9] = 40 + 100 * index
    return v


def _labels(index: int) -> list[int]:
    return [int((index + j) % 3 == 0) for j in range(len(CT_RATE_LABELS))]


def _report(name: str, index: int) -> dict[str, str]:
    return {
        "VolumeName": name,
        "ClinicalInformation_EN": NOT_GIVEN if index % 2 else f"Cough, case {index}.",
        "Technique_EN": "Non-contrast chest CT, 1.5 mm slices.",
        "Findings_EN": f'Findings {index}: a nodule of "{index} mm", stable,\nno effusion.',
        "Impressions_EN": NOT_GIVEN if index == 2 else f"Impression {index}.",
    }


def _write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def make_ct_rate(root: Path, flat: bool = False) -> Path:
    """4 train + 2 valid volumes, reports and labels (label columns in reverse order)."""
    ds = root / "dataset"
    names = {"train": TRAIN, "valid": VALID}
    csvs = {
        "train": ("radiology_text_reports/train_reports.csv", "multi_abnormality_labels/train_predicted_labels.csv"),
        "valid": ("radiology_text_reports/validation_reports.csv", "multi_abnormality_labels/valid_predicted_labels.csv"),
    }
    index = 0
    for split, vols in names.items():
        reports, labels = [], []
        for name in vols:
            rel = volume_relpath(name)
            path = ds / (Path(rel.parts[0]) / name if flat else rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(_volume(index), AFFINE), str(path))
            reports.append(_report(name, index))
            labels.append({"VolumeName": name, **dict(zip(CT_RATE_LABELS, _labels(index)))})
            index += 1
        _write_csv(ds / csvs[split][0], list(REPORT_COLUMNS), reports)
        _write_csv(ds / csvs[split][1], ["VolumeName", *reversed(CT_RATE_LABELS)], labels)
    return root


@pytest.fixture
def ct_root(tmp_path: Path) -> Path:
    return make_ct_rate(tmp_path / "ctrate")


def _expected_val_patients(patients: list[str], fraction: float) -> set[str]:
    """The documented rule, recomputed here: rank by sha256(salt + id), take round(f * n)."""
    key = lambda p: (int.from_bytes(hashlib.sha256(("medvtc-ct-rate-val:" + p).encode()).digest()[:8], "big"), p)  # noqa: E731
    ranked = sorted(set(patients), key=key)
    n_val = min(len(ranked) - 1, max(1, int(fraction * len(ranked) + 0.5)))
    return set(ranked[:n_val])


# ------------------------------------------------------------------------------------------
# Reading and splits
# ------------------------------------------------------------------------------------------


def test_splits_patient_disjoint_and_deterministic(ct_root: Path):
    train = read_ct_rate(ct_root, "train", val_fraction=0.5)
    val = read_ct_rate(ct_root, "val", val_fraction=0.5)
    test = read_ct_rate(ct_root, "test", val_fraction=0.5)
    assert [r.volume_name for r in test] == VALID
    assert sorted(r.volume_name for r in train + val) == sorted(TRAIN)
    assert train and val
    assert not {r.patient_id for r in train} & {r.patient_id for r in val}
    assert {r.patient_id for r in val} == _expected_val_patients(["train_1", "train_2", "train_3"], 0.5)
    # both scans of patient train_1 land on the same side
    side = {r.volume_name: s for s, recs in (("train", train), ("val", val)) for r in recs}
    assert side["train_1_a_1.nii.gz"] == side["train_1_a_2.nii.gz"]
    again = read_ct_rate(ct_root, "val", val_fraction=0.5)
    assert [r.volume_name for r in again] == [r.volume_name for r in val]
    # default fraction 0.1 with 3 patients still gives one val patient and two train patients
    assert len({r.patient_id for r in read_ct_rate(ct_root, "val")}) == 1


def test_sections_and_labels_in_order(ct_root: Path):
    recs = read_ct_rate(ct_root, "train", val_fraction=0.0)  # everything in train, CSV order
    assert [r.volume_name for r in recs] == TRAIN
    for i, r in enumerate(recs):
        want = _report(r.volume_name, i)
        assert r.findings == want["Findings_EN"]
        assert r.impression == want["Impressions_EN"]
        assert r.clinical_information == want["ClinicalInformation_EN"]
        assert r.technique == want["Technique_EN"]
        assert r.labels.dtype.kind == "i" and r.labels.tolist() == _labels(i)  # official order
        assert r.path.is_file() and r.path.parts[-3:] == volume_relpath(r.volume_name).parts[-3:]
    assert recs[1].clinical_information == NOT_GIVEN  # kept as is
    assert report_text(recs[2]) == recs[2].findings  # "Not given." impression skipped
    assert report_text(recs[0]) == f"{recs[0].findings} {recs[0].impression}"
    test = read_ct_rate(ct_root, "test")
    assert [r.labels.tolist() for r in test] == [_labels(4), _labels(5)]


def test_splits_json_is_used_exactly(ct_root: Path):
    spec = {
        "train": ["train_3_b_1.nii.gz", "valid_2_a_1.nii.gz", "train_1_a_1.nii.gz"],
        "val": ["train_2_a_1.nii.gz"],
        "test": ["valid_1_a_1.nii.gz", "train_1_a_2.nii.gz"],
    }
    (ct_root / "medvtc_splits.json").write_text(json.dumps(spec))
    for split, names in spec.items():
        assert [r.volume_name for r in read_ct_rate(ct_root, split)] == names
    (ct_root / "medvtc_splits.json").write_text(json.dumps({**spec, "test": ["valid_9_a_1.nii.gz"]}))
    with pytest.raises(UserError, match="medvtc_splits.json.*valid_9_a_1"):
        read_ct_rate(ct_root, "test")
    (ct_root / "medvtc_splits.json").write_text(json.dumps({"train": [], "valid": []}))
    with pytest.raises(UserError, match="medvtc_splits.json"):
        read_ct_rate(ct_root, "train")


def test_flattened_layout(tmp_path: Path):
    root = make_ct_rate(tmp_path / "flat", flat=True)
    assert not (root / "dataset" / "train_fixed" / "train_1").exists()
    recs = read_ct_rate(root, "train", val_fraction=0.0)
    assert [r.volume_name for r in recs] == TRAIN
    assert all(r.path.parent.name == "train_fixed" for r in recs)
    assert [r.path.parent.name for r in read_ct_rate(root, "test")] == ["valid_fixed"] * 2


def test_without_labels_csv(ct_root: Path):
    (ct_root / "dataset/multi_abnormality_labels/train_predicted_labels.csv").unlink()
    with pytest.raises(UserError, match="train_predicted_labels.csv"):
        read_ct_rate(ct_root, "train")
    recs = read_ct_rate(ct_root, "train", val_fraction=0.0, require_labels=False)
    assert len(recs) == 4 and all(r.labels is None for r in recs)
    item = CTReportDataset(recs, **SMALL)[0]
    assert "labels" not in item and item["image"].shape == (1, 12, 12, 6)


def test_skip_missing_volumes(ct_root: Path):
    (ct_root / "dataset" / volume_relpath("train_2_a_1.nii.gz")).unlink()
    recs = read_ct_rate(ct_root, "train", val_fraction=0.0, skip_missing_volumes=True)
    assert [r.volume_name for r in recs] == [n for n in TRAIN if n != "train_2_a_1.nii.gz"]


# ------------------------------------------------------------------------------------------
# Transforms and dataset
# ------------------------------------------------------------------------------------------


def test_transforms_shape_range_and_pipeline_agree(ct_root: Path):
    path = ct_root / "dataset" / volume_relpath(TRAIN[0])
    x = load_ct_volume(path, spatial_size=(16, 16, 8))
    assert isinstance(x, torch.Tensor) and x.shape == (1, 16, 16, 8) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    y = ct_transforms(spatial_size=(16, 16, 8))({"image": str(path)})["image"]
    assert y.shape == (1, 16, 16, 8) and y.dtype == torch.float32
    assert torch.allclose(x, y, atol=1e-6)
    z = load_ct_volume(path, spatial_size=(10, 10, 10), spacing=(2.0, 2.0, 2.0), resize="crop_pad")
    assert z.shape == (1, 10, 10, 10) and float(z.min()) >= 0.0 and float(z.max()) <= 1.0
    a = preprocess_ct_array(_volume(0), spacing=(0.8, 0.8, 1.5), spatial_size=(16, 16, 8))
    assert torch.allclose(a, x, atol=1e-6)


def test_hu_window_and_orientation(tmp_path: Path):
    v = np.full(SHAPE, -1000, dtype=np.int16)
    v[12:] = 1000
    v[12:, :, 6:] = 3000
    v[:, :2, :] = 0
    lps = np.diag([-1.0, 1.0, 1.0, 1.0])  # x runs right-to-left: RAS orientation flips it
    nib.save(nib.Nifti1Image(v, lps), str(tmp_path / "w.nii.gz"))
    x = load_ct_volume(tmp_path / "w.nii.gz", spatial_size=SHAPE, resize="crop_pad")[0]
    flipped = v[::-1]
    assert torch.equal(x[torch.from_numpy(flipped.copy() == -1000)], torch.zeros(int((flipped == -1000).sum())))
    assert bool((x[torch.from_numpy(flipped.copy() >= 1000)] == 1.0).all())
    assert bool((x[torch.from_numpy(flipped.copy() == 0)] == 0.5).all())
    a = preprocess_ct_array(torch.tensor(v, dtype=torch.float32), affine=lps, spatial_size=SHAPE, resize="crop_pad")
    assert torch.equal(a[0], x)


BINS = (-950.0, -30.0, 20.0, 130.0)  # 5 intervals


def test_hu_interval_channels_are_tissue_fractions():
    v = np.full((8, 8, 4), 40.0, dtype=np.float32)  # soft tissue
    v[:4] = -1000.0  # air in the left half
    v[4:, :, :2] = 10.0  # fluid
    v[4:6, :4, 2:] = 500.0  # bone
    x = preprocess_ct_array(v, hu_bins=BINS, spatial_size=(4, 4, 2))
    assert ct_input_channels(BINS) == 6 and ct_input_channels([]) == 1
    assert x.shape == (6, 4, 4, 2) and x.dtype == torch.float32
    # channel 0 is the window alone, exactly as without bins
    assert torch.allclose(x[0], preprocess_ct_array(v, spatial_size=(4, 4, 2))[0])
    fractions = x[1:]
    assert torch.allclose(fractions.sum(0), torch.ones(4, 4, 2))
    assert bool((fractions[0, :2] == 1.0).all()) and bool((fractions[1:, :2] == 0.0).all())  # air: (-inf, -950)
    assert bool((fractions[2, 2:, :, 0] == 1.0).all())  # fluid: [-30, 20)
    assert torch.allclose(fractions[4, 2, :2, 1], torch.ones(2))  # bone: [130, inf)
    assert torch.allclose(fractions[3, 3, :, 1], torch.ones(4))  # soft tissue: [20, 130)
    # an output voxel over a mix averages its 2x2x2 inputs: here half bone, half soft tissue
    u = np.full((8, 8, 4), 40.0, dtype=np.float32)
    u[::2] = 500.0
    y = preprocess_ct_array(u, hu_bins=BINS, spatial_size=(4, 4, 2))
    assert torch.allclose(y[1 + 4], torch.full((4, 4, 2), 0.5)) and torch.allclose(y[1 + 3], torch.full((4, 4, 2), 0.5))


def test_hu_interval_channels_file_dataset_and_crop_pad(ct_root: Path):
    path = ct_root / "dataset" / volume_relpath(TRAIN[0])
    x = load_ct_volume(path, spatial_size=(16, 16, 8), hu_bins=BINS)
    y = ct_transforms(spatial_size=(16, 16, 8), hu_bins=BINS)({"image": str(path)})["image"]
    assert x.shape == (6, 16, 16, 8) and torch.allclose(x, y, atol=1e-6)
    assert torch.allclose(x[0], load_ct_volume(path, spatial_size=(16, 16, 8))[0])
    # padding is air: the window channel is 0 and the lowest interval is 1 there
    z = load_ct_volume(path, spatial_size=(30, 30, 14), resize="crop_pad", hu_bins=BINS)
    assert z.shape == (6, 30, 30, 14)
    assert float(z[0, 0, 0, 0]) == 0.0 and float(z[1, 0, 0, 0]) == 1.0 and float(z[2:, 0, 0, 0].sum()) == 0.0
    ds = CTReportDataset(read_ct_rate(ct_root, "train", val_fraction=0.0), hu_bins=BINS, **SMALL)
    assert ds[0]["image"].shape == (6, 12, 12, 6)


@pytest.mark.parametrize("bins", [(20.0, -30.0), (0.0, 0.0), (float("nan"),), ("soft",)])
def test_bad_hu_bins(ct_root: Path, bins):
    path = ct_root / "dataset" / volume_relpath(TRAIN[0])
    with pytest.raises(UserError, match="hu_bins"):
        load_ct_volume(path, hu_bins=bins)


def test_dataset_with_dataloader_and_cache(ct_root: Path):
    recs = read_ct_rate(ct_root, "train", val_fraction=0.0)
    ds = CTReportDataset(recs, cache=True, **SMALL)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=0)
    batches = list(loader)
    assert len(batches) == 2
    b = batches[0]
    assert b["image"].shape == (2, 1, 12, 12, 6) and b["image"].dtype == torch.float32
    assert b["labels"].shape == (2, 18) and b["labels"].dtype == torch.float32
    assert b["labels"][1].tolist() == [float(v) for v in _labels(1)]
    assert b["volume_name"] == TRAIN[:2] and b["report"][0] == report_text(recs[0])
    assert len(ds._cache) == 4
    recs[0].path.unlink()  # a cached volume is not read again
    assert torch.equal(ds[0]["image"], b["image"][0])
    assert ds[0]["image"] is ds[0]["image"]


# ------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------


def _save(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, AFFINE), str(path))
    return path


def test_truncated_nifti(tmp_path: Path):
    path = _save(tmp_path / "cut.nii.gz", np.random.default_rng(0).integers(-1000, 1000, SHAPE).astype(np.int16))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.nii\.gz.*truncated or corrupt"):
        load_ct_volume(path, **SMALL)


def test_not_a_nifti(tmp_path: Path):
    fake = tmp_path / "fake.nii.gz"
    fake.write_text("this is a text file, not an image\n")
    with pytest.raises(UserError, match=r"fake\.nii\.gz"):
        load_ct_volume(fake, **SMALL)
    zipped = tmp_path / "zipped.nii.gz"
    zipped.write_bytes(gzip.compress(b"not a nifti header " * 40))
    with pytest.raises(UserError, match=r"zipped\.nii\.gz"):
        load_ct_volume(zipped, **SMALL)
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(UserError, match=r"image\.png.*NIfTI"):
        load_ct_volume(png, **SMALL)
    with pytest.raises(UserError, match=r"missing\.nii\.gz.*not found"):
        load_ct_volume(tmp_path / "missing.nii.gz", **SMALL)


def test_not_a_3d_volume(tmp_path: Path):
    flat = _save(tmp_path / "slice.nii.gz", np.zeros((24, 24), np.int16))
    with pytest.raises(UserError, match=r"slice\.nii\.gz.*3D volume"):
        load_ct_volume(flat, **SMALL)
    single = _save(tmp_path / "single.nii.gz", np.zeros((24, 24, 1), np.int16))
    with pytest.raises(UserError, match=r"single\.nii\.gz.*3D volume"):
        load_ct_volume(single, **SMALL)
    multi = _save(tmp_path / "multi.nii.gz", np.zeros((24, 24, 12, 3), np.int16))
    with pytest.raises(UserError, match=r"multi\.nii\.gz.*3D volume"):
        load_ct_volume(multi, **SMALL)
    one_frame = _save(tmp_path / "frame.nii.gz", np.zeros((24, 24, 12, 1), np.int16))
    assert load_ct_volume(one_frame, **SMALL).shape == (1, 12, 12, 6)
    with pytest.raises(UserError, match="3D volume"):
        preprocess_ct_array(np.zeros((24, 24)), **SMALL)


def test_nan_voxels(tmp_path: Path):
    v = _volume(0).astype(np.float32)
    v[3, 4, 5] = np.nan
    v[4, 4, 5] = np.inf
    path = _save(tmp_path / "nan.nii.gz", v)
    with pytest.raises(UserError, match=r"nan\.nii\.gz.*2 NaN or infinite"):
        load_ct_volume(path, **SMALL)
    with pytest.raises(UserError, match="NaN"):
        preprocess_ct_array(v, **SMALL)


def test_corrupt_volume_in_dataset_names_file(ct_root: Path):
    recs = read_ct_rate(ct_root, "test")
    recs[1].path.write_bytes(recs[1].path.read_bytes()[:200])
    ds = CTReportDataset(recs, **SMALL)
    ds[0]
    with pytest.raises(UserError, match="valid_2_a_1.nii.gz"):
        ds[1]


def test_csv_row_without_volume(ct_root: Path):
    (ct_root / "dataset" / volume_relpath("train_2_a_1.nii.gz")).unlink()
    with pytest.raises(UserError, match=r"train_reports\.csv row for train_2_a_1\.nii\.gz: volume not found at"):
        read_ct_rate(ct_root, "train")


def test_volume_without_report(ct_root: Path):
    extra = ct_root / "dataset" / volume_relpath("valid_7_a_1.nii.gz")
    extra.parent.mkdir(parents=True)
    shutil.copy(ct_root / "dataset" / volume_relpath(VALID[0]), extra)
    with pytest.raises(UserError, match=r"valid_7_a_1\.nii\.gz.*validation_reports\.csv"):
        read_ct_rate(ct_root, "test")


def _rewrite(path: Path, edit) -> None:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    header, rows = edit(list(rows[0].keys()), rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def test_labels_csv_problems(ct_root: Path):
    labels = ct_root / "dataset/multi_abnormality_labels/valid_predicted_labels.csv"
    original = labels.read_bytes()
    _rewrite(labels, lambda h, rows: ([c for c in h if c != "Cardiomegaly"], rows))
    with pytest.raises(UserError, match=r"valid_predicted_labels\.csv.*Cardiomegaly"):
        read_ct_rate(ct_root, "test")
    labels.write_bytes(original)
    _rewrite(labels, lambda h, rows: (h, rows[:1]))
    with pytest.raises(UserError, match=r"valid_predicted_labels\.csv has no row for volume valid_2_a_1"):
        read_ct_rate(ct_root, "test")
    labels.write_bytes(original)
    _rewrite(labels, lambda h, rows: (h, [rows[0], {**rows[1], "Emphysema": "0.7"}]))
    with pytest.raises(UserError, match=r"valid_predicted_labels\.csv.*Emphysema.*not 0 or 1"):
        read_ct_rate(ct_root, "test")


def test_reports_csv_problems(ct_root: Path, tmp_path: Path):
    reports = ct_root / "dataset/radiology_text_reports/validation_reports.csv"
    original = reports.read_bytes()
    _rewrite(reports, lambda h, rows: ([c for c in h if c not in ("Findings_EN", "Technique_EN")], rows))
    with pytest.raises(UserError, match=r"validation_reports\.csv.*Technique_EN, Findings_EN"):
        read_ct_rate(ct_root, "test")
    reports.write_bytes(original)
    _rewrite(reports, lambda h, rows: (h, rows + rows[:1]))
    with pytest.raises(UserError, match=r"validation_reports\.csv.*valid_1_a_1\.nii\.gz appears more than once"):
        read_ct_rate(ct_root, "test")
    reports.unlink()
    with pytest.raises(UserError, match=r"validation_reports\.csv"):
        read_ct_rate(ct_root, "test")
    with pytest.raises(UserError, match="dataset"):
        read_ct_rate(tmp_path, "train")
    with pytest.raises(UserError, match="not found"):
        read_ct_rate(tmp_path / "nowhere", "train")
    with pytest.raises(UserError, match="split"):
        read_ct_rate(ct_root, "valid")

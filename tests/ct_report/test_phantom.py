"""Synthetic chest-CT phantom in the CT-RATE layout: layout, determinism, HU, findings drawn."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medvtc.common.errors import UserError
from medvtc.datasets import ct_phantom as P
from medvtc.datasets.ct_rate_layout import (
    CT_RATE_LABELS,
    OFFICIAL_SPLITS,
    REPORT_COLUMNS,
    parse_volume_name,
    volume_relpath,
)

SHAPE = (48, 48, 24)  # spacing None -> (8, 8, 13.33) mm: the whole chest in a tiny grid
SMALL = (64, 64, 32)  # the resolution findings must survive
COUNTS = {"train": 6, "val": 2, "test": 2}
SEED = 3


def _generate(root: Path, seed: int = SEED, workers: int = 2) -> Path:
    return P.generate_ct_rate(root, num_train=COUNTS["train"], num_val=COUNTS["val"], num_test=COUNTS["test"],
                              seed=seed, shape=SHAPE, progress=False, workers=workers)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _volumes(root: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted((root / "dataset").rglob("*.nii.gz"))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return _generate(tmp_path_factory.mktemp("phantom") / "ct_rate")


def test_layout_matches_ct_rate(tiny: Path):
    splits = json.loads((tiny / "medvtc_splits.json").read_text())
    assert list(splits) == ["train", "val", "test"]
    assert {k: len(v) for k, v in splits.items()} == COUNTS
    on_disk = {p.relative_to(tiny / "dataset").as_posix() for p in (tiny / "dataset").rglob("*.nii.gz")}
    expected_files = set()
    for official, (folder, report_csv, label_csv) in OFFICIAL_SPLITS.items():
        header, reports = _rows(tiny / "dataset" / report_csv)
        assert header == list(REPORT_COLUMNS)
        lheader, labels = _rows(tiny / "dataset" / label_csv)
        assert lheader == ["VolumeName", *CT_RATE_LABELS]  # the 18 labels in official order
        names = [r["VolumeName"] for r in reports]
        assert names == [r["VolumeName"] for r in labels]  # every volume has a report and a label row
        for row in reports:
            parts = parse_volume_name(row["VolumeName"])
            assert parts["split"] == official and (parts["scan"], parts["recon"]) == ("a", "1")
            assert all(row[c].strip() for c in REPORT_COLUMNS)  # incl. ClinicalInformation_EN, Technique_EN
            expected_files.add(volume_relpath(row["VolumeName"]).as_posix())
            assert volume_relpath(row["VolumeName"]).parts[0] == folder
        for row in labels:
            assert {row[c] for c in CT_RATE_LABELS} <= {"0", "1"}
        wanted = splits["test"] if official == "valid" else splits["train"] + splits["val"]
        assert sorted(names) == sorted(wanted)
    assert on_disk == expected_files
    patients = {k: {parse_volume_name(n)["patient"] for n in v} for k, v in splits.items()}
    assert not patients["train"] & patients["val"]
    meta = json.loads((tiny / "medvtc_phantom.json").read_text())
    assert meta["format"] == P.FORMAT and meta["version"] == P.VERSION
    assert meta["shape"] == list(SHAPE) and meta["seed"] == SEED and meta["labels"] == list(CT_RATE_LABELS)


def test_nifti_geometry_and_hu(tiny: Path):
    spacing = (384 / 48, 384 / 48, 320 / 24)
    for path in sorted((tiny / "dataset").rglob("*.nii.gz")):
        img = nib.load(path)
        vol = np.asarray(img.dataobj)
        assert img.get_data_dtype() == np.int16 and vol.dtype == np.int16
        assert vol.shape == SHAPE
        assert np.allclose(np.diag(img.affine)[:3], spacing)
        assert np.allclose(img.affine[:3, 3], [-(n - 1) / 2 * s for n, s in zip(SHAPE, spacing)])
        corners = np.concatenate([vol[:3, :3].ravel(), vol[-3:, -3:].ravel(), vol[:3, -3:].ravel(), vol[-3:, :3].ravel()])
        assert abs(corners.mean() + 1000) < 25  # air outside the body
        assert (vol > 300).sum() > 20  # spine, ribs, sternum


def test_files_are_the_seeded_cases(tiny: Path):
    """Case i of split s is default_rng([seed, s, i, stream]): the files hold exactly those
    renders, the labels CSV is the case's ground truth, and the lungs are lung-dark."""
    splits = json.loads((tiny / "medvtc_splits.json").read_text())
    _, label_rows = _rows(tiny / "dataset" / OFFICIAL_SPLITS["train"][2])
    truth = {r["VolumeName"]: [int(r[c]) for c in CT_RATE_LABELS] for r in label_rows}
    for split_id, split in enumerate(("train", "val")):
        for index, name in enumerate(splits[split][:2]):
            case = P.sample_case(np.random.default_rng([SEED, split_id, index, 0]))
            vol, aff, masks = P.render_phantom(case, np.random.default_rng([SEED, split_id, index, 1]), SHAPE, return_masks=True)
            on_disk = np.asarray(nib.load(tiny / "dataset" / volume_relpath(name)).dataobj)
            assert np.array_equal(vol, on_disk)
            assert truth[name] == P.case_labels(case).tolist()
            assert masks["lungs"].sum() > 100 and vol[masks["lungs"]].mean() < -600


def test_same_seed_same_bytes_with_any_workers_other_seed_differs(tiny: Path, tmp_path: Path):
    again = _generate(tmp_path / "again", workers=1)  # `tiny` was written by 2 worker processes
    other = _generate(tmp_path / "other", seed=SEED + 1)
    assert _files(tiny) == _files(again)  # every file: volumes, reports and labels CSVs, splits, settings
    csvs = [spec[i] for spec in OFFICIAL_SPLITS.values() for i in (1, 2)]
    a, b, c = _volumes(tiny), _volumes(again), _volumes(other)
    assert a.keys() == b.keys() == c.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not any(np.array_equal(a[k], c[k]) for k in a)
    assert (tiny / "dataset" / csvs[0]).read_text() != (other / "dataset" / csvs[0]).read_text()


def test_existing_root_is_left_untouched(tmp_path: Path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="mine"):
        _generate(root)
    assert [p.name for p in root.iterdir()] == ["keep.txt"] and (root / "keep.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary directory left behind
    P.generate_ct_rate(root, num_train=1, num_val=0, num_test=1, shape=SHAPE, overwrite=True, progress=False)
    assert not (root / "keep.txt").exists() and (root / "medvtc_splits.json").is_file()


def test_killed_generation_leaves_no_dataset(tmp_path: Path):
    """SIGKILL half-way (the parent and its workers): no `root`, only the temporary folder."""
    root = tmp_path / "ct"
    code = (f"from medvtc.datasets.ct_phantom import generate_ct_rate\n"
            f"generate_ct_rate({str(root)!r}, num_train=200, num_val=0, num_test=1, shape={SHAPE}, progress=False, workers=2)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any(tmp_path.glob(".ct.*.tmp/dataset/**/*.nii.gz")):
            assert proc.poll() is None and time.monotonic() < deadline, "the generator ended before it was killed"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the generator and its workers
        proc.wait()
    time.sleep(0.2)
    assert not root.exists()
    assert [p.name.startswith(".ct.") and p.name.endswith(".tmp") for p in tmp_path.iterdir()] == [True]


def test_bad_arguments_are_user_errors(tmp_path: Path):
    with pytest.raises(UserError, match="shape"):
        P.generate_ct_rate(tmp_path / "a", shape=(48, 48), progress=False)
    with pytest.raises(UserError, match="spacing"):
        P.generate_ct_rate(tmp_path / "b", shape=SHAPE, spacing=(1.0, -1.0, 1.0), progress=False)
    with pytest.raises(UserError, match="num_val"):
        P.generate_ct_rate(tmp_path / "c", num_val=-1, progress=False)
    for workers in (0, -2, 1.5, "2", True):
        with pytest.raises(UserError, match="workers"):
            P.generate_ct_rate(tmp_path / "d", shape=SHAPE, progress=False, workers=workers)
    assert not (tmp_path / "d").exists()
    assert not any(tmp_path.iterdir())


def test_left_pleural_effusion_fills_posterior_left_base():
    """Same anatomy with and without a large left effusion: only the effusion's voxels change,
    and they are fluid (~10 HU) in the dependent (posterior) left hemithorax."""
    case = {"Pleural effusion": {"side": "left", "amount": "large", "thickness_mm": 60}}
    with_fx, aff, masks = P.render_phantom(case, np.random.default_rng(11), SMALL, return_masks=True)
    without, _ = P.render_phantom({}, np.random.default_rng(11), SMALL)
    fluid_mask = masks["findings"]["Pleural effusion"]
    assert np.array_equal(with_fx[~fluid_mask], without[~fluid_mask])
    # World coordinates (RAS): x < 0 is the patient's left, y < 0 posterior.
    ijk = np.indices(SMALL).reshape(3, -1).T
    xyz = (ijk @ aff[:3, :3].T + aff[:3, 3]).reshape(*SMALL, 3)
    left_post = (xyz[..., 0] < -20) & (xyz[..., 1] < 0)
    right_post = (xyz[..., 0] > 20) & (xyz[..., 1] < 0)

    def fluid(vol, region):
        return int(((vol > -40) & (vol < 60) & region).sum())

    assert fluid(with_fx, left_post) > fluid(without, left_post) + 400
    assert fluid(with_fx, right_post) == fluid(without, right_post)
    assert abs(float(with_fx[fluid_mask].mean()) - 10) < 25


def test_nodule_is_a_soft_tissue_blob_in_its_lobe():
    case = {"Lung nodule": {"lobe": "right upper lobe", "size_mm": 16, "count": 1, "kind": "solid"}}
    vol, aff, masks = P.render_phantom(case, np.random.default_rng(5), return_masks=True)
    base, _ = P.render_phantom({}, np.random.default_rng(5))
    nodule = masks["findings"]["Lung nodule"]
    assert nodule.sum() >= 20
    lobe_id = P.LOBES.index("right upper lobe") + 1
    assert (masks["lobes"][nodule] == lobe_id).mean() > 0.9
    assert vol[nodule].mean() > -150  # soft tissue where the base image has lung
    assert base[nodule].mean() < -400
    centre = np.argwhere(nodule).mean(0) @ aff[:3, :3].T + aff[:3, 3]
    assert centre[0] > 0  # the patient's right


# One example of every label, found by sampling cases (so the attributes are sample_case's own).
def _examples() -> dict[str, dict]:
    found: dict[str, dict] = {}
    for s in range(500):
        for label, attrs in P.sample_case(np.random.default_rng([99, s])).items():
            found.setdefault(label, attrs)
    return found


def test_findings_are_visible_at_64x64x32():
    examples = _examples()
    assert set(examples) == set(CT_RATE_LABELS)  # every label is drawn by sample_case
    base, _ = P.render_phantom({}, np.random.default_rng(2), SMALL)
    visible = []
    for label, attrs in examples.items():
        vol, _ = P.render_phantom({label: attrs}, np.random.default_rng(2), SMALL)
        diff = np.abs(vol.astype(np.int32) - base)
        if (diff > 150).sum() >= 3:
            visible.append(label)
    core = {"Lung nodule", "Pleural effusion", "Pericardial effusion", "Cardiomegaly", "Emphysema", "Consolidation",
            "Atelectasis", "Arterial wall calcification", "Hiatal hernia", "Lymphadenopathy", "Medical material"}
    assert core <= set(visible) and len(visible) >= 15, sorted(set(CT_RATE_LABELS) - set(visible))


def test_sample_case_priors():
    cases = [P.sample_case(np.random.default_rng([7, i])) for i in range(1500)]
    y = np.stack([P.case_labels(c) for c in cases])
    freq = y.mean(0)
    assert ((freq > 0.04) & (freq < 0.4)).all(), dict(zip(CT_RATE_LABELS, freq.round(3)))
    normal = (y.sum(1) == 0).mean()
    assert 0.15 < normal < 0.35
    assert y.sum(1).max() >= 5  # several findings in one case happen
    json.dumps(cases)  # attributes are plain JSON
    nodules = [c["Lung nodule"] for c in cases if "Lung nodule" in c]
    assert min(n["size_mm"] for n in nodules) >= 8 and all(n["lobe"] in P.LOBES for n in nodules)
    with pytest.raises(ValueError, match="unknown"):
        P.case_labels({"Pneumothorax": {}})

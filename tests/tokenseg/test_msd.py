"""The MSD reader on a generated fixture, its splits and MONAI transforms, every bad input, and
the embedded generators."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medvtc.common.errors import UserError
from medvtc.datasets.msd import (
    MSDSegmentationDataset,
    msd_split,
    msd_transforms,
    read_msd,
    segmentation_collate,
)


def _dataset(root, split="train", train=True, cache=False, roi=(16, 16, 16), samples=2):
    info = read_msd(root)
    transform = msd_transforms(info.in_channels, info.num_classes, train=train, roi_size=roi, spacing=(3.0, 3.0, 3.0),
                               samples_per_volume=samples, modalities=info.modalities)
    return MSDSegmentationDataset(msd_split(info, split), transform, cache=cache)


def test_reader_layout_and_fixed_splits(phantom_root):
    info = read_msd(phantom_root)
    assert info.modalities == ["T1w", "T2w"] and info.in_channels == 2
    assert info.labels == {0: "background", 1: "organ", 2: "lesion"} and info.num_classes == 3
    assert len(info.records) == 6 and all(Path(r["image"]).is_file() for r in info.records)
    splits = {s: [r["id"] for r in msd_split(info, s)] for s in ("train", "val", "test")}
    assert [len(v) for v in splits.values()] == [3, 1, 2]
    assert not set(splits["train"]) & set(splits["test"])
    meta = json.loads((phantom_root / "dataset.json").read_text())
    assert meta["tensorImageSize"] == "4D" and meta["numTraining"] == 6
    img = nib.load(str(phantom_root / "imagesTr" / "phantom_001.nii.gz"))
    assert img.shape == (24, 24, 24, 2) and img.get_data_dtype() == np.float32
    assert nib.load(str(phantom_root / "labelsTr" / "phantom_001.nii.gz")).get_data_dtype() == np.uint8


def test_hash_splits_without_a_splits_file(phantom_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(phantom_root, root)
    (root / "medvtc_splits.json").unlink()
    info = read_msd(root)
    parts = {s: msd_split(info, s, val_fraction=0.2, test_fraction=0.34) for s in ("train", "val", "test")}
    ids = [r["id"] for p in parts.values() for r in p]
    assert sorted(ids) == sorted(r["id"] for r in info.records)  # a partition
    assert len(parts["test"]) == 2 and len(parts["val"]) == 1
    # the rule depends on the file names only, not on their order in dataset.json
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"] = meta["training"][::-1]
    (root / "dataset.json").write_text(json.dumps(meta))
    again = msd_split(read_msd(root), "test", val_fraction=0.2, test_fraction=0.34)
    assert [r["id"] for r in again] == [r["id"] for r in parts["test"]]
    # a MONAI-style "validation" list becomes the val split
    meta["validation"] = meta["training"][:1]
    meta["training"] = meta["training"][1:]
    (root / "dataset.json").write_text(json.dumps(meta))
    info = read_msd(root)
    assert [r["id"] for r in msd_split(info, "val")] == [meta["validation"][0]["image"]]


def test_training_crops_and_eval_volumes(phantom_root):
    ds = _dataset(phantom_root, cache=True)
    torch.manual_seed(0)
    items = ds[0]
    assert isinstance(items, list) and len(items) == 2  # samples_per_volume crops
    for it in items:
        assert it["image"].shape == (2, 16, 16, 16) and it["image"].dtype == torch.float32
        assert it["label"].shape == (1, 16, 16, 16) and it["label"].dtype == torch.uint8
        assert set(it["label"].unique().tolist()) <= {0, 1, 2}
    batch = segmentation_collate([ds[0], ds[1]])
    assert batch["image"].shape == (4, 2, 16, 16, 16) and batch["label"].shape == (4, 1, 16, 16, 16)
    # crops are reseeded from torch's RNG: the same torch seed gives the same crops
    torch.manual_seed(5)
    a = ds[1][0]["image"]
    torch.manual_seed(5)
    b = ds[1][0]["image"]
    torch.manual_seed(6)
    c = ds[1][0]["image"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    val = _dataset(phantom_root, "test", train=False)
    item = val[0]
    assert item["image"].shape == (2, 24, 24, 24) and item["label"].shape == (1, 24, 24, 24)
    assert torch.allclose(item["spacing"], torch.tensor([3.0, 3.0, 3.0]))
    # z-scored per channel over the body (non-zero voxels)
    body = item["image"][0] != 0
    assert abs(float(item["image"][0][body].mean())) < 0.05


# ------------------------------------------------------------------------------------------------
# Bad inputs: each is a UserError naming the file
# ------------------------------------------------------------------------------------------------
def _broken_copy(phantom_root: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    root = tmp_path / "bad"
    shutil.copytree(phantom_root, root)
    first = read_msd(root)
    rec = msd_split(first, "train")[0]
    return root, Path(rec["image"]), Path(rec["label"])


def _save(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0])), str(path))


def _expect(root: Path, match: str, name: str) -> None:
    with pytest.raises(UserError) as e:
        _dataset(root, cache=True)
    msg = str(e.value)
    assert name in msg, msg
    assert re.search(match, msg), msg
    assert "\n" not in msg


def test_truncated_file(phantom_root, tmp_path):
    root, image, _ = _broken_copy(phantom_root, tmp_path)
    raw = gzip.decompress(image.read_bytes())
    image.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    _expect(root, "not a valid NIfTI file or truncated/corrupt", image.name)


def test_not_nifti(phantom_root, tmp_path):
    root, image, _ = _broken_copy(phantom_root, tmp_path)
    image.write_text("this is not an image\n")
    _expect(root, "is not a NIfTI file: not gzip-compressed", image.name)
    image.write_bytes(gzip.compress(b"\x89PNG\r\n\x1a\n" + bytes(600)))  # gzip, but no NIfTI inside
    _expect(root, "not a valid NIfTI file", image.name)


def test_wrong_channel_count(phantom_root, tmp_path):
    root, image, _ = _broken_copy(phantom_root, tmp_path)
    _save(image, np.ones((24, 24, 24, 3), np.float32))
    _expect(root, "has 3 channel\\(s\\).*expected 2 \\(T1w, T2w\\)", image.name)


def test_2d_array(phantom_root, tmp_path):
    root, image, label = _broken_copy(phantom_root, tmp_path)
    _save(image, np.ones((24, 24), np.float32))
    _expect(root, "shape \\(24, 24\\).*not a 2D array", image.name)


def test_nans(phantom_root, tmp_path):
    root, image, _ = _broken_copy(phantom_root, tmp_path)
    data = np.asarray(nib.load(str(image)).dataobj).copy()
    data[3, 4, 5, 1] = np.nan
    data[1, 1, 1, 0] = np.inf
    _save(image, data)
    _expect(root, "2 NaN or infinite voxel", image.name)


def test_image_label_shape_mismatch(phantom_root, tmp_path):
    root, _, label = _broken_copy(phantom_root, tmp_path)
    _save(label, np.zeros((24, 24, 20), np.uint8))
    _expect(root, "has shape \\(24, 24, 20\\).*image and label must cover the same voxels", label.name)


def test_label_values_outside_the_classes(phantom_root, tmp_path):
    root, _, label = _broken_copy(phantom_root, tmp_path)
    data = np.zeros((24, 24, 24), np.uint8)
    data[5, 5, 5] = 7
    _save(label, data)
    _expect(root, "value\\(s\\) \\[7\\].*class ids 0..2", label.name)


def test_dataset_json_problems(phantom_root, tmp_path):
    root, image, _ = _broken_copy(phantom_root, tmp_path)
    image.unlink()
    with pytest.raises(UserError, match=r"dataset.json training\[\d+\] image './imagesTr/phantom_00\d.nii.gz' points at a missing file"):
        read_msd(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(UserError, match="dataset.json is not valid JSON"):
        read_msd(root)
    (root / "dataset.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(UserError, match="dataset.json has no 'training' list"):
        read_msd(root)
    (root / "dataset.json").unlink()
    with pytest.raises(UserError, match="dataset.json: file not found"):
        read_msd(root)
    with pytest.raises(UserError, match="folder not found"):
        read_msd(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------
# Generators
# ------------------------------------------------------------------------------------------------
def test_phantom_is_deterministic_irregular_and_atomic(phantom_root, tmp_path):
    from medvtc.datasets.mri_phantom import generate_mri_phantom, render_case, sample_case

    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    for workers in (1, 2):  # in this process, and in two worker processes: the same bytes
        again = generate_mri_phantom(tmp_path / f"again{workers}", num_train=3, num_val=1, num_test=2, seed=3,
                                     shape=(24, 24, 24), spacing=(3.0, 3.0, 3.0), progress=False, workers=workers)
        assert files(again) == files(phantom_root)
    for sub in ("imagesTr", "labelsTr"):
        for f in sorted((phantom_root / sub).iterdir()):
            a = np.asarray(nib.load(str(f)).dataobj)
            b = np.asarray(nib.load(str(again / sub / f.name)).dataobj)
            assert np.array_equal(a, b), f.name
    with pytest.raises(UserError, match="already exists"):
        generate_mri_phantom(again, progress=False)
    # cases: an organ and lesions of every kind, with partial-volume (intermediate) edge intensities
    kinds = set()
    for i in range(12):
        case = sample_case(np.random.default_rng([0, 0, i, 0]), (96.0, 96.0, 96.0))
        kinds |= {les["kind"] for les in case["lesions"]}
    assert kinds == {"lobulated", "spiculated", "infiltrative"}
    case = sample_case(np.random.default_rng([0, 0, 1, 0]), (96.0, 96.0, 96.0))
    image, label = render_case(case, np.random.default_rng(1), (48, 48, 48), (2.0, 2.0, 2.0))
    assert image.shape == (48, 48, 48, 2) and set(np.unique(label)) == {0, 1, 2}
    assert (label == 2).sum() > 20 and (label == 1).sum() > (label == 2).sum()
    # T2w: fluid-like lesions brighter than the organ around them (the tissue table)
    assert image[..., 1][label == 2].mean() > image[..., 1][label == 1].mean()
    different = render_case(case, np.random.default_rng(2), (48, 48, 48), (2.0, 2.0, 2.0))[0]
    assert not np.array_equal(image, different)  # noise and texture come from the rng


def test_mni152_builds_offline_and_loads_through_the_task(mni152_root):
    """nilearn's template (shipped in its wheel: the fixture refuses sockets) -> MSD layout, one
    subject: the left hemisphere trains, blocks of the right one validate and test."""
    from medvtc.datasets.mri_phantom import MNI152_BLOCKS, generate_mni152
    from medvtc.tasks import get_task

    info = read_msd(mni152_root)
    assert info.name == "MNI152" and info.modalities == ["T1w"]
    assert info.labels == {0: "background", 1: "grey matter", 2: "white matter"}
    splits = {s: [r["id"] for r in msd_split(info, s)] for s in ("train", "val", "test")}
    assert splits["train"] == ["./imagesTr/mni152_left_hemisphere.nii.gz"]
    assert splits["val"] == ["./imagesTr/mni152_right_anterior_superior.nii.gz"] and len(splits["test"]) == 3
    assert len({i for ids in splits.values() for i in ids}) == 5  # no case in two splits
    assert "ONE subject" in json.loads((mni152_root / "dataset.json").read_text())["description"]
    for r in msd_split(info, "test"):  # every test block holds both tissues
        lab = np.asarray(nib.load(r["label"]).dataobj)
        assert (lab == 1).sum() > 1000 and (lab == 2).sum() > 1000, r["id"]
    # through the task's own data path: training crops of the hemisphere, whole validation blocks
    task = get_task("tokenseg")
    cfg = task.load_config(None, [f"data.root={mni152_root}", "data.dataset=mni152", "model.img_size=[32,32,32]",
                                  "data.samples_per_volume=2", "data.cache=false"])
    train = task.dataset(cfg, task.info(cfg), "train", train=True)
    crops = train[0]
    crops = crops if isinstance(crops, list) else [crops]
    assert len(crops) == 2 and crops[0]["image"].shape == (1, 32, 32, 32) and set(crops[0]["label"].unique().tolist()) <= {0, 1, 2}
    val = task.dataset(cfg, task.info(cfg), "val", train=False)[0]
    assert val["image"].shape[0] == 1 and val["image"].shape[1:] == val["label"].shape[1:]
    assert len(MNI152_BLOCKS) == 4
    with pytest.raises(UserError, match="already exists"):
        generate_mni152(mni152_root)


def test_subtle_lesions_are_the_same_cases_smaller_and_fainter():
    """lesions="subtle" (data.dataset=phantom_subtle): every other parameter of the draw is the
    standard case's; the lesions are SUBTLE_LESION_SCALE their size and keep SUBTLE_LESION_CONTRAST
    of their signal difference to the organ, so they cover fewer voxels and stand out less."""
    from medvtc.datasets.mri_phantom import SUBTLE_LESION_CONTRAST, SUBTLE_LESION_SCALE, render_case, sample_case

    fov = (96.0, 96.0, 96.0)
    standard = sample_case(np.random.default_rng([0, 0, 1, 0]), fov)
    subtle = sample_case(np.random.default_rng([0, 0, 1, 0]), fov, lesions="subtle")
    assert {k: v for k, v in subtle.items() if k not in ("lesions", "contrast")} == \
        {k: v for k, v in standard.items() if k not in ("lesions", "contrast")}
    for a, b in zip(standard["lesions"], subtle["lesions"]):
        assert (a["kind"], a["centre"]) == (b["kind"], b["centre"])
        assert b["radius"] == pytest.approx(SUBTLE_LESION_SCALE * a["radius"])
    organ = np.asarray(standard["contrast"]["organ"])
    np.testing.assert_allclose(np.asarray(subtle["contrast"]["lesion"]) - organ,
                               SUBTLE_LESION_CONTRAST * (np.asarray(standard["contrast"]["lesion"]) - organ))
    img_a, lab_a = render_case(standard, np.random.default_rng(1), (48, 48, 48), (2.0, 2.0, 2.0))
    img_b, lab_b = render_case(subtle, np.random.default_rng(1), (48, 48, 48), (2.0, 2.0, 2.0))
    assert 0 < (lab_b == 2).sum() < 0.3 * (lab_a == 2).sum()

    def lesion_contrast(img, lab):  # T2w lesion minus organ
        return img[..., 1][lab == 2].mean() - img[..., 1][lab == 1].mean()

    assert 0 < lesion_contrast(img_b, lab_b) < 0.6 * lesion_contrast(img_a, lab_a)
    with pytest.raises(UserError, match="phantom lesions 'tiny'"):
        sample_case(np.random.default_rng(0), fov, lesions="tiny")


def test_the_task_writes_the_subtle_set_under_its_own_root(tmp_path, monkeypatch):
    from medvtc.medical.tokenseg.config import DEFAULT_ROOTS
    from medvtc.medical.tokenseg.task import TokenSegTask

    monkeypatch.chdir(tmp_path)
    task = TokenSegTask()
    cfg = task.load_config(None, ["data.dataset=phantom_subtle", "data.num_train=1", "data.num_val=1", "data.num_test=1",
                                  "data.phantom_shape=[16,16,16]", "data.phantom_spacing=[6.0,6.0,6.0]"])
    assert cfg.data.resolved_root == DEFAULT_ROOTS["phantom_subtle"] == "data/tokenseg_phantom_subtle"
    root = task._generate(cfg, overwrite=False)
    assert json.loads((root / "medvtc_phantom.json").read_text())["lesions"] == "subtle"

"""Reader for Medical Segmentation Decathlon (MSD) layout data, through MONAI.

An MSD task folder (e.g. Task01_BrainTumour, Task02_Heart) holds `dataset.json`, `imagesTr/`
and `labelsTr/` (and `imagesTs/` without labels). `dataset.json` names the modalities (one
image channel each: BrainTumour's 4D NIfTI images hold FLAIR, T1w, T1gd, T2w), the label
classes, and the `training` list of {"image", "label"} pairs. medvtc's embedded datasets
(`medvtc.datasets.mri_phantom`) are written in this same layout.

* `read_msd(root)` -> `MSDInfo` (modalities, classes, every training pair with absolute paths,
  after checking that each file exists) via MONAI's `load_decathlon_datalist`.
* `msd_split(info, split)` -> the records of `train`, `val` or `test`. MSD only labels its
  training cases, so all three come from `training`: from `<root>/medvtc_splits.json`
  ({"train": [image paths as in dataset.json], "val": [...], "test": [...]}) when present (the
  embedded datasets ship one); otherwise a `validation` list in dataset.json (the MONAI tutorial
  convention) is the val split, and cases are ranked by sha256("medvtc-msd:" + image file name)
  and the first `test_fraction`, then `val_fraction`, of them form test and val.
* `msd_transforms(...)`: the MONAI dictionary pipeline, LoadImaged, EnsureChannelFirstd, the
  input checks below, Orientationd (RAS), Spacingd, intensity scaling (NormalizeIntensityd per
  channel over non-zero voxels, or ScaleIntensityRangePercentilesd), then for training
  SpatialPadd, RandCropByPosNegLabeld, flips, 90-degree rotations and intensity jitter.
* `MSDSegmentationDataset`: a torch Dataset over those (cached with MONAI's CacheDataset up to
  the first random transform) yielding plain tensors.

Input checks: every failure is a `UserError` naming the file: dataset.json missing, not JSON,
or without a `training` list; an entry pointing at a missing file; a file that is not NIfTI or
is truncated/corrupt; a 2D array; an image whose channel count differs from the modalities in
dataset.json; NaN/inf voxels; an image and label of different spatial shapes; label values that
are not the classes of dataset.json.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from monai.transforms import LoadImaged, MapTransform
from torch.utils.data import Dataset

from medvtc.common.errors import UserError
from medvtc.datasets.nifti import check_nifti_file, nifti_read_errors, one_line

DATASET_JSON = "dataset.json"
SPLITS_FILE = "medvtc_splits.json"
SPLITS = ("train", "val", "test")

__all__ = [
    "DATASET_JSON",
    "SPLITS_FILE",
    "MSDInfo",
    "read_msd",
    "msd_split",
    "msd_transforms",
    "MSDSegmentationDataset",
    "LoadMSDImaged",
    "CheckMSDd",
    "unwrap_user_error",
    "segmentation_collate",
]


def unwrap_user_error(exc: BaseException) -> UserError | None:
    """The UserError behind `exc` (MONAI's Compose re-raises every transform error as
    RuntimeError("applying transform ...") from the original), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


# ------------------------------------------------------------------------------------------------
# dataset.json
# ------------------------------------------------------------------------------------------------
@dataclass
class MSDInfo:
    """What dataset.json says, with the training pairs resolved to absolute paths."""

    root: Path
    name: str
    modalities: list[str]
    labels: dict[int, str]
    records: list[dict[str, str]]  # {"image", "label", "id"} absolute paths; id = the entry as written
    validation: list[dict[str, str]] = field(default_factory=list)

    @property
    def in_channels(self) -> int:
        return len(self.modalities)

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1


def _case_name(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_msd(root: str | Path) -> MSDInfo:
    """Read `<root>/dataset.json` (MONAI's load_decathlon_datalist) and check that every
    training image and label it names exists."""
    from monai.data import load_decathlon_datalist

    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"MSD root {root}: folder not found (expected dataset.json, imagesTr/ and labelsTr/)")
    path = root / DATASET_JSON
    if not path.is_file():
        raise UserError(f"{path}: file not found (an MSD task folder holds dataset.json, imagesTr/ and labelsTr/)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} could not be read: {one_line(exc)}") from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {one_line(exc)}") from exc
    if not isinstance(meta, dict):
        raise UserError(f"{path} must hold a JSON object with a 'training' list, not {type(meta).__name__}")
    training = meta.get("training")
    if not isinstance(training, list) or not training:
        raise UserError(f"{path} has no 'training' list of {{\"image\", \"label\"}} entries")
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not isinstance(entry.get("label"), str):
            raise UserError(f"{path} training[{i}] must be {{\"image\": path, \"label\": path}}, got {entry!r}"[:300])
    modality = meta.get("modality") or {"0": "image"}
    try:
        modalities = [str(modality[k]) for k in sorted(modality, key=int)]
        if sorted(int(k) for k in modality) != list(range(len(modality))):
            raise ValueError
    except (ValueError, TypeError, AttributeError):
        raise UserError(f"{path}: 'modality' must map channel indices \"0\", \"1\", ... to names, got {modality!r}") from None
    raw_labels = meta.get("labels")
    try:
        labels = {int(k): str(v) for k, v in (raw_labels or {}).items()}
    except (ValueError, TypeError, AttributeError):
        raise UserError(f"{path}: 'labels' must map class ids \"0\", \"1\", ... to names, got {raw_labels!r}") from None
    if not labels or 0 not in labels or sorted(labels) != list(range(len(labels))):
        raise UserError(f"{path}: 'labels' must name classes 0..C-1 with 0 the background, got {raw_labels!r}")
    datalist = load_decathlon_datalist(path, is_segmentation=True, data_list_key="training", base_dir=root)
    records = _resolve(datalist, training, path, "training")
    validation: list[dict[str, str]] = []
    if isinstance(meta.get("validation"), list) and meta["validation"]:
        val_list = load_decathlon_datalist(path, is_segmentation=True, data_list_key="validation", base_dir=root)
        validation = _resolve(val_list, meta["validation"], path, "validation")
    return MSDInfo(root=root, name=str(meta.get("name", root.name)), modalities=modalities, labels=labels,
                   records=records, validation=validation)


def _resolve(datalist: list[dict], raw: list[dict], path: Path, key: str) -> list[dict[str, str]]:
    out = []
    for i, (item, entry) in enumerate(zip(datalist, raw)):
        for role in ("image", "label"):
            file = Path(item[role])
            if not file.is_file():
                raise UserError(f"{path} {key}[{i}] {role} {entry[role]!r} points at a missing file: {file}")
        out.append({"image": str(item["image"]), "label": str(item["label"]), "id": entry["image"]})
    return out


def _rank(name: str) -> tuple[int, str]:
    digest = hashlib.sha256(("medvtc-msd:" + name).encode()).digest()
    return int.from_bytes(digest[:8], "big"), name


def msd_split(info: MSDInfo, split: str, val_fraction: float = 0.1, test_fraction: float = 0.2) -> list[dict[str, str]]:
    """The records of one split (see the module docstring for the rule)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    splits_path = info.root / SPLITS_FILE
    by_id = {r["id"]: r for r in info.records}
    if splits_path.is_file():
        try:
            spec = json.loads(splits_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"splits file {splits_path} could not be read as JSON: {one_line(exc)}") from exc
        if not isinstance(spec, dict) or not all(isinstance(spec.get(s), list) for s in SPLITS):
            raise UserError(f"splits file {splits_path} must hold {{\"train\": [...], \"val\": [...], \"test\": [...]}} "
                            "lists of image paths as written in dataset.json")
        missing = [x for x in spec[split] if x not in by_id]
        if missing:
            raise UserError(f"splits file {splits_path}: {split} entry {missing[0]!r} is not a training image of dataset.json")
        return [by_id[x] for x in spec[split]]
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise UserError(f"val_fraction={val_fraction} and test_fraction={test_fraction}: expected fractions in [0, 1) "
                        "that leave some training cases")
    ranked = sorted(info.records, key=lambda r: _rank(_case_name(r["image"])))
    n = len(ranked)
    n_test = min(n - 1, max(1 if test_fraction > 0 and n >= 3 else 0, round(test_fraction * n)))
    if info.validation:
        parts = {"test": ranked[:n_test], "train": ranked[n_test:], "val": list(info.validation)}
    else:
        n_val = min(n - n_test - 1, max(1 if val_fraction > 0 and n >= 3 else 0, round(val_fraction * n)))
        parts = {"test": ranked[:n_test], "val": ranked[n_test : n_test + n_val], "train": ranked[n_test + n_val :]}
    return sorted(parts[split], key=lambda r: r["id"])


# ------------------------------------------------------------------------------------------------
# File checks and the transforms that raise UserErrors
# ------------------------------------------------------------------------------------------------
class LoadMSDImaged(MapTransform):
    """MONAI's LoadImaged (nibabel reader) per key, after `check_nifti_file`, with the file named
    in every failure (a UserError)."""

    def __init__(self, keys: Sequence[str]) -> None:
        super().__init__(keys)
        self.loaders = {k: LoadImaged(keys=k, reader="NibabelReader", image_only=True) for k in self.keys}

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = check_nifti_file(d[key], key)
            try:
                d = self.loaders[key](d)
            except UserError:
                raise
            except (RuntimeError, *nifti_read_errors()) as exc:
                cause: BaseException = exc
                while cause.__cause__ is not None:  # MONAI wraps the reader's error
                    cause = cause.__cause__
                raise UserError(f"could not read {key} {path}: not a valid NIfTI file or truncated/corrupt "
                                f"({type(cause).__name__}: {one_line(cause)})") from exc
        return d


class CheckMSDd(MapTransform):
    """After EnsureChannelFirstd: a 3D volume, the expected channel count, finite voxels, image
    and label of the same shape, label values among the classes. Each failure names the file."""

    def __init__(self, in_channels: int, num_classes: int | None, image_key: str = "image", label_key: str | None = "label",
                 modalities: Sequence[str] = ()) -> None:
        keys = [image_key] + ([label_key] if label_key else [])
        super().__init__(keys, allow_missing_keys=True)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.image_key, self.label_key = image_key, label_key
        self.modalities = list(modalities)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        img = data[self.image_key]
        src = _source(img)
        spatial = tuple(img.shape[1:])
        if len(spatial) != 3 or min(spatial) < 2:
            raise UserError(f"image {src} has shape {tuple(_orig_shape(img))}: expected a 3D volume (X, Y, Z"
                            f"{', C' if self.in_channels > 1 else ''}) with every side > 1, not a 2D array")
        if img.shape[0] != self.in_channels:
            names = f" ({', '.join(self.modalities)})" if self.modalities else ""
            raise UserError(f"image {src} has {img.shape[0]} channel(s) (shape {tuple(_orig_shape(img))}): expected "
                            f"{self.in_channels}{names}, one per modality of dataset.json / the trained model")
        finite = torch.isfinite(torch.as_tensor(img))
        if not bool(finite.all()):
            raise UserError(f"image {src} has {int((~finite).sum())} NaN or infinite voxel(s): expected finite intensities")
        if self.label_key and self.label_key in data:
            lab = data[self.label_key]
            lsrc = _source(lab)
            if lab.shape[0] != 1 or tuple(lab.shape[1:]) != spatial:
                raise UserError(f"label {lsrc} has shape {tuple(_orig_shape(lab))} but its image {src} has spatial shape "
                                f"{spatial}: image and label must cover the same voxels")
            values = torch.unique(torch.as_tensor(lab))
            bad = [int(v) if float(v).is_integer() else v for v in values.tolist()
                   if not float(v).is_integer() or v < 0 or (self.num_classes is not None and v >= self.num_classes)]
            if bad:
                raise UserError(f"label {lsrc} holds value(s) {bad[:5]}: expected class ids 0..{(self.num_classes or 1) - 1} "
                                "as listed under 'labels' in dataset.json")
        return data


def _source(x: Any) -> str:
    meta = getattr(x, "meta", None) or {}
    return str(meta.get("filename_or_obj", "<array>"))


def _orig_shape(x: Any) -> tuple:
    meta = getattr(x, "meta", None) or {}
    shape = meta.get("spatial_shape")
    dims = meta.get("dim")
    if dims is not None:
        try:
            n = int(dims[0])
            return tuple(int(v) for v in dims[1 : 1 + n])
        except (TypeError, ValueError, IndexError):
            pass
    return tuple(int(s) for s in shape) if shape is not None else tuple(x.shape)


def msd_transforms(
    in_channels: int,
    num_classes: int | None,
    *,
    train: bool,
    roi_size: Sequence[int] = (64, 64, 64),
    spacing: Sequence[float] | None = (1.5, 1.5, 1.5),
    intensity: str = "zscore",
    samples_per_volume: int = 1,
    pos: float = 1.0,
    neg: float = 1.0,
    augment: bool = True,
    with_label: bool = True,
    modalities: Sequence[str] = (),
):
    """The MONAI Compose for MSD pairs ({"image": path, "label": path}); see the module
    docstring. `with_label=False` gives the image-only pipeline used by `medvtc segment`."""
    from monai import transforms as T

    keys = ["image", "label"] if with_label else ["image"]
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    steps: list[Any] = [
        LoadMSDImaged(keys),
        T.EnsureChannelFirstd(keys=keys),
        CheckMSDd(in_channels, num_classes, label_key="label" if with_label else None, modalities=modalities),
        T.Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
    ]
    if spacing is not None:
        steps.append(T.Spacingd(keys=keys, pixdim=tuple(float(s) for s in spacing), mode=modes))
    if intensity == "zscore":
        steps.append(T.NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True))
    elif intensity == "percentile":
        steps.append(T.ScaleIntensityRangePercentilesd(keys="image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0,
                                                       clip=True, channel_wise=True))
    elif intensity != "none":
        raise UserError(f"intensity {intensity!r}: expected zscore, percentile or none")
    steps.append(T.EnsureTyped(keys=keys, dtype=(torch.float32, torch.uint8) if with_label else torch.float32))
    if train:
        roi = tuple(int(s) for s in roi_size)
        steps += [
            T.SpatialPadd(keys=keys, spatial_size=roi),
            T.RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=roi, pos=pos, neg=neg,
                                     num_samples=samples_per_volume, image_key="image", image_threshold=0.0),
        ]
        if augment:
            steps += [
                T.RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
                T.RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
                T.RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
                T.RandRotate90d(keys=keys, prob=0.5, max_k=3, spatial_axes=(0, 1)),
                T.RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
                T.RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            ]
    return T.Compose(steps)


# ------------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------------
class MSDSegmentationDataset(Dataset):
    """MSD records through `transform` -> {"image": float32 [C, *S], "label": uint8 [1, *S],
    "spacing": float32 [3], "name": str} (a list of num_samples such dicts when the transform
    crops several samples per volume).

    `cache=True` uses MONAI's CacheDataset: the deterministic transforms (loading, checks,
    orientation, spacing, intensity) run once per volume at construction, so a bad file fails
    before training starts. The random transforms are reseeded per item from torch's RNG, which
    the trainer seeds and checkpoints, so a resumed run sees the same crops as an uninterrupted
    one (with num_workers=0).
    """

    def __init__(self, records: Sequence[dict[str, str]], transform, cache: bool = True) -> None:
        from monai.data import CacheDataset
        from monai.data import Dataset as MonaiDataset

        self.records = list(records)
        self.transform = transform
        data = [{"image": r["image"], "label": r["label"], "name": _case_name(r["image"])} if "label" in r
                else {"image": r["image"], "name": _case_name(r["image"])} for r in self.records]
        try:
            if cache:
                self.ds = CacheDataset(data, transform=transform, cache_rate=1.0, num_workers=1, progress=False)
            else:
                self.ds = MonaiDataset(data, transform=transform)
        except Exception as exc:
            user = unwrap_user_error(exc)
            if user is not None:
                raise user from None
            raise

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Any:
        self.transform.set_random_state(seed=int(torch.randint(0, 2**31 - 1, (1,)).item()))
        try:
            item = self.ds[index]
        except Exception as exc:
            user = unwrap_user_error(exc)
            if user is not None:
                raise user from None
            raise
        if isinstance(item, list):
            return [_plain(x) for x in item]
        return _plain(item)


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    img = item["image"]
    out: dict[str, Any] = {"image": torch.as_tensor(img).float().contiguous(), "name": item.get("name", "")}
    if "label" in item:
        out["label"] = torch.as_tensor(item["label"]).to(torch.uint8).contiguous()
    meta = getattr(img, "meta", None) or {}
    affine = meta.get("affine")
    if affine is not None:
        a = torch.as_tensor(affine, dtype=torch.float64)
        out["spacing"] = torch.linalg.norm(a[:3, :3], dim=0).float()
    else:
        out["spacing"] = torch.ones(3)
    return out


def segmentation_collate(items: list[Any]) -> dict[str, Any]:
    """Flatten per-volume sample lists and stack: {"image" [B, C, *S], "label" [B, 1, *S]}."""
    flat: list[dict[str, Any]] = []
    for it in items:
        flat.extend(it if isinstance(it, list) else [it])
    batch = {"image": torch.stack([x["image"] for x in flat])}
    if "label" in flat[0]:
        batch["label"] = torch.stack([x["label"] for x in flat])
    return batch


def describe(info: MSDInfo, splits: dict[str, list[dict[str, str]]]) -> str:
    lines = [f"MSD dataset {info.name!r} at {info.root}: modalities {', '.join(info.modalities)}; "
             f"classes " + ", ".join(f"{k}={v}" for k, v in sorted(info.labels.items()))]
    for s in SPLITS:
        lines.append(f"  {s}: {len(splits.get(s, []))} volumes")
    return "\n".join(lines)

"""Reader for CT-RATE-layout data: reports, labels and chest-CT volumes.

`medvtc.datasets.ct_rate_layout` names the files; this module reads them:

* `read_ct_rate(root, split)` -> `CTReportRecord`s (volume path, report sections, 18 labels),
  checking the layout and failing with a `UserError` that names the file and what was expected.
* `ct_transforms(...)` -> a MONAI dictionary pipeline for key "image" (NIfTI path -> [C, X, Y, Z]
  float32, or float16 with `dtype`, in [0, 1]); `load_ct_volume(path, ...)` does the same for one file with validation
  first; `preprocess_ct_array(array, ...)` does it for an in-memory HU array.
* `CTReportDataset(records, ...)`: a torch `Dataset` of {"image", "report", "labels",
  "volume_name"}.

Splits. CT-RATE ships two official splits (train, valid); medvtc uses three:

* `test` = the official valid split;
* `train` / `val` = the official train split divided by patient. A patient id is
  `{split}_{patient}` (e.g. `train_17`, so all scans and reconstructions of a patient stay
  together). Patients are ranked by `sha256("medvtc-ct-rate-val:" + patient_id)` (first 8 bytes,
  big-endian; ties broken by the id) and the first `round(val_fraction * n_patients)` of them (at
  least 1 when `val_fraction > 0` and there are >= 2 patients, and never all of them) form `val`.
  The rule depends only on the set of patients, not on Python's salted `hash()` or file order.
* If `<root>/medvtc_splits.json` exists ({"train": [volume names], "val": [...], "test": [...]})
  it is used exactly as given (in its order), instead of the rule above.

Volumes are found through the reports CSV: `<root>/dataset/` + `volume_relpath(name)` (the
official nested layout) or, for flattened downloads, directly in `<root>/dataset/<split>_fixed/`.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medvtc.common.errors import UserError
from medvtc.datasets.ct_rate_layout import (
    CT_RATE_LABELS,
    NOT_GIVEN,
    OFFICIAL_SPLITS,
    REPORT_COLUMNS,
    SPLIT_SOURCE,
    parse_volume_name,
    volume_relpath,
)
from medvtc.datasets.nifti import is_nifti_name, one_line, read_nifti

__all__ = [
    "SPLITS",
    "SPLITS_FILE",
    "CTReportRecord",
    "report_text",
    "patient_id",
    "val_patients",
    "read_ct_rate",
    "ct_transforms",
    "load_ct_volume",
    "preprocess_ct_array",
    "ct_input_channels",
    "channel_dtype",
    "CHANNEL_DTYPES",
    "HUIntervalChannelsd",
    "CTReportDataset",
    "PREPROCESSING_VERSION",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLITS_FILE = "medvtc_splits.json"
VAL_HASH_SALT = "medvtc-ct-rate-val:"
RESIZE_METHODS = ("resize", "crop_pad")
RESIZE_MODES = ("area", "trilinear", "nearest")
# Storage dtypes of the preprocessed channels. float16 halves their memory (a 512 x 512 x 256 CT's
# ten channels: 1280 MiB instead of 2560); every value is computed in float32 and rounded once
# (|error| <= 2**-12 for values in [0, 1]; the 0/1 indicators exactly); the ViT reads them slab by
# slab in its own dtype (`vision_encoder.CTViTEncoder`), so the float32 tensor never exists whole.
CHANNEL_DTYPES = {"float32": torch.float32, "float16": torch.float16}
AIR_HU = -1024.0  # what crop_pad pads with
# Part of the persistent volume cache's key (CTReportDataset(persistent_cache=...)): raise it when
# a change to load_ct_volume's processing changes its output, so no stale volume is read back.
# Still 1 after the channels moved to the output size (HUIntervalChannelsd): bit-identical output.
PREPROCESSING_VERSION = 1
_SLAB_VOXELS = 1 << 20  # input voxels per block when HUIntervalChannelsd builds its channels
_MAX_LISTED = 5  # how many offending names an error message lists before "... and N more"


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class CTReportRecord:
    """One CT volume with its report sections and (optionally) its 18 abnormality labels.

    Sections are kept exactly as in the CSV (including the literal "Not given."). `labels` is
    an int64 array of 18 zeros/ones in `CT_RATE_LABELS` order, or None when read without a
    labels CSV.
    """

    volume_name: str
    path: Path
    findings: str
    impression: str
    clinical_information: str
    technique: str
    labels: np.ndarray | None = field(default=None, repr=False)

    @property
    def patient_id(self) -> str:
        return patient_id(self.volume_name)


def _is_not_given(text: str | None) -> bool:
    if text is None:
        return True
    t = text.strip()
    return t == "" or t.rstrip(".").strip().lower() == NOT_GIVEN.rstrip(".").lower()


def report_text(record: CTReportRecord) -> str:
    """Findings and Impressions joined by one space, skipping sections that are "Not given."
    (or empty). Returns "" when both are missing."""
    parts = [s.strip() for s in (record.findings, record.impression) if not _is_not_given(s)]
    return " ".join(parts)


def patient_id(volume_name: str) -> str:
    """`train_17_a_2.nii.gz` -> `train_17` (the unit the train/val split never divides)."""
    p = parse_volume_name(volume_name)
    return f"{p['split']}_{p['patient']}"


def _stable_hash(patient: str) -> int:
    return int.from_bytes(hashlib.sha256((VAL_HASH_SALT + patient).encode("utf-8")).digest()[:8], "big")


def val_patients(patients: Iterable[str], val_fraction: float) -> set[str]:
    """The patients that go to `val` (see the module docstring for the rule)."""
    unique = sorted(set(patients), key=lambda p: (_stable_hash(p), p))
    n = len(unique)
    if val_fraction <= 0 or n < 2:
        return set()
    n_val = min(n - 1, max(1, int(math.floor(val_fraction * n + 0.5))))
    return set(unique[:n_val])


# --------------------------------------------------------------------------------------------
# CSV / JSON reading
# --------------------------------------------------------------------------------------------


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(str(x) for x in items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


def _read_csv(path: Path, required: Sequence[str], kind: str) -> list[dict[str, str | None]]:
    """Rows of a CSV as dicts; checks that the header has every `required` column."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            if not header:
                raise UserError(
                    f"{kind} {path} is empty: expected a header row with columns {', '.join(required)}"
                )
            header = [h.strip() if h is not None else "" for h in header]
            missing = [c for c in required if c not in header]
            if missing:
                raise UserError(
                    f"{kind} {path} is missing required column(s) {', '.join(missing)} "
                    f"(found: {', '.join(header)})"
                )
            reader.fieldnames = header
            return [dict(row) for row in reader]
    except UnicodeDecodeError as exc:
        raise UserError(f"{kind} {path} is not UTF-8 text: {one_line(exc)}") from exc
    except csv.Error as exc:
        raise UserError(f"{kind} {path} is not a readable CSV: {one_line(exc)}") from exc
    except OSError as exc:
        raise UserError(f"{kind} {path} could not be read: {one_line(exc)}") from exc


def _cell(row: dict[str, str | None], column: str) -> str:
    value = row.get(column)
    return "" if value is None else str(value)


def _official_of(name: str) -> str:
    """The official split ('train' or 'valid') a volume name belongs to (as volume_relpath does)."""
    return "valid" if parse_volume_name(name)["split"] == "valid" else "train"


def _read_reports(dataset: Path, official: str) -> tuple[Path, dict[str, dict[str, str]]]:
    csv_path = dataset / OFFICIAL_SPLITS[official][1]
    if not csv_path.is_file():
        raise UserError(
            f"reports CSV not found: expected {csv_path} for the official {official} split "
            f"(columns {', '.join(REPORT_COLUMNS)})"
        )
    rows = _read_csv(csv_path, REPORT_COLUMNS, "reports CSV")
    if not rows:
        raise UserError(f"reports CSV {csv_path} has a header but no rows: expected one row per volume")
    out: dict[str, dict[str, str]] = {}
    first_row: dict[str, int] = {}
    for i, row in enumerate(rows, start=1):
        name = _cell(row, "VolumeName").strip()
        if not name:
            raise UserError(f"reports CSV {csv_path} data row {i}: VolumeName is empty")
        try:
            row_official = _official_of(name)
        except ValueError as exc:
            raise UserError(f"reports CSV {csv_path} data row {i}: {one_line(exc)}") from exc
        if row_official != official:
            raise UserError(
                f"reports CSV {csv_path} data row {i}: volume {name} belongs to the official "
                f"{row_official} split, but this is the {official} split's reports CSV"
            )
        if name in out:
            raise UserError(
                f"reports CSV {csv_path}: VolumeName {name} appears more than once (data rows "
                f"{first_row[name]} and {i}); expected one row per volume"
            )
        first_row[name] = i
        out[name] = {c: _cell(row, c) for c in REPORT_COLUMNS}
    return csv_path, out


def _parse_label(value: str | None, csv_path: Path, name: str, column: str) -> int:
    text = "" if value is None else str(value).strip()
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if number == 0.0:
        return 0
    if number == 1.0:
        return 1
    raise UserError(
        f"labels CSV {csv_path} row for {name}, column {column!r}: value {text!r} is not 0 or 1"
    )


def _read_labels(dataset: Path, official: str, require: bool) -> tuple[Path, dict[str, np.ndarray] | None]:
    csv_path = dataset / OFFICIAL_SPLITS[official][2]
    if not csv_path.is_file():
        if require:
            raise UserError(
                f"labels CSV not found: expected {csv_path} with columns VolumeName and the 18 "
                "CT-RATE labels (or read with require_labels=False)"
            )
        return csv_path, None
    rows = _read_csv(csv_path, ("VolumeName", *CT_RATE_LABELS), "labels CSV")
    out: dict[str, np.ndarray] = {}
    for i, row in enumerate(rows, start=1):
        name = _cell(row, "VolumeName").strip()
        if not name:
            raise UserError(f"labels CSV {csv_path} data row {i}: VolumeName is empty")
        if name in out:
            raise UserError(
                f"labels CSV {csv_path}: VolumeName {name} appears more than once; expected one row per volume"
            )
        out[name] = np.array(
            [_parse_label(row.get(c), csv_path, name, c) for c in CT_RATE_LABELS], dtype=np.int64
        )
    return csv_path, out


def _read_official(
    dataset: Path, official: str, require_labels: bool, skip_missing_volumes: bool
) -> tuple[dict[str, CTReportRecord], set[str]]:
    """All records of one official split, in reports-CSV order, plus the names skipped because
    their volume is missing (only with skip_missing_volumes)."""
    reports_csv, reports = _read_reports(dataset, official)
    vol_dir = dataset / OFFICIAL_SPLITS[official][0]
    if not vol_dir.is_dir():
        raise UserError(
            f"volume folder not found: expected {vol_dir} holding the official {official} split's "
            f"volumes listed in {reports_csv}"
        )
    paths: dict[str, Path] = {}
    missing: list[str] = []
    for name in reports:
        nested = dataset / volume_relpath(name)
        flat = vol_dir / name
        if nested.is_file():
            paths[name] = nested
        elif flat.is_file():
            paths[name] = flat
        elif skip_missing_volumes:
            missing.append(name)
        else:
            raise UserError(
                f"reports CSV {reports_csv} row for {name}: volume not found at {nested} "
                f"(nor flattened at {flat}); download it, remove the row, or read with "
                "skip_missing_volumes=True"
            )
    orphans = sorted(
        str(p)
        for p in vol_dir.rglob("*")
        if is_nifti_name(p.name) and p.is_file() and p.name not in reports
    )
    if orphans:
        others = f" (nor do {len(orphans) - 1} more: {_listing(orphans[1:])})" if len(orphans) > 1 else ""
        raise UserError(
            f"volume {orphans[0]} has no row in reports CSV {reports_csv}{others}; expected every "
            f"volume in {vol_dir} to have a report (remove the file or add its row)"
        )
    labels_csv, labels = _read_labels(dataset, official, require_labels)
    records: dict[str, CTReportRecord] = {}
    for name, row in reports.items():
        if name not in paths:
            continue
        lab = None
        if labels is not None:
            if name not in labels:
                raise UserError(
                    f"labels CSV {labels_csv} has no row for volume {name}; expected one row per "
                    f"volume in reports CSV {reports_csv}"
                )
            lab = labels[name].copy()
        records[name] = CTReportRecord(
            volume_name=name,
            path=paths[name],
            findings=row["Findings_EN"],
            impression=row["Impressions_EN"],
            clinical_information=row["ClinicalInformation_EN"],
            technique=row["Technique_EN"],
            labels=lab,
        )
    return records, set(missing)


def _read_splits_file(path: Path) -> dict[str, list[str]]:
    expected = 'an object {"train": [volume names], "val": [...], "test": [...]}'
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"splits file {path} could not be read: {one_line(exc)}") from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"splits file {path} is not valid JSON ({one_line(exc)}): expected {expected}") from exc
    if not isinstance(data, dict) or set(data) != set(SPLITS):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise UserError(f"splits file {path} has keys {keys}: expected {expected}")
    seen: dict[str, str] = {}
    out: dict[str, list[str]] = {}
    for split in SPLITS:
        names = data[split]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UserError(f"splits file {path}: {split!r} must be a list of volume names (strings)")
        for n in names:
            if n in seen:
                raise UserError(
                    f"splits file {path}: volume {n} is listed under both {seen[n]!r} and {split!r}"
                    if seen[n] != split
                    else f"splits file {path}: volume {n} is listed twice under {split!r}"
                )
            seen[n] = split
            try:
                parse_volume_name(n)
            except ValueError as exc:
                raise UserError(f"splits file {path}, {split!r}: {one_line(exc)}") from exc
        out[split] = list(names)
    return out


def read_ct_rate(
    root: str | Path,
    split: str,
    val_fraction: float = 0.1,
    require_labels: bool = True,
    *,
    skip_missing_volumes: bool = False,
) -> list[CTReportRecord]:
    """Records of one medvtc split ("train", "val" or "test") of a CT-RATE-layout folder.

    Checks the layout of the official split(s) it reads: the reports CSV (columns
    `REPORT_COLUMNS`, one row per volume), that each row's volume exists (nested or flattened),
    that every NIfTI file in the split's volume folder has a report row, and, when the labels CSV
    is there (required unless `require_labels=False`), that it has every label column, a row for
    every volume and only 0/1 values. Any problem raises `UserError` naming the file.

    `skip_missing_volumes=True` drops report rows whose volume is absent instead of failing
    (for partial downloads of CT-RATE, which is several TB); it is off by default.
    """
    if split not in SPLITS:
        raise UserError(f"unknown CT-RATE split {split!r}: expected one of {', '.join(SPLITS)}")
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= float(val_fraction) < 1.0:
        raise UserError(f"val_fraction {val_fraction!r}: expected a number in [0, 1)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"CT-RATE root {root}: folder not found")
    dataset = root / "dataset"
    if not dataset.is_dir():
        raise UserError(
            f"CT-RATE root {root}: expected a 'dataset' folder ({dataset}) holding train_fixed/, "
            "valid_fixed/, radiology_text_reports/ and multi_abnormality_labels/"
        )

    splits_file = root / SPLITS_FILE
    if splits_file.exists():
        names = _read_splits_file(splits_file)[split]
        pool: dict[str, CTReportRecord] = {}
        skipped: set[str] = set()
        for official in sorted({_official_of(n) for n in names}):
            recs, miss = _read_official(dataset, official, require_labels, skip_missing_volumes)
            pool.update(recs)
            skipped |= miss
        out = []
        for n in names:
            if n in pool:
                out.append(pool[n])
            elif n not in skipped:
                reports_csv = dataset / OFFICIAL_SPLITS[_official_of(n)][1]
                raise UserError(
                    f"splits file {splits_file} lists {n} under {split!r}, but reports CSV "
                    f"{reports_csv} has no row for it"
                )
        return out

    official = SPLIT_SOURCE[split]
    records, _ = _read_official(dataset, official, require_labels, skip_missing_volumes)
    if split == "test":
        return list(records.values())
    in_val = val_patients((r.patient_id for r in records.values()), float(val_fraction))
    want_val = split == "val"
    return [r for r in records.values() if (r.patient_id in in_val) == want_val]


# --------------------------------------------------------------------------------------------
# Volumes and transforms
# --------------------------------------------------------------------------------------------


def _check_transform_args(
    spatial_size: Sequence[int],
    spacing: Sequence[float] | None,
    hu_window: Sequence[float],
    resize: str,
    resize_mode: str,
    hu_bins: Sequence[float] = (),
) -> tuple[tuple[int, int, int], tuple[float, float, float] | None, tuple[float, float]]:
    try:
        size = tuple(int(s) for s in spatial_size)
        exact = all(float(s) == float(n) for s, n in zip(spatial_size, size))
    except (TypeError, ValueError):
        size, exact = (), False
    if len(size) != 3 or any(s < 1 for s in size) or not exact:
        raise UserError(f"spatial_size {spatial_size!r}: expected three positive integers (X, Y, Z)")
    pix = None
    if spacing is not None:
        try:
            pix = tuple(float(s) for s in spacing)
        except (TypeError, ValueError):
            pix = ()
        if len(pix) != 3 or not all(math.isfinite(s) and s > 0 for s in pix):
            raise UserError(f"spacing {spacing!r}: expected None or three positive voxel sizes in mm")
    try:
        lo, hi = (float(v) for v in hu_window)
    except (TypeError, ValueError):
        lo, hi = math.nan, math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise UserError(f"hu_window {hu_window!r}: expected (low, high) HU with low < high")
    if resize not in RESIZE_METHODS:
        raise UserError(f"resize {resize!r}: expected one of {', '.join(RESIZE_METHODS)}")
    if resize_mode not in RESIZE_MODES:
        raise UserError(f"resize_mode {resize_mode!r}: expected one of {', '.join(RESIZE_MODES)}")
    _check_hu_bins(hu_bins)
    return size, pix, (lo, hi)  # type: ignore[return-value]


def channel_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """"float32" / "float16" (or the torch dtype) -> the torch dtype of the preprocessed channels."""
    for name, value in CHANNEL_DTYPES.items():
        if dtype == name or dtype == value:
            return value
    raise UserError(f"dtype {dtype!r}: expected one of {', '.join(CHANNEL_DTYPES)}")


def _dtype_name(dtype: str | torch.dtype) -> str:
    return str(channel_dtype(dtype)).removeprefix("torch.")


def _check_hu_bins(hu_bins: Sequence[float] | None) -> tuple[float, ...]:
    try:
        edges = tuple(float(v) for v in (hu_bins or ()))
    except (TypeError, ValueError):
        edges = (math.nan,)
    if not all(math.isfinite(v) for v in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise UserError(f"hu_bins {hu_bins!r}: expected an empty list or strictly increasing HU edges")
    return edges


def ct_input_channels(hu_bins: Sequence[float] | None = ()) -> int:
    """Channels of a preprocessed CT: the HU window, plus one per HU interval when `hu_bins`
    (n edges -> n + 1 intervals) is given."""
    edges = _check_hu_bins(hu_bins)
    return 1 + (len(edges) + 1 if edges else 0)


class HUIntervalChannelsd:
    """Dictionary transform: a [1, X, Y, Z] image in HU -> [C, X, Y, Z] with channel 0 the HU
    `window` mapped to [0, 1] (clipped; MONAI's ScaleIntensityRange) and, for n `bins` edges, n + 1
    more channels, each the indicator of one HU interval (-inf, e0), [e0, e1), ..., [e_{n-1}, inf).
    With `spatial_size`, the result is also resized to it as MONAI's `Resize(spatial_size, mode)`
    would resize the [C, X, Y, Z] channels (area, trilinear or nearest; no anti-aliasing). The
    output is stored in `dtype` (float32, or float16 for half the memory: computed in float32 and
    rounded once, bit-identical to the float32 output `.to(torch.float16)`).

    Why: resized with "area" interpolation, an indicator channel becomes the fraction of each
    output voxel's tissue in that interval, which keeps what a linear window averages away:
    small low-density holes (emphysema), thin metal or calcium, fluid beside soft tissue. In a
    side experiment (script not in the repository) a label probe on 1200 phantom CTs learned
    markedly faster with them (mean val AUC 0.74 vs 0.65 after 800 steps). MONAI has no transform
    that splits intensities into interval masks, hence this one.

    Memory: the C channels are never all held at the input's size (ten of them in float32 were
    7.2 GB RSS for a 512 x 512 x 256 CT). The output is allocated once at its own size and
    filled slab by slab along X (`_SLAB_VOXELS` input voxels at a time), and the resize goes with
    it: "area" (an average over each output voxel's box of input voxels) resizes each output
    X-row from the input rows under it alone; "nearest" picks voxels, so it resizes the HU
    volume first; "trilinear" resizes one channel at a time (one extra channel at the input's
    size). Windowing is nonlinear, so resizing the HU volume before windowing would change the
    values; none of these does: the output is bit-identical to building all channels at the
    input's size and resizing them (tests/ct_report/test_ct_channels.py), and
    `PREPROCESSING_VERSION` did not change. Extra peak, with area: the output plus about
    (X / out_X + 1) input rows of C channels."""

    def __init__(
        self,
        keys: str,
        window: tuple[float, float],
        bins: Sequence[float] = (),
        spatial_size: Sequence[int] | None = None,
        mode: str = "area",
        dtype: str | torch.dtype = torch.float32,
    ) -> None:
        from monai.transforms import ScaleIntensityRange

        if mode not in RESIZE_MODES:
            raise UserError(f"resize_mode {mode!r}: expected one of {', '.join(RESIZE_MODES)}")
        self.key = keys
        self.window = ScaleIntensityRange(a_min=window[0], a_max=window[1], b_min=0.0, b_max=1.0, clip=True)
        self.edges = torch.tensor(_check_hu_bins(bins), dtype=torch.float32)
        self.channels = ct_input_channels(bins)
        self.levels = torch.arange(self.channels - 1).view(-1, 1, 1, 1)
        self.spatial_size = None if spatial_size is None else tuple(int(s) for s in spatial_size)
        self.mode = mode
        self.dtype = channel_dtype(dtype)

    def _fill(self, out: torch.Tensor, hu: torch.Tensor, channel: int | None = None) -> None:
        """out [C, X, Y, Z] <- every channel of hu [X, Y, Z] (float32), or out [1, X, Y, Z] <- channel
        `channel` alone; `_SLAB_VOXELS` input voxels at a time, so the temporaries stay small.
        Values are computed in float32 and rounded to `out`'s dtype on assignment."""
        step = max(1, _SLAB_VOXELS // max(1, hu[0].numel()))
        for x0 in range(0, hu.shape[0], step):
            o, h = out[:, x0:x0 + step], hu[x0:x0 + step].contiguous()  # one gather from a Fortran-order volume
            if channel is None or channel == 0:
                o[0] = self.window(h)
            if channel is None and self.channels > 1:
                # bucketize(right=True) gives k where e_{k-1} <= hu < e_k: interval k is channel 1 + k
                o[1:] = torch.bucketize(h, self.edges, right=True).unsqueeze(0) == self.levels
            elif channel:
                o[0] = torch.bucketize(h, self.edges, right=True) == channel - 1

    def channels_of(self, hu: torch.Tensor) -> torch.Tensor:
        """float32 HU [X, Y, Z] (plain tensor) -> [C, *spatial_size] (or [C, X, Y, Z]) in `self.dtype`;
        the resize works in float32 (its row blocks and channels are float32 temporaries)."""
        import torch.nn.functional as F

        size_in = tuple(hu.shape)
        size = self.spatial_size or size_in
        out = torch.empty((self.channels, *size), dtype=self.dtype)
        if size == size_in:  # MONAI's Resize passes an image of the target size through
            self._fill(out, hu)
        elif self.mode == "nearest":  # picks input voxels: resizing HU first gives the same values
            small = F.interpolate(hu[None, None], size=size, mode="nearest")[0, 0]
            self._fill(out, small)
        elif self.mode == "area":  # adaptive average pooling: output row i averages input rows [a, b)
            n_in, n_out = size_in[0], size[0]
            block = None
            for i in range(n_out):
                a, b = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
                if block is None or block.shape[1] != b - a:
                    block = torch.empty((self.channels, b - a, *size_in[1:]), dtype=torch.float32)
                self._fill(block, hu[a:b])
                out[:, i] = F.interpolate(block[None], size=(1, *size[1:]), mode="area")[0, :, 0]
        else:  # trilinear: one channel at the input's size at a time
            one = torch.empty((1, *size_in), dtype=torch.float32)
            for c in range(self.channels):
                self._fill(one, hu, c)
                out[c] = F.interpolate(one[None], size=size, mode="trilinear")[0, 0]
        return out

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        from monai.data import MetaTensor
        from monai.transforms.utils import scale_affine

        d = dict(data)
        image = d[self.key]
        if image.ndim != 4 or image.shape[0] != 1:
            raise ValueError(f"HUIntervalChannelsd: expected a [1, X, Y, Z] HU image, got shape {tuple(image.shape)}")
        hu = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
        out = self.channels_of(hu[0].to(torch.float32))
        if isinstance(image, MetaTensor):
            scale = torch.as_tensor(scale_affine(tuple(hu.shape[1:]), tuple(out.shape[1:])), dtype=torch.float64)
            out = MetaTensor(out, affine=image.affine.to(torch.float64) @ scale)
        d[self.key] = out
        return d


def _after_load(
    spatial_size: Sequence[int],
    spacing: Sequence[float] | None,
    hu_window: Sequence[float],
    resize: str,
    resize_mode: str,
    hu_bins: Sequence[float] = (),
    dtype: str | torch.dtype = "float32",
) -> list[Any]:
    """The transforms after loading: orientation, spacing, HU window + interval channels + size, dtype."""
    from monai.transforms import (
        EnsureTyped,
        Orientationd,
        ResizeWithPadOrCropd,
        Spacingd,
    )

    size, pix, (lo, hi) = _check_transform_args(spatial_size, spacing, hu_window, resize, resize_mode, hu_bins)
    ts: list[Any] = [Orientationd(keys="image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))]
    if pix is not None:
        ts.append(Spacingd(keys="image", pixdim=pix, mode="bilinear"))
    if resize == "crop_pad":
        # Pad in HU with air (at or below the window's low end, so it maps to 0 there) before the
        # channels are made, so the padding lands in the air interval.
        ts.append(ResizeWithPadOrCropd(keys="image", spatial_size=size, mode="constant", value=min(lo, AIR_HU)))
    # resize="resize": the channels are built and resized together, at the target size
    ts.append(HUIntervalChannelsd(keys="image", window=(lo, hi), bins=tuple(hu_bins or ()),
                                  spatial_size=size if resize == "resize" else None, mode=resize_mode, dtype=dtype))
    ts.append(EnsureTyped(keys="image", data_type="tensor", dtype=channel_dtype(dtype), track_meta=False))
    return ts


def ct_transforms(
    spatial_size: Sequence[int] = (64, 64, 32),
    spacing: Sequence[float] | None = None,
    hu_window: Sequence[float] = (-1000.0, 1000.0),
    resize: str = "resize",
    resize_mode: str = "area",
    hu_bins: Sequence[float] = (),
    dtype: str | torch.dtype = "float32",
):
    """A MONAI `Compose` of dictionary transforms on key "image" (a NIfTI path).

    LoadImaged (nibabel reader) -> EnsureChannelFirstd -> Orientationd("RAS") -> [Spacingd to
    `spacing` mm, bilinear] -> [resize="crop_pad": ResizeWithPadOrCropd, centre crop / pad with
    air] -> `HUIntervalChannelsd` (`hu_window` -> [0, 1], clipped, plus one indicator channel per
    HU interval of `hu_bins`; with resize="resize" also resized to `spatial_size` as MONAI's
    Resize(`resize_mode`) would resize them: "area" averages when shrinking, the usual CT case,
    and turns the indicators into tissue fractions; built at the target size, never all at the
    input's) -> EnsureTyped(`dtype`, plain tensor). Output "image": a float32 (or `dtype="float16"`)
    tensor [C, *spatial_size], C = `ct_input_channels(hu_bins)` (1 without bins).

    This pipeline does not validate the file; `load_ct_volume` does (and gives the same result).
    """
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    tail = _after_load(spatial_size, spacing, hu_window, resize, resize_mode, hu_bins, dtype)
    return Compose(
        [
            LoadImaged(keys="image", reader="NibabelReader", image_only=True, dtype=np.float32),
            EnsureChannelFirstd(keys="image"),
            *tail,
        ]
    )


@functools.lru_cache(maxsize=16)
def _cached_tail(spatial_size, spacing, hu_window, resize, resize_mode, hu_bins=(), dtype="float32"):
    from monai.transforms import Compose

    return Compose(_after_load(spatial_size, spacing, hu_window, resize, resize_mode, hu_bins, dtype))


def _as_key(x: Sequence[float] | None) -> tuple | None:
    return None if x is None else tuple(x)


def _apply(volume: np.ndarray, affine: np.ndarray, spatial_size, spacing, hu_window, resize, resize_mode, hu_bins=(),
           dtype="float32") -> torch.Tensor:
    from monai.data import MetaTensor

    _check_transform_args(spatial_size, spacing, hu_window, resize, resize_mode, hu_bins)
    # NIfTI voxels come in Fortran order: wrap them as they are (a C-order copy would be one more
    # float32 volume at the input's size); only arrays torch cannot wrap (negative strides) are copied
    array = np.asarray(volume, dtype=np.float32)
    if not (array.flags.c_contiguous or array.flags.f_contiguous):
        array = np.ascontiguousarray(array)
    image = MetaTensor(torch.from_numpy(array[None]),
                       affine=torch.as_tensor(affine, dtype=torch.float64))
    pipeline = _cached_tail(_as_key(spatial_size), _as_key(spacing), _as_key(hu_window), resize, resize_mode,
                            tuple(float(v) for v in (hu_bins or ())), _dtype_name(dtype))
    out = pipeline({"image": image})["image"]
    return out.as_tensor() if hasattr(out, "as_tensor") else out


def _as_3d(data: np.ndarray, what: str) -> np.ndarray:
    """Drop trailing singleton dims beyond 3 (NIfTI's 4D-with-one-frame), then insist on 3D."""
    shape = tuple(data.shape)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 3 and min(data.shape) >= 2:
        return data
    if data.ndim > 3:
        raise UserError(
            f"{what} has shape {shape}: expected a 3D volume (X, Y, Z) with one channel, "
            "not a 4D image with several channels or time points"
        )
    raise UserError(
        f"{what} has shape {shape}: expected a 3D volume (X, Y, Z) with every dimension > 1, "
        "got a 2D image"
    )


def _check_finite(data: np.ndarray, what: str) -> None:
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(finite.size - int(finite.sum()))
        raise UserError(f"{what} has {bad} NaN or infinite voxel(s): expected finite HU values")


def _check_affine(affine: np.ndarray, what: str) -> None:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all() or abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise UserError(f"{what} has an invalid affine (voxel-to-world matrix): expected a finite, invertible 4x4 matrix")


def load_ct_volume(
    path: str | Path,
    spatial_size: Sequence[int] = (64, 64, 32),
    spacing: Sequence[float] | None = None,
    hu_window: Sequence[float] = (-1000.0, 1000.0),
    resize: str = "resize",
    resize_mode: str = "area",
    hu_bins: Sequence[float] = (),
    dtype: str | torch.dtype = "float32",
) -> torch.Tensor:
    """One NIfTI CT volume -> float32 tensor [C, *spatial_size] in [0, 1] (C = 1 without `hu_bins`;
    `dtype="float16"` stores it in half the memory, see `CHANNEL_DTYPES`).

    Same processing as `ct_transforms` (same arguments; `spacing` is the target voxel size),
    after checks that each raise a `UserError` naming the file: missing file; not a NIfTI (wrong
    extension, not gzip for .nii.gz, bad header) or truncated/corrupt; not a 3D volume (a 2D
    image, a singleton spatial dimension, or 4D with several channels); NaN/inf voxels.
    """
    _check_transform_args(spatial_size, spacing, hu_window, resize, resize_mode, hu_bins)
    channel_dtype(dtype)
    data, affine = read_nifti(path, "CT volume")
    what = f"CT volume {Path(path)}"
    data = _as_3d(data, what)
    _check_finite(data, what)
    _check_affine(affine, what)
    return _apply(data, affine, spatial_size, spacing, hu_window, resize, resize_mode, hu_bins, dtype)


def preprocess_ct_array(
    array: np.ndarray | torch.Tensor,
    spacing: Sequence[float] | None = None,
    *,
    affine: np.ndarray | None = None,
    spatial_size: Sequence[int] = (64, 64, 32),
    target_spacing: Sequence[float] | None = None,
    hu_window: Sequence[float] = (-1000.0, 1000.0),
    resize: str = "resize",
    resize_mode: str = "area",
    hu_bins: Sequence[float] = (),
    dtype: str | torch.dtype = "float32",
) -> torch.Tensor:
    """An in-memory CT volume in HU -> float32 (or `dtype`) tensor [C, *spatial_size], as `load_ct_volume`.

    `array`: [X, Y, Z] (or [1, X, Y, Z]) numpy array or torch tensor in Hounsfield units.
    `spacing` here is the array's own voxel size in mm (default 1 mm); its axes are taken as
    already RAS unless an `affine` (4x4 voxel-to-RAS-world matrix) is given, which overrides
    `spacing`. `target_spacing` is what `spacing` means in `load_ct_volume`: resample to it.
    """
    what = "input CT array"
    if isinstance(array, torch.Tensor):
        data = array.detach().to("cpu", torch.float32).numpy()
    elif isinstance(array, np.ndarray):
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise UserError(f"{what} has dtype {array.dtype}: expected a numeric array of HU values")
        data = array.astype(np.float32, copy=False)
    else:
        raise UserError(f"{what}: expected a numpy array or torch tensor, got {type(array).__name__}")
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]
    data = _as_3d(data, what)
    _check_finite(data, what)
    if affine is None:
        sp = (1.0, 1.0, 1.0) if spacing is None else spacing
        try:
            sp = tuple(float(s) for s in sp)
        except (TypeError, ValueError):
            sp = ()
        if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
            raise UserError(f"spacing {spacing!r} of the {what}: expected three positive voxel sizes in mm")
        affine = np.diag([*sp, 1.0])
    affine = np.asarray(affine, dtype=np.float64)
    _check_affine(affine, what)
    return _apply(data, affine, spatial_size, target_spacing, hu_window, resize, resize_mode, hu_bins, dtype)


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


class CTReportDataset(Dataset):
    """Records -> {"image": float32 [C, *spatial_size] (C = `ct_input_channels(hu_bins)`), "report": str, "labels": float32 [18],
    "volume_name": str}.

    "report" is `report_text(record)` (Findings + Impressions). "labels" is present when the
    records have labels; records read with require_labels=False and no labels CSV give items
    without it (mixing both kinds is an error).

    `cache=True` keeps each preprocessed image tensor in a plain dict after its first load, so
    later epochs skip NIfTI decoding and resampling. A lazy dict rather than MONAI's
    `CacheDataset` because CacheDataset decodes every volume eagerly at construction (slow start,
    and a bad file fails before training starts rather than where it is used, without our
    UserError checks) and a dict needs no extra state. Memory: prod(spatial_size) * 4 bytes per
    volume and channel (512 KiB at 64x64x32). With DataLoader workers the cache lives in
    each worker process, so use num_workers=0 or persistent_workers=True for it to last across
    epochs.

    `persistent_cache=DIR` keeps each preprocessed image on disk instead (or as well), for sets
    too large to preprocess every epoch or to hold in memory: a `PersistentVolumeCache` in
    DIR keyed by the preprocessing (these constructor arguments, `PREPROCESSING_VERSION` and
    MONAI's version) and each file's path, size and modification time; computed once, read back
    bit-identical in later epochs and later runs (`datasets.volume_cache`). Float32 as computed:
    prod(spatial_size) * channels * 4 bytes per volume (5 MiB at 64x64x32 with 10 channels).

    `dtype="float16"` stores the images (in both caches too) in half the memory (`CHANNEL_DTYPES`).
    """

    def __init__(
        self,
        records: Sequence[CTReportRecord],
        spatial_size: Sequence[int] = (64, 64, 32),
        spacing: Sequence[float] | None = None,
        hu_window: Sequence[float] = (-1000.0, 1000.0),
        resize: str = "resize",
        resize_mode: str = "area",
        cache: bool = False,
        hu_bins: Sequence[float] = (),
        persistent_cache: str | Path | None = None,
        dtype: str | torch.dtype = "float32",
    ) -> None:
        _check_transform_args(spatial_size, spacing, hu_window, resize, resize_mode, hu_bins)
        self.records = list(records)
        with_labels = {r.labels is not None for r in self.records}
        if len(with_labels) > 1:
            raise ValueError("CTReportDataset: some records have labels and some do not")
        self.has_labels = with_labels == {True} or not self.records
        for r in self.records:
            if r.labels is not None and np.shape(r.labels) != (len(CT_RATE_LABELS),):
                raise ValueError(
                    f"CTReportDataset: record {r.volume_name} has labels of shape "
                    f"{np.shape(r.labels)}, expected ({len(CT_RATE_LABELS)},)"
                )
        self.transform_args = dict(
            spatial_size=tuple(int(s) for s in spatial_size),
            spacing=None if spacing is None else tuple(float(s) for s in spacing),
            hu_window=tuple(float(v) for v in hu_window),
            resize=resize,
            resize_mode=resize_mode,
            hu_bins=tuple(float(v) for v in (hu_bins or ())),
        )
        if channel_dtype(dtype) != torch.float32:  # absent at float32: the persistent caches made before keep their key
            self.transform_args["dtype"] = _dtype_name(dtype)
        self.cache = cache
        self._cache: dict[int, torch.Tensor] = {}
        self.persistent_cache = None
        if persistent_cache is not None:
            import monai

            from medvtc.datasets.volume_cache import PersistentVolumeCache

            settings = {"reader": "medvtc.datasets.ct_rate.load_ct_volume", "version": PREPROCESSING_VERSION,
                        "monai": monai.__version__, **self.transform_args}
            self.persistent_cache = PersistentVolumeCache(persistent_cache, settings)

    def __len__(self) -> int:
        return len(self.records)

    def _image(self, index: int) -> torch.Tensor:
        if self.cache and index in self._cache:
            return self._cache[index]
        path = self.records[index].path
        if self.persistent_cache is not None:
            image = self.persistent_cache.get(path, lambda: load_ct_volume(path, **self.transform_args))
        else:
            image = load_ct_volume(path, **self.transform_args)
        if self.cache:
            self._cache[index] = image
        return image

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self.records)
        if not 0 <= index < len(self.records):
            raise IndexError(f"CTReportDataset index {index} out of range for {len(self.records)} records")
        record = self.records[index]
        item: dict[str, Any] = {
            "image": self._image(index),
            "report": report_text(record),
            "volume_name": record.volume_name,
        }
        if record.labels is not None:
            item["labels"] = torch.as_tensor(np.asarray(record.labels), dtype=torch.float32)
        return item

"""Synthetic chest-CT phantoms in Hounsfield units, written in the exact CT-RATE layout.

The embedded default for CT report generation: `generate_ct_rate(root)` writes volumes, reports
and labels exactly where and how CT-RATE (Hamamci et al., ibrahimethemhamamci/CT-CLIP) keeps
them (see `medvtc.datasets.ct_rate_layout`), so the reader, the report model and the metrics run
unchanged on it and on the real dataset.

A case is a dict of findings (CT-RATE's 18 abnormality labels) with attributes, drawn by
`sample_case`; `render_phantom` draws a chest CT with those findings and
`medvtc.datasets.ct_report_text.write_report` writes its report. The labels CSV is the case's
ground truth (CT-RATE's own labels CSV is RadBERT's reading of the report; here the report is
written from the labels, so the two agree by construction and the report labeler in
`medvtc.medical.ct_report.labeler` can be measured against them).

Geometry. Arrays are NIfTI-ordered (x, y, z); the affine is RAS+: world x grows to the patient's
right, y anteriorly, z superiorly, with the spacing on the diagonal and the origin at the centre
of the field of view. So the patient's left lung has low x indices and the dependent (posterior)
side has low y indices. The anatomy lives in millimetres: the body needs a field of view of about
384 x 384 x 320 mm, which is what `spacing=None` gives at any `shape` ((3, 3, 5) mm at the
default (128, 128, 64)); an explicit spacing with a smaller field of view crops the body.

Every case has its own anatomy (body size and ellipticity, fat thickness, lung height and
diaphragm level, heart size, position and axis, vessel and airway trees, slight rotation); every
finding draws from its own random stream, so rendering the same case without one finding changes
only that finding's voxels (findings that take up room - cardiomegaly, pericardial effusion, a
hiatal hernia - also reshape the lungs and their vessel trees around them). Findings are sized so
they survive resampling to 64 x 64 x 32 (nodules >= 8 mm, effusion rims >= 8 mm, calcified
plaques and metal bright enough to stand out after partial-volume averaging).

Modules. This one holds the public API: the cases (`sample_case`, `case_labels`), the order in
which a volume is drawn (`render_phantom`) and the dataset writer (`generate_ct_rate`). The
drawing lives in `medvtc.datasets.ct_phantom_geometry` (the scanner grid; spheres, tubes and
blobs with partial-volume edges), `medvtc.datasets.ct_phantom_anatomy` (the body, lungs and
lobes, heart, vessels, airway trees, bones) and `medvtc.datasets.ct_phantom_findings` (one
function per CT-RATE finding).
"""

from __future__ import annotations

import csv
import io
import json
import math
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medvtc.common.errors import UserError
from medvtc.common.io import atomic_directory
from medvtc.datasets.ct_phantom_anatomy import LOBES, ChestAnatomy
from medvtc.datasets.ct_phantom_findings import (
    AIRWAYS,
    HEART,
    LUNG_DENSITY,
    LUNG_PARENCHYMA,
    MEDIASTINUM,
    OVER_BONES,
    PLEURA,
    LungDensity,
)
from medvtc.datasets.ct_rate_layout import (
    CT_RATE_LABELS,
    NOT_GIVEN,
    OFFICIAL_SPLITS,
    REPORT_COLUMNS,
    volume_relpath,
)
from medvtc.datasets.ct_report_text import write_report
from medvtc.datasets.nifti import centred_affine, save_nifti
from medvtc.datasets.parallel import map_in_order, resolve_workers

__all__ = [
    "FORMAT",
    "VERSION",
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "REFERENCE_FOV_MM",
    "LOBES",
    "LYMPH_NODE_STATIONS",
    "PRIORS",
    "sample_case",
    "case_labels",
    "render_phantom",
    "generate_ct_rate",
]

FORMAT = "medvtc-ct-phantom"
VERSION = 1
DEFAULT_SHAPE: tuple[int, int, int] = (128, 128, 64)
DEFAULT_SPACING: tuple[float, float, float] = (3.0, 3.0, 5.0)
REFERENCE_FOV_MM: tuple[float, float, float] = (384.0, 384.0, 320.0)
SPLITS_FILE = "medvtc_splits.json"
META_FILE = "medvtc_phantom.json"

LYMPH_NODE_STATIONS: tuple[str, ...] = (
    "right paratracheal",
    "prevascular",
    "aortopulmonary window",
    "subcarinal",
    "right hilar",
    "left hilar",
)
AORTIC_SITES: tuple[str, ...] = ("ascending aorta", "aortic arch", "descending aorta", "supra-aortic arteries")
CORONARY_VESSELS: tuple[str, ...] = ("left main", "left anterior descending", "circumflex", "right coronary")

# Marginal prevalence of each finding among abnormal cases. Roughly CT-RATE's order of frequency
# (nodules, opacities, arterial calcification and atelectasis common; mosaic attenuation and septal
# thickening rare), squeezed into 9-35 % so every label has enough positives in a few hundred
# cases. A few labels are conditioned on others below, as they co-occur in real chest CT.
PRIORS: dict[str, float] = {
    "Medical material": 0.12,
    "Arterial wall calcification": 0.32,
    "Cardiomegaly": 0.13,
    "Pericardial effusion": 0.09,
    "Coronary artery wall calcification": 0.24,
    "Hiatal hernia": 0.13,
    "Lymphadenopathy": 0.22,
    "Emphysema": 0.20,
    "Atelectasis": 0.25,
    "Lung nodule": 0.33,
    "Lung opacity": 0.27,
    "Pulmonary fibrotic sequela": 0.24,
    "Pleural effusion": 0.12,
    "Mosaic attenuation pattern": 0.10,
    "Peribronchial thickening": 0.11,
    "Consolidation": 0.15,
    "Bronchiectasis": 0.11,
    "Interlobular septal thickening": 0.09,
}
P_NORMAL = 0.2  # share of cases drawn with no finding at all (CT-RATE has many normal scans)

# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options: Sequence[str], p: Sequence[float] | None = None) -> str:
    return str(options[int(rng.choice(len(options), p=None if p is None else np.asarray(p) / np.sum(p)))])


def _subset(rng: np.random.Generator, options: Sequence[str], p: Sequence[float], k_max: int) -> list[str]:
    """1..k_max distinct options (weighted), in the options' own order so reports read naturally."""
    k = int(rng.integers(1, k_max + 1))
    w = np.asarray(p, dtype=float)
    chosen = rng.choice(len(options), size=min(k, len(options)), replace=False, p=w / w.sum())
    return [options[i] for i in sorted(int(c) for c in chosen)]


# Where findings tend to sit: atelectasis, consolidation and bronchiectasis in the dependent lower
# lobes, nodules and fibrotic sequelae (post-infectious scars) in the upper lobes.
_LOWER = (0.08, 0.2, 0.3, 0.12, 0.3)
_UPPER = (0.3, 0.1, 0.17, 0.28, 0.15)
_ANY = (0.22, 0.12, 0.22, 0.22, 0.22)


def sample_case(rng: np.random.Generator) -> dict[str, dict[str, Any]]:
    """Draw the findings of one case: {label: attributes} for the labels present (absent ones
    are simply not in the dict; an empty dict is a normal scan). Attributes are JSON-able and
    are what the report mentions and the renderer draws (lobe, size, side, amount, sites...)."""
    if rng.random() < P_NORMAL:
        return {}
    case: dict[str, dict[str, Any]] = {}

    def present(label: str, p: float | None = None) -> bool:
        return bool(rng.random() < (PRIORS[label] if p is None else p))

    if present("Medical material"):
        case["Medical material"] = {
            "kind": _pick(rng, ("pacemaker", "port catheter", "sternotomy wires", "central venous catheter"),
                          (0.3, 0.3, 0.25, 0.15))
        }
    if present("Arterial wall calcification"):
        case["Arterial wall calcification"] = {
            "sites": _subset(rng, AORTIC_SITES, (0.2, 0.4, 0.3, 0.1), 3),
            "extent": _pick(rng, ("mild", "moderate", "extensive"), (0.45, 0.35, 0.2)),
        }
    if present("Cardiomegaly"):
        case["Cardiomegaly"] = {"degree": _pick(rng, ("mild", "moderate", "marked"), (0.45, 0.35, 0.2))}
    # Heart failure brings pericardial and pleural fluid and septal (interstitial) oedema.
    failing = "Cardiomegaly" in case
    if present("Pericardial effusion", 0.25 if failing else None):
        amount = _pick(rng, ("small", "moderate", "large"), (0.5, 0.35, 0.15))
        lo, hi = {"small": (8, 11), "moderate": (12, 18), "large": (19, 28)}[amount]
        case["Pericardial effusion"] = {"amount": amount, "thickness_mm": int(rng.integers(lo, hi + 1))}
    # Coronary calcification rarely comes without aortic atherosclerosis.
    if present("Coronary artery wall calcification", 0.55 if "Arterial wall calcification" in case else 0.08):
        case["Coronary artery wall calcification"] = {"vessels": _subset(rng, CORONARY_VESSELS, (0.15, 0.45, 0.2, 0.2), 3)}
    if present("Hiatal hernia"):
        case["Hiatal hernia"] = {"size": _pick(rng, ("small", "moderate", "large"), (0.5, 0.35, 0.15))}
    if present("Lymphadenopathy"):
        case["Lymphadenopathy"] = {
            "stations": _subset(rng, LYMPH_NODE_STATIONS, (0.2, 0.12, 0.13, 0.25, 0.15, 0.15), 3),
            "short_axis_mm": int(rng.integers(11, 25)),
        }
    if present("Emphysema"):
        case["Emphysema"] = {
            "extent": _pick(rng, ("mild", "moderate", "severe"), (0.45, 0.35, 0.2)),
            "type": _pick(rng, ("centrilobular", "paraseptal", "panlobular"), (0.6, 0.28, 0.12)),
        }
    if present("Atelectasis"):
        case["Atelectasis"] = {
            "lobe": _pick(rng, LOBES, _LOWER),
            "kind": _pick(rng, ("subsegmental", "linear", "segmental"), (0.45, 0.35, 0.2)),
        }
    if present("Lung nodule"):
        count = int(rng.choice([1, 2, 3, 4], p=[0.65, 0.2, 0.1, 0.05]))
        size = int(round(float(np.clip(rng.lognormal(math.log(13.0), 0.35), 8, 30))))
        case["Lung nodule"] = {
            "lobe": _pick(rng, LOBES, _UPPER),
            "size_mm": size,
            "count": count,
            "kind": _pick(rng, ("solid", "part-solid"), (0.85, 0.15)),
        }
    if present("Lung opacity"):
        case["Lung opacity"] = {
            "lobes": _subset(rng, LOBES, _ANY, 3),
            "pattern": _pick(rng, ("ground-glass", "patchy ground-glass"), (0.6, 0.4)),
        }
    if present("Pulmonary fibrotic sequela"):
        case["Pulmonary fibrotic sequela"] = {
            "lobe": _pick(rng, LOBES, _UPPER),
            "kind": _pick(rng, ("fibrotic bands", "fibrotic sequelae", "parenchymal bands"), (0.45, 0.35, 0.2)),
        }
    if present("Pleural effusion", 0.35 if failing else None):
        amount = _pick(rng, ("small", "moderate", "large"), (0.5, 0.33, 0.17))
        lo, hi = {"small": (12, 20), "moderate": (25, 40), "large": (45, 70)}[amount]
        case["Pleural effusion"] = {
            "side": _pick(rng, ("left", "right", "bilateral"), (0.3, 0.35, 0.35)),
            "amount": amount,
            "thickness_mm": int(rng.integers(lo, hi + 1)),
        }
    if present("Mosaic attenuation pattern"):
        case["Mosaic attenuation pattern"] = {"extent": _pick(rng, ("patchy", "diffuse"), (0.6, 0.4))}
    if present("Peribronchial thickening"):
        case["Peribronchial thickening"] = {"distribution": _pick(rng, ("bilateral", "lower lobes"), (0.55, 0.45))}
    if present("Consolidation"):
        case["Consolidation"] = {"lobe": _pick(rng, LOBES, _LOWER), "air_bronchograms": bool(rng.random() < 0.75)}
    if present("Bronchiectasis"):
        case["Bronchiectasis"] = {
            "lobes": _subset(rng, LOBES, _LOWER, 2),
            "type": _pick(rng, ("cylindrical", "varicose"), (0.75, 0.25)),
        }
    wet = failing or "Pleural effusion" in case
    if present("Interlobular septal thickening", 0.25 if wet else None):
        case["Interlobular septal thickening"] = {
            "distribution": _pick(rng, ("lower zones", "subpleural", "diffuse"), (0.45, 0.35, 0.2))
        }
    return case


def case_labels(case: dict[str, Any]) -> np.ndarray:
    """The case's 18 ground-truth labels (int64 0/1) in CT-RATE's official column order."""
    unknown = sorted(set(case) - set(CT_RATE_LABELS))
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown}; expected names from CT_RATE_LABELS")
    return np.array([int(label in case) for label in CT_RATE_LABELS], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _render(case: dict[str, dict[str, Any]], rng: np.random.Generator, shape, spacing):
    """Draw one case: the anatomy up to the lungs, then the lungs (density, airway and vessel
    trees, parenchymal findings), the pleura, heart, great vessels, mediastinum and bones, each
    followed by its group of findings (`medvtc.datasets.ct_phantom_findings`), then noise.
    Returns (int16 HU volume, anatomy masks, {label: mask} of the findings drawn)."""
    chest = ChestAnatomy(case, rng, shape, spacing)
    hu = chest.build()
    drawn: dict[str, np.ndarray] = {}

    def draw(group, target) -> None:
        for label, finding in group.items():
            if label in case:
                drawn[label] = finding(chest, case[label], target)

    lung = chest.lung  # the aerated lung before any pleural effusion
    density = LungDensity(chest.lung_background(), np.ones(chest.shape, dtype=np.float32))
    draw(LUNG_DENSITY, density)
    trees = chest.grow_bronchovascular_trees()
    changed = {label: (where, change(chest, case[label], trees)) for label, (change, where) in AIRWAYS.items() if label in case}
    chest.rasterize_trees(trees)
    lung_hu = chest.lung_with_trees(density.base, density.vessel_weight)
    for label, (where, bronchi) in changed.items():
        drawn[label] = where(chest, trees, bronchi) & lung
    for label, finding in LUNG_PARENCHYMA.items():
        if label in case:
            lung_hu, drawn[label] = finding(chest, case[label], lung_hu)
    hu[lung] = lung_hu[lung]
    draw(PLEURA, hu)
    chest.paint_heart(hu)
    draw(HEART, hu)
    chest.paint_vessels(hu)
    draw(MEDIASTINUM, hu)
    chest.paint_bones(hu)
    draw(OVER_BONES, hu)
    noise = chest.stream("noise").standard_normal(chest.shape, dtype=np.float32)
    hu += chest.noise_sigma * noise
    chest.masks["body"] = chest.body & np.ones(chest.shape, dtype=bool)
    chest.masks["lungs"] = chest.lung
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), chest.masks, drawn


def _resolve_grid(
    shape: Sequence[int], spacing: Sequence[float] | None
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    try:
        shp = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise UserError(f"shape {shape!r}: expected three positive integers (x, y, z)") from None
    if len(shp) != 3 or min(shp) < 8:
        raise UserError(f"shape {shape!r}: expected three integers >= 8 (x, y, z)")
    if spacing is None:
        return shp, tuple(float(f / n) for f, n in zip(REFERENCE_FOV_MM, shp))  # type: ignore[return-value]
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise UserError(f"spacing {spacing!r}: expected None or three positive voxel sizes in mm") from None
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise UserError(f"spacing {spacing!r}: expected None or three positive voxel sizes in mm")
    return shp, sp  # type: ignore[return-value]


def render_phantom(
    case: dict[str, dict[str, Any]],
    rng: np.random.Generator,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | None = None,
    return_masks: bool = False,
):
    """Render one case as a chest CT: (int16 volume in HU, 4x4 RAS affine).

    `rng` seeds everything (anatomy, noise, each finding) and is advanced by one draw. Voxel
    sizes are `spacing` mm; None (the default) keeps the reference 384 x 384 x 320 mm field of
    view at any `shape`, which is (3, 3, 5) mm at the default (128, 128, 64). With
    `return_masks=True` a third item is returned: {"body", "lungs" (aerated lung), "lobes" (int8,
    0 outside, 1..5 in `LOBES` order, before any effusion), "heart", "bone", "findings":
    {label: bool mask of where the finding is drawn}} - ground truth for segmentation and for
    checking that a finding is really in the image."""
    shp, sp = _resolve_grid(shape, spacing)
    case_labels(case)  # validates the names
    vol, anatomy, drawn = _render(case, rng, shp, sp)
    aff = centred_affine(shp, sp)
    if not return_masks:
        return vol, aff
    masks: dict[str, Any] = dict(anatomy)
    masks["findings"] = {k: v for k, v in drawn.items() if k in case}
    return vol, aff, masks


# --------------------------------------------------------------------------------------------
# Dataset writer
# --------------------------------------------------------------------------------------------

_CLINICAL = (
    NOT_GIVEN,
    NOT_GIVEN,
    "Cough and fever for one week.",
    "Shortness of breath.",
    "Chest pain.",
    "Dyspnea on exertion.",
    "Follow-up.",
    "Preoperative evaluation.",
    "Known malignancy, staging.",
    "Chronic cough.",
    "Hemoptysis.",
    "Fatigue and weight loss.",
)
_TECHNIQUE = (
    NOT_GIVEN,
    "Non-contrast chest CT was obtained with 1.5 mm slice thickness.",
    "Thorax CT without contrast, axial 1 mm sections with coronal and sagittal reformats.",
    "Non-contrast thorax CT examination, 1.25 mm axial sections in lung and mediastinal windows.",
    "Low-dose chest CT without intravenous contrast, 2 mm sections.",
    "Axial images of the thorax were obtained without contrast; sections 1.5 mm.",
)


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _write_volume(
    dataset: Path, seed: int, shape: tuple[int, int, int], spacing: tuple[float, float, float], job: tuple[str, int, int]
) -> tuple[list[Any], list[Any]]:
    """Draw case `index` of split `split_id`, write its volume `name` under `dataset` and return its
    reports-CSV and labels-CSV rows. One job of `generate_ct_rate`, run in this process or a worker."""
    name, split_id, index = job
    case = sample_case(np.random.default_rng([seed, split_id, index, 0]))
    vol, aff = render_phantom(case, np.random.default_rng([seed, split_id, index, 1]), shape, spacing)
    save_nifti(dataset / volume_relpath(name), vol, aff)
    text_rng = np.random.default_rng([seed, split_id, index, 2])
    findings, impression = write_report(case, text_rng)
    clinical = _CLINICAL[int(text_rng.integers(len(_CLINICAL)))]
    technique = _TECHNIQUE[int(text_rng.integers(len(_TECHNIQUE)))]
    return [name, clinical, technique, findings, impression], [name, *case_labels(case).tolist()]


def generate_ct_rate(
    root: str | Path,
    num_train: int = 400,
    num_val: int = 50,
    num_test: int = 50,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write a synthetic CT-RATE under `root`, atomically (all of it or nothing).

    Layout as `medvtc.datasets.ct_rate_layout`: train and val patients are volumes
    `train_{n}_a_1.nii.gz` of the official train split, test patients `valid_{n}_a_1.nii.gz`;
    reports and labels CSVs per official split. `root/medvtc_splits.json` fixes which official
    train volumes are val, and `root/medvtc_phantom.json` records the generator settings. Case
    `i` of split `s` (0 train, 1 val, 2 test) is drawn from `default_rng([seed, s, i, k])` with
    k = 0 for `sample_case`, 1 for `render_phantom`, 2 for the report text, so cases are
    independent of each other and of the split sizes, and the same seed gives byte-identical CSVs
    and identical voxels. `spacing=None` keeps the whole chest in view at any `shape` (see
    `render_phantom`). An existing `root` is a `UserError` unless `overwrite`.

    `workers` processes render and write the volumes (None, the default: one per core this
    process may use; 1: all in this process); the files are the same bytes with any number."""
    from tqdm import tqdm  # local: importing the module should not need tqdm

    root = Path(root)
    if root.exists() and not overwrite:
        raise UserError(f"{root} already exists; pass overwrite=True (--overwrite) to replace it, or choose another data.root")
    for name, n in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise UserError(f"{name}={n!r}: expected a non-negative integer")
    if num_train + num_val == 0 or num_test == 0:
        raise UserError("generate_ct_rate needs at least one train-or-val case and one test case (both official splits)")
    shp, sp = _resolve_grid(shape, spacing)
    seed = int(seed)
    plan = (
        [("train", "train", n + 1, 0, n) for n in range(num_train)]
        + [("val", "train", num_train + n + 1, 1, n) for n in range(num_val)]
        + [("test", "valid", n + 1, 2, n) for n in range(num_test)]
    )
    jobs = [(f"{'valid' if official == 'valid' else 'train'}_{patient}_a_1.nii.gz", split_id, index)
            for _, official, patient, split_id, index in plan]
    workers = resolve_workers(workers, len(jobs))
    reports: dict[str, list[list[Any]]] = {"train": [], "valid": []}
    labels: dict[str, list[list[Any]]] = {"train": [], "valid": []}
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    with atomic_directory(root, overwrite=overwrite) as tmp:
        dataset = tmp / "dataset"
        with tqdm(total=len(jobs), desc="CT-RATE phantom", unit="vol", disable=not progress) as bar:
            rows = map_in_order(partial(_write_volume, dataset, seed, shp, sp), jobs, workers, bar.update)
        for (split, official, *_), (name, *_), (report_row, label_row) in zip(plan, jobs, rows):
            reports[official].append(report_row)
            labels[official].append(label_row)
            splits[split].append(name)
        for official, (_, report_csv, label_csv) in OFFICIAL_SPLITS.items():
            (dataset / report_csv).parent.mkdir(parents=True, exist_ok=True)
            (dataset / label_csv).parent.mkdir(parents=True, exist_ok=True)
            (dataset / report_csv).write_text(_csv_text(REPORT_COLUMNS, reports[official]), encoding="utf-8")
            (dataset / label_csv).write_text(_csv_text(("VolumeName", *CT_RATE_LABELS), labels[official]), encoding="utf-8")
        (tmp / SPLITS_FILE).write_text(json.dumps(splits, indent=2) + "\n", encoding="utf-8")
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "generator": "medvtc.datasets.ct_phantom.generate_ct_rate",
            "seed": seed,
            "num_train": num_train,
            "num_val": num_val,
            "num_test": num_test,
            "shape": list(shp),
            "spacing_mm": list(sp),
            "orientation": "RAS",
            "dtype": "int16",
            "units": "HU",
            "labels": list(CT_RATE_LABELS),
            "splits_file": SPLITS_FILE,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return root

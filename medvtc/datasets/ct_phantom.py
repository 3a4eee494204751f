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
hiatal hernia - also reshape the lungs and their vessel trees around them). Findings are sized so they survive resampling to 64 x 64 x 32
(nodules >= 8 mm, effusion rims >= 8 mm, calcified plaques and metal bright enough to stand out
after partial-volume averaging).
"""

from __future__ import annotations

import csv
import io
import json
import math
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medvtc.common.errors import UserError
from medvtc.common.io import atomic_directory
from medvtc.datasets.ct_rate_layout import (
    CT_RATE_LABELS,
    NOT_GIVEN,
    OFFICIAL_SPLITS,
    REPORT_COLUMNS,
    volume_relpath,
)
from medvtc.datasets.nifti import centred_affine, save_nifti

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

LOBES: tuple[str, ...] = (
    "right upper lobe",
    "right middle lobe",
    "right lower lobe",
    "left upper lobe",
    "left lower lobe",
)
_LOBE_ID = {name: i + 1 for i, name in enumerate(LOBES)}
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

# Hounsfield units of the tissues.
HU_AIR = -1000.0
HU_FAT = -100.0
HU_MUSCLE = 45.0
HU_SOFT = 40.0
HU_BLOOD = 40.0
HU_FLUID = 10.0
HU_LUNG = -860.0
HU_LIVER = 58.0


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
# Small geometry helpers
# --------------------------------------------------------------------------------------------


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _stream_id(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def _densify(path: np.ndarray, radii: np.ndarray | float, step: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Points every ~`step` mm along a polyline (K, 3) with linearly interpolated radii.

    A tube is drawn as a union of spheres, so the step must stay below the radius; by default it
    is half the radius, between 1 and 2.5 mm (thin vessels: 1 mm, the aorta: 2.5 mm)."""
    path = np.asarray(path, dtype=np.float64)
    radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(path),))
    pts, rs = [path[:1]], [radii[:1]]
    for a, b, ra, rb in zip(path[:-1], path[1:], radii[:-1], radii[1:]):
        st = step if step is not None else float(np.clip(min(ra, rb) / 2, 1.0, 2.5))
        n = max(1, int(math.ceil(np.linalg.norm(b - a) / st)))
        t = np.arange(1, n + 1) / n
        pts.append(a + (b - a) * t[:, None])
        rs.append(ra + (rb - ra) * t)
    return np.concatenate(pts), np.concatenate(rs)


def _segments_to_points(starts: np.ndarray, ends: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised `_densify` for many independent segments: points, radii and segment index."""
    length = np.linalg.norm(ends - starts, axis=1)
    step = np.clip(radii / 2, 1.0, 2.5)
    n = np.maximum(1, np.ceil(length / step).astype(np.int64)) + 1
    seg = np.repeat(np.arange(len(starts)), n)
    first = np.cumsum(n) - n
    t = (np.arange(n.sum()) - first[seg]) / (n[seg] - 1)
    pts = starts[seg] + (ends[seg] - starts[seg]) * t[:, None]
    return pts, radii[seg], seg


# --------------------------------------------------------------------------------------------
# Renderer
# --------------------------------------------------------------------------------------------


class _Patch:
    """Coverage of a local structure: the grid box it touches and its coverage in [0, 1] there.
    Painting through patches keeps a thin tube from costing full-volume passes."""

    __slots__ = ("sl", "cov")

    def __init__(self, sl: tuple[slice, slice, slice], cov: np.ndarray) -> None:
        self.sl, self.cov = sl, cov

    def full(self, shape: tuple[int, ...]) -> np.ndarray:
        out = np.zeros(shape, dtype=np.float32)
        out[self.sl] = self.cov
        return out

    def paint(self, hu: np.ndarray, value: float, weight: np.ndarray | None = None, brighten: bool = False) -> None:
        """Blend `value` into `hu` by the coverage (times `weight`, a full-volume array); with
        `brighten` never darken (calcium or metal over bone stays the brighter of the two)."""
        if self.cov.size == 0:
            return
        sub = hu[self.sl]
        c = self.cov if weight is None else self.cov * weight[self.sl]
        new = sub + (value - sub) * c
        sub[...] = np.maximum(sub, new) if brighten else new

    def mark(self, target: np.ndarray, threshold: float) -> None:
        """target |= coverage > threshold, in place (target is a full-volume bool array)."""
        if self.cov.size:
            target[self.sl] |= self.cov > threshold

    def mask(self, shape: tuple[int, ...], threshold: float, within: np.ndarray | None = None) -> np.ndarray:
        out = np.zeros(shape, dtype=bool)
        m = self.cov > threshold
        out[self.sl] = m if within is None else m & within[self.sl]
        return out


class _Renderer:
    """Draws one case. Coordinates are millimetres in the patient frame (x right, y anterior,
    z superior) centred on the field of view; the body is rotated in-plane by `theta` and shifted
    by (cx, cy) relative to the scanner grid, so `U`, `V` are the patient-frame coordinates of
    every (x, y) grid column and `Z` those of every slice."""

    def __init__(self, case: dict[str, dict[str, Any]], rng: np.random.Generator, shape, spacing) -> None:
        self.case = case
        self.shape = tuple(int(s) for s in shape)
        self.spacing = np.asarray(spacing, dtype=np.float64)
        # Named child streams: drawing a finding never shifts the anatomy, noise or other
        # findings, so a case rendered without one finding differs only in that finding.
        self._base = int(rng.integers(0, 2**63 - 1))
        n = np.asarray(self.shape)
        self.centre_idx = (n - 1) / 2.0
        self.gx, self.gy, self.gz = [
            ((np.arange(k) - (k - 1) / 2.0) * s).astype(np.float32) for k, s in zip(self.shape, self.spacing)
        ]
        self.masks: dict[str, np.ndarray] = {}
        self._lobe_flat: dict[int, np.ndarray] = {}
        self.findings: dict[str, np.ndarray] = {}

    def stream(self, name: str) -> np.random.Generator:
        return np.random.default_rng([self._base, _stream_id(name)])

    # -- frames ---------------------------------------------------------------------------------

    def to_grid(self, p: np.ndarray) -> np.ndarray:
        """Patient-frame points (..., 3) -> scanner-grid millimetres."""
        p = np.asarray(p, dtype=np.float64)
        c, s = math.cos(self.theta), math.sin(self.theta)
        gx = self.cx + c * p[..., 0] - s * p[..., 1]
        gy = self.cy + s * p[..., 0] + c * p[..., 1]
        return np.stack([gx, gy, p[..., 2]], -1)

    def to_index(self, p: np.ndarray) -> np.ndarray:
        """Patient-frame points -> nearest voxel index (clipped into the volume)."""
        g = self.to_grid(p) / self.spacing + self.centre_idx
        return np.clip(np.rint(g).astype(np.int64), 0, np.asarray(self.shape) - 1)

    def box(self, centre: np.ndarray, radius: float):
        """Slices of the grid box holding a sphere (patient frame) and its U, V, Z coordinates."""
        g = self.to_grid(np.asarray(centre)) / self.spacing + self.centre_idx
        r = radius / self.spacing
        lo = np.clip(np.floor(g - r).astype(int), 0, np.asarray(self.shape))
        hi = np.clip(np.ceil(g + r).astype(int) + 1, 0, np.asarray(self.shape))
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        return sl, self.U[sl[0], sl[1]], self.V[sl[0], sl[1]], self.Z[..., sl[2]]

    def splat(self, pts: np.ndarray, radii: np.ndarray, amp: np.ndarray | float = 1.0) -> "_Patch":
        """Soft union of spheres (patient-frame centres, mm radii) -> coverage in [0, 1] over the
        grid box the spheres touch.

        Edges are one in-plane voxel wide and a structure thinner than a voxel gets the fraction
        of the voxel it fills, which is what partial-volume averaging does to a 1 mm vessel or
        wire in a 3 mm voxel. A slice is a slab: anything within its thickness counts."""
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
        radii = np.asarray(radii, dtype=np.float64).reshape(-1)
        if len(pts) == 0:
            return _Patch((slice(0, 0),) * 3, np.zeros((0, 0, 0), dtype=np.float32))
        sp = self.spacing
        w = float(min(sp[0], sp[1]))
        slab = max(float(sp[2]) - w, 0.0) / 2.0
        g = self.to_grid(pts)
        idx = np.rint(g / sp + self.centre_idx).astype(np.int64)
        r_eff = np.maximum(radii, w / 2)
        amps = np.broadcast_to(np.asarray(amp, dtype=np.float64), radii.shape) * np.minimum(1.0, 2 * radii / w)
        reach = r_eff + w / 2  # coverage is zero beyond this distance
        half = np.ceil(reach[:, None] / sp[None, :]).astype(np.int64)
        half[:, 2] = np.ceil(np.maximum(reach - slab, 0) / sp[2]).astype(np.int64)
        shape = np.asarray(self.shape)
        inside = np.all((idx + half >= 0) & (idx - half < shape), axis=1)
        if not inside.any():
            return _Patch((slice(0, 0),) * 3, np.zeros((0, 0, 0), dtype=np.float32))
        lo = np.clip((idx - half)[inside].min(0), 0, shape)
        hi = np.clip((idx + half)[inside].max(0) + 1, 0, shape)
        box = hi - lo
        cov = np.zeros(int(np.prod(box)), dtype=np.float32)
        keys = half[:, 0] * 1_000_000 + half[:, 1] * 1000 + half[:, 2]
        for key in np.unique(keys[inside]):
            sel = np.flatnonzero((keys == key) & inside)
            hx, hy, hz = half[sel[0]]
            grid = np.meshgrid(np.arange(-hx, hx + 1), np.arange(-hy, hy + 1), np.arange(-hz, hz + 1), indexing="ij")
            off = np.stack(grid, -1).reshape(-1, 3)
            vox = idx[sel][:, None, :] + off[None]
            valid = np.all((vox >= lo) & (vox < hi), axis=-1)
            d = ((vox - self.centre_idx) * sp - g[sel][:, None, :]).astype(np.float32)
            dz = np.maximum(np.abs(d[..., 2]) - slab, 0.0)
            dist = np.sqrt(d[..., 0] ** 2 + d[..., 1] ** 2 + dz**2)
            edge = np.clip((r_eff[sel][:, None].astype(np.float32) - dist) / w + 0.5, 0.0, 1.0)
            c = amps[sel][:, None].astype(np.float32) * edge
            keep = valid & (c > 0)
            flat = np.ravel_multi_index(tuple((vox[keep] - lo).T), tuple(box))
            np.maximum.at(cov, flat, c[keep])
        return _Patch(tuple(slice(a, b) for a, b in zip(lo, hi)), cov.reshape(tuple(box)))

    def tube(self, path, radii, amp: float = 1.0) -> "_Patch":
        """A polyline tube (patient-frame vertices, radius per vertex, linear in between) with
        the same soft, partial-volume edges as `splat`, computed exactly per segment over the
        segment's grid box (cheaper than spheres for the aorta's 15 mm radius)."""
        path = np.asarray(path, dtype=np.float64).reshape(-1, 3)
        radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(path),))
        sp = self.spacing
        w = float(min(sp[0], sp[1]))
        slab = max(float(sp[2]) - w, 0.0) / 2.0
        g = self.to_grid(path)
        shape = np.asarray(self.shape)
        pieces = []
        for a, b, ra, rb in zip(g[:-1], g[1:], radii[:-1], radii[1:]):
            reach = max(ra, rb, w / 2) + w / 2
            lo = np.clip(np.floor((np.minimum(a, b) - reach) / sp + self.centre_idx).astype(np.int64), 0, shape)
            hi = np.clip(np.ceil((np.maximum(a, b) + reach) / sp + self.centre_idx).astype(np.int64) + 1, 0, shape)
            if np.any(hi <= lo):
                continue
            X = self.gx[lo[0]:hi[0], None, None] - a[0]
            Y = self.gy[None, lo[1]:hi[1], None] - a[1]
            Z = self.gz[None, None, lo[2]:hi[2]] - a[2]
            ab = (b - a).astype(np.float32)
            t = np.clip((X * ab[0] + Y * ab[1] + Z * ab[2]) / max(float(ab @ ab), 1e-9), 0, 1)
            dz = np.maximum(np.abs(Z - t * ab[2]) - slab, 0)
            dist = np.sqrt((X - t * ab[0]) ** 2 + (Y - t * ab[1]) ** 2 + dz**2)
            r = ra + (rb - ra) * t
            c = amp * np.minimum(1.0, 2 * r / w) * np.clip((np.maximum(r, w / 2) - dist) / w + 0.5, 0, 1)
            pieces.append((lo, hi, c.astype(np.float32)))
        if not pieces:
            return _Patch((slice(0, 0),) * 3, np.zeros((0, 0, 0), dtype=np.float32))
        lo = np.min([p[0] for p in pieces], axis=0)
        hi = np.max([p[1] for p in pieces], axis=0)
        cov = np.zeros(tuple(hi - lo), dtype=np.float32)
        for plo, phi, c in pieces:
            sub = cov[tuple(slice(x - y, z - y) for x, z, y in zip(plo, phi, lo))]
            np.maximum(sub, c, out=sub)
        return _Patch(tuple(slice(x, y) for x, y in zip(lo, hi)), cov)

    def smooth_noise(self, rng: np.random.Generator, scale_mm: float) -> np.ndarray:
        """Unit-variance Gaussian random field with correlation length ~`scale_mm`: white noise
        on a lattice of pitch `scale_mm`, blurred on the lattice, then trilinearly interpolated
        onto the grid one axis at a time (a few passes over the volume, no FFT)."""
        axes = (self.gx, self.gy, self.gz)
        n_lat = [int(math.ceil(k * s / scale_mm)) + 4 for k, s in zip(self.shape, self.spacing)]
        field = rng.standard_normal(n_lat).astype(np.float32)
        for ax in range(3):  # binomial [1, 2, 1] / 4 blur on the lattice (sigma ~0.7 cells)
            field = 0.5 * field + 0.25 * (np.roll(field, 1, ax) + np.roll(field, -1, ax))
        for ax, (coords, n) in enumerate(zip(axes, n_lat)):
            pos = coords.astype(np.float64) / scale_mm + (n - 1) / 2.0
            i0 = np.clip(np.floor(pos).astype(np.int64), 0, n - 2)
            f = (pos - i0).astype(np.float32)
            shape = [1, 1, 1]
            shape[ax] = -1
            f = f.reshape(shape)
            field = np.take(field, i0, axis=ax) * (1 - f) + np.take(field, i0 + 1, axis=ax) * f
        step = [max(1, k // m) for k, m in zip(self.shape, (24, 24, 12))]
        std = float(field[:: step[0], :: step[1], :: step[2]].std())
        return field * np.float32(1.0 / max(std, 1e-6))

    # -- anatomy --------------------------------------------------------------------------------

    def sample_anatomy(self) -> None:
        r = self.stream("anatomy")
        u = r.uniform
        self.theta = math.radians(u(-4, 4))
        self.cx, self.cy = u(-6, 6), u(-10, 2)
        a = self.body_a = u(135, 165)
        self.body_b_ant = u(100, 125)
        self.body_b_post = self.body_b_ant * u(0.88, 0.98)
        self.body_p = u(2.2, 2.8)  # superellipse exponent: 2 = ellipse, larger = boxier chest
        self.fat = u(6, 26)
        self.muscle = u(8, 14)
        self.rib_t = 9.0
        self.cav_a = a - self.fat - self.muscle - self.rib_t
        self.cav_b_ant = self.body_b_ant - 0.7 * self.fat - 0.6 * self.muscle - 8.0
        self.cav_b_post = self.body_b_post - self.fat - self.muscle - self.rib_t
        self.z_apex = u(115, 140)
        self.dome_r = u(-80, -58)
        self.dome_l = self.dome_r - u(8, 22)
        self.z_carina = u(20, 40)
        self.x_mid = u(-8, -2)  # mediastinum slightly left of the midline
        # Spine and posterior mediastinum, anchored to the back.
        self.rv = u(15, 19)
        self.yv = -self.body_b_post + self.fat + u(38, 48) + self.rv
        vert_front = self.yv + self.rv
        self.esoph = np.array([u(-7, -1), vert_front + 8.0])
        self.trachea = np.array([u(-2, 5), vert_front + 24.0])
        self.r_trachea = u(7.5, 10)
        # Great vessels anchored to the trachea; heart anchored to the spine.
        self.r_asc, self.r_desc = u(14, 17), u(11, 14)
        self.asc = np.array([u(10, 18), self.trachea[1] + self.r_trachea + self.r_asc + u(8, 14)])
        self.desc = np.array([-(self.rv + self.r_desc + u(0, 4)) * 0.95, self.yv + u(0, 8)])
        self.z_arch_top = self.z_carina + u(28, 45)
        self.r_arch = u(16, 24)
        scale, jitter = u(0.9, 1.04), u(0.97, 1.03)  # both drawn always: the stream stays aligned
        degree = self.case.get("Cardiomegaly", {}).get("degree")
        if degree is not None:
            scale *= {"mild": 1.2, "moderate": 1.3, "marked": 1.42}[degree] * jitter
        self.heart_semi = np.array([50.0, 37.0, 41.0]) * scale * u(0.95, 1.05, 3)
        az, el = math.radians(u(30, 50)), math.radians(u(20, 35))
        e_l = np.array([-math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), -math.sin(el)])
        e_m = _unit(np.array([0.0, 1.0, 0.0]) - e_l[1] * e_l)
        self.heart_axes = np.stack([e_l, e_m, np.cross(e_l, e_m)])  # rows: long axis, anterior, third
        self.heart_c = np.array([
            u(-26, -12),
            min(vert_front + u(50, 62), self.cav_b_ant - 0.75 * self.heart_semi[1]),
            self.dome_r + 0.8 * self.heart_semi[2],  # resting on the diaphragm
        ])
        self.hila = {
            "right": np.array([self.trachea[0] + u(38, 48), self.trachea[1] - u(0, 10), self.z_carina - u(12, 25)]),
            "left": np.array([self.trachea[0] - u(42, 52), self.trachea[1] - u(0, 10), self.z_carina - u(6, 18)]),
        }
        self.noise_sigma = u(8, 15)

    def build_coordinates(self) -> None:
        gx, gy = self.gx[:, None] - self.cx, self.gy[None, :] - self.cy
        c, s = math.cos(self.theta), math.sin(self.theta)
        self.U = (c * gx + s * gy).astype(np.float32)[:, :, None]
        self.V = (-s * gx + c * gy).astype(np.float32)[:, :, None]
        self.Z = self.gz[None, None, :]

    def _superellipse(self, a: float, b_ant: float, b_post: float) -> np.ndarray:
        b = np.where(self.V > 0, b_ant, b_post)
        return (np.abs(self.U) / a) ** self.body_p + (np.abs(self.V) / b) ** self.body_p

    def paint_body(self) -> np.ndarray:
        """Air, skin, subcutaneous fat, muscle, the thoracic cavity (filled with mediastinal fat)."""
        # The trunk narrows a little towards the neck and the abdomen.
        fz = (1.0 - 0.06 * (self.Z / 160.0) ** 2) ** self.body_p
        # The bony thorax is a cone at the top (the thoracic inlet): the cavity narrows above the
        # carina while the shoulders keep the body wide.
        top = np.clip((self.Z - self.z_carina) / (self.z_apex + 15 - self.z_carina), 0, 1)
        fzc = fz * (1.0 - 0.22 * top**1.5) ** self.body_p
        body_a, ba, bp = self.body_a, self.body_b_ant, self.body_b_post
        lev_body = self._superellipse(body_a, ba, bp)
        lev_skin = self._superellipse(body_a - 2, ba - 2, bp - 2)
        lev_muscle = self._superellipse(body_a - self.fat, ba - 0.7 * self.fat, bp - self.fat)
        lev_rib = self._superellipse(self.cav_a + self.rib_t, self.cav_b_ant + 4, self.cav_b_post + self.rib_t)
        lev_cav = self._superellipse(self.cav_a, self.cav_b_ant, self.cav_b_post)
        self.lev_cav = lev_cav  # 2D: < 1 inside the cavity, ~1 at the parietal pleura
        hu = np.full(self.shape, HU_AIR, dtype=np.float32)
        body = lev_body <= fz
        hu[body] = 30.0
        hu[lev_skin <= fz] = HU_FAT
        hu[lev_muscle <= fz] = HU_MUSCLE
        # Paraspinal muscles and the posterior vertebral elements: a block behind the vertebral
        # body that the lungs wrap around (the paravertebral gutters stay lung).
        self.paraspinal = (np.abs(self.U) < 40 + 0.1 * self.rv) & (self.V < self.yv - 0.3 * self.rv)
        cavity = (lev_cav <= fzc) & ~self.paraspinal
        hu[cavity] = HU_FAT + 10.0  # mediastinal fat, replaced by lungs and organs below
        self.body = body
        self.cavity = cavity
        self.rib_band = (lev_rib <= fzc) & ~(lev_cav <= fzc) & body
        self.fz = fzc  # cavity level scale per slice: lev_cav / fz is ~1 at the parietal pleura
        return hu

    def diaphragm(self) -> np.ndarray:
        """Height (mm) of the diaphragm under every (x, y) column: two domes, the right higher
        (liver), falling towards the lateral and posterior costophrenic recesses."""
        U, V = self.U[..., 0], self.V[..., 0]
        right = U >= self.x_mid
        dome = np.where(right, self.dome_r, self.dome_l)
        xs = np.where(right, 0.45 * self.cav_a, -0.45 * self.cav_a) + self.x_mid
        dx = (U - xs) / self.cav_a
        dy = V / (0.5 * (self.cav_b_ant + self.cav_b_post))
        post = np.clip(-V / self.cav_b_post, 0, 1)
        return (dome - 75 * dx**2 - 45 * dy**2 - 30 * post**2).astype(np.float32)[:, :, None]

    def paint_abdomen(self, hu: np.ndarray) -> None:
        abd = self.cavity & (self.Z < self.z_diaph)
        U, V, Z = self.U, self.V, self.Z
        liver = abd & (U - 0.35 * V > -40)
        hu[abd] = HU_FAT + 20
        hu[liver] = HU_LIVER
        spleen = abd & ~liver & (U < -40) & (V < -5)
        hu[spleen] = 48.0
        stomach = abd & ~liver & ~spleen & (U < -15) & (V > -30)
        hu[stomach] = 18.0
        # Fundic gas bubble under the left dome.
        gas = stomach & (Z > self.z_diaph - 22) & (((U + 55) / 35) ** 2 + ((V - 10) / 30) ** 2 < 1)
        hu[gas] = HU_AIR + 10

    # -- mediastinum ----------------------------------------------------------------------------

    def heart_q(self, sl, U, V, Z, grow: float = 0.0) -> np.ndarray:
        """Ellipsoid level of the heart (grown by `grow` mm on every axis) in a grid box."""
        d = [U - self.heart_c[0], V - self.heart_c[1], Z - self.heart_c[2]]
        q = 0.0
        for k in range(3):
            e = self.heart_axes[k]
            comp = e[0] * d[0] + e[1] * d[1] + e[2] * d[2]
            q = q + (comp / (self.heart_semi[k] + grow)) ** 2
        return q

    def vessel_paths(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Centrelines (patient frame, mm) and radii of the great vessels and central airways."""
        z_top = float(self.gz[-1]) + 10
        z_bot = float(self.gz[0]) - 10
        base = self.heart_c - 0.5 * self.heart_semi[0] * self.heart_axes[0]
        z_arch0 = self.z_arch_top - self.r_arch
        # Aortic arch: from the ascending aorta over the left main bronchus to the descending
        # aorta, passing left of the trachea (quadratic Bezier in-plane, half-sine in height).
        t = np.linspace(0, 1, 25)[:, None]
        A, D = self.asc, self.desc
        C = np.array([self.desc[0] - 14, 0.5 * (self.asc[1] + self.desc[1]) + 6])
        xy = (1 - t) ** 2 * A + 2 * (1 - t) * t * C + t**2 * D
        arch = np.column_stack([xy, z_arch0 + self.r_arch * np.sin(np.pi * t[:, 0])])
        asc = np.array([[A[0], A[1], base[2]], [A[0], A[1], z_arch0]])
        desc = np.array([[D[0], D[1], z_arch0], [D[0], D[1] + 4, self.dome_l - 20], [D[0] + 8, D[1] + 12, z_bot]])
        paths: dict[str, tuple[np.ndarray, np.ndarray]] = {
            "ascending aorta": (asc, np.full(2, self.r_asc)),
            "aortic arch": (arch, np.linspace(self.r_asc, self.r_desc, len(arch))),
            "descending aorta": (desc, np.full(3, self.r_desc)),
        }
        branches = []
        for frac, dx, rad in ((0.2, 22.0, 6.5), (0.38, 6.0, 4.5), (0.55, -16.0, 5.5)):
            p = arch[int(frac * (len(arch) - 1))]
            path = np.array([p, [p[0] + 0.4 * dx, p[1] - 2, p[2] + 25], [p[0] + dx, p[1] - 6, z_top]])
            branches.append((path, np.full(3, rad)))
        paths["supra-aortic arteries"] = branches  # type: ignore[assignment]
        # Pulmonary trunk from the anterior-left heart base up to its bifurcation below the arch.
        pt0 = self.heart_c - 0.3 * self.heart_semi[0] * self.heart_axes[0] + 0.55 * self.heart_semi[1] * self.heart_axes[1]
        bif = np.array([self.trachea[0] - 24, self.trachea[1] + 18, self.z_carina - 6])
        paths["pulmonary trunk"] = (np.array([pt0, bif]), np.array([13.0, 13.0]))
        hr, hl = self.hila["right"], self.hila["left"]
        paths["right pulmonary artery"] = (
            np.array([bif, [self.trachea[0] + 10, self.trachea[1] + 14, bif[2] - 4], hr + [0, 10, 0]]),
            np.array([11, 10, 8.0]),
        )
        paths["left pulmonary artery"] = (np.array([bif, hl + [4, 4, 10]]), np.array([11, 8.0]))
        svc_xy = np.array([self.asc[0] + self.r_asc + 11, self.asc[1] - 8])
        self.svc_xy = svc_xy
        z_ra = self.heart_c[2] + 0.3 * self.heart_semi[2]  # enters the right atrium
        paths["superior vena cava"] = (np.array([[*svc_xy, z_ra], [*svc_xy, z_top]]), np.full(2, 9.0))
        paths["esophagus"] = (
            np.array([[*self.esoph, z_top], [*self.esoph, self.dome_l + 12],
                      [self.esoph[0] - 18, self.esoph[1] + 14, self.dome_l - 12]]),
            np.full(3, 7.0),
        )
        car = np.array([*self.trachea, self.z_carina])
        paths["trachea"] = (np.array([[*self.trachea, z_top], car]), np.full(2, self.r_trachea))
        paths["right main bronchus"] = (np.array([car, hr + [-6, 0, 6]]), np.array([7.0, 6.0]))
        paths["left main bronchus"] = (np.array([car, hl + [6, 0, 6]]), np.array([6.5, 5.5]))
        return paths

    def mediastinum_masks(self) -> None:
        """Everything the lungs must not occupy (organs grown by a pleural margin)."""
        paths = self.vessel_paths()
        self.paths = paths
        margin = 3.0
        occupied = np.zeros(self.shape, dtype=bool)
        for name, value in paths.items():
            items = value if isinstance(value, list) else [value]
            for path, radii in items:
                self.tube(path, np.asarray(radii) + margin).mark(occupied, 0.3)
        # Heart with its pericardial sac (and effusion) grown by the margin.
        eff = self.case.get("Pericardial effusion", {}).get("thickness_mm", 0)
        self.peri_grow = 4.0 + float(eff) + 1.5
        sl, U, V, Z = self.box(self.heart_c, float(self.heart_semi.max()) + self.peri_grow + margin + 6)
        occupied[sl] |= self.heart_q(sl, U, V, Z, self.peri_grow + margin) <= 1
        # Vertebral body.
        occupied |= ((self.U**2 + (self.V - self.yv) ** 2) < (self.rv + margin + 2) ** 2) & np.ones_like(self.Z, dtype=bool)
        # The mediastinal band between the lungs (anterior and posterior junction lines).
        occupied |= (np.abs(self.U - self.x_mid) < 11) & np.ones_like(self.Z, dtype=bool)
        hernia = self.case.get("Hiatal hernia")
        if hernia is not None:
            self.hernia_geom = self._hernia_geometry(hernia["size"])
            c, semi = self.hernia_geom
            sl, U, V, Z = self.box(c, float(semi.max()) + margin + 6)
            g = semi + margin
            occupied[sl] |= ((U - c[0]) / g[0]) ** 2 + ((V - c[1]) / g[1]) ** 2 + ((Z - c[2]) / g[2]) ** 2 <= 1
        self.occupied = occupied

    def _hernia_geometry(self, size: str) -> tuple[np.ndarray, np.ndarray]:
        r = {"small": 24.0, "moderate": 32.0, "large": 42.0}[size] * self.stream("Hiatal hernia/geometry").uniform(0.92, 1.08)
        c = np.array([self.esoph[0] - 10, self.esoph[1] + 0.5 * r, self.dome_l + 0.55 * r + 4])
        return c, np.array([r, 0.85 * r, 0.8 * r])

    # -- lungs ----------------------------------------------------------------------------------

    def lungs(self) -> None:
        z_d = self.z_diaph
        # The apices taper into domes that rise into the thoracic inlet.
        U2, V2 = self.U[..., 0], self.V[..., 0]
        lev_apex = (((np.abs(U2 - self.x_mid) - 0.45 * self.cav_a) / (0.6 * self.cav_a)) ** 2
                    + ((V2 + 0.2 * self.cav_b_post) / (0.9 * self.cav_b_ant)) ** 2)
        s_z = np.clip((self.z_apex - self.Z) / 90.0, 0, 1) ** 0.5
        lung = self.cavity & (self.Z > z_d + 4) & (lev_apex[:, :, None] <= s_z) & ~self.occupied
        lung &= self.lev_cav <= 0.93 * self.fz  # a pleural margin inside the ribs
        self.lung = lung
        right = lung & (self.U > self.x_mid)
        left = lung & ~right
        # Fissures: the oblique fissure runs from high posteriorly (~T4) to the anterior
        # diaphragm; the horizontal fissure splits the right middle lobe off the upper lobe.
        r = self.stream("lobes")
        z_post = self.z_carina + r.uniform(-5, 12)
        z_ant = self.dome_r - r.uniform(0, 12)
        slope = (z_ant - z_post) / (self.cav_b_ant + self.cav_b_post)
        z_obl = z_post + (self.V + self.cav_b_post) * slope
        z_hf = 0.5 * (self.z_carina + self.dome_r) + r.uniform(-12, 6)
        lower = self.Z < z_obl
        lobes = np.zeros(self.shape, dtype=np.int8)
        lobes[right & lower] = _LOBE_ID["right lower lobe"]
        lobes[right & ~lower & (self.Z < z_hf)] = _LOBE_ID["right middle lobe"]
        lobes[right & ~lower & (self.Z >= z_hf)] = _LOBE_ID["right upper lobe"]
        lobes[left & lower] = _LOBE_ID["left lower lobe"]
        lobes[left & ~lower] = _LOBE_ID["left upper lobe"]
        self.lobes = lobes

    def lobe_points(self, lobe: int | None, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` random patient-frame points inside a lobe (or anywhere in the lungs)."""
        key = int(lobe or 0)
        if key not in self._lobe_flat:  # the lobes are fixed once drawn: index them once
            flat = np.flatnonzero(self.lobes.reshape(-1) == key) if key else np.flatnonzero(self.lung.reshape(-1))
            if flat.size == 0:
                flat = np.flatnonzero(self.lung.reshape(-1))
            self._lobe_flat[key] = flat
        flat = self._lobe_flat[key]
        pick = flat[rng.integers(0, flat.size, n)]
        i, j, k = np.unravel_index(pick, self.shape)
        jitter = rng.uniform(-0.5, 0.5, (n, 3)) * self.spacing
        return np.column_stack([self.U[i, j, 0], self.V[i, j, 0], self.gz[k]]).astype(np.float64) + jitter

    def point_with_clearance(self, lobe: int | None, radius: float, rng: np.random.Generator, tries: int = 40) -> np.ndarray:
        """A point in the lobe whose surrounding sphere is mostly lung, so a nodule drawn there
        is surrounded by aerated lung rather than sitting on the pleura or a vessel wall."""
        target = self.lobes if lobe else self.lung
        best, best_frac = None, -1.0
        for p in self.lobe_points(lobe, tries, rng):
            sl, U, V, Z = self.box(p, radius)
            sub = target[sl] == (lobe if lobe else True)
            inside = ((U - p[0]) ** 2 + (V - p[1]) ** 2 + (Z - p[2]) ** 2) <= radius**2
            frac = float(sub[inside].mean()) if inside.any() else 0.0
            if frac > best_frac:
                best, best_frac = p, frac
            if frac > 0.97:
                break
        return best

    def airway_vessel_trees(self) -> dict[str, np.ndarray]:
        """Bronchovascular trees, grown generation by generation (vectorised over branches).

        Each lobe gets a bronchus with its companion artery from the hilum, plus a vein tree;
        every branch steers toward a random point of its lobe so the trees fill the lobes.
        Bronchiectasis dilates the bronchi of its lobes and peribronchial thickening thickens
        their walls; emphysema later prunes the vessels in its low-attenuation areas."""
        r = self.stream("trees")
        roots = {
            "right upper lobe": ("right", [0.6, 0.1, 0.8]),
            "right middle lobe": ("right", [0.6, 0.7, -0.3]),
            "right lower lobe": ("right", [0.5, -0.5, -0.7]),
            "left upper lobe": ("left", [-0.6, 0.3, 0.7]),
            "left lower lobe": ("left", [-0.5, -0.5, -0.7]),
        }
        ect = self.case.get("Bronchiectasis")
        ect_lobes = {_LOBE_ID[name] for name in ect["lobes"]} if ect else set()
        pbt = self.case.get("Peribronchial thickening")
        pbt_lobes = set()
        if pbt:
            lower = {_LOBE_ID["right lower lobe"], _LOBE_ID["left lower lobe"]}
            pbt_lobes = set(_LOBE_ID.values()) if pbt["distribution"] == "bilateral" else lower
        art_s, art_e, art_r = [], [], []
        br_s, br_e, br_r, br_gen = [], [], [], []
        for lobe_name, (side, direction) in roots.items():
            lobe = _LOBE_ID[lobe_name]
            for kind in ("bronchovascular", "vein"):
                hilum = self.hila[side].copy()
                if kind == "vein":
                    hilum = hilum + [0.0, -12.0, -22.0]
                starts = hilum[None]
                dirs = _unit(np.asarray(direction, dtype=np.float64))[None]
                r0 = 5.0 if kind == "bronchovascular" else 5.5
                length0 = 30.0
                for gen in range(7):
                    n = len(starts)
                    targets = self.lobe_points(lobe, n, r)
                    pull = 0.9 if gen == 0 else 0.7
                    d = _unit(dirs + pull * _unit(targets - starts) + r.normal(0, 0.3, (n, 3)))
                    length = length0 * 0.8**gen * r.uniform(0.7, 1.25, n)
                    ends = starts + d * length[:, None]
                    rad = np.full(n, r0 * 0.76**gen)
                    off = np.zeros_like(starts)
                    if kind == "bronchovascular":
                        # The artery runs beside its bronchus (the bronchovascular bundle).
                        off = _unit(np.cross(d, [0.0, 0.0, 1.0]) + 1e-3) * (2 * rad[:, None] + 0.5)
                        br_s.append(starts)
                        br_e.append(ends)
                        br_r.append(rad * 0.85)
                        br_gen.append(np.full(n, gen))
                    art_s.append(starts + off)
                    art_e.append(ends + off)
                    art_r.append(rad)
                    starts = np.repeat(ends, 2, axis=0)
                    dirs = np.repeat(d, 2, axis=0)
        vs, ve, vr = np.concatenate(art_s), np.concatenate(art_e), np.concatenate(art_r)
        bs, be, brad, bgen = np.concatenate(br_s), np.concatenate(br_e), np.concatenate(br_r), np.concatenate(br_gen)
        # Per-bronchus modifiers from the lobe its midpoint falls in.
        mid = self.to_index(0.5 * (bs + be))
        mid_lobe = self.lobes[mid[:, 0], mid[:, 1], mid[:, 2]]
        wall = np.maximum(0.8, 0.22 * brad)
        if ect_lobes:
            dil = np.isin(mid_lobe, list(ect_lobes)) & (bgen >= 1)
            factor = 2.6 if ect["type"] == "varicose" else 2.2
            brad = np.where(dil, np.maximum(brad * factor, 3.5), brad)
            wall = np.where(dil, np.maximum(wall * 1.6, 1.5), wall)
            self._ect = dil
        if pbt_lobes:
            thick = np.isin(mid_lobe, list(pbt_lobes)) & (bgen <= 4)
            wall = np.where(thick, 0.6 * brad + 1.8, wall)
            self._pbt = thick
        pts, rr, _ = _segments_to_points(vs, ve, vr)
        vessel = self.splat(pts, rr).full(self.shape)
        bpts, bres, seg = _segments_to_points(bs, be, brad)
        lumen = self.splat(bpts, bres).full(self.shape)
        outer = self.splat(bpts, bres + wall[seg]).full(self.shape)
        out = {"vessel": vessel, "lumen": lumen, "wall": np.clip(outer - lumen, 0, 1)}
        if ect_lobes:
            sel = self._ect[seg]
            out["ectatic"] = self.splat(bpts[sel], bres[sel]).mask(self.shape, 0.5)
        if pbt_lobes:
            sel = self._pbt[seg]
            out["thick_wall"] = self.splat(bpts[sel], bres[sel] + wall[seg][sel]).mask(self.shape, 0.5) & (lumen < 0.5)
        return out

    def paint_lungs(self, hu: np.ndarray) -> None:
        case = self.case
        lung = self.lung
        # Gravity-dependent density gradient (supine: posterior lung denser) and fine texture.
        dep = np.clip(-(self.V - self.cav_b_ant) / (self.cav_b_ant + self.cav_b_post), 0, 1) ** 2
        base = HU_LUNG + 70.0 * dep + 12.0 * self.smooth_noise(self.stream("lung texture"), 8.0)
        vessel_weight = np.ones(self.shape, dtype=np.float32)
        if "Mosaic attenuation pattern" in case:
            # Geographic lobular patches of hypo- and hyper-attenuation with sharp borders;
            # vessels are smaller in the dark (hypoperfused or air-trapped) regions.
            f = self.smooth_noise(self.stream("Mosaic attenuation pattern"), 18.0)
            thr = 0.3 if case["Mosaic attenuation pattern"]["extent"] == "patchy" else -0.1
            dark = lung & (f > thr)
            bright = lung & (f < thr - 0.8)
            base = np.where(dark, base - 75.0, np.where(bright, base + 70.0, base))
            vessel_weight = np.where(dark, 0.55, vessel_weight)
            self.findings["Mosaic attenuation pattern"] = dark
        if "Emphysema" in case:
            attrs = case["Emphysema"]
            rng = self.stream("Emphysema")
            frac = {"mild": 0.12, "moderate": 0.25, "severe": 0.42}[attrs["extent"]]
            height = np.clip((self.Z - self.dome_r) / max(self.z_apex - self.dome_r, 1.0), 0, 1)
            if attrs["type"] == "centrilobular":
                zone, scale = 1.6 * height, 7.0  # upper-zone, small clustered holes
            elif attrs["type"] == "paraseptal":
                zone = 2.5 * np.clip((self.lev_cav / self.fz - 0.6) / 0.3, 0, 1) + 0.6 * height  # subpleural bullae
                scale = 9.0
            else:
                zone, scale = 1.4 * (1 - height), 14.0  # panlobular: diffuse, lower zones
            score = self.smooth_noise(rng, scale) + zone
            vals = score[lung]
            thr = np.quantile(vals[:: max(1, vals.size // 50000)], 1 - frac) if vals.size else 0.0
            laa = lung & (score > thr)
            base = np.where(laa, -965.0 + 8.0 * self.smooth_noise(rng, 5.0), base)
            vessel_weight = np.where(laa, 0.3, vessel_weight)
            self.findings["Emphysema"] = laa
        if "Lung opacity" in case:
            # Ground-glass: hazy increase in density that keeps the vessels visible.
            rng = self.stream("Lung opacity")
            f = self.smooth_noise(rng, 10.0)
            ggo = np.zeros(self.shape, dtype=bool)
            for lobe_name in case["Lung opacity"]["lobes"]:
                lobe = _LOBE_ID[lobe_name]
                for c in self.lobe_points(lobe, 2 if "patchy" in case["Lung opacity"]["pattern"] else 1, rng):
                    rad = rng.uniform(28, 45)
                    sl, U, V, Z = self.box(c, rad * 1.4)
                    d = np.sqrt((U - c[0]) ** 2 + (V - c[1]) ** 2 + (Z - c[2]) ** 2) / rad
                    ggo[sl] |= (d + 0.3 * f[sl] < 1.0) & (self.lobes[sl] == lobe)
            base = np.where(ggo, 0.25 * base + 0.75 * (-560.0), base)
            self.findings["Lung opacity"] = ggo
        trees = self.airway_vessel_trees()
        self.trees = trees
        lung_hu = base + (HU_BLOOD - base) * trees["vessel"] * vessel_weight
        lung_hu = lung_hu + (30.0 - lung_hu) * trees["wall"]
        lung_hu = lung_hu + (HU_AIR - lung_hu) * trees["lumen"]
        if "ectatic" in trees:
            self.findings["Bronchiectasis"] = trees["ectatic"] & lung
        if "thick_wall" in trees:
            self.findings["Peribronchial thickening"] = trees["thick_wall"] & lung
        if "Interlobular septal thickening" in case:
            lung_hu = self.septal_lines(lung_hu)
        if "Consolidation" in case:
            lung_hu = self.consolidation(lung_hu)
        if "Atelectasis" in case:
            lung_hu = self.atelectasis(lung_hu)
        if "Lung nodule" in case:
            lung_hu = self.nodules(lung_hu)
        if "Pulmonary fibrotic sequela" in case:
            lung_hu = self.fibrotic_bands(lung_hu)
        hu[lung] = lung_hu[lung]

    def septal_lines(self, lung_hu: np.ndarray) -> np.ndarray:
        """Thickened interlobular septa: the walls of secondary pulmonary lobules (polygons of
        ~12-18 mm) drawn as 2-3 mm lines, in the zones the case names.

        The polygons are the edges of a Voronoi tessellation of jittered seeds (distance to the
        bisector of the two nearest seeds); the seeds drift slowly with height so the walls are
        sheets through the slices rather than a pattern stamped on every slice."""
        rng = self.stream("Interlobular septal thickening")
        dist = self.case["Interlobular septal thickening"]["distribution"]
        peripheral = np.clip((self.lev_cav / self.fz - 0.6) / 0.25, 0, 1)
        lower = np.clip((self.z_carina - 10 - self.Z) / 50.0, 0, 1)
        zone = {"lower zones": lower, "subpleural": peripheral, "diffuse": np.ones_like(lower)}[dist]
        region = self.lung & (zone > 0.35)
        flat = np.flatnonzero(region)
        if flat.size == 0:
            self.findings["Interlobular septal thickening"] = region
            return lung_hu
        i, j, k = np.unravel_index(flat, self.shape)
        u, v, z = self.U[i, j, 0], self.V[i, j, 0], self.gz[k]
        period = rng.uniform(12, 18)
        m = 97  # seed table size (cells wrap around it, far beyond the field of view)
        jitter = rng.uniform(0.1, 0.9, (m, m, 2))
        drift = rng.uniform(-0.25, 0.25, (m, m, 2))
        phase = rng.uniform(0, 2 * np.pi, (m, m))
        cu, cv = np.floor(u / period).astype(np.int64), np.floor(v / period).astype(np.int64)
        f1 = np.full(u.shape, np.inf, dtype=np.float32)
        f2 = np.full(u.shape, np.inf, dtype=np.float32)
        for da in (-1, 0, 1):
            for db in (-1, 0, 1):
                a, b = (cu + da) % m, (cv + db) % m
                wave = np.sin(z / 45.0 + phase[a, b])
                su = (cu + da + jitter[a, b, 0] + drift[a, b, 0] * wave) * period
                sv = (cv + db + jitter[a, b, 1] + drift[a, b, 1] * wave) * period
                d = np.hypot(u - su, v - sv).astype(np.float32)
                f2 = np.where(d < f1, f1, np.minimum(f2, d))
                f1 = np.minimum(f1, d)
        to_wall = (f2 - f1) / 2  # ~ distance to the nearest lobular wall
        half_t = rng.uniform(1.0, 1.5)
        w = float(self.spacing[0])
        c = min(1.0, 2 * half_t / w) * np.clip((max(half_t, w / 2) - to_wall) / w + 0.5, 0, 1)
        cov = np.zeros(self.shape, dtype=np.float32)
        cov.reshape(-1)[flat] = c
        self.findings["Interlobular septal thickening"] = cov > 0.3
        return lung_hu + (-40.0 - lung_hu) * cov

    def _blob(self, centre: np.ndarray, semi: np.ndarray, rng: np.random.Generator, rough: float,
              axes: np.ndarray | None = None, box_radius: float | None = None):
        """Irregular ellipsoid (radius modulated by a few angular harmonics) in a grid box:
        (slices of the box, coverage in [0, 1] with a one-voxel soft edge)."""
        if box_radius is None:
            box_radius = float(np.max(semi)) * (1 + rough) + 2 * float(self.spacing.max())
        sl, U, V, Z = self.box(centre, box_radius)
        d = np.stack(np.broadcast_arrays(U - centre[0], V - centre[1], Z - centre[2]), -1).astype(np.float64)
        if axes is not None:
            d = d @ axes.T
        q = np.sqrt(((d / semi) ** 2).sum(-1))
        if rough > 0:
            ang = np.arctan2(d[..., 1], d[..., 0])
            el = np.arctan2(d[..., 2], np.hypot(d[..., 0], d[..., 1]))
            ph = rng.uniform(0, 2 * np.pi, 4)
            wobble = 0.6 * np.sin(3 * ang + ph[0]) * np.cos(el) + 0.4 * np.sin(2 * el + ph[1]) + 0.3 * np.sin(5 * ang + ph[2])
            q = q / (1 + rough * wobble)
        # Edge one voxel wide in mm terms.
        r_mean = float(np.mean(semi))
        cov = np.clip((1.0 - q) * r_mean / float(self.spacing[0]) + 0.5, 0, 1)
        return sl, cov

    def consolidation(self, lung_hu: np.ndarray) -> np.ndarray:
        rng = self.stream("Consolidation")
        attrs = self.case["Consolidation"]
        lobe = _LOBE_ID[attrs["lobe"]]
        # Dependent: pick the most posterior of a few candidate points.
        cand = self.lobe_points(lobe, 6, rng)
        c = cand[np.argmin(cand[:, 1])] + [0, 10, 0]
        semi = rng.uniform(26, 40, 3) * [1, 0.9, 1.1]
        sl, cov = self._blob(c, semi, rng, 0.25)
        mask = np.zeros(self.shape, dtype=bool)
        mask[sl] = (cov > 0.5) & (self.lobes[sl] == lobe)
        dense = 35.0 + 6.0 * rng.standard_normal()
        out = np.where(mask, dense, lung_hu)
        if attrs.get("air_bronchograms", True):
            air = mask & (self.trees["lumen"] > 0.35)
            out = np.where(air, -900.0, out)
        self.findings["Consolidation"] = mask
        return out

    def atelectasis(self, lung_hu: np.ndarray) -> np.ndarray:
        """Plate-like (linear/subsegmental) or segmental collapse: a flattened, dense disc in the
        lower part of the lobe, roughly horizontal as basal plate atelectases are."""
        rng = self.stream("Atelectasis")
        attrs = self.case["Atelectasis"]
        lobe = _LOBE_ID[attrs["lobe"]]
        thick, radius = {"linear": (9.0, 35.0), "subsegmental": (11.0, 30.0), "segmental": (18.0, 40.0)}[attrs["kind"]]
        c = self.point_with_clearance(lobe, 0.6 * radius, rng)
        tilt = rng.normal(0, 0.3, 3) + [0, 0, 1]
        n = _unit(tilt)
        e1 = _unit(np.cross(n, [1.0, 0.0, 0.0]))
        axes = np.stack([e1, np.cross(n, e1), n])
        sl, cov = self._blob(c, np.array([radius, radius * rng.uniform(0.5, 0.9), thick / 2]), rng, 0.15, axes)
        mask = np.zeros(self.shape, dtype=bool)
        mask[sl] = (cov > 0.5) & (self.lobes[sl] == lobe)
        self.findings["Atelectasis"] = mask
        return np.where(mask, 25.0 + 8.0 * rng.standard_normal(), lung_hu)

    def nodules(self, lung_hu: np.ndarray) -> np.ndarray:
        rng = self.stream("Lung nodule")
        attrs = self.case["Lung nodule"]
        mask = np.zeros(self.shape, dtype=bool)
        extra = int(attrs.get("count", 1)) - 1  # further nodules: smaller, anywhere in the lungs
        sizes = [float(attrs["size_mm"])] + [float(rng.uniform(8, max(8.5, attrs["size_mm"]))) for _ in range(extra)]
        lobes = [_LOBE_ID[attrs["lobe"]]] + [int(rng.integers(1, 6)) for _ in sizes[1:]]
        for k, (size, lobe) in enumerate(zip(sizes, lobes)):
            r = size / 2
            c = self.point_with_clearance(lobe, r + 5, rng)
            box_r = 1.15 * r + 2 * float(self.spacing.max())
            sl, cov = self._blob(c, np.full(3, r), rng, 0.12, box_radius=box_r)
            cov = cov * self.lung[sl]
            solid = 30.0 + 10.0 * rng.standard_normal()
            if attrs.get("kind") == "part-solid" and k == 0:
                # Solid core in a ground-glass rim.
                _, core = self._blob(c, np.full(3, 0.55 * r), rng, 0.1, box_radius=box_r)
                val = -420.0 + (solid + 420.0) * core
            else:
                val = solid
            sub = lung_hu[sl]  # a view: painted in place
            sub += (val - sub) * cov
            mask[sl] |= cov > 0.5
        self.findings["Lung nodule"] = mask
        return lung_hu

    def fibrotic_bands(self, lung_hu: np.ndarray) -> np.ndarray:
        """Linear scars running to the pleura (post-inflammatory sequelae)."""
        rng = self.stream("Pulmonary fibrotic sequela")
        lobe = _LOBE_ID[self.case["Pulmonary fibrotic sequela"]["lobe"]]
        starts = self.lobe_points(lobe, int(rng.integers(3, 6)), rng)
        pts, rads = [], []
        for s in starts:
            # Towards the nearest chest wall, as parenchymal bands reach the pleura.
            outward = _unit(np.array([s[0] - self.x_mid, 0.6 * s[1], 0.0]))
            d = _unit(outward + rng.normal(0, 0.5, 3))
            length = rng.uniform(35, 60)
            path = np.array([s, s + d * length * 0.5 + rng.normal(0, 4, 3), s + d * length])
            p, rr = _densify(path, np.array([rng.uniform(3.0, 4.5), rng.uniform(2.2, 3.2), 1.8]))
            pts.append(p)
            rads.append(rr)
        patch = self.splat(np.concatenate(pts), np.concatenate(rads))
        patch.paint(lung_hu, -20.0, weight=self.lung)
        self.findings["Pulmonary fibrotic sequela"] = patch.mask(self.shape, 0.5, within=self.lung)
        return lung_hu

    def pleural_effusion(self, hu: np.ndarray) -> None:
        """Dependent fluid (supine): a posterior crescent along the chest wall, deepest in the
        posterior costophrenic recess and thinning to nothing at a height set by the amount
        (small: the bases, moderate: about the hila, large: most of the hemithorax)."""
        attrs = self.case["Pleural effusion"]
        rng = self.stream("Pleural effusion")
        depth0 = float(attrs["thickness_mm"])
        U2 = self.U[..., 0]
        # Posterior inner chest wall under every column.
        v_wall = -self.cav_b_post * np.clip(1 - (np.abs(U2) / self.cav_a) ** self.body_p, 0, 1) ** (1 / self.body_p)
        z_base = min(self.dome_r, self.dome_l) - 45
        z_top = {"small": self.dome_r + 55, "moderate": self.z_carina, "large": self.z_apex - 25}[attrs["amount"]]
        depth = 1.3 * depth0 * np.clip((z_top - self.Z) / (z_top - z_base), 0, 1) ** 0.6
        region = self.cavity & (self.Z > self.z_diaph - 30) & ~self.occupied
        region &= (self.V - v_wall[:, :, None]) < depth
        sides = {"left": self.U < self.x_mid, "right": self.U >= self.x_mid}
        chosen = ("left", "right") if attrs["side"] == "bilateral" else (attrs["side"],)
        fluid = np.zeros(self.shape, dtype=bool)
        for side in chosen:
            fluid |= region & sides[side] & (self.lung | (self.Z > self.z_diaph))
        hu[fluid] = HU_FLUID + 4.0 * rng.standard_normal()
        self.lung = self.lung & ~fluid
        self.findings["Pleural effusion"] = fluid

    # -- organs on top of the lungs --------------------------------------------------------------

    def paint_heart(self, hu: np.ndarray) -> None:
        sl, U, V, Z = self.box(self.heart_c, float(self.heart_semi.max()) + self.peri_grow + 6)
        sub = hu[sl]
        cav = self.cavity[sl]
        eff = float(self.case.get("Pericardial effusion", {}).get("thickness_mm", 0))
        fat_t = 4.0
        q_sac = self.heart_q(sl, U, V, Z, fat_t + eff + 1.5)
        sub[(q_sac <= 1) & cav] = 30.0  # pericardium
        if eff > 0:
            q_eff = self.heart_q(sl, U, V, Z, fat_t + eff)
            m = (q_eff <= 1) & cav
            sub[m] = HU_FLUID + 6.0
        q_fat = self.heart_q(sl, U, V, Z, fat_t)
        sub[(q_fat <= 1) & cav] = HU_FAT  # epicardial fat
        q = self.heart_q(sl, U, V, Z)
        heart = (q <= 1) & cav
        sub[heart] = HU_BLOOD
        hmask = np.zeros(self.shape, dtype=bool)
        hmask[sl] = heart
        self.masks["heart"] = hmask
        if eff > 0:
            pm = np.zeros(self.shape, dtype=bool)
            pm[sl] = (q_eff <= 1) & (q_fat > 1) & cav
            self.findings["Pericardial effusion"] = pm
        if "Cardiomegaly" in self.case:
            self.findings["Cardiomegaly"] = hmask

    def paint_vessels(self, hu: np.ndarray) -> None:
        for name in ("descending aorta", "aortic arch", "ascending aorta", "supra-aortic arteries", "pulmonary trunk",
                     "right pulmonary artery", "left pulmonary artery", "superior vena cava", "esophagus"):
            items = self.paths[name] if isinstance(self.paths[name], list) else [self.paths[name]]
            for path, radii in items:
                self.tube(path, radii).paint(hu, HU_BLOOD, weight=self.body)
        # Airways last: air columns with a thin wall.
        for name in ("trachea", "right main bronchus", "left main bronchus"):
            path, radii = self.paths[name]
            self.tube(path, np.asarray(radii) + 2.0).paint(hu, HU_SOFT, weight=self.body)  # wall
            self.tube(path, radii).paint(hu, HU_AIR, weight=self.body)

    def paint_hernia(self, hu: np.ndarray) -> None:
        """Stomach herniated through the oesophageal hiatus: a walled pouch behind the heart just
        above the diaphragm, with gas over fluid (an air-fluid level)."""
        c, semi = self.hernia_geom
        rng = self.stream("Hiatal hernia")
        sl, U, V, Z = self.box(c, float(semi.max()) + 6)
        q = ((U - c[0]) / semi[0]) ** 2 + ((V - c[1]) / semi[1]) ** 2 + ((Z - c[2]) / semi[2]) ** 2
        q_in = ((U - c[0]) / (semi[0] - 4)) ** 2 + ((V - c[1]) / (semi[1] - 4)) ** 2 + ((Z - c[2]) / (semi[2] - 4)) ** 2
        sub = hu[sl]
        sub[q <= 1] = HU_SOFT + 5
        level = c[2] + rng.uniform(-0.2, 0.4) * semi[2]
        inner = q_in <= 1
        sub[inner & (Z < level)] = 20.0
        sub[inner & (Z >= level)] = HU_AIR + 20
        m = np.zeros(self.shape, dtype=bool)
        m[sl] = q <= 1
        self.findings["Hiatal hernia"] = m

    def paint_lymph_nodes(self, hu: np.ndarray) -> None:
        attrs = self.case["Lymphadenopathy"]
        rng = self.stream("Lymphadenopathy")
        s = float(attrs["short_axis_mm"])
        t, car = self.trachea, self.z_carina
        pos = {
            "right paratracheal": [t[0] + self.r_trachea + 4 + s / 2, t[1] + 2, car + 22],
            "prevascular": [self.asc[0] - 18, self.asc[1] + self.r_asc + s / 2 + 2, self.z_arch_top - self.r_arch - 6],
            "aortopulmonary window": [self.desc[0] + 10, 0.5 * (self.desc[1] + self.asc[1]), car + 4],
            "subcarinal": [t[0] - 3, t[1] - 8, car - 14 - s / 2],
            "right hilar": self.hila["right"] + [s / 2 + 2, 6, -12],
            "left hilar": self.hila["left"] + [-(s / 2 + 2), 6, -10],
        }
        m = np.zeros(self.shape, dtype=bool)
        for st in attrs["stations"]:
            n_nodes = 1 + int(rng.random() < 0.4)
            for k in range(n_nodes):
                c = np.asarray(pos[st], dtype=np.float64) + rng.normal(0, 3, 3) + [0, 0, 14 * k]
                ss = s if k == 0 else s * rng.uniform(0.75, 0.95)
                semi = np.array([ss / 2, ss / 2 * rng.uniform(1.0, 1.25), ss / 2 * rng.uniform(1.3, 1.7)])
                sl, cov = self._blob(c, semi, rng, 0.08)
                cov = cov * self.body[sl]
                sub = hu[sl]
                sub += (38.0 - sub) * cov
                m[sl] |= cov > 0.5
        self.findings["Lymphadenopathy"] = m

    def paint_bones(self, hu: np.ndarray) -> None:
        rng = self.stream("bones")
        U, V, Z = self.U, self.V, self.Z
        # Vertebral bodies (cortical shell, cancellous core) with discs every ~28 mm.
        period = rng.uniform(26, 30)
        phase = rng.uniform(0, period)
        disc = (((Z - phase) / period) % 1.0) < 0.2
        rr = np.sqrt(U**2 + (V - self.yv) ** 2)
        body = (rr < self.rv) & np.ones_like(Z, dtype=bool)
        core = rr < self.rv - 2.5
        vb = np.where(core, 320.0, 650.0) + np.zeros_like(Z)
        vb = np.where(disc, 85.0, vb)
        hu[body] = vb[body]
        # Canal (CSF and cord), laminae and spinous processes.
        yc = self.yv - self.rv - 9
        rc = np.sqrt(U**2 + (V - yc) ** 2)
        arch = (rc < 15) & (rc >= 8) & (V < yc + 4)
        spinous = (np.abs(U) < 4) & (V < yc - 10) & (V > yc - 45)
        post = (arch | spinous) & ~disc
        hu[post & self.body] = 550.0
        hu[((rc < 8) & np.ones_like(Z, dtype=bool)) & self.body] = 20.0
        # Ribs: oblique bands round the ribcage, sloping down anteriorly, ~1 cm high every ~26 mm.
        ang_from_back = np.arccos(np.clip(-V / np.maximum(np.sqrt(U**2 + V**2), 1e-3), -1, 1))  # 0 posterior, pi anterior
        rib_period = rng.uniform(24, 28)
        slope = rng.uniform(22, 30)  # mm the rib drops from back to front per radian
        rib_phase = (Z + slope * ang_from_back - rng.uniform(0, rib_period)) / rib_period
        on_rib = self.rib_band & (np.cos(2 * np.pi * rib_phase) > 0.3)
        ribs = on_rib & (ang_from_back < math.radians(150)) & (Z < self.z_apex + 15)
        cartilage = on_rib & (ang_from_back >= math.radians(150)) & (np.abs(U) > 14)  # costal cartilage, anterior
        hu[ribs] = 650.0
        hu[cartilage] = 140.0
        # Sternum.
        sternum = (np.abs(U) < 16) & (V > self.cav_b_ant - 2) & (V < self.cav_b_ant + 11)
        sternum = sternum & (Z > self.dome_r - 25) & (Z < self.z_apex - 15) & self.body
        hu[sternum] = 420.0
        self.masks["bone"] = body | (post & self.body) | ribs | sternum

    def paint_calcifications(self, hu: np.ndarray) -> None:
        if "Arterial wall calcification" in self.case:
            attrs = self.case["Arterial wall calcification"]
            rng = self.stream("Arterial wall calcification")
            per_site = {"mild": (4, 6), "moderate": (7, 10), "extensive": (11, 16)}[attrs["extent"]]
            pts, rads, amps = [], [], []
            for site in attrs["sites"]:
                items = self.paths[site] if isinstance(self.paths[site], list) else [self.paths[site]]
                for _ in range(int(rng.integers(per_site[0], per_site[1] + 1))):
                    path, radii = items[int(rng.integers(len(items)))]
                    dense, dr = _densify(path, radii, 2.0)
                    if site == "descending aorta":  # thoracic part only
                        keep = dense[:, 2] > self.dome_l - 20
                        dense, dr = dense[keep], dr[keep]
                    if site == "supra-aortic arteries":  # origins, near the arch
                        dense, dr = dense[: max(2, len(dense) // 3)], dr[: max(2, len(dr) // 3)]
                    i = int(rng.integers(len(dense)))
                    p, r = dense[i], dr[i]
                    tang = _unit(dense[min(i + 1, len(dense) - 1)] - dense[max(i - 1, 0)])
                    e1 = _unit(np.cross(tang, [0.3, 0.5, 0.8]))
                    e2 = np.cross(tang, e1)
                    phi0, span = rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 1.0)
                    for phi in np.linspace(phi0, phi0 + span, 4):  # curvilinear plaque along the wall
                        pts.append(p + (r - 0.8) * (math.cos(phi) * e1 + math.sin(phi) * e2))
                        rads.append(rng.uniform(1.8, 2.8))
                        amps.append(rng.uniform(0.75, 1.0))
            patch = self.splat(np.array(pts), np.array(rads), np.array(amps))
            patch.paint(hu, 1050.0, brighten=True)
            self.findings["Arterial wall calcification"] = patch.mask(self.shape, 0.4)
        if "Coronary artery wall calcification" in self.case:
            attrs = self.case["Coronary artery wall calcification"]
            rng = self.stream("Coronary artery wall calcification")
            hl = self.heart_semi[0]
            routes = {  # (long-axis positions, angles round the long axis); 0 rad = anterior
                "left main": (np.linspace(-0.62, -0.55, 3), np.linspace(-0.9, -0.6, 3)),
                "left anterior descending": (np.linspace(-0.5, 0.75, 12), np.full(12, -0.15)),
                "circumflex": (np.full(10, -0.5), np.linspace(-0.7, -2.4, 10)),
                "right coronary": (np.full(10, -0.5), np.linspace(0.4, 2.4, 10)),
            }
            pts, rads = [], []
            for vessel in attrs["vessels"]:
                ls, betas = routes[vessel]
                for _ in range(int(rng.integers(3, 6))):
                    i = int(rng.integers(len(ls)))
                    for j in range(i, min(i + 2, len(ls))):
                        along, b = ls[j] * hl, betas[j]
                        rho = math.sqrt(max(1 - (along / hl) ** 2, 0.05))
                        e = self.heart_axes
                        ring = (self.heart_semi[1] + 2.5) * math.cos(b) * e[1] + (self.heart_semi[2] + 2.5) * math.sin(b) * e[2]
                        p = self.heart_c + along * e[0] + rho * ring
                        pts.append(p)
                        rads.append(rng.uniform(2.2, 3.0))
            patch = self.splat(np.array(pts), np.array(rads))
            patch.paint(hu, 950.0, brighten=True)
            self.findings["Coronary artery wall calcification"] = patch.mask(self.shape, 0.4)

    def paint_medical_material(self, hu: np.ndarray) -> None:
        kind = self.case["Medical material"]["kind"]
        rng = self.stream("Medical material")
        svc = self.svc_xy
        # The right heart: towards the apex along the long axis, to the right of it.
        ra = self.heart_c + 0.25 * self.heart_semi[0] * self.heart_axes[0] + 0.6 * self.heart_semi[2] * self.heart_axes[2]
        cavo_atrial = np.array([svc[0], svc[1], self.heart_c[2] + 0.3 * self.heart_semi[2]])
        wall_y = self.body_b_ant - 0.7 * self.fat  # just under the skin (pectoral region)
        z_inf = self.z_apex - 45
        parts: list[tuple[_Patch, float]] = []  # (coverage, HU): metal ~2500, port and catheter less dense
        if kind == "pacemaker":
            gen = np.array([-0.5 * self.body_a, wall_y - 10, z_inf])
            g_pts = gen + np.stack(np.meshgrid(np.linspace(-18, 18, 7), [0.0], np.linspace(-15, 15, 6), indexing="ij"),
                                   -1).reshape(-1, 3)
            parts.append((self.splat(g_pts, np.full(len(g_pts), 4.0)), 2500.0))
            lead = np.array([gen, [-35, svc[1] + 6, z_inf + 20], [svc[0], svc[1], z_inf + 10], cavo_atrial, ra])
            parts.append((self.tube(lead, 1.3), 2500.0))
        elif kind == "port catheter":
            port = np.array([0.5 * self.body_a, wall_y - 12, z_inf])
            p_pts = port + np.stack(np.meshgrid(np.linspace(-10, 10, 5), [0.0], np.linspace(-10, 10, 5), indexing="ij"),
                                    -1).reshape(-1, 3)
            parts.append((self.splat(p_pts, np.full(len(p_pts), 4.0)), 1800.0))
            cath = np.array([port, [45, svc[1] + 8, z_inf + 25], [svc[0], svc[1], z_inf + 10], cavo_atrial])
            parts.append((self.tube(cath, 1.2), 1400.0))
        elif kind == "central venous catheter":
            cath = np.array([[svc[0] + 18, svc[1] - 4, float(self.gz[-1]) + 5], [svc[0], svc[1], z_inf + 10], cavo_atrial])
            parts.append((self.tube(cath, 1.3), 1600.0))
        else:  # sternotomy wires: loops round the sternum at 5-7 levels
            z0, z1 = self.dome_r - 15, self.z_apex - 25
            for z in np.linspace(z0, z1, int(rng.integers(5, 8))):
                ang = np.linspace(0, 2 * np.pi, 40)
                loop = np.column_stack([20 * np.cos(ang), self.cav_b_ant + 4.5 + 9 * np.sin(ang), np.full(40, z)])
                parts.append((self.tube(loop, 1.0), 3000.0))
        mask = np.zeros(self.shape, dtype=bool)
        for patch, value in parts:
            patch.paint(hu, value, brighten=True)
            mask |= patch.mask(self.shape, 0.3)
        self.findings["Medical material"] = mask

    # -- driver ---------------------------------------------------------------------------------

    def render(self) -> np.ndarray:
        self.sample_anatomy()
        self.build_coordinates()
        hu = self.paint_body()
        self.z_diaph = self.diaphragm()
        self.paint_abdomen(hu)
        # Above the apices the cavity is the thoracic inlet: muscle and fat, no lung.
        inlet = self.cavity & (self.Z > self.z_apex)
        hu[inlet] = 10.0
        self.mediastinum_masks()
        self.lungs()
        self.masks["lobes"] = self.lobes.copy()
        self.paint_lungs(hu)
        if "Pleural effusion" in self.case:
            self.pleural_effusion(hu)
        self.paint_heart(hu)
        self.paint_vessels(hu)
        if "Hiatal hernia" in self.case:
            self.paint_hernia(hu)
        if "Lymphadenopathy" in self.case:
            self.paint_lymph_nodes(hu)
        self.paint_bones(hu)
        self.paint_calcifications(hu)
        if "Medical material" in self.case:
            self.paint_medical_material(hu)
        noise = self.stream("noise").standard_normal(self.shape, dtype=np.float32)
        hu += self.noise_sigma * noise
        self.masks["body"] = self.body & np.ones(self.shape, dtype=bool)
        self.masks["lungs"] = self.lung
        return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


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
    r = _Renderer(case, rng, shp, sp)
    vol = r.render()
    aff = centred_affine(shp, sp)
    if not return_masks:
        return vol, aff
    masks = dict(r.masks)
    masks["findings"] = {k: v for k, v in r.findings.items() if k in case}
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
    `render_phantom`). An existing `root` is a `UserError` unless `overwrite`."""
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
    from medvtc.datasets.ct_report_text import write_report

    reports: dict[str, list[list[Any]]] = {"train": [], "valid": []}
    labels: dict[str, list[list[Any]]] = {"train": [], "valid": []}
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    with atomic_directory(root, overwrite=overwrite) as tmp:
        dataset = tmp / "dataset"
        for split, official, patient, split_id, index in tqdm(plan, desc="CT-RATE phantom", unit="vol", disable=not progress):
            name = f"{'valid' if official == 'valid' else 'train'}_{patient}_a_1.nii.gz"
            case = sample_case(np.random.default_rng([seed, split_id, index, 0]))
            vol, aff = render_phantom(case, np.random.default_rng([seed, split_id, index, 1]), shp, sp)
            save_nifti(dataset / volume_relpath(name), vol, aff)
            text_rng = np.random.default_rng([seed, split_id, index, 2])
            findings, impression = write_report(case, text_rng)
            clinical = _CLINICAL[int(text_rng.integers(len(_CLINICAL)))]
            technique = _TECHNIQUE[int(text_rng.integers(len(_TECHNIQUE)))]
            reports[official].append([name, clinical, technique, findings, impression])
            labels[official].append([name, *case_labels(case).tolist()])
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

"""The findings of a chest-CT phantom: one function per CT-RATE abnormality label, drawing it
into the anatomy of `medvtc.datasets.ct_phantom_anatomy` (as `medvtc.datasets.ct_report_text`
writes one sentence per label).

Each function takes the anatomy (`chest`), the finding's attributes from
`medvtc.datasets.ct_phantom.sample_case` (lobe, size, side, amount, sites...) and what it draws
into, draws from its own random stream (`chest.stream(label)`), so drawing a finding never
shifts the anatomy, the noise or another finding, and returns where the finding is (a bool
mask: ground truth for segmentation and for checking that a finding is really in the image).
They are grouped by what they draw into, in drawing order; `render_phantom` calls a group's
functions in the order given here for the labels the case has:

* `LUNG_DENSITY`: the aerated lung's density before vessels are drawn into it (mosaic
  attenuation, emphysema, ground-glass opacity), as a `LungDensity`;
* `AIRWAYS`: the bronchi's radii and walls before the trees are drawn (bronchiectasis,
  peribronchial thickening); they return which bronchi, and `dilated_bronchi_mask` /
  `thick_walls_mask` say where those are once drawn;
* `LUNG_PARENCHYMA`: the lung with its vessels and airways (septal lines, consolidation,
  atelectasis, nodules, fibrotic bands), returning the new lung and the mask;
* `PLEURA`, `HEART`, `MEDIASTINUM`, `OVER_BONES`: the whole volume, after the lungs, the heart,
  the great vessels and the bones are drawn (calcium and metal stay brighter than bone).

Cardiomegaly, a pericardial effusion and a hiatal hernia also take up room, so the anatomy is
shaped around them (see `medvtc.datasets.ct_phantom_anatomy`). Sizes survive resampling to
64 x 64 x 32: nodules >= 8 mm, effusion rims >= 8 mm. Calcified plaques (950-1050 HU) and metal
(>= 1400 HU) stay above the bones (320-650 HU), so they are separable by HU alone: the ct-report
input's [700, 1000) and >= 1000 HU channels hold them and nothing else (after partial-volume
averaging their voxels are faint, but not zero, and nothing else is there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from medvtc.datasets.ct_phantom_anatomy import (
    EPICARDIAL_FAT_MM,
    HU_AIR,
    HU_FLUID,
    HU_SOFT,
    LOBE_ID,
    BronchovascularTrees,
    ChestAnatomy,
)
from medvtc.datasets.ct_phantom_geometry import Patch, densify, unit

__all__ = [
    "LungDensity",
    "LUNG_DENSITY",
    "AIRWAYS",
    "LUNG_PARENCHYMA",
    "PLEURA",
    "HEART",
    "MEDIASTINUM",
    "OVER_BONES",
    "dilated_bronchi_mask",
    "thick_walls_mask",
]

Attrs = dict[str, Any]


@dataclass
class LungDensity:
    """The aerated lung's density (HU, full volume) and how strongly vessels show in it (1 =
    fully; emphysema and mosaic attenuation thin them)."""

    base: np.ndarray
    vessel_weight: np.ndarray


# --------------------------------------------------------------------------------------------
# The lung's density, before the vessels: (chest, attrs, lung) -> mask
# --------------------------------------------------------------------------------------------


def mosaic_attenuation_pattern(chest: ChestAnatomy, attrs: Attrs, lung: LungDensity) -> np.ndarray:
    # Geographic lobular patches of hypo- and hyper-attenuation with sharp borders;
    # vessels are smaller in the dark (hypoperfused or air-trapped) regions.
    f = chest.smooth_noise(chest.stream("Mosaic attenuation pattern"), 18.0)
    thr = 0.3 if attrs["extent"] == "patchy" else -0.1
    dark = chest.lung & (f > thr)
    bright = chest.lung & (f < thr - 0.8)
    base = lung.base
    lung.base = np.where(dark, base - 75.0, np.where(bright, base + 70.0, base))
    lung.vessel_weight = np.where(dark, 0.55, lung.vessel_weight)
    return dark


def emphysema(chest: ChestAnatomy, attrs: Attrs, lung: LungDensity) -> np.ndarray:
    """Low-attenuation areas (about -965 HU, vessels pruned) covering the share of the lung the
    extent gives, where the type puts them: centrilobular upper-zone clusters, paraseptal
    subpleural bullae, panlobular diffuse lower-zone."""
    rng = chest.stream("Emphysema")
    frac = {"mild": 0.12, "moderate": 0.25, "severe": 0.42}[attrs["extent"]]
    height = np.clip((chest.Z - chest.dome_r) / max(chest.z_apex - chest.dome_r, 1.0), 0, 1)
    if attrs["type"] == "centrilobular":
        zone, scale = 1.6 * height, 7.0  # upper-zone, small clustered holes
    elif attrs["type"] == "paraseptal":
        zone = 2.5 * np.clip((chest.lev_cav / chest.fz - 0.6) / 0.3, 0, 1) + 0.6 * height  # subpleural bullae
        scale = 9.0
    else:
        zone, scale = 1.4 * (1 - height), 14.0  # panlobular: diffuse, lower zones
    score = chest.smooth_noise(rng, scale) + zone
    vals = score[chest.lung]
    thr = np.quantile(vals[:: max(1, vals.size // 50000)], 1 - frac) if vals.size else 0.0
    laa = chest.lung & (score > thr)
    lung.base = np.where(laa, -965.0 + 8.0 * chest.smooth_noise(rng, 5.0), lung.base)
    lung.vessel_weight = np.where(laa, 0.3, lung.vessel_weight)
    return laa


def lung_opacity(chest: ChestAnatomy, attrs: Attrs, lung: LungDensity) -> np.ndarray:
    # Ground-glass: hazy increase in density that keeps the vessels visible.
    rng = chest.stream("Lung opacity")
    f = chest.smooth_noise(rng, 10.0)
    ggo = np.zeros(chest.shape, dtype=bool)
    for lobe_name in attrs["lobes"]:
        lobe = LOBE_ID[lobe_name]
        for c in chest.lobe_points(lobe, 2 if "patchy" in attrs["pattern"] else 1, rng):
            rad = rng.uniform(28, 45)
            sl, U, V, Z = chest.box(c, rad * 1.4)
            d = np.sqrt((U - c[0]) ** 2 + (V - c[1]) ** 2 + (Z - c[2]) ** 2) / rad
            ggo[sl] |= (d + 0.3 * f[sl] < 1.0) & (chest.lobes[sl] == lobe)
    lung.base = np.where(ggo, 0.25 * lung.base + 0.75 * (-560.0), lung.base)
    return ggo


# --------------------------------------------------------------------------------------------
# Airways, before the trees are drawn: (chest, attrs, trees) -> which bronchi
# --------------------------------------------------------------------------------------------


def bronchiectasis(chest: ChestAnatomy, attrs: Attrs, trees: BronchovascularTrees) -> np.ndarray:
    """Dilates the bronchi (generation >= 1) whose midpoint lies in the named lobes, more for the
    varicose type, and thickens their walls a little; returns which bronchi (bool per bronchus)."""
    lobes = {LOBE_ID[name] for name in attrs["lobes"]}
    dil = np.isin(trees.lobe, list(lobes)) & (trees.generation >= 1)
    factor = 2.6 if attrs["type"] == "varicose" else 2.2
    trees.bronchus_radius = np.where(dil, np.maximum(trees.bronchus_radius * factor, 3.5), trees.bronchus_radius)
    trees.wall = np.where(dil, np.maximum(trees.wall * 1.6, 1.5), trees.wall)
    return dil


def peribronchial_thickening(chest: ChestAnatomy, attrs: Attrs, trees: BronchovascularTrees) -> np.ndarray:
    """Thick walls on the central bronchi (generation <= 4) of every lobe or of the lower lobes;
    returns which bronchi (bool per bronchus)."""
    lower = {LOBE_ID["right lower lobe"], LOBE_ID["left lower lobe"]}
    lobes = set(LOBE_ID.values()) if attrs["distribution"] == "bilateral" else lower
    thick = np.isin(trees.lobe, list(lobes)) & (trees.generation <= 4)
    trees.wall = np.where(thick, 0.6 * trees.bronchus_radius + 1.8, trees.wall)
    return thick


def dilated_bronchi_mask(chest: ChestAnatomy, trees: BronchovascularTrees, which: np.ndarray) -> np.ndarray:
    """Where the lumens of the bronchi `which` are (after `rasterize_trees`)."""
    sel = which[trees.point_bronchus]
    return chest.splat(trees.points[sel], trees.point_radius[sel]).mask(chest.shape, 0.5)


def thick_walls_mask(chest: ChestAnatomy, trees: BronchovascularTrees, which: np.ndarray) -> np.ndarray:
    """Where the walls of the bronchi `which` are, outside any bronchial air (after `rasterize_trees`)."""
    sel = which[trees.point_bronchus]
    wall = trees.wall[trees.point_bronchus][sel]
    return chest.splat(trees.points[sel], trees.point_radius[sel] + wall).mask(chest.shape, 0.5) & (chest.trees["lumen"] < 0.5)


# --------------------------------------------------------------------------------------------
# The lung with its vessels and airways: (chest, attrs, lung_hu) -> (lung_hu, mask)
# --------------------------------------------------------------------------------------------


def interlobular_septal_thickening(chest: ChestAnatomy, attrs: Attrs, lung_hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thickened interlobular septa: the walls of secondary pulmonary lobules (polygons of
    ~12-18 mm) drawn as 2-3 mm lines, in the zones the case names.

    The polygons are the edges of a Voronoi tessellation of jittered seeds (distance to the
    bisector of the two nearest seeds); the seeds drift slowly with height so the walls are
    sheets through the slices rather than a pattern stamped on every slice."""
    rng = chest.stream("Interlobular septal thickening")
    dist = attrs["distribution"]
    peripheral = np.clip((chest.lev_cav / chest.fz - 0.6) / 0.25, 0, 1)
    lower = np.clip((chest.z_carina - 10 - chest.Z) / 50.0, 0, 1)
    zone = {"lower zones": lower, "subpleural": peripheral, "diffuse": np.ones_like(lower)}[dist]
    region = chest.lung & (zone > 0.35)
    flat = np.flatnonzero(region)
    if flat.size == 0:
        return lung_hu, region
    i, j, k = np.unravel_index(flat, chest.shape)
    u, v, z = chest.U[i, j, 0], chest.V[i, j, 0], chest.gz[k]
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
    w = float(chest.spacing[0])
    c = min(1.0, 2 * half_t / w) * np.clip((max(half_t, w / 2) - to_wall) / w + 0.5, 0, 1)
    cov = np.zeros(chest.shape, dtype=np.float32)
    cov.reshape(-1)[flat] = c
    return lung_hu + (-40.0 - lung_hu) * cov, cov > 0.3


def consolidation(chest: ChestAnatomy, attrs: Attrs, lung_hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dense, irregular, dependent blob in the lobe (35 HU), with air bronchograms: the
    bronchi inside it stay air."""
    rng = chest.stream("Consolidation")
    lobe = LOBE_ID[attrs["lobe"]]
    # Dependent: pick the most posterior of a few candidate points.
    cand = chest.lobe_points(lobe, 6, rng)
    c = cand[np.argmin(cand[:, 1])] + [0, 10, 0]
    semi = rng.uniform(26, 40, 3) * [1, 0.9, 1.1]
    sl, cov = chest.blob(c, semi, rng, 0.25)
    mask = np.zeros(chest.shape, dtype=bool)
    mask[sl] = (cov > 0.5) & (chest.lobes[sl] == lobe)
    dense = 35.0 + 6.0 * rng.standard_normal()
    out = np.where(mask, dense, lung_hu)
    if attrs.get("air_bronchograms", True):
        air = mask & (chest.trees["lumen"] > 0.35)
        out = np.where(air, -900.0, out)
    return out, mask


def atelectasis(chest: ChestAnatomy, attrs: Attrs, lung_hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plate-like (linear/subsegmental) or segmental collapse: a flattened, dense disc in the
    lower part of the lobe, roughly horizontal as basal plate atelectases are."""
    rng = chest.stream("Atelectasis")
    lobe = LOBE_ID[attrs["lobe"]]
    thick, radius = {"linear": (9.0, 35.0), "subsegmental": (11.0, 30.0), "segmental": (18.0, 40.0)}[attrs["kind"]]
    c = chest.point_with_clearance(lobe, 0.6 * radius, rng)
    tilt = rng.normal(0, 0.3, 3) + [0, 0, 1]
    n = unit(tilt)
    e1 = unit(np.cross(n, [1.0, 0.0, 0.0]))
    axes = np.stack([e1, np.cross(n, e1), n])
    sl, cov = chest.blob(c, np.array([radius, radius * rng.uniform(0.5, 0.9), thick / 2]), rng, 0.15, axes)
    mask = np.zeros(chest.shape, dtype=bool)
    mask[sl] = (cov > 0.5) & (chest.lobes[sl] == lobe)
    return np.where(mask, 25.0 + 8.0 * rng.standard_normal(), lung_hu), mask


def lung_nodule(chest: ChestAnatomy, attrs: Attrs, lung_hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nodule the case names (its lobe and size) and `count - 1` smaller ones anywhere in the
    lungs: solid, or part-solid (a solid core in a ground-glass rim), each surrounded by lung."""
    rng = chest.stream("Lung nodule")
    mask = np.zeros(chest.shape, dtype=bool)
    extra = int(attrs.get("count", 1)) - 1  # further nodules: smaller, anywhere in the lungs
    sizes = [float(attrs["size_mm"])] + [float(rng.uniform(8, max(8.5, attrs["size_mm"]))) for _ in range(extra)]
    lobes = [LOBE_ID[attrs["lobe"]]] + [int(rng.integers(1, 6)) for _ in sizes[1:]]
    for k, (size, lobe) in enumerate(zip(sizes, lobes)):
        r = size / 2
        c = chest.point_with_clearance(lobe, r + 5, rng)
        box_r = 1.15 * r + 2 * float(chest.spacing.max())
        sl, cov = chest.blob(c, np.full(3, r), rng, 0.12, box_radius=box_r)
        cov = cov * chest.lung[sl]
        solid = 30.0 + 10.0 * rng.standard_normal()
        if attrs.get("kind") == "part-solid" and k == 0:
            # Solid core in a ground-glass rim.
            _, core = chest.blob(c, np.full(3, 0.55 * r), rng, 0.1, box_radius=box_r)
            val = -420.0 + (solid + 420.0) * core
        else:
            val = solid
        sub = lung_hu[sl]  # a view: painted in place
        sub += (val - sub) * cov
        mask[sl] |= cov > 0.5
    return lung_hu, mask


def pulmonary_fibrotic_sequela(chest: ChestAnatomy, attrs: Attrs, lung_hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear scars running to the pleura (post-inflammatory sequelae)."""
    rng = chest.stream("Pulmonary fibrotic sequela")
    lobe = LOBE_ID[attrs["lobe"]]
    starts = chest.lobe_points(lobe, int(rng.integers(3, 6)), rng)
    pts, rads = [], []
    for s in starts:
        # Towards the nearest chest wall, as parenchymal bands reach the pleura.
        outward = unit(np.array([s[0] - chest.x_mid, 0.6 * s[1], 0.0]))
        d = unit(outward + rng.normal(0, 0.5, 3))
        length = rng.uniform(35, 60)
        path = np.array([s, s + d * length * 0.5 + rng.normal(0, 4, 3), s + d * length])
        p, rr = densify(path, np.array([rng.uniform(3.0, 4.5), rng.uniform(2.2, 3.2), 1.8]))
        pts.append(p)
        rads.append(rr)
    patch = chest.splat(np.concatenate(pts), np.concatenate(rads))
    patch.paint(lung_hu, -20.0, weight=chest.lung)
    return lung_hu, patch.mask(chest.shape, 0.5, within=chest.lung)


# --------------------------------------------------------------------------------------------
# The whole volume: (chest, attrs, hu) -> mask, painting `hu` in place
# --------------------------------------------------------------------------------------------


def pleural_effusion(chest: ChestAnatomy, attrs: Attrs, hu: np.ndarray) -> np.ndarray:
    """Dependent fluid (supine): a posterior crescent along the chest wall, deepest in the
    posterior costophrenic recess and thinning to nothing at a height set by the amount
    (small: the bases, moderate: about the hila, large: most of the hemithorax)."""
    rng = chest.stream("Pleural effusion")
    depth0 = float(attrs["thickness_mm"])
    U2 = chest.U[..., 0]
    # Posterior inner chest wall under every column.
    v_wall = -chest.cav_b_post * np.clip(1 - (np.abs(U2) / chest.cav_a) ** chest.body_p, 0, 1) ** (1 / chest.body_p)
    z_base = min(chest.dome_r, chest.dome_l) - 45
    z_top = {"small": chest.dome_r + 55, "moderate": chest.z_carina, "large": chest.z_apex - 25}[attrs["amount"]]
    depth = 1.3 * depth0 * np.clip((z_top - chest.Z) / (z_top - z_base), 0, 1) ** 0.6
    region = chest.cavity & (chest.Z > chest.z_diaph - 30) & ~chest.occupied
    region &= (chest.V - v_wall[:, :, None]) < depth
    sides = {"left": chest.U < chest.x_mid, "right": chest.U >= chest.x_mid}
    chosen = ("left", "right") if attrs["side"] == "bilateral" else (attrs["side"],)
    fluid = np.zeros(chest.shape, dtype=bool)
    for side in chosen:
        fluid |= region & sides[side] & (chest.lung | (chest.Z > chest.z_diaph))
    hu[fluid] = HU_FLUID + 4.0 * rng.standard_normal()
    chest.lung = chest.lung & ~fluid  # the aerated lung, from here on
    return fluid


def pericardial_effusion(chest: ChestAnatomy, attrs: Attrs, hu: np.ndarray) -> np.ndarray:
    """Fluid in the pericardial sac, between the epicardial fat and the pericardium (the anatomy
    made the sac `thickness_mm` thicker for it)."""
    sl, U, V, Z = chest.box(chest.heart_c, float(chest.heart_semi.max()) + chest.peri_grow + 6)
    sub = hu[sl]
    cav = chest.cavity[sl]
    eff = chest.pericardial_fluid_mm
    fat_t = EPICARDIAL_FAT_MM
    q_eff = chest.heart_q(sl, U, V, Z, fat_t + eff)
    q_fat = chest.heart_q(sl, U, V, Z, fat_t)
    fluid = (q_eff <= 1) & (q_fat > 1) & cav
    sub[fluid] = HU_FLUID + 6.0
    pm = np.zeros(chest.shape, dtype=bool)
    pm[sl] = fluid
    return pm


def cardiomegaly(chest: ChestAnatomy, attrs: Attrs, hu: np.ndarray) -> np.ndarray:
    """The anatomy drew the heart enlarged by the degree (`ChestAnatomy.sample_anatomy`); the
    finding is the whole heart."""
    return chest.masks["heart"]


def hiatal_hernia(chest: ChestAnatomy, attrs: Attrs, hu: np.ndarray) -> np.ndarray:
    """Stomach herniated through the oesophageal hiatus: a walled pouch behind the heart just
    above the diaphragm, with gas over fluid (an air-fluid level)."""
    c, semi = chest.hernia_geom
    rng = chest.stream("Hiatal hernia")
    sl, U, V, Z = chest.box(c, float(semi.max()) + 6)
    q = ((U - c[0]) / semi[0]) ** 2 + ((V - c[1]) / semi[1]) ** 2 + ((Z - c[2]) / semi[2]) ** 2
    q_in = ((U - c[0]) / (semi[0] - 4)) ** 2 + ((V - c[1]) / (semi[1] - 4)) ** 2 + ((Z - c[2]) / (semi[2] - 4)) ** 2
    sub = hu[sl]
    sub[q <= 1] = HU_SOFT + 5
    level = c[2] + rng.uniform(-0.2, 0.4) * semi[2]
    inner = q_in <= 1
    sub[inner & (Z < level)] = 20.0
    sub[inner & (Z >= level)] = HU_AIR + 20
    m = np.zeros(chest.shape, dtype=bool)
    m[sl] = q <= 1
    return m


def lymphadenopathy(chest: ChestAnatomy, attrs: Attrs, hu: np.ndarray) -> np.ndarray:
    """Enlarged nodes (short axis as the case gives) at the named stations, one or two each."""
    rng = chest.stream("Lymphadenopathy")
    s = float(attrs["short_axis_mm"])
    t, car = chest.trachea, chest.z_carina
    pos = {
        "right paratracheal": [t[0] + chest.r_trachea + 4 + s / 2, t[1] + 2, car + 22],
        "prevascular": [chest.asc[0] - 18, chest.asc[1] + chest.r_asc + s / 2 + 2, chest.z_arch_top - chest.r_arch - 6],
        "aortopulmonary window": [chest.desc[0] + 10, 0.5 * (chest.desc[1] + chest.asc[1]), car + 4],
        "subcarinal": [t[0] - 3, t[1] - 8, car - 14 - s / 2],
        "right hilar": chest.hila["right"] + [s / 2 + 2, 6, -12],
        "left hilar": chest.hila["left"] + [-(s / 2 + 2), 6, -10],
    }
    m = np.zeros(chest.shape, dtype=bool)
    for st in attrs["stations"]:
        n_nodes = 1 + int(rng.random() < 0.4)
        for k in range(n_nodes):
            c = np.asarray(pos[st], dtype=np.float64) + rng.normal(0, 3, 3) + [0, 0, 14 * k]
            ss = s if k == 0 else s * rng.uniform(0.75, 0.95)
            semi = np.array([ss / 2, ss / 2 * rng.uniform(1.0, 1.25), ss / 2 * rng.uniform(1.3, 1.7)])
            sl, cov = chest.blob(c, semi, rng, 0.08)
            cov = cov * chest.body[sl]
            sub = hu[sl]
            sub += (38.0 - sub) * cov
            m[sl] |= cov > 0.5
    return m


def arterial_wall_calcification(chest: ChestAnatomy, attrs: Attrs, hu: np.ndarray) -> np.ndarray:
    """Curvilinear plaques (about 1050 HU) on the walls of the named aortic segments, more of them
    the more extensive."""
    rng = chest.stream("Arterial wall calcification")
    per_site = {"mild": (4, 6), "moderate": (7, 10), "extensive": (11, 16)}[attrs["extent"]]
    pts, rads, amps = [], [], []
    for site in attrs["sites"]:
        items = chest.paths[site] if isinstance(chest.paths[site], list) else [chest.paths[site]]
        for _ in range(int(rng.integers(per_site[0], per_site[1] + 1))):
            path, radii = items[int(rng.integers(len(items)))]
            dense, dr = densify(path, radii, 2.0)
            if site == "descending aorta":  # thoracic part only
                keep = dense[:, 2] > chest.dome_l - 20
                dense, dr = dense[keep], dr[keep]
            if site == "supra-aortic arteries":  # origins, near the arch
                dense, dr = dense[: max(2, len(dense) // 3)], dr[: max(2, len(dr) // 3)]
            i = int(rng.integers(len(dense)))
            p, r = dense[i], dr[i]
            tang = unit(dense[min(i + 1, len(dense) - 1)] - dense[max(i - 1, 0)])
            e1 = unit(np.cross(tang, [0.3, 0.5, 0.8]))
            e2 = np.cross(tang, e1)
            phi0, span = rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 1.0)
            for phi in np.linspace(phi0, phi0 + span, 4):  # curvilinear plaque along the wall
                pts.append(p + (r - 0.8) * (math.cos(phi) * e1 + math.sin(phi) * e2))
                rads.append(rng.uniform(1.8, 2.8))
                amps.append(rng.uniform(0.75, 1.0))
    patch = chest.splat(np.array(pts), np.array(rads), np.array(amps))
    patch.paint(hu, 1050.0, brighten=True)
    return patch.mask(chest.shape, 0.4)


def coronary_artery_wall_calcification(chest: ChestAnatomy, attrs: Attrs, hu: np.ndarray) -> np.ndarray:
    """Calcified spots (about 950 HU) along the named coronary arteries on the heart's surface."""
    rng = chest.stream("Coronary artery wall calcification")
    hl = chest.heart_semi[0]
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
                e = chest.heart_axes
                ring = (chest.heart_semi[1] + 2.5) * math.cos(b) * e[1] + (chest.heart_semi[2] + 2.5) * math.sin(b) * e[2]
                p = chest.heart_c + along * e[0] + rho * ring
                pts.append(p)
                rads.append(rng.uniform(2.2, 3.0))
    patch = chest.splat(np.array(pts), np.array(rads))
    patch.paint(hu, 950.0, brighten=True)
    return patch.mask(chest.shape, 0.4)


def medical_material(chest: ChestAnatomy, attrs: Attrs, hu: np.ndarray) -> np.ndarray:
    """A pacemaker (generator and leads), a port catheter, a central venous catheter or sternotomy
    wires, brighter than bone."""
    kind = attrs["kind"]
    rng = chest.stream("Medical material")
    svc = chest.svc_xy
    # The right heart: towards the apex along the long axis, to the right of it.
    ra = chest.heart_c + 0.25 * chest.heart_semi[0] * chest.heart_axes[0] + 0.6 * chest.heart_semi[2] * chest.heart_axes[2]
    cavo_atrial = np.array([svc[0], svc[1], chest.heart_c[2] + 0.3 * chest.heart_semi[2]])
    wall_y = chest.body_b_ant - 0.7 * chest.fat  # just under the skin (pectoral region)
    z_inf = chest.z_apex - 45
    parts: list[tuple[Patch, float]] = []  # (coverage, HU): metal ~2500, port and catheter less dense
    if kind == "pacemaker":
        gen = np.array([-0.5 * chest.body_a, wall_y - 10, z_inf])
        g_pts = gen + np.stack(np.meshgrid(np.linspace(-18, 18, 7), [0.0], np.linspace(-15, 15, 6), indexing="ij"),
                               -1).reshape(-1, 3)
        parts.append((chest.splat(g_pts, np.full(len(g_pts), 4.0)), 2500.0))
        lead = np.array([gen, [-35, svc[1] + 6, z_inf + 20], [svc[0], svc[1], z_inf + 10], cavo_atrial, ra])
        parts.append((chest.tube(lead, 1.3), 2500.0))
    elif kind == "port catheter":
        port = np.array([0.5 * chest.body_a, wall_y - 12, z_inf])
        p_pts = port + np.stack(np.meshgrid(np.linspace(-10, 10, 5), [0.0], np.linspace(-10, 10, 5), indexing="ij"),
                                -1).reshape(-1, 3)
        parts.append((chest.splat(p_pts, np.full(len(p_pts), 4.0)), 1800.0))
        cath = np.array([port, [45, svc[1] + 8, z_inf + 25], [svc[0], svc[1], z_inf + 10], cavo_atrial])
        parts.append((chest.tube(cath, 1.2), 1400.0))
    elif kind == "central venous catheter":
        cath = np.array([[svc[0] + 18, svc[1] - 4, float(chest.gz[-1]) + 5], [svc[0], svc[1], z_inf + 10], cavo_atrial])
        parts.append((chest.tube(cath, 1.3), 1600.0))
    else:  # sternotomy wires: loops round the sternum at 5-7 levels
        z0, z1 = chest.dome_r - 15, chest.z_apex - 25
        for z in np.linspace(z0, z1, int(rng.integers(5, 8))):
            ang = np.linspace(0, 2 * np.pi, 40)
            loop = np.column_stack([20 * np.cos(ang), chest.cav_b_ant + 4.5 + 9 * np.sin(ang), np.full(40, z)])
            parts.append((chest.tube(loop, 1.0), 3000.0))
    mask = np.zeros(chest.shape, dtype=bool)
    for patch, value in parts:
        patch.paint(hu, value, brighten=True)
        mask |= patch.mask(chest.shape, 0.3)
    return mask


# --------------------------------------------------------------------------------------------
# Drawing order
# --------------------------------------------------------------------------------------------

LUNG_DENSITY: dict[str, Callable[[ChestAnatomy, Attrs, LungDensity], np.ndarray]] = {
    "Mosaic attenuation pattern": mosaic_attenuation_pattern,
    "Emphysema": emphysema,
    "Lung opacity": lung_opacity,
}
# label -> (change the bronchi, where the changed bronchi are once drawn)
AIRWAYS: dict[str, tuple[Callable[[ChestAnatomy, Attrs, BronchovascularTrees], np.ndarray],
                         Callable[[ChestAnatomy, BronchovascularTrees, np.ndarray], np.ndarray]]] = {
    "Bronchiectasis": (bronchiectasis, dilated_bronchi_mask),
    "Peribronchial thickening": (peribronchial_thickening, thick_walls_mask),
}
LUNG_PARENCHYMA: dict[str, Callable[[ChestAnatomy, Attrs, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "Interlobular septal thickening": interlobular_septal_thickening,
    "Consolidation": consolidation,
    "Atelectasis": atelectasis,
    "Lung nodule": lung_nodule,
    "Pulmonary fibrotic sequela": pulmonary_fibrotic_sequela,
}
WholeVolume = Callable[[ChestAnatomy, Attrs, np.ndarray], np.ndarray]
PLEURA: dict[str, WholeVolume] = {"Pleural effusion": pleural_effusion}  # after the lungs
HEART: dict[str, WholeVolume] = {"Pericardial effusion": pericardial_effusion, "Cardiomegaly": cardiomegaly}
MEDIASTINUM: dict[str, WholeVolume] = {"Hiatal hernia": hiatal_hernia, "Lymphadenopathy": lymphadenopathy}
OVER_BONES: dict[str, WholeVolume] = {
    "Arterial wall calcification": arterial_wall_calcification,
    "Coronary artery wall calcification": coronary_artery_wall_calcification,
    "Medical material": medical_material,
}

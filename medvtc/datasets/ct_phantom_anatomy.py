"""The body of a chest-CT phantom: body wall, abdomen, mediastinal organs, lungs and lobes,
bronchovascular trees, heart, great vessels and bones.

`ChestAnatomy` draws one patient's anatomy on a `ScannerGrid` (`medvtc.datasets.ct_phantom_geometry`)
in Hounsfield units; `medvtc.datasets.ct_phantom_findings` draws the findings into it and
`medvtc.datasets.ct_phantom.render_phantom` runs the two in order. Every case has its own
anatomy (body size and ellipticity, fat thickness, lung height and diaphragm level, heart size,
position and axis, vessel and airway trees, slight rotation), drawn from named random streams
(`stream`), so drawing a finding never shifts the anatomy.

Findings that take up room are part of the anatomy's shape: cardiomegaly enlarges the heart
(`sample_anatomy`), a pericardial effusion thickens the pericardial sac and a hiatal hernia
claims its place above the diaphragm (`mediastinum_masks`), so the lungs and their vessel trees
are shaped around them; what is drawn inside that room is the finding's.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from medvtc.datasets.ct_phantom_geometry import ScannerGrid, segments_to_points, unit

__all__ = ["ChestAnatomy", "BronchovascularTrees", "LOBES", "LOBE_ID"]

LOBES: tuple[str, ...] = (
    "right upper lobe",
    "right middle lobe",
    "right lower lobe",
    "left upper lobe",
    "left lower lobe",
)
LOBE_ID = {name: i + 1 for i, name in enumerate(LOBES)}  # the values of the lobe map, 0 outside

# Hounsfield units of the tissues.
HU_AIR = -1000.0
HU_FAT = -100.0
HU_MUSCLE = 45.0
HU_SOFT = 40.0
HU_BLOOD = 40.0
HU_FLUID = 10.0
HU_LUNG = -860.0
HU_LIVER = 58.0

EPICARDIAL_FAT_MM = 4.0  # fat between the heart and the pericardium


def _stream_id(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


@dataclass
class BronchovascularTrees:
    """Segments of the trees (patient-frame mm): vessels (arteries beside their bronchi, and
    veins), and bronchi with their generation (0 at the hilum), the lobe their midpoint lies in
    and their wall thickness. `rasterize_trees` adds the bronchi's sample points (`points`, their
    radii `point_radius` and the bronchus `point_bronchus` each belongs to)."""

    vessel_start: np.ndarray
    vessel_end: np.ndarray
    vessel_radius: np.ndarray
    bronchus_start: np.ndarray
    bronchus_end: np.ndarray
    bronchus_radius: np.ndarray
    generation: np.ndarray
    lobe: np.ndarray
    wall: np.ndarray
    points: np.ndarray | None = None
    point_radius: np.ndarray | None = None
    point_bronchus: np.ndarray | None = None


class ChestAnatomy(ScannerGrid):
    """Draws one patient's anatomy (see the module docstring). Coordinates are millimetres in the
    patient frame (x right, y anterior, z superior) centred on the field of view."""

    def __init__(self, case: dict[str, dict[str, Any]], rng: np.random.Generator, shape, spacing) -> None:
        # Named child streams: drawing a finding never shifts the anatomy, noise or other
        # findings, so a case rendered without one finding differs only in that finding.
        self._base = int(rng.integers(0, 2**63 - 1))
        super().__init__(shape, spacing)
        self.case = case  # read for the findings that take up room (see the module docstring)
        self.pericardial_fluid_mm = float(case.get("Pericardial effusion", {}).get("thickness_mm", 0))
        self.masks: dict[str, np.ndarray] = {}
        self._lobe_flat: dict[int, np.ndarray] = {}

    def stream(self, name: str) -> np.random.Generator:
        """The random stream called `name` (anatomy, noise, or a finding's label)."""
        return np.random.default_rng([self._base, _stream_id(name)])

    def build(self) -> np.ndarray:
        """Everything up to the lungs: sample the anatomy, paint the body wall, abdomen and
        thoracic inlet, fix the mediastinal organs' room and the lungs and lobes around them.
        Returns the volume (HU, float32) painted so far; the cavity holds mediastinal fat."""
        self.sample_anatomy()
        hu = self.paint_body()
        self.z_diaph = self.diaphragm()
        self.paint_abdomen(hu)
        # Above the apices the cavity is the thoracic inlet: muscle and fat, no lung.
        inlet = self.cavity & (self.Z > self.z_apex)
        hu[inlet] = 10.0
        self.mediastinum_masks()
        self.lungs()
        self.masks["lobes"] = self.lobes.copy()
        return hu

    # -- body ---------------------------------------------------------------------------------

    def sample_anatomy(self) -> None:
        """Draw this body's sizes, positions and axes (all from the "anatomy" stream) and place it
        on the grid."""
        r = self.stream("anatomy")
        u = r.uniform
        theta = math.radians(u(-4, 4))
        cx, cy = u(-6, 6), u(-10, 2)
        self.place(theta, cx, cy)
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
        e_m = unit(np.array([0.0, 1.0, 0.0]) - e_l[1] * e_l)
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
        self.peri_grow = EPICARDIAL_FAT_MM + self.pericardial_fluid_mm + 1.5
        sl, U, V, Z = self.box(self.heart_c, float(self.heart_semi.max()) + self.peri_grow + margin + 6)
        occupied[sl] |= self.heart_q(sl, U, V, Z, self.peri_grow + margin) <= 1
        # Vertebral body.
        occupied |= ((self.U**2 + (self.V - self.yv) ** 2) < (self.rv + margin + 2) ** 2) & np.ones_like(self.Z, dtype=bool)
        # The mediastinal band between the lungs (anterior and posterior junction lines).
        occupied |= (np.abs(self.U - self.x_mid) < 11) & np.ones_like(self.Z, dtype=bool)
        hernia = self.case.get("Hiatal hernia")
        if hernia is not None:
            self.hernia_geom = self.hernia_geometry(hernia["size"])
            c, semi = self.hernia_geom
            sl, U, V, Z = self.box(c, float(semi.max()) + margin + 6)
            g = semi + margin
            occupied[sl] |= ((U - c[0]) / g[0]) ** 2 + ((V - c[1]) / g[1]) ** 2 + ((Z - c[2]) / g[2]) ** 2 <= 1
        self.occupied = occupied

    def hernia_geometry(self, size: str) -> tuple[np.ndarray, np.ndarray]:
        """Centre and semi-axes (mm) of a hiatal hernia of `size` just above the diaphragm, behind
        the heart (its own "Hiatal hernia/geometry" stream)."""
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
        lobes[right & lower] = LOBE_ID["right lower lobe"]
        lobes[right & ~lower & (self.Z < z_hf)] = LOBE_ID["right middle lobe"]
        lobes[right & ~lower & (self.Z >= z_hf)] = LOBE_ID["right upper lobe"]
        lobes[left & lower] = LOBE_ID["left lower lobe"]
        lobes[left & ~lower] = LOBE_ID["left upper lobe"]
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

    def grow_bronchovascular_trees(self) -> BronchovascularTrees:
        """Bronchovascular trees, grown generation by generation (vectorised over branches).

        Each lobe gets a bronchus with its companion artery from the hilum, plus a vein tree;
        every branch steers toward a random point of its lobe so the trees fill the lobes. Airway
        findings (bronchiectasis, peribronchial thickening) then change the bronchi's radii and
        walls before `rasterize_trees` draws them; emphysema and mosaic attenuation thin the
        vessels where they are drawn into the lung."""
        r = self.stream("trees")
        roots = {
            "right upper lobe": ("right", [0.6, 0.1, 0.8]),
            "right middle lobe": ("right", [0.6, 0.7, -0.3]),
            "right lower lobe": ("right", [0.5, -0.5, -0.7]),
            "left upper lobe": ("left", [-0.6, 0.3, 0.7]),
            "left lower lobe": ("left", [-0.5, -0.5, -0.7]),
        }
        art_s, art_e, art_r = [], [], []
        br_s, br_e, br_r, br_gen = [], [], [], []
        for lobe_name, (side, direction) in roots.items():
            lobe = LOBE_ID[lobe_name]
            for kind in ("bronchovascular", "vein"):
                hilum = self.hila[side].copy()
                if kind == "vein":
                    hilum = hilum + [0.0, -12.0, -22.0]
                starts = hilum[None]
                dirs = unit(np.asarray(direction, dtype=np.float64))[None]
                r0 = 5.0 if kind == "bronchovascular" else 5.5
                length0 = 30.0
                for gen in range(7):
                    n = len(starts)
                    targets = self.lobe_points(lobe, n, r)
                    pull = 0.9 if gen == 0 else 0.7
                    d = unit(dirs + pull * unit(targets - starts) + r.normal(0, 0.3, (n, 3)))
                    length = length0 * 0.8**gen * r.uniform(0.7, 1.25, n)
                    ends = starts + d * length[:, None]
                    rad = np.full(n, r0 * 0.76**gen)
                    off = np.zeros_like(starts)
                    if kind == "bronchovascular":
                        # The artery runs beside its bronchus (the bronchovascular bundle).
                        off = unit(np.cross(d, [0.0, 0.0, 1.0]) + 1e-3) * (2 * rad[:, None] + 0.5)
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
        mid = self.to_index(0.5 * (bs + be))
        mid_lobe = self.lobes[mid[:, 0], mid[:, 1], mid[:, 2]]
        wall = np.maximum(0.8, 0.22 * brad)
        return BronchovascularTrees(vs, ve, vr, bs, be, brad, bgen, mid_lobe, wall)

    def rasterize_trees(self, t: BronchovascularTrees) -> dict[str, np.ndarray]:
        """Coverage of the trees: {"vessel", "lumen" (bronchial air), "wall" (bronchial wall)},
        kept as `self.trees`; also records the bronchi's sample points on `t`."""
        pts, rr, _ = segments_to_points(t.vessel_start, t.vessel_end, t.vessel_radius)
        vessel = self.splat(pts, rr).full(self.shape)
        bpts, bres, seg = segments_to_points(t.bronchus_start, t.bronchus_end, t.bronchus_radius)
        lumen = self.splat(bpts, bres).full(self.shape)
        outer = self.splat(bpts, bres + t.wall[seg]).full(self.shape)
        t.points, t.point_radius, t.point_bronchus = bpts, bres, seg
        self.trees = {"vessel": vessel, "lumen": lumen, "wall": np.clip(outer - lumen, 0, 1)}
        return self.trees

    def lung_background(self) -> np.ndarray:
        """Aerated lung density everywhere (HU, full volume): a gravity-dependent gradient (supine:
        the posterior lung denser) and fine texture, before vessels, airways and findings."""
        dep = np.clip(-(self.V - self.cav_b_ant) / (self.cav_b_ant + self.cav_b_post), 0, 1) ** 2
        return HU_LUNG + 70.0 * dep + 12.0 * self.smooth_noise(self.stream("lung texture"), 8.0)

    def lung_with_trees(self, base: np.ndarray, vessel_weight: np.ndarray) -> np.ndarray:
        """The lung density `base` with the vessels (scaled by `vessel_weight`), bronchial walls and
        bronchial air drawn into it (after `rasterize_trees`)."""
        trees = self.trees
        lung_hu = base + (HU_BLOOD - base) * trees["vessel"] * vessel_weight
        lung_hu = lung_hu + (30.0 - lung_hu) * trees["wall"]
        return lung_hu + (HU_AIR - lung_hu) * trees["lumen"]

    # -- organs on top of the lungs --------------------------------------------------------------

    def paint_heart(self, hu: np.ndarray) -> None:
        """Pericardium (as thick as any pericardial fluid needs), epicardial fat and the heart."""
        sl, U, V, Z = self.box(self.heart_c, float(self.heart_semi.max()) + self.peri_grow + 6)
        sub = hu[sl]
        cav = self.cavity[sl]
        eff = self.pericardial_fluid_mm
        fat_t = EPICARDIAL_FAT_MM
        q_sac = self.heart_q(sl, U, V, Z, fat_t + eff + 1.5)
        sub[(q_sac <= 1) & cav] = 30.0  # pericardium (fluid is drawn inside it by the finding)
        q_fat = self.heart_q(sl, U, V, Z, fat_t)
        sub[(q_fat <= 1) & cav] = HU_FAT  # epicardial fat
        q = self.heart_q(sl, U, V, Z)
        heart = (q <= 1) & cav
        sub[heart] = HU_BLOOD
        hmask = np.zeros(self.shape, dtype=bool)
        hmask[sl] = heart
        self.masks["heart"] = hmask

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

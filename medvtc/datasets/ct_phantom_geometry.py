"""The scanner grid of a chest-CT phantom and how structures are drawn on it.

`ScannerGrid` is the voxel grid (NIfTI order x, y, z; millimetre coordinates centred on the field
of view) with the patient placed on it: rotated in-plane by `theta` and shifted by (cx, cy), so
`U`, `V` are the patient-frame coordinates (x right, y anterior) of every (x, y) grid column and
`Z` those of every slice. Structures are drawn as soft coverage in [0, 1] with partial-volume
edges one in-plane voxel wide: `splat` (a union of spheres), `tube` (a polyline with radii),
`blob` (an irregular ellipsoid); the first two return a `Patch`, coverage over the grid box the
structure touches, so a thin tube costs no full-volume pass. `smooth_noise` is a smooth random
field for textures and patchy findings.

Used by `medvtc.datasets.ct_phantom_anatomy` (the body) and `medvtc.datasets.ct_phantom_findings`
(the findings); nothing here draws randomness except from the generator it is given.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Patch", "ScannerGrid", "unit", "densify", "segments_to_points"]


# --------------------------------------------------------------------------------------------
# Small geometry helpers
# --------------------------------------------------------------------------------------------


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def densify(path: np.ndarray, radii: np.ndarray | float, step: float | None = None) -> tuple[np.ndarray, np.ndarray]:
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


def segments_to_points(starts: np.ndarray, ends: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised `densify` for many independent segments: points, radii and segment index."""
    length = np.linalg.norm(ends - starts, axis=1)
    step = np.clip(radii / 2, 1.0, 2.5)
    n = np.maximum(1, np.ceil(length / step).astype(np.int64)) + 1
    seg = np.repeat(np.arange(len(starts)), n)
    first = np.cumsum(n) - n
    t = (np.arange(n.sum()) - first[seg]) / (n[seg] - 1)
    pts = starts[seg] + (ends[seg] - starts[seg]) * t[:, None]
    return pts, radii[seg], seg


# --------------------------------------------------------------------------------------------
# Drawing on the grid
# --------------------------------------------------------------------------------------------


class Patch:
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


class ScannerGrid:
    """The voxel grid and the patient's placement on it (see the module docstring). `place` must
    be called before anything is drawn."""

    def __init__(self, shape, spacing) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.spacing = np.asarray(spacing, dtype=np.float64)
        n = np.asarray(self.shape)
        self.centre_idx = (n - 1) / 2.0
        self.gx, self.gy, self.gz = [
            ((np.arange(k) - (k - 1) / 2.0) * s).astype(np.float32) for k, s in zip(self.shape, self.spacing)
        ]

    def place(self, theta: float, cx: float, cy: float) -> None:
        """Put the patient on the grid: rotated by `theta` (radians) in-plane and centred at
        (cx, cy) mm; sets the patient-frame coordinates `U`, `V` (x, y, 1) and `Z` (1, 1, z)."""
        self.theta, self.cx, self.cy = theta, cx, cy
        gx, gy = self.gx[:, None] - self.cx, self.gy[None, :] - self.cy
        c, s = math.cos(self.theta), math.sin(self.theta)
        self.U = (c * gx + s * gy).astype(np.float32)[:, :, None]
        self.V = (-s * gx + c * gy).astype(np.float32)[:, :, None]
        self.Z = self.gz[None, None, :]

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

    # -- drawing --------------------------------------------------------------------------------

    def splat(self, pts: np.ndarray, radii: np.ndarray, amp: np.ndarray | float = 1.0) -> Patch:
        """Soft union of spheres (patient-frame centres, mm radii) -> coverage in [0, 1] over the
        grid box the spheres touch.

        Edges are one in-plane voxel wide and a structure thinner than a voxel gets the fraction
        of the voxel it fills, which is what partial-volume averaging does to a 1 mm vessel or
        wire in a 3 mm voxel. A slice is a slab: anything within its thickness counts."""
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
        radii = np.asarray(radii, dtype=np.float64).reshape(-1)
        if len(pts) == 0:
            return Patch((slice(0, 0),) * 3, np.zeros((0, 0, 0), dtype=np.float32))
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
            return Patch((slice(0, 0),) * 3, np.zeros((0, 0, 0), dtype=np.float32))
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
        return Patch(tuple(slice(a, b) for a, b in zip(lo, hi)), cov.reshape(tuple(box)))

    def tube(self, path, radii, amp: float = 1.0) -> Patch:
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
            return Patch((slice(0, 0),) * 3, np.zeros((0, 0, 0), dtype=np.float32))
        lo = np.min([p[0] for p in pieces], axis=0)
        hi = np.max([p[1] for p in pieces], axis=0)
        cov = np.zeros(tuple(hi - lo), dtype=np.float32)
        for plo, phi, c in pieces:
            sub = cov[tuple(slice(x - y, z - y) for x, z, y in zip(plo, phi, lo))]
            np.maximum(sub, c, out=sub)
        return Patch(tuple(slice(x, y) for x, y in zip(lo, hi)), cov)

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

    def blob(self, centre: np.ndarray, semi: np.ndarray, rng: np.random.Generator, rough: float,
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

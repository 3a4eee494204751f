"""medvtc.datasets.ct_phantom_geometry: the scanner grid, patches, spheres, tubes and blobs."""

from __future__ import annotations

import math

import numpy as np

from medvtc.datasets.ct_phantom_geometry import Patch, ScannerGrid, densify, segments_to_points, unit


def _grid(theta: float = 0.0, cx: float = 0.0, cy: float = 0.0, spacing=(2.0, 2.0, 2.0)) -> ScannerGrid:
    g = ScannerGrid((40, 40, 30), spacing)
    g.place(theta, cx, cy)
    return g


def test_helpers():
    np.testing.assert_allclose(np.linalg.norm(unit(np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])), axis=1), 1.0)
    pts, r = densify(np.array([[0.0, 0, 0], [10.0, 0, 0]]), 4.0)  # step = radius / 2 = 2 mm
    assert len(pts) == 6 and np.all(r == 4.0) and np.allclose(pts[-1], [10, 0, 0])
    p, rr, seg = segments_to_points(np.zeros((2, 3)), np.array([[8.0, 0, 0], [0, 0, 4.0]]), np.array([4.0, 2.0]))
    assert set(seg.tolist()) == {0, 1} and np.allclose(p[seg == 0][-1], [8, 0, 0]) and np.all(rr[seg == 1] == 2.0)


def test_place_and_frames():
    g = _grid(theta=math.radians(30), cx=5.0, cy=-3.0)
    centre = np.array([0.0, 0.0, 0.0])
    np.testing.assert_allclose(g.to_grid(centre), [5.0, -3.0, 0.0])  # the patient's origin sits at (cx, cy)
    i, j, k = g.to_index(centre)
    np.testing.assert_allclose([g.U[i, j, 0], g.V[i, j, 0]], [0, 0], atol=2.0)  # U, V: the patient frame
    assert g.U.shape == (40, 40, 1) and g.Z.shape == (1, 1, 30)
    sl, U, V, Z = g.box(centre, 6.0)
    assert U.shape == (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start, 1) and Z.shape[-1] == sl[2].stop - sl[2].start


def test_splat_covers_a_sphere_with_soft_edges():
    g = _grid()
    patch = g.splat(np.array([[0.0, 0.0, 0.0]]), np.array([8.0]))
    full = patch.full(g.shape)
    assert full.max() == 1.0 and full.min() == 0.0
    volume = full.sum() * 8.0  # voxels of 2 mm
    assert abs(volume - 4 / 3 * math.pi * 8.0**3) / (4 / 3 * math.pi * 8.0**3) < 0.15
    thin = g.splat(np.array([[0.0, 0.0, 0.0]]), np.array([0.5])).full(g.shape)
    assert 0 < thin.max() < 1  # thinner than a voxel: partial volume
    empty = g.splat(np.array([[500.0, 0.0, 0.0]]), np.array([3.0]))
    assert empty.cov.size == 0 and not empty.mask(g.shape, 0.5).any()


def test_tube_and_patch_painting():
    g = _grid()
    tube = g.tube(np.array([[-20.0, 0, 0], [20.0, 0, 0]]), 3.0)
    m = tube.mask(g.shape, 0.5)
    assert m[:, 20, 15].sum() >= 15 and not m[:, 5, 15].any()  # along x, only near the axis
    hu = np.full(g.shape, -1000.0, dtype=np.float32)
    tube.paint(hu, 40.0)
    assert hu.max() == 40.0 and hu[0, 0, 0] == -1000.0
    bone = np.full(g.shape, 700.0, dtype=np.float32)
    tube.paint(bone, 400.0, brighten=True)  # never darkens
    assert bone.min() == 700.0
    target = np.zeros(g.shape, dtype=bool)
    tube.mark(target, 0.5)
    assert np.array_equal(target, m)
    Patch((slice(0, 0),) * 3, np.zeros((0, 0, 0), np.float32)).paint(hu, 1.0)  # an empty patch paints nothing


def test_blob_and_smooth_noise():
    g = _grid()
    rng = np.random.default_rng(0)
    sl, cov = g.blob(np.zeros(3), np.array([10.0, 6.0, 6.0]), rng, 0.0)
    assert cov.shape == tuple(s.stop - s.start for s in sl) and cov.max() == 1.0
    inside = (cov > 0.5).sum() * 8.0
    assert abs(inside - 4 / 3 * math.pi * 360) / (4 / 3 * math.pi * 360) < 0.2
    f = g.smooth_noise(np.random.default_rng(1), 10.0)
    assert f.shape == g.shape and f.dtype == np.float32 and 0.7 < f.std() < 1.3
    np.testing.assert_array_equal(f, g.smooth_noise(np.random.default_rng(1), 10.0))

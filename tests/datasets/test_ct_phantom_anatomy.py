"""medvtc.datasets.ct_phantom_anatomy: one patient's body, lungs and lobes, heart and trees."""

from __future__ import annotations

import numpy as np

from medvtc.datasets.ct_phantom_anatomy import LOBE_ID, LOBES, ChestAnatomy

SHAPE, SPACING = (48, 48, 24), (8.0, 8.0, 320 / 24)


def _built(case=None, seed: int = 0) -> tuple[ChestAnatomy, np.ndarray]:
    chest = ChestAnatomy(case or {}, np.random.default_rng(seed), SHAPE, SPACING)
    return chest, chest.build()


def test_streams_are_named_and_reproducible():
    chest = ChestAnatomy({}, np.random.default_rng(5), SHAPE, SPACING)
    assert chest.stream("anatomy").random() == chest.stream("anatomy").random()
    assert chest.stream("anatomy").random() != chest.stream("Emphysema").random()


def test_lungs_and_lobes():
    chest, hu = _built()
    assert set(LOBE_ID.values()) == {1, 2, 3, 4, 5} and list(LOBE_ID) == list(LOBES)
    lobes = chest.masks["lobes"]
    assert set(np.unique(lobes).tolist()) == {0, 1, 2, 3, 4, 5}
    assert np.array_equal(lobes > 0, chest.lung)  # every lung voxel in exactly one lobe
    assert not (chest.lung & chest.occupied).any()  # the lungs leave room for the mediastinum
    assert hu.dtype == np.float32 and hu.min() == -1000.0  # air outside the body
    right = chest.lung & (chest.U > chest.x_mid)
    assert np.isin(lobes[right], [1, 2, 3]).all() and np.isin(lobes[chest.lung & ~right], [4, 5]).all()


def test_room_taking_findings_shape_the_anatomy():
    plain, _ = _built()
    big, _ = _built({"Cardiomegaly": {"degree": "marked"}})
    assert np.all(big.heart_semi > plain.heart_semi)
    sac, _ = _built({"Pericardial effusion": {"amount": "large", "thickness_mm": 25}})
    assert sac.peri_grow == plain.peri_grow + 25
    hernia, _ = _built({"Hiatal hernia": {"size": "large"}})
    assert hernia.occupied.sum() > plain.occupied.sum() and hernia.lung.sum() < plain.lung.sum()


def test_trees_heart_vessels_bones():
    chest, hu = _built()
    trees = chest.grow_bronchovascular_trees()
    n = len(trees.bronchus_start)
    assert trees.generation.shape == trees.lobe.shape == trees.wall.shape == (n,) and trees.generation.max() == 6
    drawn = chest.rasterize_trees(trees)
    assert set(drawn) == {"vessel", "lumen", "wall"} and drawn["vessel"].max() > 0.9
    assert trees.points is not None and len(trees.point_bronchus) == len(trees.points)
    lung_hu = chest.lung_with_trees(chest.lung_background(), np.ones(SHAPE, np.float32))
    assert np.median(lung_hu[chest.lung]) < -700
    chest.paint_heart(hu)
    chest.paint_vessels(hu)
    chest.paint_bones(hu)
    assert chest.masks["heart"].any() and abs(np.median(hu[chest.masks["heart"]]) - 40) < 1
    assert np.median(hu[chest.masks["bone"]]) > 300

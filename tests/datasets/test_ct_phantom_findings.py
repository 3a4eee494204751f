"""medvtc.datasets.ct_phantom_findings: one function per CT-RATE label, in drawing order."""

from __future__ import annotations

import numpy as np

from medvtc.datasets import ct_phantom as P
from medvtc.datasets import ct_phantom_findings as F
from medvtc.datasets.ct_rate_layout import CT_RATE_LABELS

GROUPS = (F.LUNG_DENSITY, F.AIRWAYS, F.LUNG_PARENCHYMA, F.PLEURA, F.HEART, F.MEDIASTINUM, F.OVER_BONES)


def test_every_label_is_drawn_by_exactly_one_function():
    labels = [label for group in GROUPS for label in group]
    assert sorted(labels) == sorted(CT_RATE_LABELS) and len(labels) == len(set(labels))


def test_each_finding_draws_only_from_its_own_stream():
    """A case rendered without one finding differs from the full case only where that finding
    is (or, for findings that take up room, around the organs it displaces)."""
    rng = np.random.default_rng(11)
    case = {}
    while len(case) < 6:
        case = P.sample_case(rng)
    vol, _, masks = P.render_phantom(case, np.random.default_rng(2), (48, 48, 24), return_masks=True)
    for label in case:
        assert masks["findings"][label].any(), label
    # a lung nodule is local: dropping it leaves every voxel away from it unchanged
    case = {"Lung nodule": {"lobe": "right lower lobe", "size_mm": 20, "count": 1, "kind": "solid"},
            "Medical material": {"kind": "pacemaker"}}
    with_all, _, m = P.render_phantom(case, np.random.default_rng(4), (48, 48, 24), return_masks=True)
    without, _ = P.render_phantom({"Medical material": case["Medical material"]}, np.random.default_rng(4), (48, 48, 24))
    changed = with_all != without
    near = np.zeros_like(changed)
    idx = np.argwhere(m["findings"]["Lung nodule"])
    lo, hi = idx.min(0) - 2, idx.max(0) + 3
    near[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    assert changed.any() and not (changed & ~near).any()

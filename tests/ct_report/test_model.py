"""CTReportModel (Argus-style CT report generation, arXiv 2406.07146) on tiny configs.

Volumes (16, 16, 8) with patches (4, 4, 2) give a 4x4x4 grid of N = 64 ViT tokens of width 32;
the LM is a 32-wide, 1-2 layer LLaMA. Everything runs on CPU in well under a minute.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoTokenizer

from medvtc.medical.ct_report import (
    CTReportConfig,
    CTReportModel,
    CTViTEncoder,
    encode_reports,
    train_report_tokenizer,
)

REPORTS = [
    "The lungs are clear. No pleural effusion.",
    "The lungs show a 5.2 cm mass in the right upper lobe; small effusion.",
]
CORPUS = REPORTS * 4 + ["Heart size is normal.", "No nodules (n=0).", "Mild T2-weighted hyperintensity."]
N_TOKENS = 64  # (16/4) * (16/4) * (8/2)


@pytest.fixture(autouse=True)
def _one_thread():
    """The 2-core test machines are shared: one torch thread keeps timings steady."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    return train_report_tokenizer(CORPUS, vocab_size=300)


def tiny_config(tok, **kw) -> CTReportConfig:
    base = dict(
        image_size=(16, 16, 8),
        patch_size=(4, 4, 2),
        vision_hidden_size=32,
        vision_layers=1,
        vision_heads=2,
        vision_mlp_dim=64,
        compressor="pixel_shuffle",
        compressor_budget=8,
        text_config=dict(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64
        ),
    )
    base.update(kw)
    return CTReportConfig.from_tokenizer(tok, **base)


def volumes(b: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, 16, 16, 8, generator=g)


def test_tokenizer_round_trip_and_determinism(tok):
    again = train_report_tokenizer(CORPUS, vocab_size=300)
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    for text in REPORTS + ["Unseen words: Übersicht, 12.5 mm (n=3)\nImpression: none."]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text  # byte-level BPE is lossless
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    enc = encode_reports(tok, REPORTS)
    lengths = enc["attention_mask"].sum(1)
    assert enc["input_ids"][0, lengths[0] - 1] == tok.eos_token_id
    assert (enc["labels"][enc["attention_mask"] == 0] == -100).all()


def test_forward_shapes_and_loss(tok):
    torch.manual_seed(0)
    cfg = tiny_config(tok)
    model = CTReportModel(cfg)
    enc = encode_reports(tok, REPORTS)
    out = model(pixel_values=volumes(), **enc)
    k, p, t = 8, len(cfg.prompt_token_ids), enc["input_ids"].shape[1]
    assert model.num_visual_tokens == k and p > 0
    assert out.logits.shape == (2, k + p + t, len(tok))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    # the defaults build: 512 tokens -> 64, LM width 256
    big = CTReportConfig.from_tokenizer(tok)
    assert big.grid == (8, 8, 8) and big.num_visual_tokens == 64 and big.text_config.hidden_size == 256


def test_loss_covers_only_report_tokens(tok):
    torch.manual_seed(0)
    cfg = tiny_config(tok)
    model = CTReportModel(cfg)
    enc = encode_reports(tok, REPORTS)
    out = model(pixel_values=volumes(), **enc)
    k, p = model.num_visual_tokens, len(cfg.prompt_token_ids)
    # the logit at position i predicts token i + 1: report token j (at K + P + j) comes from K + P + j - 1
    pred = out.logits[:, k + p - 1 : -1]
    manual = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), enc["labels"].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, manual)
    # text-only ("lm" stage) sequence [prompt][report]: the same holds without visual tokens
    out = model(**enc)
    pred = out.logits[:, p - 1 : -1]
    manual = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), enc["labels"].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, manual)
    # no labels, no loss
    assert model(pixel_values=volumes(), input_ids=enc["input_ids"]).loss is None


@pytest.mark.parametrize(
    "compressor, budget, k",
    [
        ("pixel_shuffle", 8, 8),
        ("pooling", 8, 8),
        ("perceiver", 6, 6),
        ("matryoshka", 5, 5),
        ("qg_vtc", 0.25, 16),
        ("none", 8, N_TOKENS),
    ],
)
def test_visual_token_count_equals_budget(tok, compressor, budget, k):
    torch.manual_seed(0)
    model = CTReportModel(tiny_config(tok, compressor=compressor, compressor_budget=budget))
    embeds, info = model.encode_images(volumes())
    assert embeds.shape == (2, k, 32)
    assert model.num_visual_tokens == k and info["num_visual_tokens"] == k
    assert info["grid"] == (4, 4, 4)
    if compressor in ("pixel_shuffle", "pooling", "qg_vtc", "none"):
        assert info["index"].shape == (2, k) and int(info["index"].max()) < N_TOKENS
    enc = encode_reports(tok, REPORTS)
    out = model(pixel_values=volumes(), **enc)
    assert out.logits.shape[1] == k + len(model.config.prompt_token_ids) + enc["input_ids"].shape[1]
    assert torch.isfinite(out.loss)


def test_instruction_guided_compressor_reads_the_prompt(tok):
    torch.manual_seed(0)
    model = CTReportModel(tiny_config(tok, compressor="qg_vtc", compressor_budget=16, compressor_args={"text_dim": 16}))
    assert model.compressor.needs_text and model.text_projector.in_features == 32
    x = volumes()
    before = model.encode_images(x)[1]["index"]
    with torch.no_grad():  # a different instruction embedding changes which tokens are relevant
        model.get_input_embeddings().weight[model.config.prompt_token_ids] = torch.randn(
            len(model.config.prompt_token_ids), 32
        )
    after = model.encode_images(x)[1]["index"]
    assert not torch.equal(before, after)
    # gradients reach the text side (projector + compressor) in stage 1
    model.freeze_for_stage(1)
    model(pixel_values=x, **encode_reports(tok, REPORTS)).loss.backward()
    assert model.text_projector.weight.grad is not None and model.compressor.proj.weight.grad is not None


def _grads(module: torch.nn.Module) -> list[bool]:
    return [p.grad is not None for p in module.parameters()]


@pytest.mark.parametrize("stage", ["lm", 1, "1+lm", 2])
def test_gradients_per_stage(tok, stage):
    torch.manual_seed(0)
    model = CTReportModel(tiny_config(tok))
    counts = model.freeze_for_stage(1 if stage == "1+lm" else stage, train_language_model=stage == "1+lm")
    enc = encode_reports(tok, REPORTS)
    model(pixel_values=volumes(), **enc).loss.backward()
    parts = (model.vision_encoder, model.compressor, model.projector, model.language_model)
    enc_g, comp_g, proj_g, lm_g = (_grads(m) for m in parts)
    if stage == "lm":
        assert all(lm_g) and not any(enc_g + comp_g + proj_g)
        assert counts["vision_encoder"] == counts["projector"] == 0
    elif stage == 1:
        assert all(comp_g) and all(proj_g) and not any(enc_g) and not any(lm_g)
        assert counts["vision_encoder"] == counts["language_model"] == 0
    elif stage == "1+lm":  # our stage 1 for an LM trained from scratch: only the ViT stays frozen
        assert all(comp_g + proj_g + lm_g) and not any(enc_g)
        assert counts["vision_encoder"] == 0 and counts["language_model"] > 0
    else:
        assert all(enc_g + comp_g + proj_g + lm_g)
        assert counts["vision_encoder"] > 0 and counts["language_model"] > 0
    with pytest.raises(ValueError, match="stage"):
        model.freeze_for_stage(3)


def test_save_load_round_trip(tok, tmp_path):
    torch.manual_seed(0)
    model = CTReportModel(tiny_config(tok)).eval()
    with torch.no_grad():  # leave the init (tied embeddings, averaging pixel shuffle) behind
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.fit_token_standardizer([volumes(4, seed=3), volumes(3, seed=4)])
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()

    loaded = CTReportModel.from_pretrained(tmp_path).eval()
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    # the fitted visual-token statistics travel with the weights
    assert loaded.token_standardizer.is_fitted
    assert torch.equal(loaded.token_standardizer.std, model.token_standardizer.std)
    assert loaded.language_model.lm_head.weight is loaded.language_model.get_input_embeddings().weight
    assert tok2.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    enc, enc2 = encode_reports(tok, REPORTS), encode_reports(tok2, REPORTS)
    assert torch.equal(enc["input_ids"], enc2["input_ids"])

    x = volumes()
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x, **enc).logits, loaded(pixel_values=x, **enc2).logits)
    g1, g2 = model.generate(x, max_new_tokens=12), loaded.generate(x, max_new_tokens=12)
    assert torch.equal(g1, g2)
    assert tok.batch_decode(g1, skip_special_tokens=True) == tok2.batch_decode(g2, skip_special_tokens=True)

    assert isinstance(AutoConfig.from_pretrained(tmp_path), CTReportConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path), CTReportModel)


def test_language_model_path_loads_local_weights_and_saves_self_contained(tok, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=48, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    ))
    lm.save_pretrained(tmp_path / "lm")
    cfg = tiny_config(tok, text_config=None, language_model_path=str(tmp_path / "lm"))
    assert cfg.text_config is None
    model = CTReportModel(cfg).eval()
    assert model.config.text_config.hidden_size == 48 and model.projector.linear_2.out_features == 48
    for a, b in zip(lm.state_dict().values(), model.language_model.state_dict().values()):
        assert torch.equal(a, b)  # pretrained weights kept through post_init
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "lm" / "model.safetensors").unlink()  # the saved model must not need the LM path
    loaded = CTReportModel.from_pretrained(tmp_path / "model").eval()
    enc = encode_reports(tok, REPORTS)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=volumes(), **enc).logits, loaded(pixel_values=volumes(), **enc).logits)


def test_beam_search_returns_valid_ids(tok):
    torch.manual_seed(0)
    model = CTReportModel(tiny_config(tok)).eval()
    out = model.generate(volumes(), max_new_tokens=8, num_beams=3)
    assert out.dtype == torch.long and out.shape[0] == 2 and 1 <= out.shape[1] <= 8
    assert int(out.min()) >= 0 and int(out.max()) < len(tok)
    multi = model.generate(volumes(), max_new_tokens=8, num_beams=3, num_return_sequences=2)
    assert multi.shape[0] == 4
    # text-only generation from the prompt alone (to check the "lm" stage)
    assert model.generate(None, max_new_tokens=4, batch_size=3).shape[0] == 3


def test_overfit_two_volumes_reproduces_each_report(tok):
    """Two volumes, two reports that share their first words: after training, greedy decoding
    reproduces each report exactly. The prompt is the same for both, so only the image can tell
    the LM which report to write; this proves the image conditioning end to end."""
    torch.manual_seed(0)
    cfg = tiny_config(tok, text_config=dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64
    ))
    model = CTReportModel(cfg)
    model.freeze_for_stage(2)
    x = volumes()
    enc = encode_reports(tok, REPORTS)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    max_new = enc["input_ids"].shape[1] + 2
    decoded = None
    for step in range(300):
        model.train()
        loss = model(pixel_values=x, **enc).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 24:
            model.eval()
            decoded = tok.batch_decode(model.generate(x, max_new_tokens=max_new), skip_special_tokens=True)
            if decoded == REPORTS:
                break
    assert decoded == REPORTS, decoded
    # and with the volumes swapped, the reports swap too
    swapped = tok.batch_decode(model.generate(x.flip(0), max_new_tokens=max_new), skip_special_tokens=True)
    assert swapped == REPORTS[::-1]
    # The image-dependence diagnostic sees it: pairing each report with the other volume costs
    # far more than the true pairing; identical volumes (nothing to tell apart) give no gain.
    from medvtc.medical.ct_report.task import ReportCollator, validation_loss

    collate = ReportCollator(tok, max_report_tokens=64)
    model.train()
    paired = validation_loss(model, [{"image": x[i], "report": REPORTS[i]} for i in range(2)], torch.device("cpu"), collate)
    assert model.training  # restored after the no-grad passes in eval mode
    assert paired["image_gain"] > 0.3, paired  # ~0 for a model that ignores the image
    same = validation_loss(model, [{"image": x[0], "report": r} for r in REPORTS], torch.device("cpu"), collate)
    assert same["image_gain"] == pytest.approx(0.0, abs=1e-6)


def test_vit_sdpa_and_activation_checkpointing():
    torch.manual_seed(0)
    enc = CTViTEncoder(
        in_channels=1, img_size=(16, 16, 8), patch_size=(4, 4, 2), hidden_size=32, num_layers=2,
        num_heads=2, mlp_dim=64, dropout_rate=0.1,
    )
    assert enc.grid == (4, 4, 4)
    assert all(b.attn.use_flash_attention for b in enc.blocks)  # SDPA, no N x N matrix kept
    x = volumes()
    enc.eval()
    with torch.no_grad():  # MONAI passes dropout_p to SDPA even in eval; the encoder turns it off
        assert torch.equal(enc(x), enc(x))
    enc.dropout_rate = 0.0
    enc.train()  # re-applies the (now zero) attention dropout
    for m in enc.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    out = enc(x)
    assert out.shape == (2, N_TOKENS, 32)
    out.square().mean().backward()
    ref = [p.grad.clone() for p in enc.parameters()]
    enc.zero_grad()
    enc.gradient_checkpointing = True
    out2 = enc(x)
    out2.square().mean().backward()
    torch.testing.assert_close(out2, out)
    for a, p in zip(ref, enc.parameters()):
        torch.testing.assert_close(p.grad, a)


def test_gradient_checkpointing_enable_reaches_the_vit(tok):
    model = CTReportModel(tiny_config(tok))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.vision_encoder.gradient_checkpointing and model.language_model.is_gradient_checkpointing
    loss = model(pixel_values=volumes(), **encode_reports(tok, REPORTS)).loss
    loss.backward()
    assert math.isfinite(loss.item())


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(image_size=(16, 16, 9)), "image_size"),
        (dict(patch_size=(4, 4, 0)), "patch_size"),
        (dict(compressor="no_such_method"), "compressor"),
        (dict(compressor_budget=65), "compressor_budget"),
        (dict(compressor_budget=1.5), "compressor_budget"),
        (dict(compressor="pixel_shuffle", compressor_budget=7), "compressor_budget"),
        (dict(compressor_args={"budget": 4}), "compressor_args"),
        (dict(compressor_args={"no_such_arg": 1}), "compressor_args"),
        (dict(compressor="qg_vtc", prompt=""), "prompt"),
        (dict(vision_heads=3), "vision_heads"),
    ],
)
def test_invalid_config_names_the_field(tok, kwargs, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(tok, **kwargs)


def test_unknown_compressor_lists_the_valid_ones(tok):
    with pytest.raises(ValueError, match="pixel_shuffle.*") as err:
        tiny_config(tok, compressor="no_such_method")
    assert "pooling" in str(err.value) and "none" in str(err.value)


# -- the conv stem and the warm-up wrappers (pretraining.py) ---------------------------------------


def test_conv_stem_shapes_and_power_of_two_check():
    from medvtc.medical.ct_report.vision_encoder import CTViTEncoder, conv_stem

    stem = conv_stem(3, 1, (8, 8, 4), 24)
    assert stem(torch.zeros(2, 1, 32, 32, 16)).shape == (2, 24, 4, 4, 4)
    enc = CTViTEncoder(img_size=(16, 16, 8), patch_size=(4, 4, 2), hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64, stem="conv")
    assert enc(volumes()).shape == (2, 64, 32) and enc.grid == (4, 4, 4)
    with pytest.raises(ValueError, match="power-of-two"):
        conv_stem(3, 1, (6, 6, 4), 24)
    with pytest.raises(ValueError, match="vision_stem"):
        CTReportConfig.from_tokenizer(train_report_tokenizer(CORPUS, vocab_size=300), image_size=(24, 24, 8), patch_size=(6, 6, 2), vision_stem="conv")


def test_frozen_conv_stem_keeps_its_batchnorm_statistics(tok):
    torch.manual_seed(0)
    model = CTReportModel(tiny_config(tok, vision_stem="conv"))
    bn = next(m for m in model.vision_encoder.modules() if isinstance(m, torch.nn.BatchNorm3d))
    model.freeze_for_stage(1)
    model.train()
    before = bn.running_mean.clone()
    model(pixel_values=volumes() * 5 + 3, **encode_reports(tok, REPORTS)).loss.backward()
    assert not bn.training and torch.equal(bn.running_mean, before)
    model.freeze_for_stage(2)
    model.train()
    model(pixel_values=volumes() * 5 + 3, **encode_reports(tok, REPORTS))
    assert bn.training and not torch.equal(bn.running_mean, before)  # unfrozen: statistics move again


def test_text_only_wrapper_matches_the_models_text_path(tok):
    from medvtc.medical.ct_report.pretraining import TextOnlyLM

    torch.manual_seed(0)
    model = CTReportModel(tiny_config(tok)).eval()
    enc = encode_reports(tok, REPORTS)
    wrapper = TextOnlyLM(model)
    torch.testing.assert_close(wrapper(**enc), model(**enc).loss)
    assert set(wrapper.state_dict()) == {f"language_model.{k}" for k in model.language_model.state_dict()}


def test_label_probe_learns_and_holds_only_the_encoder(tok):
    from medvtc.medical.ct_report.pretraining import LabelProbe, label_pos_weight, label_probe_metrics

    torch.manual_seed(0)
    model = CTReportModel(tiny_config(tok, vision_stem="conv"))
    x = volumes(8, seed=3)
    y = (x.mean(dim=(1, 2, 3, 4)) > x.mean()).float()[:, None].repeat(1, 3)  # brighter volumes positive
    y[:, 2] = 1 - y[:, 2]
    w = label_pos_weight(y)
    assert w.shape == (3,) and (w > 0).all()
    probe = LabelProbe(model, 3, w)
    keys = set(probe.state_dict())
    assert {k.split(".")[0] for k in keys} == {"vision_encoder", "head"}
    model.freeze_for_stage("vision")
    opt = torch.optim.Adam([p for p in probe.parameters() if p.requires_grad], lr=3e-3)
    first = float(probe(x, y))
    for _ in range(30):
        opt.zero_grad()
        probe(x, y).backward()
        opt.step()
    assert float(probe(x, y)) < 0.5 * first
    items = [{"image": x[i], "labels": y[i]} for i in range(8)]
    probe.eval()
    metrics = label_probe_metrics(probe, items, torch.device("cpu"), batch_size=3)
    assert metrics["auc"] > 0.9 and metrics["loss"] >= 0


def test_token_standardizer_fits_each_positions_statistics():
    from medvtc.medical.ct_report.token_standardizer import TokenStandardizer

    g = torch.Generator().manual_seed(0)
    offset = 5.0 * torch.randn(6, 4, generator=g)  # what every "patient" shares at a position
    scale = 0.1 + torch.rand(6, 4, generator=g)
    scale[0, 0] = 0.0  # a position that never varies (air): its std is floored, not divided by 0
    batches = [offset + scale * torch.randn(50, 6, 4, generator=g) for _ in range(4)]
    st = TokenStandardizer(6, 4, min_std=0.01)
    assert not st.is_fitted and torch.equal(st(batches[0]), batches[0])  # identity until fitted
    st.fit(iter(batches))
    assert st.is_fitted
    out = st(torch.cat(batches))
    assert out.mean(0).abs().max() < 1e-4
    std = out.std(0)
    std[0, 0] = 1.0
    assert (std - 1.0).abs().max() < 1e-3
    assert st.std[0, 0] == pytest.approx(0.01)
    with pytest.raises(ValueError, match=r"\[B, 6, 4\]"):
        st(torch.zeros(2, 5, 4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        TokenStandardizer(6, 4).fit([torch.zeros(1, 6, 4)])
    st.reset()
    assert not st.is_fitted and torch.equal(st(batches[1]), batches[1])


def test_fitted_standardizer_feeds_the_compressor_patient_specific_tokens(tok):
    """After fitting on a set of volumes, the compressor's input over that set has zero mean
    and unit spread at every position: what all volumes share at a position is removed."""
    torch.manual_seed(0)
    model = CTReportModel(tiny_config(tok, compressor="none")).eval()
    assert CTReportModel(tiny_config(tok, standardize_visual_tokens=False)).token_standardizer is None
    x = volumes(16, seed=5) * 0.2 + volumes(1, seed=6)  # volumes that share most of their content
    model.fit_token_standardizer([x[:8], x[8:]])
    captured = {}
    hook = model.compressor.register_forward_hook(lambda m, args, out: captured.update(tokens=args[0]))
    with torch.no_grad():
        model.encode_images(x)
    hook.remove()
    tokens = captured["tokens"]
    assert tokens.shape == (16, N_TOKENS, 32)
    assert tokens.mean(0).abs().max() < 1e-4
    assert (tokens.std(0) - 1.0).abs().max() < 1e-3


def test_cached_vision_tokens_give_the_same_loss_and_gradients_as_the_volume(tok):
    """Stage 1 on the token cache: `vision_tokens` (the frozen ViT's output) stand for
    pixel_values exactly; wrong shapes and both inputs at once are refused."""
    torch.manual_seed(0)
    model = CTReportModel(tiny_config(tok, compressor="perceiver", compressor_budget=4))
    model.freeze_for_stage(1, train_language_model=True)
    model.train()  # the frozen ViT stays in eval mode
    enc = encode_reports(tok, REPORTS)
    x = volumes()
    with torch.no_grad():
        tokens = model.vision_encoder(x)
    losses, grads = [], []
    for kwargs in ({"pixel_values": x}, {"vision_tokens": tokens}):
        model.zero_grad()
        loss = model(**kwargs, **enc).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append(model.compressor.latents.grad.clone())
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])
    with pytest.raises(ValueError, match="vision_tokens"):
        model(vision_tokens=tokens[:, :5], **enc)
    with pytest.raises(ValueError, match="not both"):
        model(pixel_values=x, vision_tokens=tokens, **enc)


def test_float16_pixel_values_reach_the_vit_as_they_are(tok, monkeypatch):
    """data.dtype=float16: the model and the label probe hand the compact channels to the ViT
    uncast (it embeds them slab by slab, `CTViTEncoder.embed_patches`), and give the loss and
    logits of the same values in float32."""
    from medvtc.medical.ct_report import vision_encoder
    from medvtc.medical.ct_report.pretraining import LabelProbe

    monkeypatch.setattr(vision_encoder, "_SLAB_ELEMENTS", 1)  # one patch row per slab: 4 slabs
    torch.manual_seed(0)
    model = CTReportModel(tiny_config(tok)).eval()
    probe = LabelProbe(model, 18)
    x = volumes().sigmoid().half()
    seen = []
    hook = model.vision_encoder.patch_embedding.patch_embeddings.register_forward_pre_hook(
        lambda _m, args: seen.append((args[0].shape[2], args[0].dtype))
    )
    enc = encode_reports(tok, REPORTS)
    with torch.no_grad():
        loss16, logits16 = model(pixel_values=x, **enc).loss, probe.logits(x)
        assert seen == [(4, torch.float32)] * 8  # 4 slabs of 4 rows, for the model and for the probe
        loss32, logits32 = model(pixel_values=x.float(), **enc).loss, probe.logits(x.float())
    hook.remove()
    torch.testing.assert_close(loss16, loss32)
    torch.testing.assert_close(logits16, logits32)


# -- finding tokens (classification-guided writing) ------------------------------------------------

FINDING_STATES = torch.tensor([[0, 1, 0], [1, 0, 1]])  # the two reports' findings (3 labels)


def finding_config(tok, **kw) -> CTReportConfig:
    return tiny_config(tok, num_finding_labels=3, finding_loss_weight=1.0, finding_tokens=True, **kw)


def test_finding_tokens_enter_the_sequence_and_teacher_force(tok):
    torch.manual_seed(0)
    model = CTReportModel(finding_config(tok)).eval()
    enc = encode_reports(tok, REPORTS)
    x = volumes()
    with torch.no_grad():
        out = model(pixel_values=x, **enc, finding_labels=FINDING_STATES.float())
        flipped = model(pixel_values=x, **enc, finding_labels=1 - FINDING_STATES.float())
    k, p, t = 8, len(model.config.prompt_token_ids), enc["input_ids"].shape[1]
    assert out.logits.shape[1] == k + 3 + p + t
    # the report's logits depend on the stated findings (teacher forcing uses the given labels)
    assert not torch.allclose(out.logits[:, -t:], flipped.logits[:, -t:])
    # without given labels the head decides, at config.finding_threshold
    _, info = model.encode_images(x)
    decided = torch.sigmoid(model.finding_logits(info)) >= model.config.finding_threshold
    model.finding_token_embeds(info)
    assert torch.equal(info["finding_states"], decided.long())
    with pytest.raises(ValueError, match="finding_states"):
        model.finding_token_embeds(info, torch.zeros(2, 4))
    # stage 1 trains the finding embeddings with the compressor, projector and head
    counts = model.freeze_for_stage(1)
    assert counts["finding_embedding"] == 2 * 3 * 32 and model.finding_embedding.weight.requires_grad


def test_reports_follow_the_finding_tokens(tok, tmp_path):
    """One volume, two reports told apart only by the finding tokens: after teacher-forced
    training, generate() writes the report of whatever findings it is given, and without them the
    report of the head's decision, which the finding loss taught to tell the two volumes apart.
    The reloaded model writes the same."""
    torch.manual_seed(0)
    cfg = finding_config(tok, text_config=dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64
    ))
    model = CTReportModel(cfg)
    model.freeze_for_stage(2)
    x = volumes()
    same = x[:1].expand(2, -1, -1, -1, -1)
    enc = encode_reports(tok, REPORTS)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    max_new = enc["input_ids"].shape[1] + 2
    for step in range(400):
        model.train()
        # the same volume with either finding set teaches the LM to write from the tokens; the
        # two volumes with their own findings teach the head
        a = model(pixel_values=same, **enc, finding_labels=FINDING_STATES.float()).loss
        b = model(pixel_values=x, **enc, finding_labels=FINDING_STATES.float()).loss
        opt.zero_grad()
        (a + b).backward()
        opt.step()
        if step % 50 == 49:
            model.eval()
            told = tok.batch_decode(model.generate(same, max_new_tokens=max_new, finding_states=FINDING_STATES),
                                    skip_special_tokens=True)
            decided = tok.batch_decode(model.generate(x, max_new_tokens=max_new), skip_special_tokens=True)
            if told == REPORTS and decided == REPORTS:
                break
    assert told == REPORTS and decided == REPORTS, (told, decided)
    swapped = model.generate(same, max_new_tokens=max_new, finding_states=FINDING_STATES.flip(0))
    assert tok.batch_decode(swapped, skip_special_tokens=True) == REPORTS[::-1]
    model.save_pretrained(tmp_path)
    loaded = CTReportModel.from_pretrained(tmp_path).eval()
    assert loaded.config.finding_tokens and torch.equal(loaded.finding_embedding.weight, model.finding_embedding.weight)
    assert torch.equal(loaded.generate(x, max_new_tokens=max_new), model.eval().generate(x, max_new_tokens=max_new))


@pytest.mark.parametrize("kwargs, field", [
    (dict(num_finding_labels=3, finding_tokens=True), "finding_tokens"),
    (dict(num_finding_labels=3, finding_loss_weight=1.0, finding_threshold=1.0), "finding_threshold"),
])
def test_invalid_finding_settings_name_the_field(tok, kwargs, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(tok, **kwargs)

"""The research path for a pretrained LM: `model.language_model_path` pointing at a local Hugging
Face causal LM, fine-tuned through LoRA adapters (peft) with gradient checkpointing, saved and
reloaded with its adapters. The LM is a tiny Llama (32 wide, 2 layers) with a tokenizer trained
here, written to a temporary folder by the tests, as a user's checkpoint would be."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medvtc.common.errors import ConfigError, UserError
from medvtc.medical.ct_report import CTReportConfig, CTReportModel, encode_reports, train_report_tokenizer

REPORTS = ["The lungs are clear. No pleural effusion.", "A 5 mm nodule in the right upper lobe; small effusion."]
CORPUS = REPORTS * 4 + ["Heart size is normal.", "No lymphadenopathy.", "Emphysema in both lungs."]
LORA_PREFIX = "language_model.base_model.model."  # where peft puts the wrapped LM's parameters


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def write_tiny_llama(path: Path, corpus: list[str], tie: bool = False):
    """A tiny Llama and its tokenizer saved with save_pretrained, as a user's local checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = train_report_tokenizer(corpus, vocab_size=300)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=512, tie_word_embeddings=tie,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    ))
    lm.save_pretrained(path)
    tok.save_pretrained(path)
    return tok, {k: v.clone() for k, v in lm.state_dict().items()}


def base_name(name: str) -> str | None:
    """A peft-wrapped model's parameter name -> the base LM's own name (None for an adapter or
    a parameter outside the LM)."""
    if not name.startswith(LORA_PREFIX) or "lora_" in name:
        return None
    return name.removeprefix(LORA_PREFIX).replace(".base_layer.", ".")


def tiny_model(tok, lm_path: Path, **kw) -> CTReportModel:
    cfg = CTReportConfig.from_tokenizer(
        tok, image_size=(16, 16, 8), patch_size=(4, 4, 2), vision_hidden_size=32, vision_layers=1, vision_heads=2,
        vision_mlp_dim=64, compressor="pixel_shuffle", compressor_budget=8, language_model_path=str(lm_path), **kw,
    )
    return CTReportModel(cfg)


def volumes(b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 1, 16, 16, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tie", [False, True])
def test_lora_trains_only_the_adapters_and_reloads_identically(tmp_path, tie):
    tok, base = write_tiny_llama(tmp_path / "lm", CORPUS, tie=tie)
    torch.manual_seed(0)
    model = tiny_model(tok, tmp_path / "lm", lora_rank=4, lora_alpha=8, lora_dropout=0.0)
    assert model.has_lora and model.config.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.language_model.is_gradient_checkpointing and model.vision_encoder.gradient_checkpointing
    counts = model.freeze_for_stage(2)
    lora = {n for n, p in model.named_parameters() if "lora_" in n}
    # 2 layers x 4 projections x (A [4, 32] + B [32, 4])
    assert len(lora) == 16 and counts["language_model"] == 16 * 4 * 32
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("language_model.")} == lora
    assert {n.split(".")[0] for n in trainable} == {"vision_encoder", "compressor", "projector", "language_model"}
    # the adapted LM starts as the pretrained one: its weights are kept, LoRA's B is zero
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n, t in start.items():
        if base_name(n) is not None:
            assert torch.equal(t, base[base_name(n)]), n
    enc = encode_reports(tok, REPORTS)
    x = volumes()

    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        loss = model(pixel_values=x, **enc).loss
        loss.backward()
        opt.step()
    assert all(model.get_parameter(n).grad is not None for n in lora)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), start[n])}
    assert lora <= changed and not any(base_name(n) for n in changed)
    assert any(n.startswith("vision_encoder.") for n in changed) and any(n.startswith("projector.") for n in changed)

    # saved with the adapters, reloaded with them: the same logits and reports, bit for bit,
    # without the LM checkpoint of language_model_path
    model.eval()
    model.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")
    (tmp_path / "lm" / "model.safetensors").unlink()
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["lora_rank"] == 4 and saved["lora_alpha"] == 8.0
    loaded = CTReportModel.from_pretrained(tmp_path / "saved").eval()
    assert loaded.has_lora
    with torch.no_grad():
        logits = model(pixel_values=x, **enc).logits
        assert torch.equal(logits, loaded(pixel_values=x, **enc).logits)
    g = model.generate(x, max_new_tokens=10)
    assert torch.equal(g, loaded.generate(x, max_new_tokens=10))
    if tie:
        lm = loaded.language_model
        assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight

    # merged for deployment: a plain LM that loads without peft, the same logits up to rounding
    loaded.merge_lora()
    assert not loaded.has_lora and loaded.config.lora_rank == 0
    loaded.save_pretrained(tmp_path / "merged")
    assert not any("lora_" in k for k in load_file(str(tmp_path / "merged" / "model.safetensors")))
    merged = CTReportModel.from_pretrained(tmp_path / "merged").eval()
    assert not merged.has_lora
    with torch.no_grad():
        torch.testing.assert_close(merged(pixel_values=x, **enc).logits, logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        merged.merge_lora()


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    tok, _ = write_tiny_llama(tmp_path / "lm", CORPUS)
    torch.manual_seed(0)
    model = tiny_model(tok, tmp_path / "lm", lora_rank=4, lora_dropout=0.0).train()
    model.freeze_for_stage(2)
    with torch.no_grad():  # non-zero adapters, so that A's gradient is non-zero too
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    enc, x = encode_reports(tok, REPORTS), volumes()

    def grads():
        model.zero_grad()
        model(pixel_values=x, **enc).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain = grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ckpt = grads()
    assert plain.keys() == ckpt.keys() and any("lora_A" in n and plain[n].abs().sum() > 0 for n in plain)
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], atol=1e-6, rtol=1e-5, msg=n)


def test_lora_target_modules_naming_no_module_is_one_clear_error(tmp_path):
    tok, _ = write_tiny_llama(tmp_path / "lm", CORPUS)
    with pytest.raises(ValueError, match=r"lora_target_modules: 'qkv' names no module of the language model \(LlamaForCausalLM\)"
                       r"; its linear layers are down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"):
        tiny_model(tok, tmp_path / "lm", lora_rank=4, lora_target_modules=["q_proj", "qkv"])
    # every linear layer, as peft's "all-linear" (the output head excepted)
    model = tiny_model(tok, tmp_path / "lm", lora_rank=2, lora_target_modules=["all-linear"])
    adapted = {n.split(".")[-4] for n, _ in model.named_parameters() if "lora_A" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("kwargs, field", [
    (dict(lora_rank=-1), "lora_rank"),
    (dict(lora_rank=2.5), "lora_rank"),
    (dict(lora_rank=4, lora_alpha=0), "lora_alpha"),
    (dict(lora_rank=4, lora_dropout=1.0), "lora_dropout"),
    (dict(lora_rank=4, lora_target_modules=[]), "lora_target_modules"),
])
def test_invalid_lora_settings_name_the_field(tmp_path, kwargs, field):
    tok = train_report_tokenizer(CORPUS, vocab_size=300)
    with pytest.raises(ValueError, match=field):
        CTReportConfig.from_tokenizer(tok, image_size=(16, 16, 8), patch_size=(4, 4, 2), vision_hidden_size=32,
                                      vision_heads=2, compressor_budget=8, **kwargs)


# ------------------------------------------------------------------------------------------------
# Through the task: `medvtc train --task ct-report` on a tiny phantom set
# ------------------------------------------------------------------------------------------------
TINY = [
    "data.num_train=6", "data.num_val=2", "data.num_test=2", "data.phantom_shape=[32,32,16]", "data.hu_bins=[]",
    "data.spatial_size=[16,16,8]", "model.patch_size=[4,4,2]", "model.vision_hidden_size=32", "model.vision_layers=1",
    "model.vision_heads=2", "model.vision_mlp_dim=64", "model.budget=8", "model.max_report_tokens=48",
    "stages.vision_steps=2", "stages.vision_batch_size=2", "stages.align_steps=2",
    "train.max_steps=3", "train.batch_size=2", "train.save_every=3", "train.progress=false", "train.threads=1",
    "generation.max_new_tokens=8",
]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from medvtc.tasks import get_task

    work = tmp_path_factory.mktemp("ct_lora")
    task = get_task("ct-report")
    task._generate(task.load_config(None, [f"data.root={work / 'data'}", *TINY]), overwrite=False)
    return task, work


def test_task_trains_lora_with_gradient_checkpointing_and_the_saved_model_reloads(phantom, capsys):
    from medvtc.datasets.ct_rate import read_ct_rate, report_text
    from medvtc.medical.ct_report.pipeline import CTReportGenerator

    task, work = phantom
    reports = [report_text(r) for r in read_ct_rate(work / "data", "train")]
    tok, base = write_tiny_llama(work / "lm", reports)
    cfg = task.load_config(None, [
        f"data.root={work / 'data'}", f"output_dir={work / 'run'}", *TINY, f"model.language_model_path={work / 'lm'}",
        "model.lora_rank=4", "model.lora_alpha=8", "model.gradient_checkpointing=true",
    ])
    model = task.build_model(cfg, tok)
    assert model.has_lora and model.language_model.is_gradient_checkpointing and model.vision_encoder.gradient_checkpointing

    assert task.train(cfg) == 0
    out = capsys.readouterr().out
    lora_params = 16 * 4 * 32  # 16 tensors of 4 x 32
    # the LM trains only through its adapters, in align (stages.align_language_model) and finetune
    assert "stage align: 2 steps, trainable compressor" in out and f"language_model {lora_params:,}" in out
    assert out.count(f"language_model {lora_params:,}") == 2 and "stage lm" not in out

    final = work / "run" / "final"
    weights = load_file(str(final / "model.safetensors"))
    assert json.loads((final / "config.json").read_text())["lora_rank"] == 4
    lora = [k for k in weights if "lora_" in k]
    assert len(lora) == 16 and all(weights[k].abs().sum() > 0 for k in lora if "lora_B" in k)  # B starts at 0
    lm_keys = [k for k in weights if base_name(k) is not None]
    assert {base_name(k) for k in lm_keys} == set(base)
    assert all(torch.equal(weights[k], base[base_name(k)]) for k in lm_keys)  # the base LM did not move

    # reloaded from the folder alone: the same validation reports as the trained model wrote
    (work / "lm" / "model.safetensors").unlink()
    gen = CTReportGenerator.from_pretrained(work / "run", device="cpu")
    assert gen.model.has_lora
    val = json.loads((final / "val_metrics.json").read_text())["reports"]
    val_set = task.datasets(cfg, ("val",))["val"]
    pixels = torch.stack([val_set[i]["image"] for i in range(len(val_set))])
    assert gen.generate_from_pixels(pixels, max_new_tokens=8) == [r["generated"] for r in val]


def test_task_refuses_bad_lora_settings_in_one_line(phantom, tmp_path):
    task, work = phantom
    with pytest.raises(ConfigError, match=r"^model: lora_rank=4 adapts a pretrained LM: set model.language_model_path"):
        task.load_config(None, [*TINY, "model.lora_rank=4"])
    tok, _ = write_tiny_llama(tmp_path / "lm", CORPUS)
    cfg = task.load_config(None, [*TINY, f"model.language_model_path={tmp_path / 'lm'}", "model.lora_rank=4",
                                  "model.lora_target_modules=[q_proj,query]"])
    with pytest.raises(UserError, match=r"^model config: lora_target_modules: 'query' names no module") as err:
        task.build_model(cfg, tok)
    assert "\n" not in str(err.value)

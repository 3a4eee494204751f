"""Policy costs: tokens, FLOPs, latency, and where a chunk's latency goes (stages)."""

from __future__ import annotations

import pytest

from medvtc.robotics.policy_cost import _main, measure_variants

TINY = {"dim_model": 32, "n_heads": 2, "n_layers": 1, "chunk_size": 4, "n_action_steps": 2}


def test_stage_breakdown_sums_to_the_chunk_and_shows_the_compressor():
    rows = {r["method"]: r for r in measure_variants(["none", "compressor_vla"], 64, repeats=3, warmup=1,
                                                     base_overrides=TINY)}
    for r in rows.values():
        stages = r["stage_ms"]
        assert set(stages) == {"text", "images", "compress", "head"} and all(v >= 0 for v in stages.values())
        assert sum(stages.values()) >= r["chunk_latency_ms"] * 0.999  # the head is the rest of the chunk
    assert rows["compressor_vla"]["tokens"] < rows["none"]["tokens"]
    assert rows["compressor_vla"]["stage_ms"]["compress"] > rows["none"]["stage_ms"]["compress"]  # none is an identity


def test_cli_takes_config_overrides_and_refuses_unknown_fields(capsys):
    _main(["--variants", "none", "--repeats", "1", "--image-size", "64",
           *[f"{k}={v}" for k, v in TINY.items()]])
    out = capsys.readouterr().out
    assert "| none | 128 |" in out and "chunk latency by stage" in out  # 8 x 8 grid per 64 px camera, 2 cameras
    with pytest.raises(SystemExit):
        _main(["--variants", "none", "--repeats", "1", "no_such_field=3"])
    assert "no_such_field" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _main(["--variants", "none", "dim_model"])


def test_compiled_twins_are_timed_beside_the_eager_policies_against_the_compiled_baseline(monkeypatch):
    """`compiled=True` adds `<variant>+compile` rows from copies whose network goes through
    torch.compile (replaced here by a recording identity: the plumbing is tested, not inductor);
    the eager policies stay uncompiled and each compiled row's ratios are to compiled `none`."""
    import torch

    from medvtc.robotics.policy_cost import COMPILED_SUFFIX, format_rows

    compiled = []

    def fake_compile(fn, **kwargs):
        compiled.append((fn.__self__, kwargs))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    rows = {r["method"]: r for r in measure_variants(["none", "compressor_vla"], 64, repeats=2, warmup=1,
                                                     base_overrides=TINY, compiled=True)}
    assert set(rows) == {"none", "compressor_vla", "none" + COMPILED_SUFFIX, "compressor_vla" + COMPILED_SUFFIX}
    assert len(compiled) == 2 and all(kw == {"dynamic": False} for _, kw in compiled)
    cvla, cvla_c, none_c = rows["compressor_vla"], rows["compressor_vla+compile"], rows["none+compile"]
    assert cvla_c["flops"] == cvla["flops"] and "stage_ms" not in cvla_c
    assert cvla_c["latency_vs_none"] == pytest.approx(cvla_c["chunk_latency_ms"] / none_c["chunk_latency_ms"])
    assert cvla["latency_vs_none"] == pytest.approx(cvla["chunk_latency_ms"] / rows["none"]["chunk_latency_ms"])
    assert none_c["latency_vs_none"] == pytest.approx(1.0)
    assert "| compressor_vla+compile |" in format_rows(list(rows.values()))

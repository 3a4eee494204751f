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

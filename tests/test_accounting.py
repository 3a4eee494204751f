"""FLOPs, parameters, latency, peak memory, and the benchmark results writer."""

from __future__ import annotations

import json

import torch

from medvtc.common import accounting
from medvtc.common.results import ResultRow, write_results


def test_flops_of_a_linear_layer_are_two_macs_per_weight_use():
    layer = torch.nn.Linear(16, 8, bias=False)
    x = torch.randn(4, 16)
    assert accounting.module_flops(layer, x) == 2 * 4 * 16 * 8


def test_cpu_attention_is_counted():
    q, k, v = torch.randn(1, 2, 16, 8), torch.randn(1, 2, 32, 8), torch.randn(1, 2, 32, 8)
    flops = accounting.count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    assert flops == 2 * (2 * 16 * 32 * 8) * 2


def test_params_count_shared_weights_once():
    a = torch.nn.Linear(4, 4)
    model = torch.nn.Sequential(a, a)
    assert accounting.count_params(model) == 20
    a.bias.requires_grad_(False)
    assert accounting.count_params(model, trainable_only=True) == 16


def test_peak_memory_sees_a_large_temporary():
    def allocate():
        x = torch.ones(64, 2**20)  # 256 MiB, touched
        return float(x[0, 0])

    peak = accounting.measure_peak_memory(allocate)
    assert 200 < peak < 1024, peak
    assert accounting.measure_peak_memory(lambda: None) < 50


def test_latency_is_a_median_of_positive_times():
    t = accounting.measure_latency(lambda: torch.randn(100, 100) @ torch.randn(100, 100), warmup=1, repeats=3)
    assert t > 0


def test_results_writer_follows_the_design_shape(tmp_path):
    rows = [ResultRow("a", 10, 1e9, 5, 1.5, 2.0, {"score": 0.5}), ResultRow("b", 20, 2e9, 0, 3.0, 1.0, {"score": 0.7})]
    paths = write_results("demo", rows, {"x": 1}, tmp_path)
    doc = json.loads(paths["json"].read_text())
    assert set(doc) == {"task", "created", "machine", "config", "rows"}
    assert set(doc["machine"]) >= {"cpu", "gpu", "torch"}
    assert doc["rows"][1] == {"method": "b", "tokens": 20, "flops": 2e9, "params": 0, "latency_ms": 3.0,
                              "peak_mem_mb": 1.0, "metrics": {"score": 0.7}, "cases": None}
    md = paths["md"].read_text()
    assert "| a | 10 |" in md and "score" in md
    assert "Paired differences" not in md  # no row has one


def test_results_markdown_shows_intervals_and_paired_differences(tmp_path):
    rows = [ResultRow("none", 64, 1e9, 5, 1.5, 2.0, {"f1": 0.5, "f1_ci": [0.41, 0.59]}),
            ResultRow("pool", 8, 1e9, 5, 1.5, 2.0, {"f1": 0.48, "f1_ci": [0.4, 0.56], "f1_diff": -0.02,
                                                    "f1_diff_ci": [-0.05, 0.01]}, cases={"seed_0": {"x": [1, 2]}})]
    paths = write_results("demo", rows, {"reference": "none"}, tmp_path)
    md = paths["md"].read_text()
    assert "| 0.500 [0.410, 0.590] |" in md and "f1_ci" not in md and "f1_diff" not in md.split("###")[0]
    assert "Paired differences to none" in md and "| pool | -0.020 [-0.050, +0.010] |" in md
    assert json.loads(paths["json"].read_text())["rows"][1]["cases"] == {"seed_0": {"x": [1, 2]}}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_labels_of_points_on_the_same_spot_are_stacked_not_overprinted():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medvtc.common.results import _place_labels

    fig, ax = plt.subplots()
    points = [("random", 0.367, 0.033), ("pooling", 0.367, 0.033), ("none", 1.165, 0.0), ("act", 3.76, 0.0)]
    for _, x, y in points:
        ax.scatter(x, y)
    _place_labels(ax, points)
    offsets = {a.get_text(): a.xyann for a in ax.texts}
    assert offsets["random"] == (3, 3.0) and offsets["pooling"][1] > offsets["random"][1] + 7  # stacked
    assert offsets["none"] == offsets["act"] == (3, 3.0)  # far apart: left where they are
    # every label is anchored at its own point; only the moved one gets a thin grey leader line
    anchors = {a.get_text(): a.xy for a in ax.texts}
    assert anchors == {name: (x, y) for name, x, y in points}
    leaders = {a.get_text(): a.arrow_patch for a in ax.texts}
    assert leaders["random"] is None and leaders["none"] is None and leaders["act"] is None
    moved = leaders["pooling"]
    assert moved is not None and moved.get_arrowstyle().__class__.__name__ == "Curve"  # "-": a plain line
    assert moved.get_linewidth() == 0.5
    fig.canvas.draw()  # the leader renders (a path from the label towards the point)
    assert len(moved.get_path().vertices) >= 2
    plt.close(fig)

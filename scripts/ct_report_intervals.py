"""Test-split clinical micro / macro F1 of ct-report runs with 95 % bootstrap intervals, and each
run's paired difference to the first, scored exactly as `medvtc bench --task ct-report` scores
its variants (`report_cases` and the bench's case statistics; 2,000 resamples over volumes):

    OMP_NUM_THREADS=1 python scripts/ct_report_intervals.py RUN_DIR [RUN_DIR ...] [-o FILE] [--per-label] [--overrides key=value ...]

For runs trained by hand with `medvtc train` (the bench does this itself). Each run reads the test
split under its own saved data settings (`RUN_DIR/config.yaml`'s `data`: input size, channels,
dtype; the defaults for a folder without one), with --overrides applied to every run; the runs must name the same
test volumes in the same order (checked), so the differences are paired by volume. Prints a JSON
object, which `-o` also writes. `--per-label` adds F1 against the label CSV: micro, the mean of the
small findings and each label's, and prints them as a markdown table (labels as rows)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from medvtc.common.config import read_yaml
from medvtc.common.intervals import as_columns, bootstrap_interval, format_interval, paired_difference_interval
from medvtc.common.io import atomic_write_json
from medvtc.datasets.ct_rate_layout import CT_RATE_LABELS
from medvtc.medical.ct_report.bench import case_statistics
from medvtc.medical.ct_report.evaluation import SMALL_FINDINGS, generate_reports, label_key, report_cases
from medvtc.medical.ct_report.pipeline import CTReportGenerator
from medvtc.tasks import get_task

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders (each with final/); the first is the reference")
    parser.add_argument("-o", "--output", help="also write the JSON here")
    parser.add_argument("--overrides", nargs="*", default=[], help="config overrides, key=value")
    parser.add_argument("--per-label", action="store_true", help="also each label's F1 against the label CSV, and a markdown table")
    args = parser.parse_args()
    task = get_task("ct-report")
    stats = case_statistics()
    cases, volumes = {}, {}
    for run in args.runs:
        saved = Path(run) / "config.yaml"
        # only the run's data settings: its model settings are in final/ (and an older run's yaml
        # may not validate under today's defaults)
        data = read_yaml(saved).get("data", {}) if saved.is_file() else {}
        cfg = task.load_config(None, [*(f"data.{k}={json.dumps(v)}" for k, v in data.items()), *args.overrides])
        test = task.datasets(cfg, ("test",))["test"]
        volumes[run] = [Path(r.path).name for r in test.records]
        if volumes[run] != volumes[args.runs[0]]:
            raise SystemExit(f"{run}: its test split ({len(volumes[run])} volumes under {cfg.data.root}) is not the same "
                             f"volumes as {args.runs[0]}'s: the differences would not be paired")
        gen = CTReportGenerator.from_pretrained(f"{run}/final", device="cpu")
        predictions = generate_reports(gen.model, gen.tokenizer, test, torch.device("cpu"), cfg.generation)
        cases[run] = as_columns(report_cases(predictions, test))
    out: dict[str, dict] = {}
    ref = args.runs[0]
    metrics = ["clinical_micro_f1", "clinical_macro_f1"]
    if args.per_label:
        metrics += ["label_micro_f1", "small_findings_f1", *(label_key(x) for x in CT_RATE_LABELS)]
    for run, c in cases.items():
        out[run] = {"volumes": len(test)}
        for metric in metrics:
            stat = stats[metric].statistic
            out[run][metric] = float(stat(c))
            out[run][f"{metric}_ci"] = [float(v) for v in bootstrap_interval(stat, c)]
            if run != ref:
                out[run][f"{metric}_diff"] = float(stat(c) - stat(cases[ref]))
                out[run][f"{metric}_diff_ci"] = [float(v) for v in paired_difference_interval(stat, c, cases[ref])]
    print(json.dumps(out, indent=1))
    if args.per_label:
        rows = [("mean of the small findings", "small_findings_f1"), ("label micro F1", "label_micro_f1"),
                *((x + (" *" if x in SMALL_FINDINGS else ""), label_key(x)) for x in CT_RATE_LABELS)]
        diff_runs = args.runs[1:]
        print("\n| label | " + " | ".join(args.runs) + "".join(f" | {r} - {ref}" for r in diff_runs) + " |")
        print("|" + "---|" * (1 + len(args.runs) + len(diff_runs)))
        for name, key in rows:
            cells = [format_interval(out[r][key], out[r][f"{key}_ci"], 2) for r in args.runs]
            cells += [format_interval(out[r][f"{key}_diff"], out[r][f"{key}_diff_ci"], 2, signed=True) for r in diff_runs]
            print(f"| {name} | " + " | ".join(cells) + " |")
    if args.output:
        atomic_write_json(args.output, out)

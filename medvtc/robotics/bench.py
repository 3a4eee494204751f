"""`medvtc bench --task libero`: Compressor-VLA against the uncompressed policy, generic
compressors at the same token count, its own ablations and LeRobot's ACT, all trained on the same
demonstrations with the same budget and rolled out in the LIBERO simulator.

Run through the shared runner (`medvtc.common.bench_runner`). A variant of `bench.variants`
(default: compressor_vla, none, pooling, random, tome, divprune, stc_only, src_only,
compressor_vla_no_instruction, act, replay) is a method, the Compressor-VLA policy with that compressor
(`policy.compressor`: `none`, `compressor_vla`, or any registered compressor; `method@budget`
sets `policy.budget`, the tokens per camera; without one a generic compressor keeps as many
tokens per camera as Compressor-VLA does on the same grid, the paper's comparison at equal
tokens), or a named ablation of `ABLATIONS` (STC only, SRC only, Compressor-VLA without the
instruction, LeRobot's ACT, the no-vision replay floor). Compressor arguments are the base config's, kept where the
variant's compressor takes them. For every variant and seed of `bench.seeds`:

1. train it with the task's data / policy / train config under
   `bench.output_dir/<variant>/seed_<s>` (`medvtc train --task libero` with the variant's
   `policy.*`); a finished run is reused only when it was trained with the same settings (seed,
   data.root, the policy.* keys its policy uses: ACT's own for ACT, the others for
   Compressor-VLA, train.* less bookkeeping), else the bench stops naming the key (`--retrain`
   trains it again); an interrupted one resumes from its latest checkpoint;
2. roll it out on `bench.episodes` official initial states of each of `bench.tasks` of
   `bench.suite` (`bench.num_envs` environments in parallel; optional videos with the kept
   tokens); the episodes (task, initial state, success, steps) are kept with the run
   (`bench_eval.json`, for the same rollout settings and weights) and go into the json's
   `cases`: `success_rate` comes with its 95 % Wilson interval and the paired-bootstrap
   difference to `none` over the same episodes, each task's rate with a bootstrap interval;
3. cost it on the CPU with `medvtc.robotics.policy_cost.measure_policies`, once every variant
   is trained: visual tokens the policy's transformer reads, FLOPs of one forward pass (an
   action chunk) and per executed action (chunk / n_action_steps), median latency per chunk and
   per control step, parameters, peak memory; the trained policies are timed together, round by
   round, so load from other processes slows them all alike.

Partial results (success only) are written after each variant to `<output>/libero.partial.*`;
the final ones to `<output>/libero.{json,md,png}`, with the issue's targets checked in the
markdown: at least 3x fewer visual tokens and 59 % fewer policy FLOPs than `none`, success within
2 points of `none` or better (met only when the whole paired-difference interval lies above -2
points, `intervals.target_status`), a compressed policy step under 50 ms on the CPU, and the
uncompressed baseline at >= 50 % success (otherwise the success comparison is reported as not
meaningful), the uncompressed policy at >= 80 % (its Wilson interval decides) and above the
no-vision floor (`replay`: the first recorded demonstration of each task replayed open loop,
`medvtc.robotics.replay`; the paired interval decides). The floor trains nothing and has no
network, so it has no token, FLOP or latency figures.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from medvtc.common.bench_runner import BenchSpec, CaseStatistic, Evaluation, Variant, run_bench
from medvtc.common.config import TRAIN_BOOKKEEPING, flatten_config, replace, to_dict
from medvtc.common.errors import UserError
from medvtc.common.intervals import Statistic, format_interval, mean_of, target_status
from medvtc.common.results import ResultRow, quality_cost_plot
from medvtc.common.trainer import read_training_summary

BASELINE = "none"
PROPOSED = "compressor_vla"
PEER = "act"
FLOOR = "replay"
ROLLOUT_JOURNAL = "bench_rollouts.jsonl"  # finished evaluation episodes, kept as they end (rollout.EpisodeJournal)
BASELINE_SUCCESS_TARGET = 0.8
TOKEN_RATIO_TARGET = 3.0
FLOP_REDUCTION_TARGET = 0.59
SUCCESS_MARGIN = 0.02
STEP_MS_TARGET = 50.0
LATENCY_RATIO_TARGET = 0.5  # compressed / uncompressed chunk latency at batch 1 on the CPU (issue 17)
STAGE_PREFIX = "latency_stage_"  # per-stage chunk latency metrics (ms), shown in a line of their own
BASELINE_SUCCESS_MIN = 0.5

# Named ablations: variant name -> config overrides. The budget of a Compressor-VLA variant
# without `@budget` follows its compressor (`_budget`): STC only keeps its queries, SRC only its
# own one token per window.
ABLATIONS: dict[str, list[str]] = {
    "stc_only": ["policy.name=compressor_vla", "policy.compressor=stc"],
    "src_only": ["policy.name=compressor_vla", "policy.compressor=src"],
    "compressor_vla_no_instruction": ["policy.name=compressor_vla", "policy.compressor=compressor_vla",
                                      "policy.compressor_args.use_instruction=false"],
    PEER: ["policy.name=act"],
    FLOOR: ["policy.name=replay"],  # the no-vision floor: one demonstration per task, replayed open loop
}

# policy.* keys an ACT run depends on (the others configure Compressor-VLA).
_ACT_KEYS = {"name", "act_args", "chunk_size", "n_action_steps", "dropout"}


def _training_settings(cfg_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened settings a policy's weights depend on: seed, data.root, the policy.* keys
    its policy uses, train.* less bookkeeping."""
    policy = dict(cfg_dict.get("policy", {}))
    train = cfg_dict.get("train", {})
    if policy.get("name") == "act":
        policy = {k: v for k, v in policy.items() if k in _ACT_KEYS}
    elif policy.get("name") == FLOOR:  # picks a demonstration: depends on the data only
        policy, train = {"name": FLOOR}, {}
    else:
        policy.pop("act_args", None)
        # keys added after runs were made: at their defaults they change nothing, so they are left
        # out and older runs stay reusable (the cache's views only matter when it is used)
        for key in ("freeze_backbone", "image_size"):
            if policy.get(key) is None:
                policy.pop(key, None)
        if not policy.get("cache_tokens"):
            policy.pop("cache_tokens", None)
            policy.pop("cache_views", None)
    train = dict(train)
    val = dict(cfg_dict.get("val") or {})
    selecting = bool(val.get("episodes")) and policy.get("name") != FLOOR
    if train.get("select_metric") is None and train.get("select_mode", "max") == "max":
        train.pop("select_metric", None)  # added after runs were made: at their defaults they change nothing
        train.pop("select_mode", None)
    tree = {"seed": cfg_dict.get("seed"), "data": {"root": (cfg_dict.get("data") or {}).get("root")},
            "policy": policy, "train": train}
    if selecting:  # the weights are the best validation's: when and how it rolls out matters
        tree["val"] = val
    flat = flatten_config(tree, keep_whole=("compressor_args", "act_args"))
    bookkeeping = TRAIN_BOOKKEEPING - ({"eval_every"} if selecting else set())
    return {k: v for k, v in flat.items() if not (k.startswith("train.") and k.split(".", 1)[1] in bookkeeping)}


def task_rate(task_id: int) -> Statistic:
    """Success rate over the episodes of one task (NaN in a resample without any)."""
    def statistic(cases: Mapping[str, np.ndarray]) -> float:
        mine = np.asarray(cases["task"]) == task_id
        return float(np.asarray(cases["success"], dtype=float)[mine].mean()) if mine.any() else math.nan

    statistic.__name__ = f"success_of_task_{task_id}"
    return statistic


def case_statistics(task_ids) -> dict[str, CaseStatistic]:
    stats = {"success_rate": CaseStatistic(mean_of("success"), interval="wilson", column="success")}
    stats.update({f"success_task_{int(t)}": CaseStatistic(task_rate(int(t))) for t in task_ids})
    return stats


class LiberoBench(BenchSpec):
    task = "libero"
    reference = BASELINE
    method_key = "policy.compressor"
    budget_key = "policy.budget"
    ablations = ABLATIONS
    settings_sections = ("seed", "data", "policy", "train")
    keep_whole = ("compressor_args", "act_args")
    hide_in_table = (STAGE_PREFIX,)  # per-stage latency: a line under the targets, not four more columns

    def __init__(self, task, cfg) -> None:
        from medvtc.common.compressors import list_compressors

        self.libero = task
        self.methods = ["none", *list_compressors()]  # "none": every visual token to the policy
        self.statistics = case_statistics(cfg.bench.tasks)
        self.plot = _plot
        self._features: dict[str, Any] | None = None
        self.demos: int | None = None
        self._match: int | None = None
        self.policies: dict[str, dict[str, Any]] = {}  # variant -> its policy.* (for the json)
        self.cost_threads: int | None = None

    # -- config -----------------------------------------------------------------------------
    def features(self, cfg) -> dict[str, Any]:
        """The demonstrations' features (recorded first when data.root is the default and absent)."""
        if self._features is None:
            from medvtc.robotics.demonstrations import check_dataset_features, read_info, required_features

            self.libero._ensure_data(cfg)
            info = read_info(cfg.data.root)
            check_dataset_features(info["features"], required_features(), cfg.data.root)
            self._features, self.demos = info["features"], info.get("total_episodes")
        return self._features

    def match_tokens(self, cfg) -> int:
        """Compressor-VLA's visual tokens per camera under the base config (what the generic
        compressors keep without `@budget`)."""
        if self._match is None:
            import torch

            from medvtc.robotics.policies.compressor_vla import CompressorVLAPolicy
            from medvtc.robotics.policy_factory import policy_config

            p = cfg.policy
            base = replace(cfg, policy=replace(p, name="compressor_vla", compressor=PROPOSED,
                                               compressor_args=self._args(PROPOSED, dict(p.compressor_args))))
            torch.manual_seed(0)
            try:
                self._match = int(CompressorVLAPolicy(policy_config(base, self.features(cfg), "cpu")).model.visual_tokens_per_camera)
            except ValueError as e:
                raise UserError(f"policy: {e}") from None
        return self._match

    @staticmethod
    def _args(compressor: str, args: dict[str, Any]) -> dict[str, Any]:
        from medvtc.common.compressors import accepted_args

        return accepted_args(compressor, args)

    def _budget(self, cfg, variant: Variant, policy) -> int | float | None:
        if variant.budget is not None:
            return variant.budget
        comp = policy.compressor
        if comp == PROPOSED:
            return cfg.policy.budget
        if comp == "stc":  # its queries are its only tokens
            return int(policy.compressor_args.get("num_queries", 16))
        if comp in ("none", "src"):  # everything / one token per window
            return None
        return self.match_tokens(cfg)  # generic compressors at Compressor-VLA's token count

    def variant_overrides(self, variant: Variant) -> list[str]:
        out = super().variant_overrides(variant)
        return ["policy.name=compressor_vla", *out] if variant.method is not None else out

    def variant_config(self, cfg, variant: Variant, seed: int, run_dir: Path):
        from medvtc.robotics.policy_factory import policy_config

        vcfg = super().variant_config(cfg, variant, seed, run_dir)
        p = vcfg.policy
        if p.name == FLOOR:
            self.policies.setdefault(variant.name, {"name": FLOOR})
            return vcfg
        if p.name != "act":
            args = self._args(p.compressor, dict(p.compressor_args))
            p = replace(p, compressor_args=args)
            vcfg = replace(vcfg, policy=replace(p, budget=self._budget(cfg, variant, p)))
        policy_config(vcfg, self.features(cfg), "cpu")  # config errors now, not after hours of training
        self.policies.setdefault(variant.name, to_dict(vcfg.policy))
        return vcfg

    def settings(self, cfg_tree):
        return _json_safe(_training_settings(cfg_tree))

    def eval_settings(self, cfg) -> dict[str, Any]:
        b = cfg.bench
        weights = Path(cfg.output_dir) / "final" / "model.safetensors"
        return {"suite": b.suite, "tasks": [int(t) for t in b.tasks], "episodes": b.episodes,
                "first_init_state": b.first_init_state, "max_episode_steps": b.max_episode_steps,
                "video_episodes": b.video_episodes,
                "weights_mtime_ns": weights.stat().st_mtime_ns if weights.is_file() else None}

    # -- work -------------------------------------------------------------------------------
    def is_trained(self, run_dir: Path) -> bool:
        from medvtc.robotics.replay import REPLAY_FILE

        return any((run_dir / "final" / name).is_file() for name in ("model.safetensors", REPLAY_FILE))

    def train(self, vcfg) -> None:
        self.libero.train(vcfg, resume=True)  # from step 0 when there is no checkpoint

    def evaluate(self, vcfg, variant: Variant) -> Evaluation:
        from medvtc.robotics.rollout import load_policy, run_rollouts

        b = vcfg.bench
        final = Path(vcfg.output_dir) / "final"
        if vcfg.policy.name == FLOOR:
            results = self._replay(vcfg, final)
        else:
            policy, pre, post = load_policy(final)
            videos = Path(vcfg.output_dir) / "videos" if b.video_episodes else None
            results = run_rollouts(policy, pre, post, suite=b.suite, task_ids=b.tasks, episodes=b.episodes,
                                   max_episode_steps=b.max_episode_steps, first_init_state=b.first_init_state,
                                   progress=vcfg.eval.progress, num_envs=b.num_envs, checkpoint=final, video_dir=videos,
                                   video_episodes=b.video_episodes,
                                   # a stopped bench resumes its evaluation after the last finished episode
                                   journal=Path(vcfg.output_dir) / ROLLOUT_JOURNAL)
            del policy, pre, post
        cases: dict[str, list[Any]] = {"task": [], "init_state": [], "success": [], "steps": []}
        for tid, t in results["tasks"].items():
            for r in t["episodes"]:
                cases["task"].append(int(tid))
                cases["init_state"].append(int(r["init_state_id"]))
                cases["success"].append(int(bool(r["success"])))
                cases["steps"].append(int(r["steps"]))
        eps = [r for t in results["tasks"].values() for r in t["episodes"]]
        metrics: dict[str, Any] = {"rollout_policy_ms_per_step": round(float(np.mean([r["policy_ms_per_step"] for r in eps])), 2)}
        training = read_training_summary(vcfg.output_dir) or {}  # from the run's own log
        if "train_loss" in training:
            metrics["train_loss"] = round(training["train_loss"], 4)
        return Evaluation(cases=cases, metrics=metrics)

    @staticmethod
    def _replay(vcfg, final: Path) -> dict[str, Any]:
        """The floor's rollouts: each bench task replays the demonstration of the same instruction."""
        from medvtc.robotics.libero_env import load_suite
        from medvtc.robotics.replay import load_replay, replay_rollouts

        b = vcfg.bench
        by_instruction = load_replay(final)
        suite = load_suite(b.suite)
        actions = {}
        for tid in b.tasks:
            text = suite.get_task(tid).language
            if text not in by_instruction:
                raise UserError(f"bench task {tid} of {b.suite} ({text!r}) has no demonstration in {vcfg.data.root}: "
                                "the replay floor needs one per bench task")
            actions[int(tid)] = by_instruction[text]
        return replay_rollouts(actions, suite=b.suite, task_ids=b.tasks, episodes=b.episodes,
                               first_init_state=b.first_init_state, max_episode_steps=b.max_episode_steps,
                               progress=vcfg.eval.progress)

    def measure_costs(self, vcfgs):
        """The trained policies' costs on the CPU, measured together, round by round."""
        import torch

        from medvtc.robotics.policy_cost import measure_policies
        from medvtc.robotics.rollout import load_policy

        b = next(iter(vcfgs.values())).bench
        threads = torch.get_num_threads()
        if b.threads:
            torch.set_num_threads(b.threads)
        try:
            loaded = {}
            for name, vcfg in vcfgs.items():
                if vcfg.policy.name == FLOOR:
                    continue  # no network: no tokens, FLOPs or latency to measure
                policy, pre, _ = load_policy(Path(vcfg.output_dir) / "final", device="cpu")
                loaded[name] = (policy, pre)
            costs = measure_policies(loaded, repeats=b.latency_repeats, warmup=b.latency_warmup, memory=True)
            self.cost_threads = torch.get_num_threads()
        finally:
            torch.set_num_threads(threads)
        del loaded
        base = costs.get(BASELINE)
        out = {}
        for name, c in costs.items():
            # the row's flops / latency_ms are per chunk / per control step; these complete them
            m: dict[str, Any] = {"uncompressed_tokens": c["uncompressed_tokens"],
                                 "gflops_per_action": round(c["flops_per_action"] / 1e9, 4),
                                 "n_action_steps": c["n_action_steps"], "chunk_latency_ms": round(c["chunk_latency_ms"], 3)}
            for stage, ms in (c.get("stage_ms") or {}).items():  # what the chunk's time is spent on
                m[f"{STAGE_PREFIX}{stage}_ms"] = round(ms, 3)
            if base is not None:
                m["tokens_vs_none"] = round(c["tokens"] / base["tokens"], 4) if base["tokens"] else None
                m["flops_vs_none"] = round(c["flops"] / base["flops"], 4) if base["flops"] else None
                m["latency_vs_none"] = round(c["chunk_latency_ms"] / base["chunk_latency_ms"], 4)
            out[name] = {"tokens": c["tokens"], "flops": c["flops"], "params": c["params"],
                         "latency_ms": c["step_latency_ms"], "peak_mem_mb": c["peak_mem_mb"], "metrics": m}
        for name, vcfg in vcfgs.items():
            if vcfg.policy.name == FLOOR:  # reads no image: 0 tokens; no network to cost
                out[name] = {"tokens": 0, "flops": math.nan, "params": 0, "latency_ms": math.nan,
                             "peak_mem_mb": math.nan, "metrics": {}}
        return out

    # -- output -----------------------------------------------------------------------------
    def markdown_extra(self, rows: list[ResultRow], cfg) -> str:
        return targets_markdown(rows, cfg, self.cost_threads or 0, demos=self.demos)

    def results_config(self, cfg) -> dict[str, Any]:
        return {**to_dict(cfg), "cpu_threads": self.cost_threads, "variants": dict(self.policies)}


def _json_safe(flat: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(flat, default=str))  # tuples -> lists, as read back from json


def run_benchmark(task, cfg, output: str, retrain: bool = False) -> list[ResultRow]:
    from medvtc.robotics.rollout import check_rollout_args

    b = cfg.bench
    # the rollout settings are checked before anything is recorded or trained
    check_rollout_args(b.suite, b.tasks, b.episodes, b.num_envs, b.video_episodes, b.max_episode_steps)
    return run_bench(LiberoBench(task, cfg), cfg, output, retrain=retrain)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _ci_pct(row: ResultRow) -> str:
    """A row's 95 % Wilson interval of its success rate, in percent."""
    ci = row.metrics.get("success_rate_ci")
    return "-" if ci is None or None in ci else f"{100 * ci[0]:.1f}, {100 * ci[1]:.1f}"


def _floor_lines(no: ResultRow, floor: ResultRow | None) -> list[str]:
    """The uncompressed policy against its success target and the no-vision floor."""
    lines = []
    base_ci = no.metrics.get("success_rate_ci")
    if base_ci is not None and None not in base_ci:
        lo, hi = base_ci
        status = "met" if lo >= BASELINE_SUCCESS_TARGET else "missed" if hi < BASELINE_SUCCESS_TARGET else "not shown"
        lines.append(f"- uncompressed policy at >= {_pct(BASELINE_SUCCESS_TARGET)} (met only when its whole 95 % interval "
                     f"[{_ci_pct(no)}] lies at or above it): {status}")
    if floor is not None:
        fci = floor.metrics.get("success_rate_diff_ci")  # floor - none, paired over the same episodes
        above = ("no paired difference" if fci is None or None in fci else
                 "met" if fci[1] < 0 else "missed" if fci[0] > 0 else "not shown")
        # none - floor: the negated floor - none difference (+ 0.0 turns -0.0 into 0.0)
        diff = "" if fci is None or None in fci else (
            f", none - floor {0.0 - floor.metrics['success_rate_diff'] * 100 + 0.0:+.1f} points "
            f"[{0.0 - fci[1] * 100 + 0.0:+.1f}, {0.0 - fci[0] * 100 + 0.0:+.1f}]")
        lines += ["", "### The no-vision floor: one recorded demonstration per task replayed open loop", "",
                  f"- floor {_pct(floor.metrics['success_rate'])} [{_ci_pct(floor)}]{diff}; the uncompressed policy "
                  f"above the floor by the paired interval: {above}"]
    return lines


def _latency_lines(cv: ResultRow, no: ResultRow) -> list[str]:
    """The chunk-latency ratio against its target, and where each policy's chunk time goes: the
    stages both policies share (instruction, image backbone) bound the ratio from below whatever
    the compressor costs."""
    ratio = cv.metrics.get("latency_vs_none")
    if ratio is None:
        return []
    out = [f"- chunk latency: {cv.metrics['chunk_latency_ms']:.1f} vs {no.metrics['chunk_latency_ms']:.1f} ms, "
           f"{ratio:.2f}x (target <= {LATENCY_RATIO_TARGET}x): {'met' if ratio <= LATENCY_RATIO_TARGET else 'not met'}"]
    st = {r.method: {k[len(STAGE_PREFIX):-3]: v for k, v in r.metrics.items() if k.startswith(STAGE_PREFIX)} for r in (cv, no)}
    if st[cv.method] and st[no.method]:
        names = list(st[cv.method])
        out.append("  - by stage, ms (" + " / ".join(names) + "): " + ", ".join(
            f"{m} " + " / ".join(f"{st[m].get(n, 0.0):.2f}" for n in names) for m in (cv.method, no.method)))
        shared = sum(st[cv.method].get(n, 0.0) for n in ("text", "images"))
        floor = (shared + st[cv.method].get("head", 0.0)) / no.metrics["chunk_latency_ms"]
        out.append(f"  - the instruction and image stages ({shared:.1f} ms) are the same work in both policies: even a "
                   f"compressor costing nothing would leave the ratio at {floor:.2f}x")
    return out


def targets_markdown(rows: list[ResultRow], cfg, threads: int, demos: int | None = None) -> str:
    b = cfg.bench
    by = {r.method: r for r in rows}
    n_ep = b.episodes * len(b.tasks)
    lines = [
        "",
        "Columns: GFLOPs = one forward pass of the policy (an action chunk of "
        f"{cfg.policy.chunk_size}); latency ms = per control step (chunk latency / n_action_steps), median on the "
        f"CPU with {threads} torch threads; tokens = visual tokens the policy's transformer reads per step. Success "
        f"on {b.suite} tasks {list(b.tasks)}, {b.episodes} episodes each (official initial states "
        f"{b.first_init_state}..{b.first_init_state + b.episodes - 1}), {n_ep} episodes per row; every variant "
        f"trained for {cfg.train.max_steps} steps of batch {cfg.train.batch_size} on {cfg.data.root}"
        + (f" ({demos} demonstration episodes)" if demos is not None else "")
        + (f"; each policy is the best of its validation rollouts ({cfg.val.episodes} held-out random scenes per task "
           f"every {cfg.train.eval_every} steps and at the end; never the official states)."
           if getattr(cfg, "val", None) is not None and cfg.val.episodes else "."),
        "",
        "### Targets (issue 6): Compressor-VLA against the uncompressed policy (`none`)",
        "",
    ]
    cv, no = by.get(PROPOSED), by.get(BASELINE)
    if cv is None or no is None:
        missing = " and ".join(n for n, r in ((PROPOSED, cv), (BASELINE, no)) if r is None)
        lines.append(f"(no {missing} row in this run: the compression targets cannot be checked)")
        return "\n".join(lines + (_floor_lines(no, by.get(FLOOR)) if no is not None else [])) + "\n"

    def met(ok: bool) -> str:
        return "met" if ok else "not met"

    ratio = no.tokens / cv.tokens if cv.tokens else math.inf
    lines.append(f"- visual tokens: {cv.tokens} vs {no.tokens}, {ratio:.2f}x fewer (target >= {TOKEN_RATIO_TARGET:.0f}x): "
                 f"{met(ratio >= TOKEN_RATIO_TARGET)}")
    red = 1 - cv.flops / no.flops
    lines.append(f"- policy FLOPs: {cv.flops / 1e9:.3f} vs {no.flops / 1e9:.3f} GFLOPs per chunk "
                 f"({cv.metrics['gflops_per_action']:.3f} vs {no.metrics['gflops_per_action']:.3f} per action), "
                 f"{_pct(red)} fewer (target >= {FLOP_REDUCTION_TARGET:.0%}): {met(red >= FLOP_REDUCTION_TARGET)}")
    step, chunk = cv.latency_ms, cv.metrics["chunk_latency_ms"]
    lines.append(f"- compressed policy step: {step:.1f} ms (chunk {chunk:.1f} ms / {cv.metrics['n_action_steps']} actions; "
                 f"uncompressed {no.latency_ms:.1f} ms) on the CPU (target < {STEP_MS_TARGET:.0f} ms, "
                 f"20 Hz): {met(step < STEP_MS_TARGET)}"
                 + ("" if chunk < STEP_MS_TARGET else f"; a whole chunk takes {chunk:.1f} ms, so the step that "
                    "computes one exceeds the 20 Hz period"))
    lines += _latency_lines(cv, no)
    s_cv, s_no = cv.metrics["success_rate"], no.metrics["success_rate"]
    gap = (s_cv - s_no) * 100
    meaningful = s_no >= BASELINE_SUCCESS_MIN
    ci = cv.metrics.get("success_rate_diff_ci")
    has_ci = ci is not None and None not in ci
    success_line = (f"- success: {_pct(s_cv)} [{_ci_pct(cv)}] vs {_pct(s_no)} [{_ci_pct(no)}], "
                    + (f"{gap:+.1f} points [{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}] paired over the same {n_ep} episodes"
                       if has_ci else f"{gap:+.1f} points")
                    + f" (target: within {SUCCESS_MARGIN * 100:.0f} points or better, met only when the whole "
                    f"interval lies above -{SUCCESS_MARGIN * 100:.0f} points)")
    if meaningful:
        lines.append(f"{success_line}: {target_status(ci, SUCCESS_MARGIN) if has_ci else 'no paired difference'}")
        lines.append(f"- baseline: the uncompressed policy reaches {_pct(s_no)} (>= {BASELINE_SUCCESS_MIN:.0%}), so "
                     "the success comparison means something")
    else:
        lines.append(f"{success_line}: not judged (see below)")
        lines.append(
            f"- baseline: the uncompressed policy reaches only {_pct(s_no)} (< {BASELINE_SUCCESS_MIN:.0%} on these "
            f"tasks), so **the success comparison is not meaningful** at this budget ({cfg.train.max_steps} training "
            f"steps{f', {demos} demonstrations' if demos is not None else ''}). It needs a baseline that solves the tasks: "
            "more training steps (train.max_steps), more demonstrations (data.episodes_per_task) or a GPU to afford "
            "both; the token, FLOP and latency figures above do not depend on it."
        )
    lines += _floor_lines(no, by.get(FLOOR))
    peer = by.get(PEER)
    if peer is not None:
        lines += ["", "### Peer: LeRobot's ACT (same data, same budget, ResNet-18 from scratch)", "",
                  f"- success {_pct(peer.metrics['success_rate'])} (Compressor-VLA {_pct(s_cv)}), {peer.tokens} visual "
                  f"tokens, {peer.flops / 1e9:.3f} GFLOPs per chunk, {peer.latency_ms:.1f} ms per step, "
                  f"{peer.params / 1e6:.2f}M parameters"]
    others = [r for r in rows if r.method not in (PROPOSED, BASELINE, PEER, FLOOR)]
    if others:
        lines += ["", "### Generic compressors and ablations (success, visual tokens, GFLOPs per chunk)", ""]
        for r in [cv, *others]:
            d, dci = r.metrics.get("success_rate_diff"), r.metrics.get("success_rate_diff_ci")
            diff = f", {format_interval(d * 100, [c * 100 for c in dci], 1, signed=True)} points vs none" if (
                d is not None and dci is not None and None not in dci) else ""
            lines.append(f"- {r.method}: {_pct(r.metrics['success_rate'])}{diff}, {r.tokens} tokens, "
                         f"{r.flops / 1e9:.3f} GFLOPs")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    quality_cost_plot(rows, path, "success_rate", "success rate (0-1)",
                      [("flops", "policy GFLOPs per action chunk", False),
                       ("latency_ms", "policy latency per control step (ms, CPU)", False)], scale={"flops": 1e9})


__all__ = ["ABLATIONS", "FLOOR", "LiberoBench", "case_statistics", "run_benchmark", "targets_markdown"]

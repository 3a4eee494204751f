"""The `libero` task: record demonstrations, train the Compressor-VLA policy, evaluate it in LIBERO.

    medvtc data  --task libero                    # scripted-expert demos -> LeRobotDataset v3 at data.root
    medvtc data  --task libero --inspect          # describe the dataset at data.root
    medvtc train --task libero policy.compressor=none          # the uncompressed baseline
    medvtc eval  --task libero --checkpoint runs/libero eval.episodes=10

`train` runs the shared trainer (checkpoints, resume, DDP) on any LeRobotDataset v3 with the
LIBERO features (ours or the real LIBERO LeRobot datasets: point `data.root` at one) and writes
the policy in LeRobot's layout to `<output_dir>/final` (config.json, model.safetensors,
policy_preprocessor.json / policy_postprocessor.json with the normalisation statistics), which
LeRobot's own tooling also loads. `eval` rolls it out on the official initial states.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medvtc.common import checkpoint as ckpt
from medvtc.common.config import save_config
from medvtc.common.errors import ConfigError, UserError
from medvtc.common.io import atomic_directory, atomic_write_json
from medvtc.common.task import Task
from medvtc.common.trainer import TrainConfig, Trainer

DEFAULT_ROOT = "data/libero_object_demos"


@dataclass
class LiberoDataConfig:
    """`data.*`: the demonstrations (a LeRobotDataset v3 folder) and how `medvtc data` records them."""

    root: str = DEFAULT_ROOT
    suite: str = "libero_object"
    tasks: list[int] = field(default_factory=lambda: [0, 1, 2])
    episodes_per_task: int = 20
    max_attempts_per_task: int | None = None  # default 2 * episodes_per_task + 5
    init: Literal["random", "official"] = "random"  # official init states are the evaluation scenes
    camera_size: int = 128
    seed: int = 0
    fast_render: bool = False  # MSAA off: faster, but pixels differ slightly from evaluation
    video: bool = False  # AV1 videos instead of PNG frames

    def validate(self) -> None:
        if self.episodes_per_task < 1:
            raise ValueError(f"episodes_per_task must be >= 1, got {self.episodes_per_task}")
        if self.camera_size < 8:
            raise ValueError(f"camera_size must be >= 8, got {self.camera_size}")
        if not self.tasks:
            raise ValueError("tasks must list at least one task id")


@dataclass
class LiberoPolicyConfig:
    """`policy.*`: the Compressor-VLA policy (see `CompressorVLAConfig` for each field)."""

    compressor: str = "compressor_vla"  # or none, pooling, random, tome, divprune, stc, src, ...
    budget: int | float | None = None  # tokens per camera; null: compressor_vla's 16 + N/4
    compressor_args: dict[str, Any] = field(default_factory=dict)
    share_compressor: bool = False
    vision_backbone: str = "mobilenetv3_large_100"
    backbone_out_index: int = 2
    backbone_norm: Literal["batchnorm", "groupnorm"] = "groupnorm"
    dim_model: int = 256
    n_heads: int = 8
    n_layers: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    chunk_size: int = 16
    n_action_steps: int = 8
    text_layers: int = 1
    text_buckets: int = 4096
    tokenizer_max_length: int = 24
    image_shift: int = 4


@dataclass
class LiberoEvalConfig:
    """`eval.*`: rollouts on the official initial states (suite/tasks default to data.*)."""

    suite: str | None = None
    tasks: list[int] | None = None
    episodes: int = 10
    first_init_state: int = 0
    max_episode_steps: int | None = None  # null: the suite's limit (280 for libero_object)
    progress: bool = True

    def validate(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")


@dataclass
class LiberoTaskConfig:
    seed: int = 0
    output_dir: str = "runs/libero"
    data: LiberoDataConfig = field(default_factory=LiberoDataConfig)
    policy: LiberoPolicyConfig = field(default_factory=LiberoPolicyConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(max_steps=3000, batch_size=32, lr=3e-4, weight_decay=1e-4,
                                            warmup_steps=100, save_every=500, log_every=20)
    )
    eval: LiberoEvalConfig = field(default_factory=LiberoEvalConfig)


def policy_config(cfg: LiberoTaskConfig, features: dict[str, dict], device: str):
    """A `CompressorVLAConfig` for the dataset `features` (LeRobot meta.features)."""
    from lerobot.configs.types import FeatureType
    from lerobot.datasets.utils import dataset_to_policy_features

    from medvtc.robotics.demonstrations import STATE_KEY
    from medvtc.robotics.policies.compressor_vla import CompressorVLAConfig

    feats = dataset_to_policy_features(features)
    outputs = {k: f for k, f in feats.items() if f.type is FeatureType.ACTION and k == "action"}
    inputs = {k: f for k, f in feats.items() if f.type is FeatureType.VISUAL or k == STATE_KEY}
    p = cfg.policy
    try:
        return CompressorVLAConfig(
            input_features=inputs, output_features=outputs, device=device,
            chunk_size=p.chunk_size, n_action_steps=p.n_action_steps, vision_backbone=p.vision_backbone,
            backbone_out_index=p.backbone_out_index, backbone_norm=p.backbone_norm, dim_model=p.dim_model,
            n_heads=p.n_heads, n_layers=p.n_layers, mlp_ratio=p.mlp_ratio, dropout=p.dropout,
            text_buckets=p.text_buckets, text_layers=p.text_layers, tokenizer_max_length=p.tokenizer_max_length,
            compressor=p.compressor, compressor_budget=p.budget, compressor_args=dict(p.compressor_args),
            share_compressor=p.share_compressor, image_shift=p.image_shift,
            optimizer_lr=cfg.train.lr, optimizer_lr_backbone=cfg.train.lr, optimizer_weight_decay=cfg.train.weight_decay,
        )
    except ValueError as e:
        raise ConfigError(f"policy: {e}") from None


class LiberoTask(Task):
    name = "libero"
    description = "Compressor-VLA robot policy on LIBERO: scripted demos, LeRobot policy, simulator rollouts"
    config_class = LiberoTaskConfig
    commands = ("train", "eval", "data")  # bench: not built yet (issue 6); policy_cost measures cost only

    # -- data ------------------------------------------------------------------------------------
    def data(self, cfg: LiberoTaskConfig, inspect: bool = False, overwrite: bool = False) -> int:
        from medvtc.robotics.demonstrations import describe_dataset, record_demonstrations

        if not inspect:
            d = cfg.data
            summary = record_demonstrations(
                d.root, suite=d.suite, task_ids=d.tasks, episodes_per_task=d.episodes_per_task, seed=d.seed,
                camera_size=d.camera_size, init=d.init, max_attempts_per_task=d.max_attempts_per_task,
                video=d.video, overwrite=overwrite, env_kwargs={"fast_render": d.fast_render},
            )
            print(summary.describe())
        print(describe_dataset(cfg.data.root))
        return 0

    def _ensure_data(self, cfg: LiberoTaskConfig) -> None:
        root = Path(cfg.data.root)
        if root.exists():
            return
        if cfg.data.root != DEFAULT_ROOT:
            raise UserError(f"data.root {root} does not exist (expected a LeRobotDataset v3 folder)")
        print(f"medvtc: recording the default LIBERO demonstrations at {root} (scripted expert)")
        self.data(cfg)

    # -- train -----------------------------------------------------------------------------------
    def build(self, cfg: LiberoTaskConfig, device: str):
        """(policy, preprocessor, postprocessor, dataset) for training on data.root."""
        import torch

        from medvtc.robotics.demonstrations import check_dataset_features, load_demonstrations, read_info, required_features
        from medvtc.robotics.policies.compressor_vla import CompressorVLAPolicy, make_compressor_vla_pre_post_processors

        info = read_info(cfg.data.root)
        check_dataset_features(info["features"], required_features(), cfg.data.root)
        pcfg = policy_config(cfg, info["features"], device)
        fps = int(info["fps"])
        delta = {"action": [i / fps for i in pcfg.action_delta_indices]}  # = LeRobot's resolve_delta_timestamps
        dataset = load_demonstrations(cfg.data.root, required=required_features(pcfg.input_features, pcfg.output_features),
                                      delta_timestamps=delta)
        torch.manual_seed(cfg.seed)
        try:
            policy = CompressorVLAPolicy(pcfg)
        except ValueError as e:
            raise ConfigError(f"policy: {e}") from None
        pre, post = make_compressor_vla_pre_post_processors(pcfg, dataset.meta.stats)
        return policy, pre, post, dataset

    def train(self, cfg: LiberoTaskConfig, resume: bool = False) -> int:
        from medvtc.common.distributed import barrier, cleanup, init_distributed
        from medvtc.common.trainer import resolve_device

        out = Path(cfg.output_dir)
        if not resume and (ckpt.latest_checkpoint(out / "checkpoints") is not None or (out / "final").exists()):
            raise UserError(f"{out} already holds a libero run; pass --resume to continue it or choose another output_dir")
        device = resolve_device(cfg.train.device)
        dist_info = init_distributed(device.type)
        if dist_info.is_main:
            self._ensure_data(cfg)
        barrier(dist_info)
        policy, pre, post, dataset = self.build(cfg, device.type)
        if dist_info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
            print(f"medvtc: {dataset.num_episodes} episodes, {len(dataset)} frames; policy with "
                  f"{policy.num_visual_tokens} visual tokens ({policy.num_uncompressed_tokens} before "
                  f"{cfg.policy.compressor}), {sum(p.numel() for p in policy.parameters()):,} parameters")

        def step_fn(model, batch):
            return model(pre(batch))

        trainer = Trainer(policy, dataset, cfg.train, out, seed=cfg.seed, step_fn=step_fn)
        t0 = time.perf_counter()
        trainer.fit(resume=resume)
        if dist_info.is_main:
            with atomic_directory(out / "final", overwrite=True) as tmp:
                policy.save_pretrained(tmp)
                pre.save_pretrained(tmp)
                post.save_pretrained(tmp)
                save_config(cfg, tmp / "medvtc_config.yaml")
                atomic_write_json(tmp / "medvtc_tokens.json", {
                    "visual_tokens": policy.num_visual_tokens, "uncompressed_tokens": policy.num_uncompressed_tokens,
                    "compressor": cfg.policy.compressor,
                })
            print(f"medvtc: trained in {time.perf_counter() - t0:.0f} s; policy in {out / 'final'}")
        cleanup(dist_info)
        return 0

    # -- eval ------------------------------------------------------------------------------------
    def eval(self, cfg: LiberoTaskConfig, checkpoint: str | None) -> int:
        from medvtc.robotics.rollout import format_results, load_policy, resolve_checkpoint, run_rollouts

        folder = resolve_checkpoint(checkpoint or cfg.output_dir)
        policy, pre, post = load_policy(folder)
        suite = cfg.eval.suite or cfg.data.suite
        tasks = cfg.eval.tasks if cfg.eval.tasks is not None else cfg.data.tasks
        results = run_rollouts(
            policy, pre, post, suite=suite, task_ids=tasks, episodes=cfg.eval.episodes,
            max_episode_steps=cfg.eval.max_episode_steps, first_init_state=cfg.eval.first_init_state,
            progress=cfg.eval.progress,
        )
        results["checkpoint"] = str(folder)
        results["visual_tokens"] = policy.num_visual_tokens
        print(format_results(results))
        atomic_write_json(folder / f"eval_{suite}.json", results)
        return 0


__all__ = ["LiberoTask", "LiberoTaskConfig", "policy_config"]

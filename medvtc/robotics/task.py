"""The `libero` task: record demonstrations, train the Compressor-VLA policy, evaluate it in LIBERO.

    medvtc data  --task libero                    # scripted-expert demos -> LeRobotDataset v3 at data.root
    medvtc data  --task libero --inspect          # describe the dataset at data.root
    medvtc train --task libero policy.compressor=none          # the uncompressed baseline
    medvtc train --task libero policy.name=act output_dir=runs/libero-act   # LeRobot's ACT, same data/budget
    medvtc train --task libero policy.vision_backbone=mobilenetv2_imagenet policy.cache_tokens=true   # frozen
                                                  # ImageNet encoder, its tokens cached once (data.cache_dir)
    medvtc eval  --task libero --checkpoint runs/libero eval.episodes=10
    medvtc rollout --task libero --checkpoint runs/libero --suite libero_object --tasks 0,1,2 --episodes 10 \
        --num-envs 2 --video-dir runs/libero/videos --video-episodes 1 -o runs/libero/rollout.json
    medvtc bench --task libero                    # every variant trained, rolled out and costed

`train` runs the shared trainer (checkpoints, resume, DDP) on any LeRobotDataset v3 with the
LIBERO features (ours or the real LIBERO LeRobot datasets: point `data.root` at one) and writes
the policy in LeRobot's layout to `<output_dir>/final` (config.json, model.safetensors,
policy_preprocessor.json / policy_postprocessor.json with the normalisation statistics), which
LeRobot's own tooling also loads. `policy.name=act` trains LeRobot's own ACT policy instead (the
peer baseline; ResNet-18 from scratch, `pretrained_backbone_weights=None`: nothing is downloaded)
on the same data with the same `train.*` budget. With a frozen backbone, `policy.cache_tokens=true`
encodes every frame once into a token cache (`medvtc.robotics.token_dataset`, under
`data.cache_dir`, shared by every run with the same backbone and data) and trains only the
compressor and head on the cached tokens, without decoding images; the saved policy is the same
kind and runs from images. `eval` rolls a policy out on the official initial states and writes
the results beside it; `rollout` does the same with the episodes spread over parallel
environments, optional mp4 videos with the kept tokens drawn over the frames, and an optional
JSON file. `bench` is in `medvtc.robotics.bench`.
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
from medvtc.robotics.policy_factory import act_policy_config, backbone_frozen, policy_config  # noqa: F401  (re-exported)

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
    robot_init_noise: float = 0.02  # rad of Gaussian arm-joint noise at each random reset (robosuite default, as LIBERO's own demos)
    action_noise: float = 0.0  # DART: std of the noise added to the executed arm actions; labels stay clean
    # the scripted expert's velocity limit: "axis" clips each axis (short full-speed bursts on a small
    # axis), "norm" the translation's length (straight, proportional moves; see ExpertConfig.clip)
    expert_clip: Literal["axis", "norm"] = "axis"
    # the expert plans its grasp so the palm clears what lies under it (ExpertConfig.hand_clearance:
    # without it, descents onto a tall object or beside a tall neighbour stall until a timer ends them)
    expert_hand_clearance: bool = True
    # where policy.cache_tokens keeps its stores (one folder per backbone x dataset x views);
    # null: token_cache/ beside data.root (data/libero_object_demos -> data/token_cache)
    cache_dir: str | None = None
    # DAgger (medvtc.robotics.dagger): `medvtc data` lets the trained policy `dagger_policy` drive
    # episodes_per_task random scenes per task, labels every visited state with the scripted expert,
    # and writes root = dagger_base's episodes + these
    dagger_policy: str | None = None
    dagger_base: str | None = None
    policy_share: float = 1.0  # DAgger: probability a step executes the policy's action (else the expert's)
    # tasks recorded at once by `medvtc data`, one process (one core, one torch thread) per task;
    # the recording does not depend on it (a task's seeds depend only on seed, task and attempt)
    workers: int = 1

    def validate(self) -> None:
        if (self.dagger_policy is None) != (self.dagger_base is None):
            raise ValueError("dagger_policy and dagger_base go together: the policy that drives and the dataset "
                             "its labelled episodes are added to")
        if not 0.0 <= self.policy_share <= 1.0:
            raise ValueError(f"policy_share must lie in [0, 1], got {self.policy_share}")
        if self.episodes_per_task < 1:
            raise ValueError(f"episodes_per_task must be >= 1, got {self.episodes_per_task}")
        if self.camera_size < 8:
            raise ValueError(f"camera_size must be >= 8, got {self.camera_size}")
        if not self.tasks:
            raise ValueError("tasks must list at least one task id")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1 (processes recording tasks at once), got {self.workers}")


@dataclass
class LiberoPolicyConfig:
    """`policy.*`: the Compressor-VLA policy (see `CompressorVLAConfig` for each field), or
    LeRobot's ACT with `name: act` (then chunk_size, n_action_steps and dropout apply, the other
    fields are Compressor-VLA's, and `act_args` sets any `ACTConfig` field)."""

    # replay: the no-vision floor (one recorded demonstration per task, replayed open loop; see
    # medvtc/robotics/replay.py): "training" picks the demonstration, nothing is learnt
    name: Literal["compressor_vla", "act", "replay"] = "compressor_vla"
    act_args: dict[str, Any] = field(default_factory=dict)  # ACTConfig fields, e.g. {dim_model: 256}
    compressor: str = "compressor_vla"  # or none, pooling, random, tome, divprune, stc, src, ...
    budget: int | float | None = None  # tokens per camera; null: compressor_vla's 16 + N/4
    compressor_args: dict[str, Any] = field(default_factory=dict)
    share_compressor: bool = False
    vision_backbone: str = "mobilenetv3_large_100"  # or mobilenetv2_imagenet (frozen ImageNet weights)
    backbone_out_index: int = 2
    backbone_norm: Literal["batchnorm", "groupnorm"] = "groupnorm"
    freeze_backbone: bool | None = None  # null: frozen for mobilenetv2_imagenet, trained for a timm backbone
    # side the policy resizes camera images to before its backbone (null: the cameras' size); the
    # environment still renders at data.camera_size. 256 with 128 px cameras and
    # mobilenetv2_imagenet level 3 (stride 16) keeps a 16 x 16 grid of deeper, 96-channel features
    image_size: int | None = None
    dim_model: int = 256
    n_heads: int = 8
    n_layers: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    attention_dropout: float = 0.0  # Compressor-VLA only; > 0 leaves SDPA's fused kernel (~1.8x slower training on CPU)
    chunk_size: int = 16
    n_action_steps: int = 8
    text_layers: int = 1
    text_buckets: int = 4096
    tokenizer_max_length: int = 24
    image_shift: int = 4
    # Train on the frozen backbone's tokens, encoded once per frame into a token cache under
    # data.cache_dir (medvtc.robotics.token_dataset): only the compressor and the head train, no
    # image is decoded or encoded at training time. Needs a frozen backbone. The saved policy
    # still runs from images.
    cache_tokens: bool = False
    # views cached per frame for the random-shift augmentation: view 0 unshifted, the others
    # shifted by up to image_shift pixels, one drawn per sample (1: no augmentation; with
    # image_shift 0 one view is cached)
    cache_views: int = 4
    # a trained policy (a run or its final/ folder, same architecture) whose weights start training:
    # fine-tuning, e.g. the next DAgger round from the policy that drove it (null: fresh weights)
    init_from: str | None = None

    def validate(self) -> None:
        if self.image_size is not None and self.name == "act":
            raise ValueError("image_size applies to Compressor-VLA; ACT reads the cameras' images at their size "
                             "(set it to null with policy.name=act)")
        if self.cache_views < 1:
            raise ValueError(f"cache_views must be >= 1, got {self.cache_views}")
        if not self.cache_tokens or self.name != "compressor_vla":  # ACT (its backbone trains) and replay ignore it
            return
        if not backbone_frozen(self.vision_backbone, self.freeze_backbone):
            why = ("freeze_backbone=false" if self.freeze_backbone is False
                   else f"a {self.vision_backbone!r} backbone trains unless freeze_backbone=true")
            raise ValueError(f"cache_tokens=true needs a frozen backbone, but {why}: set vision_backbone=mobilenetv2_imagenet "
                             "(frozen ImageNet weights) or freeze_backbone=true, or cache_tokens=false")


@dataclass
class LiberoEvalConfig:
    """`eval.*`: rollouts on the official initial states (suite/tasks default to data.*)."""

    suite: str | None = None
    tasks: list[int] | None = None
    episodes: int = 10
    first_init_state: int = 0
    max_episode_steps: int | None = None  # null: the suite's limit (280 for libero_object)
    num_envs: int = 1  # environments run in parallel processes
    progress: bool = True

    def validate(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {self.num_envs}")


@dataclass
class LiberoValidationConfig:
    """`val.*`: checkpoint selection by rollouts on held-out random scenes during training.

    Every train.eval_every steps (and at the end) the policy is rolled out from `episodes` random
    scenes per training task, drawn from a seed stream apart from the recording's (a scene the
    demonstrations were recorded from is skipped), never from LIBERO's official initial states,
    which are the test set. The weights of the best evaluation (train.select_metric, default
    val_success; ties go to the later step) become the run's final policy.
    """

    episodes: int = 0  # per task; 0: no validation rollouts, the last weights are final
    seed: int = 0
    robot_init_noise: float = 0.02  # rad of arm-joint noise at each reset, as the official states carry
    max_episode_steps: int | None = None  # null: the suite's limit

    def validate(self) -> None:
        if self.episodes < 0:
            raise ValueError(f"episodes must be >= 0, got {self.episodes}")
        if self.robot_init_noise < 0:
            raise ValueError(f"robot_init_noise must be >= 0, got {self.robot_init_noise}")


DEFAULT_BENCH_VARIANTS = [
    "compressor_vla", "none", "pooling", "random", "tome", "divprune", "stc_only", "src_only",
    "compressor_vla_no_instruction", "act", "replay",
]


@dataclass
class LiberoBenchConfig:
    """`bench.*`: every variant trained once per seed with the task's data/policy/train config
    under `output_dir/<variant>/seed_<s>` (finished runs reused when trained with the same
    settings, interrupted ones resumed), rolled out on the official initial states, and costed
    on the CPU (see `medvtc.robotics.bench`)."""

    output_dir: str = "runs/bench-libero"  # runs in output_dir/<variant>/seed_<s>
    # a method (policy.compressor; method@budget sets policy.budget) or a named ablation of
    # medvtc.robotics.bench.ABLATIONS (stc_only, src_only, compressor_vla_no_instruction, act)
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_BENCH_VARIANTS))
    seeds: list[int] = field(default_factory=lambda: [0])  # each variant trains once per seed
    suite: str = "libero_object"
    tasks: list[int] = field(default_factory=lambda: [0, 1, 2])
    episodes: int = 10
    first_init_state: int = 0
    max_episode_steps: int | None = None  # null: the suite's limit
    num_envs: int = 1
    video_episodes: int = 0  # mp4s of the first N episodes per task, in output_dir/<variant>/seed_<s>/videos
    latency_repeats: int = 20
    latency_warmup: int = 3
    threads: int = 0  # torch threads while measuring latency (0: as set)

    def validate(self) -> None:
        # the names themselves (method, method@budget or a named ablation) are checked by the
        # bench before anything is recorded or trained
        if not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants must be a non-empty list without repeats, got {self.variants}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list without repeats, got {self.seeds}")
        for name in ("episodes", "num_envs", "latency_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("video_episodes", "latency_warmup", "threads", "first_init_state"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


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
    val: LiberoValidationConfig = field(default_factory=LiberoValidationConfig)
    bench: LiberoBenchConfig = field(default_factory=LiberoBenchConfig)


def check_recording_matches(d: LiberoDataConfig) -> None:
    """The embedded default dataset (data.root at its default) must have been recorded with the
    data.* settings in force: it is made on first use, so without this a changed setting (or a
    changed default) would train silently on the old recording. A dataset at a root of the user's
    is taken as it is, whatever data.* says (those keys say how `medvtc data` records one)."""
    from medvtc.robotics.demonstrations import read_recording_summary

    rec = read_recording_summary(d.root) if d.root == DEFAULT_ROOT else None
    if rec is None:
        return
    # recordings older than a setting were made without it (0 noise)
    recorded = {"suite": rec.get("suite"), "tasks": [t["task_id"] for t in rec.get("tasks", [])],
                "episodes_per_task": rec.get("episodes_per_task"), "seed": rec.get("seed"), "init": rec.get("init"),
                "camera_size": list(rec.get("camera_size", [])), "robot_init_noise": rec.get("robot_init_noise", 0.0),
                "action_noise": rec.get("action_noise", 0.0), "expert_clip": rec.get("expert_clip", "axis"),
                "expert_hand_clearance": rec.get("expert_hand_clearance", False)}
    wanted = {"suite": d.suite, "tasks": list(d.tasks), "episodes_per_task": d.episodes_per_task, "seed": d.seed,
              "init": d.init, "camera_size": [d.camera_size, d.camera_size], "robot_init_noise": d.robot_init_noise,
              "action_noise": d.action_noise, "expert_clip": d.expert_clip, "expert_hand_clearance": d.expert_hand_clearance}
    for key, value in wanted.items():
        if recorded[key] != value:
            raise UserError(f"{d.root} was recorded with data.{key}={recorded[key]!r}, but the config says {value!r}: "
                            f"record it again (`medvtc data --task libero --overwrite`) or point data.root elsewhere")


def _init_weights(policy, init_from: str | None) -> None:
    """Load the weights of the trained policy at `init_from` (policy.init_from) into `policy`."""
    if init_from is None:
        return
    from safetensors.torch import load_file

    from medvtc.robotics.rollout import resolve_checkpoint

    path = resolve_checkpoint(init_from) / "model.safetensors"
    if not path.is_file():
        raise UserError(f"policy.init_from: {path} is missing (expected a policy folder written by medvtc train --task libero)")
    try:
        policy.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ConfigError(f"policy.init_from: {path} does not fit this policy's architecture ({first})") from None


class LiberoTask(Task):
    name = "libero"
    description = "Compressor-VLA robot policy on LIBERO: scripted demos, LeRobot policy, simulator rollouts"
    config_class = LiberoTaskConfig
    commands = ("train", "eval", "rollout", "bench", "data")

    # -- data ------------------------------------------------------------------------------------
    def data(self, cfg: LiberoTaskConfig, inspect: bool = False, overwrite: bool = False) -> int:
        from medvtc.robotics.demonstrations import describe_dataset, record_demonstrations
        from medvtc.robotics.scripted_expert import ExpertConfig

        if not inspect and cfg.data.dagger_policy is not None:
            from medvtc.robotics.dagger import record_dagger

            d = cfg.data
            record_dagger(
                d.root, d.dagger_base, d.dagger_policy, suite=d.suite, task_ids=d.tasks, episodes_per_task=d.episodes_per_task,
                seed=d.seed, policy_share=d.policy_share, robot_init_noise=d.robot_init_noise, action_noise=d.action_noise,
                expert_config=ExpertConfig(clip=d.expert_clip, hand_clearance=d.expert_hand_clearance), env_kwargs={"fast_render": d.fast_render}, overwrite=overwrite,
                workers=d.workers,
            )
        elif not inspect:
            d = cfg.data
            summary = record_demonstrations(
                d.root, suite=d.suite, task_ids=d.tasks, episodes_per_task=d.episodes_per_task, seed=d.seed,
                camera_size=d.camera_size, init=d.init, max_attempts_per_task=d.max_attempts_per_task,
                video=d.video, overwrite=overwrite, env_kwargs={"fast_render": d.fast_render},
                robot_init_noise=d.robot_init_noise, action_noise=d.action_noise,
                expert_config=ExpertConfig(clip=d.expert_clip, hand_clearance=d.expert_hand_clearance),
                workers=d.workers,
            )
            print(summary.describe())
        print(describe_dataset(cfg.data.root))
        return 0

    def _ensure_data(self, cfg: LiberoTaskConfig) -> None:
        self.ensure_embedded_data(cfg.data.root, cfg.data.root == DEFAULT_ROOT, "a LeRobotDataset v3 folder",
                                  "recording the default LIBERO demonstrations (scripted expert)", lambda: self.data(cfg))
        check_recording_matches(cfg.data)


    # -- train -----------------------------------------------------------------------------------
    def build(self, cfg: LiberoTaskConfig, device: str, dist_info=None):
        """(policy, preprocessor, postprocessor, dataset) for training on data.root.

        With policy.cache_tokens the dataset is a `TokenDemonstrations` (no images, the frozen
        backbone's tokens from the token cache, built here on first use: on the main process,
        which `dist_info` names; None = this one)."""
        import torch

        from medvtc.robotics.demonstrations import (
            check_dataset_features,
            load_demonstrations,
            read_info,
            read_recording_summary,
            required_features,
        )
        from medvtc.robotics.image_stats import dataset_stats
        from medvtc.robotics.policies.compressor_vla import CompressorVLAPolicy, make_compressor_vla_pre_post_processors

        info = read_info(cfg.data.root)
        check_dataset_features(info["features"], required_features(), cfg.data.root)
        pcfg = policy_config(cfg, info["features"], device)
        fps = int(info["fps"])
        delta = {"action": [i / fps for i in pcfg.action_delta_indices]}  # = LeRobot's resolve_delta_timestamps
        dataset = load_demonstrations(cfg.data.root, required=required_features(pcfg.input_features, pcfg.output_features),
                                      delta_timestamps=delta)
        stats, recomputed = dataset.meta.stats, False
        if getattr(pcfg.normalization_mapping.get("VISUAL"), "value", None) != "IDENTITY":  # the frozen ImageNet encoder normalises itself
            stats, recomputed = dataset_stats(dataset, read_recording_summary(cfg.data.root))
        if recomputed and (dist_info is None or dist_info.is_main):
            print("medvtc: image statistics recomputed in float (the dataset's were computed by LeRobot 0.4.4 in uint8, "
                  "which overflows: huggingface/lerobot#3682)")
        torch.manual_seed(cfg.seed)
        if cfg.policy.name == "act":
            from lerobot.policies.act.modeling_act import ACTPolicy
            from lerobot.policies.act.processor_act import make_act_pre_post_processors

            policy = ACTPolicy(pcfg)
            _init_weights(policy, cfg.policy.init_from)
            pre, post = make_act_pre_post_processors(pcfg, stats)
            return policy, pre, post, dataset
        try:
            policy = CompressorVLAPolicy(pcfg)
        except ValueError as e:
            raise ConfigError(f"policy: {e}") from None
        _init_weights(policy, cfg.policy.init_from)
        pre, post = make_compressor_vla_pre_post_processors(pcfg, stats)
        if cfg.policy.cache_tokens:  # compressor_vla only (ACT returned above)
            dataset = self._token_dataset(cfg, policy, pre, dataset, device, dist_info)
        return policy, pre, post, dataset

    def _token_dataset(self, cfg: LiberoTaskConfig, policy, pre, dataset, device: str, dist_info=None):
        """The frames of `dataset` as `TokenDemonstrations` on the token cache of `policy`'s frozen
        backbone (medvtc.robotics.token_dataset), built or reused under data.cache_dir."""
        from medvtc.robotics.token_dataset import TokenDemonstrations, build_token_cache, cache_root

        policy.to(device)
        cache = build_token_cache(
            policy, pre, dataset, cache_root(cfg.data.root, cfg.data.cache_dir), data_root=cfg.data.root,
            views=cfg.policy.cache_views, image_shift=cfg.policy.image_shift, progress=cfg.train.progress,
            is_main=dist_info is None or dist_info.is_main,
        )
        return TokenDemonstrations(dataset, cache, policy.model.image_keys, view="random")

    def train(self, cfg: LiberoTaskConfig, resume: bool = False) -> int:
        from medvtc.common.distributed import barrier, cleanup, init_distributed
        from medvtc.common.trainer import resolve_device
        from medvtc.robotics.demonstrations import read_recording_summary
        from medvtc.robotics.policy_cost import visual_tokens
        from medvtc.robotics.rollout import RECORDING_COPY, SELECTION_FILE

        out = Path(cfg.output_dir)
        if not resume and (ckpt.latest_checkpoint(out / "checkpoints") is not None or (out / "final").exists()):
            raise UserError(f"{out} already holds a libero run; pass --resume to continue it or choose another output_dir")
        if cfg.policy.name == "replay":
            return self._train_replay(cfg)
        device = resolve_device(cfg.train.device)
        dist_info = init_distributed(device.type)
        if dist_info.is_main:
            self._ensure_data(cfg)
        barrier(dist_info)
        policy, pre, post, dataset = self.build(cfg, device.type, dist_info)
        from medvtc.robotics.token_dataset import TokenDemonstrations

        tokens, uncompressed = visual_tokens(policy)
        method = "act" if cfg.policy.name == "act" else cfg.policy.compressor
        if dist_info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
            trained = sum(p.numel() for p in policy.parameters() if p.requires_grad)
            print(f"medvtc: {dataset.num_episodes} episodes, {len(dataset)} frames"
                  f"{' (backbone tokens from the token cache)' if isinstance(dataset, TokenDemonstrations) else ''}; "
                  f"{cfg.policy.name} "
                  f"policy with {tokens} visual tokens ({uncompressed} before {method}), "
                  f"{sum(p.numel() for p in policy.parameters()):,} parameters ({trained:,} trained)")

        def step_fn(model, batch):
            return model(pre(batch))

        tcfg, eval_fn, scenes = self._validation(cfg, policy, pre, post)
        trainer = Trainer(policy, dataset, tcfg, out, seed=cfg.seed, step_fn=step_fn, eval_fn=eval_fn, eval_set=scenes)
        t0 = time.perf_counter()
        trainer.fit(resume=resume)
        if dist_info.is_main:
            selected = trainer.load_best()
            if selected is not None:
                print(f"medvtc: final policy = step {selected['step']} ({selected['metric']} {selected['value']:.3f}, "
                      f"the best of the validation rollouts; last step {trainer.step})")
            with atomic_directory(out / "final", overwrite=True) as tmp:
                if selected is not None:
                    atomic_write_json(tmp / SELECTION_FILE, selected)
                policy.save_pretrained(tmp)
                pre.save_pretrained(tmp)
                post.save_pretrained(tmp)
                save_config(cfg, tmp / "medvtc_config.yaml")
                atomic_write_json(tmp / "medvtc_tokens.json", {
                    "visual_tokens": tokens, "uncompressed_tokens": uncompressed, "compressor": method,
                })
                # the training tasks travel with the policy (`medvtc rollout --suite` maps a suite's
                # tasks to them), even when the dataset is moved or deleted
                recording = read_recording_summary(cfg.data.root)
                if recording is not None:
                    atomic_write_json(tmp / RECORDING_COPY, recording)
            print(f"medvtc: trained in {time.perf_counter() - t0:.0f} s; policy in {out / 'final'}")
        cleanup(dist_info)
        return 0

    def _validation(self, cfg: LiberoTaskConfig, policy, pre, post):
        """(train config, eval_fn, held-out scenes) for checkpoint selection by validation rollouts
        (`val.*`); (cfg.train, None, None) when val.episodes is 0."""
        from dataclasses import replace

        from medvtc.robotics.demonstrations import read_recording_summary
        from medvtc.robotics.rollout import validation_rollouts, validation_scenes

        v = cfg.val
        if v.episodes == 0:
            return cfg.train, None, None
        if cfg.train.eval_every == 0:
            raise ConfigError("val.episodes > 0 needs train.eval_every > 0: the steps at which the policy is rolled out")
        rec = read_recording_summary(cfg.data.root) or {}
        exclude = {}
        if rec.get("init") == "random":  # the reset seeds the demonstrations were recorded (or attempted) from
            exclude = {int(t["task_id"]): set(t.get("kept_seeds", [])) | set(t.get("failed_seeds", []))
                       for t in rec.get("tasks", [])}
        scenes = validation_scenes(v.seed, cfg.data.tasks, v.episodes, exclude)
        size = int(next(iter(policy.config.image_features.values())).shape[-1])

        def eval_fn(model, jobs, device):
            return validation_rollouts(model, pre, post, suite=cfg.data.suite, scenes=jobs, camera_size=size,
                                       robot_init_noise=v.robot_init_noise, max_episode_steps=v.max_episode_steps)

        tcfg = cfg.train if cfg.train.select_metric else replace(cfg.train, select_metric="val_success", select_mode="max")
        return tcfg, eval_fn, scenes

    def _train_replay(self, cfg: LiberoTaskConfig) -> int:
        """The no-vision floor: keep the first recorded demonstration of every task."""
        from medvtc.robotics.replay import save_replay

        self._ensure_data(cfg)
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        with atomic_directory(out / "final", overwrite=True) as tmp:
            lengths = save_replay(tmp, cfg.data.root)
            save_config(cfg, tmp / "medvtc_config.yaml")
        print(f"medvtc: replay floor: the first demonstration of each of {len(lengths)} tasks "
              f"({', '.join(str(n) for n in lengths.values())} actions) in {out / 'final'}")
        return 0

    # -- eval ------------------------------------------------------------------------------------
    def eval(self, cfg: LiberoTaskConfig, checkpoint: str | None) -> int:
        from medvtc.robotics.rollout import format_results

        suite = cfg.eval.suite or cfg.data.suite
        results = self.run_rollout(cfg, checkpoint or cfg.output_dir, suite=suite)
        print(format_results(results))
        atomic_write_json(Path(results["checkpoint"]) / f"eval_{suite}.json", results)
        return 0

    def run_rollout(self, cfg: LiberoTaskConfig, checkpoint: str, *, suite: str | None = None,
                    tasks: list[int] | None = None, episodes: int | None = None, max_episode_steps: int | None = None,
                    num_envs: int | None = None, video_dir: str | None = None, video_episodes: int = 0) -> dict[str, Any]:
        """Roll the policy at `checkpoint` out (arguments left None come from eval.* / data.*);
        everything is checked before anything runs. Returns the results (see `run_rollouts`)."""
        from medvtc.robotics.policy_cost import visual_tokens
        from medvtc.robotics.rollout import check_rollout_args, load_policy, resolve_checkpoint, run_rollouts

        folder = resolve_checkpoint(checkpoint)
        suite = suite or cfg.eval.suite or cfg.data.suite
        if tasks is None:
            tasks = cfg.eval.tasks if cfg.eval.tasks is not None else cfg.data.tasks
        episodes = cfg.eval.episodes if episodes is None else episodes
        max_steps = cfg.eval.max_episode_steps if max_episode_steps is None else max_episode_steps
        num_envs = cfg.eval.num_envs if num_envs is None else num_envs
        check_rollout_args(suite, tasks, episodes, num_envs, video_episodes if video_dir else 0, max_steps)
        policy, pre, post = load_policy(folder)
        results = run_rollouts(
            policy, pre, post, suite=suite, task_ids=tasks, episodes=episodes, max_episode_steps=max_steps,
            first_init_state=cfg.eval.first_init_state, progress=cfg.eval.progress, num_envs=num_envs,
            checkpoint=folder, video_dir=video_dir, video_episodes=video_episodes,
        )
        tokens, uncompressed = visual_tokens(policy)
        results.update(checkpoint=str(folder), policy=policy.config.type, visual_tokens=tokens,
                       uncompressed_tokens=uncompressed)
        return results

    # -- rollout ---------------------------------------------------------------------------------
    def rollout(self, cfg: LiberoTaskConfig, checkpoint: str, *, suite: str | None = None, tasks: list[int] | None = None,
                episodes: int | None = None, max_episode_steps: int | None = None, num_envs: int | None = None,
                video_dir: str | None = None, video_episodes: int | None = None, output: str | None = None) -> int:
        """`medvtc rollout`: success per task and overall on the official initial states; optional
        videos (the first `video_episodes` episodes per task, 1 by default with a video_dir) and
        JSON results at `output` (written atomically once every episode is done)."""
        from medvtc.robotics.rollout import format_results

        if video_episodes is not None and video_dir is None:
            raise UserError("--video-episodes needs --video-dir (where to write the mp4s)")
        n_videos = (1 if video_episodes is None else video_episodes) if video_dir else 0
        if output is not None and Path(output).is_dir():
            raise UserError(f"-o {output} is a folder; give a file name such as {Path(output) / 'rollout.json'}")
        results = self.run_rollout(cfg, checkpoint, suite=suite, tasks=tasks, episodes=episodes,
                                   max_episode_steps=max_episode_steps, num_envs=num_envs, video_dir=video_dir,
                                   video_episodes=n_videos)
        print(format_results(results))
        if output is not None:
            atomic_write_json(output, results)
            print(f"medvtc: results in {output}")
        return 0

    # -- bench -----------------------------------------------------------------------------------
    def bench(self, cfg: LiberoTaskConfig, output: str, retrain: bool = False) -> int:
        from medvtc.robotics.bench import run_benchmark

        run_benchmark(self, cfg, output, retrain=retrain)
        return 0


__all__ = ["LiberoTask", "LiberoTaskConfig", "act_policy_config", "policy_config"]

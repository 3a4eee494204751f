"""The LeRobot policy config of a `libero` task config: `CompressorVLAConfig`, or LeRobot's
`ACTConfig` with `policy.name=act`, for a dataset's features.

Its own module so that what builds policies from a task config (the task's `train`, the
benchmark's token matching and config checks) does not import the task module.
"""

from __future__ import annotations

from typing import Any

from medvtc.common.errors import ConfigError


def _policy_features(features: dict[str, dict]):
    from lerobot.configs.types import FeatureType
    from lerobot.datasets.utils import dataset_to_policy_features

    from medvtc.robotics.demonstrations import STATE_KEY

    feats = dataset_to_policy_features(features)
    outputs = {k: f for k, f in feats.items() if f.type is FeatureType.ACTION and k == "action"}
    inputs = {k: f for k, f in feats.items() if f.type is FeatureType.VISUAL or k == STATE_KEY}
    return inputs, outputs


def act_policy_config(cfg, features: dict[str, dict], device: str):
    """LeRobot's `ACTConfig` for the dataset `features`: LeRobot's defaults, the policy's chunking
    and dropout, the train.* optimiser settings, no pretrained backbone, then `policy.act_args`."""
    import dataclasses

    from lerobot.policies.act.configuration_act import ACTConfig

    inputs, outputs = _policy_features(features)
    p = cfg.policy
    valid = {f.name for f in dataclasses.fields(ACTConfig) if f.init}
    fixed = {"input_features", "output_features", "device", "type"}
    unknown = [k for k in p.act_args if k not in valid or k in fixed]
    if unknown:
        raise ConfigError(f"policy.act_args: {unknown[0]!r} is not an ACTConfig field one can set; valid: "
                          + ", ".join(sorted(valid - fixed)))
    args: dict[str, Any] = dict(
        chunk_size=p.chunk_size, n_action_steps=p.n_action_steps, dropout=p.dropout, pretrained_backbone_weights=None,
        optimizer_lr=cfg.train.lr, optimizer_lr_backbone=cfg.train.lr, optimizer_weight_decay=cfg.train.weight_decay,
    )
    args.update(p.act_args)
    try:
        return ACTConfig(input_features=inputs, output_features=outputs, device=device, **args)
    except (ValueError, NotImplementedError, TypeError) as e:
        raise ConfigError(f"policy (act): {e}") from None


def backbone_frozen(vision_backbone: str, freeze_backbone: bool | None) -> bool:
    """`policy.freeze_backbone` with None resolved as `CompressorVLAConfig.backbone_frozen` does:
    frozen for a pretrained backbone (mobilenetv2_imagenet), trained for a timm one."""
    from medvtc.robotics.policies.compressor_vla.configuration_compressor_vla import PRETRAINED_BACKBONES

    return vision_backbone in PRETRAINED_BACKBONES if freeze_backbone is None else bool(freeze_backbone)


def policy_config(cfg, features: dict[str, dict], device: str):
    """A `CompressorVLAConfig` (or `ACTConfig` with policy.name=act) for the dataset `features`
    (LeRobot meta.features)."""
    from medvtc.robotics.policies.compressor_vla import CompressorVLAConfig

    if cfg.policy.name == "act":
        return act_policy_config(cfg, features, device)
    inputs, outputs = _policy_features(features)
    p = cfg.policy
    try:
        pcfg = CompressorVLAConfig(
            input_features=inputs, output_features=outputs, device=device,
            chunk_size=p.chunk_size, n_action_steps=p.n_action_steps, vision_backbone=p.vision_backbone,
            backbone_out_index=p.backbone_out_index, backbone_norm=p.backbone_norm, freeze_backbone=p.freeze_backbone,
            image_size=p.image_size, dim_model=p.dim_model,
            n_heads=p.n_heads, n_layers=p.n_layers, mlp_ratio=p.mlp_ratio, dropout=p.dropout,
            attention_dropout=p.attention_dropout,
            text_buckets=p.text_buckets, text_layers=p.text_layers, tokenizer_max_length=p.tokenizer_max_length,
            compressor=p.compressor, compressor_budget=p.budget, compressor_args=dict(p.compressor_args),
            share_compressor=p.share_compressor, image_shift=p.image_shift,
            optimizer_lr=cfg.train.lr, optimizer_lr_backbone=cfg.train.lr, optimizer_weight_decay=cfg.train.weight_decay,
        )
    except ValueError as e:
        raise ConfigError(f"policy: {e}") from None
    if p.cache_tokens and not pcfg.backbone_frozen:
        raise ConfigError(f"policy: cache_tokens=true needs a frozen backbone ({p.vision_backbone!r} with "
                          f"freeze_backbone={p.freeze_backbone}); set vision_backbone=mobilenetv2_imagenet or freeze_backbone=true")
    return pcfg


__all__ = ["act_policy_config", "backbone_frozen", "policy_config"]

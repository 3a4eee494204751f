"""Build the segmentation network a config names: TokenSeg or one of MONAI's own networks.

The MONAI networks use the settings of MONAI's tutorials (so the comparison is against the
networks as their users run them); `model.baseline_args` overrides constructor arguments per
network, e.g. {"swinunetr": {"feature_size": 24}, "unet": {"num_res_units": 1}}:

- unet: `UNet`, channels (16, 32, 64, 128, 256), strides 2, 2 residual units (spleen tutorial);
- segresnet: `SegResNet`, 16 initial filters, blocks down (1, 2, 2, 4), up (1, 1, 1) (BraTS
  tutorial);
- unetr: `UNETR`, feature size 16, ViT-B (768 hidden, 12 heads, 3072 MLP), instance norm,
  residual blocks (BTCV tutorial); needs the input size at construction (`img_size`);
- swinunetr: `SwinUNETR`, feature size 48 (BTCV tutorial); input sides must be multiples of 32
  (the bench's `swinunetr24` variant is the same network at feature size 24, the size users pick
  for efficiency);
- mednext: `MedNeXt` in its small configuration (MedNeXt-S, Roy et al. 2023, as MONAI's
  `create_mednext("S")`: 32 initial filters, expansion ratio 2, 2 blocks per stage, kernel 3,
  residual connections, group norm, no deep supervision); input sides must be multiples of 16.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from medvtc.common.errors import UserError

MODEL_NAMES = ("tokenseg", "unet", "segresnet", "unetr", "swinunetr", "mednext")

BASELINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "unet": dict(channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2),
    "segresnet": dict(init_filters=16, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1)),
    "unetr": dict(feature_size=16, hidden_size=768, mlp_dim=3072, num_heads=12, norm_name="instance", res_block=True),
    "swinunetr": dict(feature_size=48),
    "mednext": dict(init_filters=32, encoder_expansion_ratio=2, decoder_expansion_ratio=2, bottleneck_expansion_ratio=2,
                    kernel_size=3, blocks_down=(2, 2, 2, 2), blocks_bottleneck=2, blocks_up=(2, 2, 2, 2),
                    use_residual_connection=True, norm_type="group", global_resp_norm=False, deep_supervision=False),
}


def tokenseg_kwargs(model_cfg: Any) -> dict[str, Any]:
    m = model_cfg
    return dict(
        num_tokens=m.num_tokens, keep_tokens=m.keep_tokens, token_dim=m.token_dim, feature_size=m.feature_size,
        codebook_size=m.codebook_size, commitment_cost=m.commitment_cost, ema_decay=m.ema_decay,
        dead_code_threshold=m.dead_code_threshold, saliency_weight=m.saliency_weight, selection=m.selection,
        selection_args=dict(m.selection_args), level_weights=tuple(m.level_weights),
        tokens_per_level=None if m.tokens_per_level is None else tuple(m.tokens_per_level),
        coarse_level=m.coarse_level, mixer_layers=m.mixer_layers, mixer_heads=m.mixer_heads,
        boundary_sigma=m.boundary_sigma,
    )


def build_network(
    model_cfg: Any, in_channels: int, out_channels: int, img_size: Sequence[int] | None = None
) -> nn.Module:
    """The network of `model_cfg.name` for `in_channels` modalities and `out_channels` classes;
    `img_size` defaults to `model_cfg.img_size` (the sliding-window ROI)."""
    from monai.networks import nets

    name = model_cfg.name
    if name not in MODEL_NAMES:
        raise UserError(f"unknown model.name {name!r}; valid: {', '.join(MODEL_NAMES)}")
    size = tuple(int(s) for s in (img_size or model_cfg.img_size))
    try:
        if name == "tokenseg":
            from medvtc.medical.tokenseg.tokenseg import TokenSeg

            return TokenSeg(3, in_channels, out_channels, size, **tokenseg_kwargs(model_cfg))
        overrides = dict(model_cfg.baseline_args)
        unknown = sorted(set(overrides) - set(BASELINE_DEFAULTS))
        if unknown:
            raise ValueError(f"model.baseline_args has key {unknown[0]!r}; expected network names: {', '.join(BASELINE_DEFAULTS)}")
        args = {**BASELINE_DEFAULTS[name], **dict(overrides.get(name) or {})}
        if name == "unet":
            return nets.UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **args)
        if name == "segresnet":
            return nets.SegResNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **args)
        if name == "unetr":
            return nets.UNETR(in_channels=in_channels, out_channels=out_channels, img_size=size, **args)
        if name == "swinunetr":
            if any(s % 32 for s in size):
                raise ValueError(f"SwinUNETR needs input sides divisible by 32, got img_size {size}")
            return nets.SwinUNETR(in_channels=in_channels, out_channels=out_channels, spatial_dims=3, **args)
        if name == "mednext":
            levels = len(args.get("blocks_down", (2, 2, 2, 2)))
            if any(s % 2**levels for s in size):
                raise ValueError(f"MedNeXt needs input sides divisible by {2**levels}, got img_size {size}")
            if args.get("deep_supervision"):
                raise ValueError("deep_supervision=true returns several outputs; the task trains one (set it false)")
            return nets.MedNeXt(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **args)
    except (ValueError, TypeError, AssertionError) as e:
        raise UserError(f"model.name={name}: cannot build the network: {' '.join(str(e).split())}") from None
    raise AssertionError(name)


def num_tokens(name: str, img_size: Sequence[int], keep_tokens: int) -> int:
    """Tokens the network processes for one input of `img_size`: TokenSeg's kept tokens, the
    transformers' patch tokens (UNETR 16^3 patches, SwinUNETR 2^3 patches at its first stage),
    0 for the convolutional networks (UNet, SegResNet, MedNeXt)."""
    vox = 1
    for s in img_size:
        vox *= int(s)
    if name == "tokenseg":
        return int(keep_tokens)
    if name == "unetr":
        return vox // 16**3
    if name == "swinunetr":
        return vox // 2**3
    return 0


def is_tokenseg(model: nn.Module) -> bool:
    from medvtc.medical.tokenseg.tokenseg import TokenSeg

    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    return isinstance(inner, TokenSeg)


__all__ = ["MODEL_NAMES", "BASELINE_DEFAULTS", "build_network", "num_tokens", "is_tokenseg", "tokenseg_kwargs"]

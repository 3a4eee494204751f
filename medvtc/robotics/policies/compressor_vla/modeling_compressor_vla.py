"""Compressor-VLA policy (LeRobot `PreTrainedPolicy`): timm backbone -> per-camera token grid ->
instruction-guided token compression from the medvtc core -> transformer head -> action chunk.

After "Compressor-VLA: Instruction-Guided Visual Token Compression for Efficient Robotic
Manipulation" (arXiv 2511.18950, 2025), at a scale that trains on a CPU:

    images  [B, 3, H, W] per camera (normalised)      instruction tokens [B, L] (+ mask)
      |  timm backbone (pretrained=False), feature level `backbone_out_index`
    grid    [B, C, h, w] -> Linear(C, D) + learned (camera, position) embedding
    tokens  [B, N = h*w, D] per camera                 text encoder: hashed-word embedding +
      |  core compressor per camera                     timm blocks -> text [B, L, D], pooled [B, D]
      |  (`compressor_vla` = STC(k=16, FiLM from the pooled instruction) ++ SRC(w=2 windows,
      |   instruction added to the window queries); or pooling / random / tome / divprune /
      |   stc / src at a given budget; "none" keeps all N)
    visual  [B, K, D] per camera
      |  head input: [state token, pooled-instruction token, visual tokens of every camera,
      |               chunk_size learned action queries]   (sequence T = 2 + cams*K + chunk)
      |  n_layers timm ViT blocks (pre-norm self-attention + MLP), as OpenVLA-OFT's parallel
      |  decoding reads its action tokens out of the LLM
    actions [B, chunk_size, A] = Linear(D, A) on the action-query outputs (normalised space)

The loss is ACT's: L1 between predicted and demonstrated (normalised) action chunks, padded steps
past an episode's end masked out (`action_is_pad`). Training adds DrQ random-shift augmentation
(`image_shift` pixels).

Shapes at the default config (two 128 px cameras, MobileNetV3-Large cut at stride 8, D=256,
4 head blocks, chunk 16): grid [B, 40, 16, 16] -> N = 256 tokens per camera; `compressor_vla`
keeps K = 16 STC + 64 SRC = 80 per camera, so the head reads T = 2 + 160 + 16 = 178 tokens
instead of 2 + 512 + 16 = 530: 1.66 instead of 4.63 GFLOPs per chunk (measured with torch's
counter, `medvtc.robotics.policy_cost`), 3.2x fewer visual tokens and 64 % fewer FLOPs.

Pretrained, frozen backbone (opt-in, `vision_backbone="mobilenetv2_imagenet"`): an ImageNet
MobileNetV2 (`medvtc.robotics.pretrained_encoder`) replaces the timm CNN; it reads images in
[0, 1] (the config switches the VISUAL normalisation to IDENTITY) and normalises them with the
ImageNet mean/std itself. Frozen, it runs under no_grad in eval mode and is not optimised; only
`input_proj` onwards trains. Its per-camera output tokens [B, N, C] may then come precomputed in
the batch as `observation.image_tokens.<camera>` (e.g. from a `medvtc.common.token_cache`
store), giving the same actions as the images (without the pixel-shift augmentation).

Differences from the paper: the backbone is a small timm CNN trained from scratch (or the frozen
ImageNet MobileNetV2 above) instead of OpenVLA-OFT's SigLIP+DINOv2 (no weights can be downloaded
here); the LLM is replaced by a small transformer head fed a pooled instruction token (the full
instruction tokens go to the compressors, which is where the paper uses them); actions are
regressed with L1 as in OpenVLA-OFT's L1 head.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.constants import ACTION, OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS, OBS_STATE
from torch import Tensor, nn

from medvtc.robotics.policies.compressor_vla.configuration_compressor_vla import NO_COMPRESSION, CompressorVLAConfig
from medvtc.robotics.policies.compressor_vla.processor_compressor_vla import HashedWordTokenizer

_NEG = -1e4  # additive attention-mask value for ignored keys (finite: safe in bf16 and with all-real rows)
OBS_IMAGES_PREFIX = "observation.images."
OBS_IMAGE_TOKENS_PREFIX = "observation.image_tokens."


def image_tokens_key(image_key: str) -> str:
    """Batch key of a camera's precomputed backbone tokens: `observation.images.<camera>` ->
    `observation.image_tokens.<camera>`."""
    camera = image_key[len(OBS_IMAGES_PREFIX):] if image_key.startswith(OBS_IMAGES_PREFIX) else image_key
    return OBS_IMAGE_TOKENS_PREFIX + camera


def _groups(channels: int) -> int:
    return math.gcd(32, int(channels))  # up to 32 groups, always dividing the channel count


def to_group_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in `module` by GroupNorm, in place (returns `module`).

    LeRobot's diffusion policy does the same for backbones trained from scratch (BatchNorm's
    running statistics are unreliable with small batches of highly correlated frames). timm's
    fused `BatchNormAct2d` becomes `GroupNormAct` with the same activation and dropout.
    """
    from timm.layers import BatchNormAct2d, GroupNormAct

    for name, child in list(module.named_children()):
        if isinstance(child, BatchNormAct2d):
            gn = GroupNormAct(child.num_features, num_groups=_groups(child.num_features), eps=child.eps,
                              affine=child.affine, apply_act=False)
            gn.act, gn.drop = child.act, child.drop
            setattr(module, name, gn)
        elif isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(_groups(child.num_features), child.num_features, eps=child.eps,
                                               affine=child.affine))
        else:
            to_group_norm(child)
    return module


def _blocks(cfg: CompressorVLAConfig, depth: int) -> nn.ModuleList:
    from timm.models.vision_transformer import Block

    return nn.ModuleList(
        Block(cfg.dim_model, cfg.n_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True, proj_drop=cfg.dropout,
              attn_drop=cfg.attention_dropout)
        for _ in range(depth)
    )


def _key_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """[B, T] bool (True = real) -> additive [B, 1, 1, T] mask for timm/SDPA attention."""
    if mask is None or bool(mask.all()):
        return None
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, _NEG)[:, None, None, :]


class InstructionEncoder(nn.Module):
    """Hashed-word embedding + learned positions + `text_layers` timm blocks + LayerNorm.

    tokens [B, L] long, mask [B, L] -> (text [B, L, D], pooled [B, D] masked mean).
    """

    def __init__(self, cfg: CompressorVLAConfig) -> None:
        super().__init__()
        d = cfg.dim_model
        self.embed = nn.Embedding(cfg.text_buckets, d, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(cfg.tokenizer_max_length, d))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = _blocks(cfg, cfg.text_layers)
        self.norm = nn.LayerNorm(d)

    def forward(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        length = tokens.shape[1]
        if length > self.pos.shape[0]:
            tokens, mask, length = tokens[:, : self.pos.shape[0]], mask[:, : self.pos.shape[0]], self.pos.shape[0]
        mask = mask.bool()
        x = self.embed(tokens) + self.pos[:length]
        bias = _key_mask(mask, x.dtype)
        for blk in self.blocks:
            x = blk(x, attn_mask=bias)
        x = self.norm(x)
        m = mask.to(x.dtype).unsqueeze(-1)
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        return x, pooled


class CompressorVLA(nn.Module):
    """The network of `CompressorVLAPolicy` (see the module docstring for the data flow).

    forward(batch) -> actions [B, chunk_size, action_dim]; `last_compression` keeps the latest
    per-camera `CompressorOutput`s (kept indices / assignments, for drawing kept tokens), and with
    `keep_inputs=True` `last_inputs` keeps what the compressors read (per-camera tokens, text, mask).
    """

    def __init__(self, cfg: CompressorVLAConfig) -> None:
        super().__init__()
        import timm

        from medvtc.common.compressors import resolve_compressor

        self.cfg = cfg
        d = cfg.dim_model
        self.image_keys = list(cfg.image_features)
        # (3, H, W) the backbone reads: the cameras' own size unless cfg.image_size resizes them
        self.image_shape = tuple(next(iter(cfg.image_features.values())).shape)
        if cfg.image_size is not None:
            self.image_shape = (self.image_shape[0], int(cfg.image_size), int(cfg.image_size))
        n_cams = len(self.image_keys)

        kwargs: dict[str, Any] = dict(cfg.backbone_kwargs)
        self.backbone_frozen = cfg.backbone_frozen
        self._text_cache: tuple[Any, tuple[Tensor, Tensor, Tensor]] | None = None  # see encode_text

        def make_backbone() -> nn.Module:
            if cfg.pretrained_backbone:
                from medvtc.robotics.pretrained_encoder import MobileNetV2ImageNetEncoder

                return MobileNetV2ImageNetEncoder(cfg.backbone_out_index, frozen=self.backbone_frozen)
            args = dict(pretrained=False, features_only=True, out_indices=(cfg.backbone_out_index,), **kwargs)
            try:
                # The "getter" wrapper prunes the layers after the requested level (timm's default
                # feature wrapper keeps e.g. all of an EfficientNet's blocks as dead weights).
                net = timm.create_model(cfg.vision_backbone, feature_cls="getter", **args)
            except Exception:  # noqa: BLE001 - not every timm model has forward_intermediates
                try:
                    net = timm.create_model(cfg.vision_backbone, **args)
                except Exception as e:  # noqa: BLE001 - timm raises several types for a bad name/argument
                    raise ValueError(f"cannot build timm backbone {cfg.vision_backbone!r} with features_only, "
                                     f"out_indices=({cfg.backbone_out_index},), {kwargs}: {e}") from e
            return to_group_norm(net) if cfg.backbone_norm == "groupnorm" else net

        n_backbones = 1 if cfg.share_backbone else n_cams
        self.backbones = nn.ModuleList(make_backbone() for _ in range(n_backbones))
        if self.backbone_frozen:
            self.backbones.requires_grad_(False)
        with torch.no_grad():
            probe = self._backbone(self.backbones[0].eval(), torch.zeros(1, *self.image_shape))
        self.backbones.train(not self.backbone_frozen)
        self.feature_channels = int(probe.shape[1])
        self.grid: tuple[int, int] = (int(probe.shape[2]), int(probe.shape[3]))
        self.tokens_per_camera = self.grid[0] * self.grid[1]
        self.input_proj = nn.Linear(self.feature_channels, d)
        self.visual_pos = nn.Parameter(torch.zeros(n_cams, self.tokens_per_camera, d))
        nn.init.trunc_normal_(self.visual_pos, std=0.02)

        self.text_encoder = InstructionEncoder(cfg)
        self.tokenizer = HashedWordTokenizer(cfg.text_buckets)

        state_ft = cfg.robot_state_feature
        self.state_dim = int(state_ft.shape[0]) if state_ft is not None else 0
        self.state_proj = nn.Linear(self.state_dim, d) if self.state_dim else None
        self.slot_embed = nn.Parameter(torch.zeros(2, d))  # [state, instruction]
        self.action_queries = nn.Parameter(torch.zeros(cfg.chunk_size, d))
        nn.init.trunc_normal_(self.slot_embed, std=0.02)
        nn.init.trunc_normal_(self.action_queries, std=0.02)

        # Token compression (per camera, as in the paper).
        self.compressor_name = cfg.compressor
        self.compressors = nn.ModuleList()
        self.output_proj: nn.Module = nn.Identity()
        self.visual_tokens_per_camera = self.tokens_per_camera
        if cfg.compressor != NO_COMPRESSION:
            n_comp = 1 if cfg.share_compressor else n_cams
            for _ in range(n_comp):
                # the budget is passed per call (None: the method's own for the grid)
                comp = resolve_compressor(cfg.compressor, cfg.compressor_budget, cfg.compressor_args,
                                          grid=self.grid, dim=d, text_dim=d, per_call=True)
                if comp.needs_scores:
                    raise ValueError(
                        f"compressor {cfg.compressor!r} needs external importance scores, which this policy's CNN "
                        "backbone does not provide; choose another compressor"
                    )
                self.compressors.append(comp)
            out = self._probe_compressor()
            self.visual_tokens_per_camera = int(out.tokens.shape[1])
            if out.tokens.shape[-1] != d:  # e.g. pixel shuffle stacks channels
                self.output_proj = nn.Linear(int(out.tokens.shape[-1]), d)

        self.blocks = _blocks(cfg, cfg.n_layers)
        self.norm = nn.LayerNorm(d)
        self.action_dim = int(cfg.action_feature.shape[0])
        self.action_head = nn.Linear(d, self.action_dim)
        self.last_compression: list[Any] = []
        # Set by rollout videos (`medvtc.robotics.token_video`): keep the compressors' inputs of the
        # latest forward pass, so which grid cells fed the kept tokens can be drawn.
        self.keep_inputs = False
        self.last_inputs: tuple[list[Tensor], Tensor, Tensor] | None = None
        self.frozen_unused = self._freeze_unused()

    def train(self, mode: bool = True) -> CompressorVLA:
        """A frozen backbone stays in eval mode (fixed BatchNorm statistics, no dropout)."""
        super().train(mode)
        if self.backbone_frozen:
            self.backbones.eval()
        return self

    def _freeze_unused(self) -> list[str]:
        """Freeze weights no forward pass reaches (e.g. STC's FiLM MLP in the no-instruction
        ablation, layers past the backbone's feature level): DistributedDataParallel fails on
        trainable weights without gradients. Returns their names."""
        batch: dict[str, Any] = {k: torch.zeros(1, *self.image_shape) for k in self.image_keys}
        batch[OBS_LANGUAGE_TOKENS] = torch.full((1, 1), 2, dtype=torch.long)
        batch[OBS_LANGUAGE_ATTENTION_MASK] = torch.ones(1, 1, dtype=torch.bool)
        if self.state_dim:
            batch[OBS_STATE] = torch.zeros(1, self.state_dim)
        was = self.training
        self.eval()
        try:
            with torch.enable_grad():
                actions, aux = self(batch)
                (actions.sum() + (aux if aux is not None else 0.0)).backward()
        finally:
            self.train(was)
            self.last_compression = []
        frozen = []
        for name, p in self.named_parameters():
            if p.requires_grad and p.grad is None:
                p.requires_grad_(False)
                frozen.append(name)
            p.grad = None
        return frozen

    # ---------------------------------------------------------------------------------- parts
    @property
    def num_visual_tokens(self) -> int:
        """Visual tokens the head sees per step, all cameras together."""
        return self.visual_tokens_per_camera * len(self.image_keys)

    @property
    def num_uncompressed_tokens(self) -> int:
        return self.tokens_per_camera * len(self.image_keys)

    def _probe_compressor(self):
        d = self.cfg.dim_model
        gen = torch.Generator().manual_seed(0)
        tokens = torch.randn(1, self.tokens_per_camera, d, generator=gen)
        text = torch.randn(1, 2, d, generator=gen)
        comp = self.compressors[0]
        was = comp.training
        comp.eval()
        try:
            with torch.no_grad():
                return comp(tokens, grid=self.grid, budget=self.cfg.compressor_budget, text=text,
                            text_mask=torch.ones(1, 2, dtype=torch.bool))
        except ValueError as e:
            raise ValueError(f"compressor {self.cfg.compressor!r} on a {self.grid} grid per camera: {e}") from None
        finally:
            comp.train(was)

    def _shift(self, x: Tensor) -> Tensor:
        """Random-shift augmentation (DrQ): replicate-pad by s pixels, crop back at a random offset
        per sample. [B, C, H, W] -> [B, C, H, W]."""
        s = self.cfg.image_shift
        b, c, h, w = x.shape
        padded = F.pad(x, (s, s, s, s), mode="replicate")
        oy = torch.randint(0, 2 * s + 1, (b,), device=x.device)
        ox = torch.randint(0, 2 * s + 1, (b,), device=x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * s)
        cols = (ox[:, None] + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
        return padded.gather(2, rows).gather(3, cols)

    def encode_text(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """(text [B, L, D], mask [B, L] bool, pooled [B, D]) from the tokenized instruction, or
        from the raw `task` strings when no preprocessor tokenized them."""
        if OBS_LANGUAGE_TOKENS in batch:
            tokens = batch[OBS_LANGUAGE_TOKENS]
            mask = batch.get(OBS_LANGUAGE_ATTENTION_MASK)
            mask = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool()
        elif "task" in batch:
            task = batch["task"]
            enc = self.tokenizer([task] if isinstance(task, str) else list(task),
                                 max_length=self.cfg.tokenizer_max_length, padding="longest")
            device = self.action_queries.device
            tokens, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device).bool()
        else:
            raise KeyError(
                f"the batch has no instruction: expected {OBS_LANGUAGE_TOKENS!r} (from the preprocessor) or 'task' strings"
            )
        if tokens.ndim == 1:
            tokens, mask = tokens.unsqueeze(0), mask.unsqueeze(0)
        # At inference the instruction is the same for every chunk of an episode: its encoding is
        # kept and reused while the tokens and the encoder's weights (their in-place version
        # counters: an optimiser step or load_state_dict changes them) are the same.
        cache = not self.training and not torch.is_grad_enabled()
        if cache:
            key = (tokens.shape, tokens.device, tokens.cpu().numpy().tobytes(), mask.cpu().numpy().tobytes(),
                   tuple(p._version for p in self.text_encoder.parameters()))
            if self._text_cache is not None and self._text_cache[0] == key:
                return self._text_cache[1]
        text, pooled = self.text_encoder(tokens, mask)
        out = (text, mask[:, : text.shape[1]], pooled)
        self._text_cache = (key, out) if cache else None
        return out

    def _backbone(self, net: nn.Module, img: Tensor) -> Tensor:
        """[B, 3, H, W] -> feature map [B, C, h, w] of backbone `net`."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
            out = net(img)
        return out[0] if isinstance(out, (list, tuple)) else out  # timm features_only gives a list

    def _camera_images(self, batch: dict[str, Any], key: str) -> Tensor:
        """The camera's images [B, 3, H, W] at the policy's size (resized if needed)."""
        _, h, w = self.image_shape
        img = batch[key]
        if img.ndim == 5:  # [B, n_obs_steps=1, 3, H, W]
            img = img[:, -1]
        if tuple(img.shape[-2:]) != (h, w):
            img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return img

    @torch.no_grad()
    def backbone_tokens(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The frozen backbone's tokens per camera, {`observation.image_tokens.<camera>`: [B, N, C]}
        (images resized to the policy's size, no augmentation): what a batch may carry instead of
        the images, e.g. read back from a `TokenCache` built with `token_cache_fingerprint()`."""
        if not self.backbone_frozen:
            raise ValueError("precomputed backbone tokens need a frozen backbone (freeze_backbone)")
        out = {}
        for i, key in enumerate(self.image_keys):
            net = self.backbones[0 if len(self.backbones) == 1 else i]
            feat = self._backbone(net, self._camera_images(batch, key))
            out[image_tokens_key(key)] = feat.flatten(2).transpose(1, 2)
        return out

    def token_cache_fingerprint(self) -> dict[str, Any]:
        """What `backbone_tokens` depends on (per-backbone weights, cut, normalisation, image size),
        for `TokenCache.get_or_build(root, {**fingerprint, "samples": ...}, ...)`."""
        from medvtc.common.token_cache import module_fingerprint

        if not self.backbone_frozen:
            raise ValueError("a token cache needs a frozen backbone (freeze_backbone)")
        size = self.image_shape[1:]
        per = []
        for net in self.backbones:
            if hasattr(net, "cache_fingerprint"):
                per.append(net.cache_fingerprint(size))
            else:  # a frozen timm backbone: its weights and the config that built it
                per.append({"encoder": self.cfg.vision_backbone, "weights": module_fingerprint(net),
                            "out_index": self.cfg.backbone_out_index, "image_size": list(size),
                            "normalisation": {k: str(v) for k, v in self.cfg.normalization_mapping.items()}})
        return {"backbones": per, "cameras": [image_tokens_key(k) for k in self.image_keys],
                "resize": "bilinear, antialias", "tokens": [self.tokens_per_camera, self.feature_channels]}

    def encode_images(self, batch: dict[str, Any]) -> list[Tensor]:
        """Per camera: tokens [B, N, D] (projected, with camera/position embedding).

        With a frozen backbone, `batch["observation.image_tokens.<camera>"]` [B, N, C] (its
        output, see `backbone_tokens`) is used instead of the camera's image when present."""
        feats: dict[int, Tensor] = {}
        images: dict[int, Tensor] = {}
        for i, key in enumerate(self.image_keys):
            tok_key = image_tokens_key(key)
            if tok_key in batch:
                if not self.backbone_frozen:
                    raise ValueError(f"the batch gives {tok_key!r}, but the backbone is trained (freeze_backbone): "
                                     "precomputed tokens would bypass it")
                feat = batch[tok_key]
                expected = (self.tokens_per_camera, self.feature_channels)
                if feat.ndim != 3 or tuple(feat.shape[1:]) != expected:
                    raise ValueError(f"{tok_key} has shape {tuple(feat.shape)}; expected [B, {expected[0]}, {expected[1]}]")
                feats[i] = feat.to(self.input_proj.weight.dtype)
            else:
                if key not in batch:
                    raise KeyError(f"the batch has no {key!r} image; the policy was built for cameras {self.image_keys}")
                img = self._camera_images(batch, key)
                if self.training and self.cfg.image_shift > 0:
                    img = self._shift(img)
                images[i] = img
        # One backbone shared by the cameras reads them as one batch (one call instead of one per
        # camera: 15-20 % less backbone time at batch 1 on a CPU). Only where a sample's features
        # do not depend on the rest of the batch: a frozen backbone, or eval mode (a trained
        # backbone's BatchNorm normalises by batch statistics while it trains).
        if len(images) > 1 and len(self.backbones) == 1 and (self.backbone_frozen or not self.training):
            order = list(images)
            maps = self._backbone(self.backbones[0], torch.cat([images[i] for i in order]))
            for i, part in zip(order, maps.flatten(2).transpose(1, 2).split([images[i].shape[0] for i in order])):
                feats[i] = part
        else:
            for i, img in images.items():
                net = self.backbones[0 if len(self.backbones) == 1 else i]
                feats[i] = self._backbone(net, img).flatten(2).transpose(1, 2)  # [B, h'*w', C]
        return [self.input_proj(feats[i]) + self.visual_pos[i] for i in range(len(self.image_keys))]

    def compress(self, tokens: list[Tensor], text: Tensor, mask: Tensor) -> tuple[list[Tensor], list[Tensor | None], Tensor | None]:
        """Per camera: (kept tokens [B, K, D], per-token mask [B, K] or None), summed aux loss."""
        if not len(self.compressors):
            self.last_compression = []
            return tokens, [None] * len(tokens), None
        if self.keep_inputs:
            self.last_inputs = ([x.detach() for x in tokens], text.detach(), mask.detach())
        kept, masks, outs, aux = [], [], [], None
        for i, x in enumerate(tokens):
            comp = self.compressors[0 if len(self.compressors) == 1 else i]
            out = comp(x, grid=self.grid, budget=self.cfg.compressor_budget, text=text, text_mask=mask)
            kept.append(self.output_proj(out.tokens))
            masks.append(out.mask)
            outs.append(out)
            if out.aux_loss is not None:
                aux = out.aux_loss if aux is None else aux + out.aux_loss
        self.last_compression = outs
        return kept, masks, aux

    # -------------------------------------------------------------------------------- forward
    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """batch -> (actions [B, chunk_size, action_dim], compressor aux loss or None)."""
        text, text_mask, pooled = self.encode_text(batch)
        visual = self.encode_images(batch)
        visual, vmasks, aux = self.compress(visual, text, text_mask)
        b = pooled.shape[0]
        parts = []
        if self.state_proj is not None:
            if OBS_STATE not in batch:
                raise KeyError(f"the batch has no {OBS_STATE!r}; the policy was built with a {self.state_dim}-D state")
            state = batch[OBS_STATE]
            if state.ndim == 3:
                state = state[:, -1]
            parts.append((self.state_proj(state) + self.slot_embed[0]).unsqueeze(1))
        parts.append((pooled + self.slot_embed[1]).unsqueeze(1))
        parts.extend(visual)
        parts.append(self.action_queries.unsqueeze(0).expand(b, -1, -1))
        x = torch.cat([p.to(pooled.dtype) for p in parts], dim=1)
        bias = None
        if any(m is not None for m in vmasks):
            n_pre = len(parts) - len(visual) - 1
            full = [torch.ones(b, n_pre, dtype=torch.bool, device=x.device)]
            full += [m.bool() if m is not None else torch.ones(b, v.shape[1], dtype=torch.bool, device=x.device)
                     for m, v in zip(vmasks, visual)]
            full.append(torch.ones(b, self.cfg.chunk_size, dtype=torch.bool, device=x.device))
            bias = _key_mask(torch.cat(full, dim=1), x.dtype)
        for blk in self.blocks:
            x = blk(x, attn_mask=bias)
        return self.action_head(self.norm(x[:, -self.cfg.chunk_size:])), aux


class CompressorVLAPolicy(PreTrainedPolicy):
    """Compressor-VLA as a LeRobot policy (see the module docstring).

    forward(batch) -> (loss, {"l1_loss": float, ...}) with batch from the preprocessor:
        images [B, 3, H, W] per camera, state [B, S], instruction tokens [B, L] (or "task"),
        action [B, chunk_size, A] and action_is_pad [B, chunk_size] (dataset delta timestamps
        `action_delta_indices`).
    predict_action_chunk(batch) -> [B, chunk_size, A] (normalised; the postprocessor unnormalises).
    select_action(batch) -> [B, A]: pops a queue refilled with the first n_action_steps actions of
        a new chunk whenever it runs empty (ACT's chunking); `reset()` clears it at episode start.
    """

    config_class = CompressorVLAConfig
    name = "compressor_vla"

    def __init__(self, config: CompressorVLAConfig, dataset_stats: Any = None, dataset_meta: Any = None, **kwargs: Any):
        super().__init__(config)
        config.validate_features()
        self.config = config
        self.model = CompressorVLA(config)
        self.reset()

    # Token accounting for benchmarks and logs.
    @property
    def num_visual_tokens(self) -> int:
        return self.model.num_visual_tokens

    @property
    def num_uncompressed_tokens(self) -> int:
        return self.model.num_uncompressed_tokens

    def get_optim_params(self) -> list[dict[str, Any]]:
        backbone = [p for n, p in self.named_parameters() if n.startswith("model.backbones") and p.requires_grad]
        rest = [p for n, p in self.named_parameters() if not n.startswith("model.backbones") and p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": rest}]
        if backbone:  # none when the backbone is frozen (freeze_backbone)
            groups.append({"params": backbone, "lr": self.config.optimizer_lr_backbone})
        return groups

    def reset(self) -> None:
        """Call at every episode start: drops queued actions."""
        self._action_queue: deque[Tensor] = deque([], maxlen=self.config.n_action_steps)

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Any], **kwargs: Any) -> Tensor:
        self.eval()
        actions, _ = self.model(batch)
        return actions

    @torch.no_grad()
    def select_action(self, batch: dict[str, Any], **kwargs: Any) -> Tensor:
        self.eval()
        if len(self._action_queue) == 0:
            actions = self.predict_action_chunk(batch)[:, : self.config.n_action_steps]
            self._action_queue.extend(actions.transpose(0, 1))  # queue of [B, A]
        return self._action_queue.popleft()

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        target = batch[ACTION]
        if target.ndim != 3 or target.shape[1] != self.config.chunk_size:
            raise ValueError(
                f"'action' must be chunks [B, {self.config.chunk_size}, A]; got {tuple(target.shape)}. Load the dataset "
                "with delta_timestamps={'action': [i / fps for i in config.action_delta_indices]}"
            )
        pred, aux = self.model(batch)
        err = F.l1_loss(pred, target.to(pred.dtype), reduction="none")
        if "action_is_pad" in batch:
            err = err * ~batch["action_is_pad"].bool().unsqueeze(-1)
        l1 = err.mean()
        logs = {"l1_loss": float(l1.detach())}
        loss = l1
        if aux is not None:
            loss = loss + aux
            logs["aux_loss"] = float(aux.detach())
        return loss, logs


__all__ = ["CompressorVLA", "CompressorVLAPolicy", "InstructionEncoder", "OBS_IMAGE_TOKENS_PREFIX", "image_tokens_key"]

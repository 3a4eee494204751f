"""CT report generation: 3D ViT -> visual-token compressor -> MLP projector -> causal LM.

After Argus (Liu et al., "Argus: Benchmarking and Enhancing Vision-Language Models for 3D
Radiology Report Generation", arXiv 2406.07146, ACL Findings 2025): a 3D ViT encodes the CT
volume, a visual-token compressor (Argus favours pixel shuffle) cuts the token count, an MLP
projector maps the tokens into the LM's embedding space, and the LM writes the report.
Training follows Argus' stages plus a text-only warm-up for our from-scratch LM
(`freeze_for_stage`): "lm" (LM only, reports without images), 1 (projector + compressor,
encoder and LM frozen), 2 (everything).

Shapes (defaults in brackets):
    pixel_values   [B, C, X, Y, Z]                [B, 1, 64, 64, 32]  (C = in_channels; float32, or
                                                  float16 channels that the ViT casts slab by slab)
    ViT tokens     [B, N, Dv], grid (X/px, ...)   [B, 512, 192], grid (8, 8, 8)
    compressed     [B, K, Dc]                     [B, 64, 192]  (pixel shuffle, groups 2x2x2)
    visual embeds  [B, K, H]                      [B, 64, 256]  (H = LM width)
    LM sequence    [B, K + P + T, H]: [K visual][P prompt][T report tokens incl. eos]
    logits         [B, K + P + T, V]
"""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.networks.blocks import PatchEmbeddingBlock
from monai.networks.layers import trunc_normal_
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import CausalLMOutputWithPast

from medvtc.common.compressors import TokenCompressor, resolve_compressor
from medvtc.common.compressors.matryoshka import MatryoshkaQuery
from medvtc.common.compressors.perceiver import PerceiverResampler
from medvtc.common.compressors.pixel_shuffle import PixelShuffle
from medvtc.medical.ct_report.configuration_ct_report import CTReportConfig
from medvtc.medical.ct_report.token_standardizer import TokenStandardizer
from medvtc.medical.ct_report.vision_encoder import CTViTEncoder

IGNORE_INDEX = -100  # label of positions without a loss (visual, prompt, padding)


class CTReportProjector(nn.Module):
    """The 2-layer MLP projector of LLaVA-1.5 / Argus: Linear -> GELU -> Linear.
    [B, K, Dc] -> [B, K, H]."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, act: str = "gelu") -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, hidden_dim)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


def build_compressor(config: CTReportConfig, text_dim: int) -> TokenCompressor:
    """The configured compressor for the ViT's tokens (width vision_hidden_size), built by the
    core resolver for exactly K = config.num_visual_tokens tokens on the ViT's grid: e.g. pixel
    shuffle gets explicit `factors` (so its Linear exists before an optimiser or a state dict
    sees the model), perceiver/matryoshka K latents/queries and the ViT's head count, unless
    `compressor_args` says otherwise."""
    args = {k: v for k, v in config.compressor_args.items() if k != "text_dim"}  # given as text_dim
    return resolve_compressor(
        config.compressor_name, config.num_visual_tokens, args, grid=config.grid,
        dim=config.vision_hidden_size, text_dim=text_dim, heads=config.vision_heads,
    )


class CTReportModel(PreTrainedModel, GenerationMixin):
    """Report generation from a CT volume (Argus-style, arXiv 2406.07146).

    Submodules: `vision_encoder` (CTViTEncoder), `compressor` (a `TokenCompressor`),
    `projector` (CTReportProjector), `text_projector` (LM width -> the compressor's text_dim,
    only for an instruction-guided compressor with a text_dim different from the LM's),
    `language_model` (LlamaForCausalLM by default), `token_standardizer` (a `TokenStandardizer`
    between the ViT and the compressor; None with standardize_visual_tokens=False).

    LoRA (config.lora_rank > 0): `language_model` is a peft `PeftModelForCausalLM` around the LM
    with adapters on `lora_target_modules`; only the adapters of the LM train
    (`freeze_for_stage`). `save_pretrained` writes the base LM's weights and the adapters (peft's
    parameter names) into the one model.safetensors, and the config records the LoRA settings,
    so `from_pretrained` rebuilds the same adapted model and reproduces its logits exactly; it
    needs only the saved folder, not `language_model_path`. `merge_lora()` folds the adapters
    into the weights for a model that loads without peft.

    forward(pixel_values [B, 1, X, Y, Z] | None, input_ids [B, T], attention_mask [B, T],
            labels [B, T]) -> CausalLMOutputWithPast
        input_ids are the report tokens followed by eos, right-padded (`encode_reports`); the
        model prepends the K visual and P prompt tokens itself, so logits are
        [B, K + P + T, V] and the loss (only when labels are given) covers the report tokens
        and eos only: visual and prompt positions get label -100. pixel_values=None gives the
        text-only sequence [prompt][report] of the "lm" stage. A compressor's aux_loss is added.
        `vision_tokens` [B, N, Dv] may stand for pixel_values: the frozen ViT's output, read
        from the token cache in stage 1 (see `encode_images`).

    generate(pixel_values, max_new_tokens, num_beams, ...) -> LongTensor [B, <= max_new_tokens]
        the generated report ids only (greedy by default, beam search with num_beams > 1).

    Finding tokens (config.finding_tokens): L = num_finding_labels more LM inputs after the
    visual ones, each "present" or "absent" for one label (see `finding_token_embeds`).
    """

    config_class = CTReportConfig
    base_model_prefix = "ct_report"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["TransformerBlock", "LlamaDecoderLayer"]

    def __init__(self, config: CTReportConfig) -> None:
        super().__init__(config)
        self.vision_encoder = CTViTEncoder(
            spatial_dims=3,
            in_channels=config.in_channels,
            img_size=config.image_size,
            patch_size=config.patch_size,
            hidden_size=config.vision_hidden_size,
            num_layers=config.vision_layers,
            num_heads=config.vision_heads,
            mlp_dim=config.vision_mlp_dim,
            dropout_rate=config.vision_dropout,
            qkv_bias=config.vision_qkv_bias,
            stem=getattr(config, "vision_stem", "patch"),
            standardize_input=getattr(config, "standardize_vision_input", False),
            input_min_std=getattr(config, "vision_input_min_std", 0.01),
            gradient_checkpointing=config.vision_gradient_checkpointing,
        )
        # fitted on the training set after the vision warm-up (see token_standardizer.py)
        self.token_standardizer = (
            TokenStandardizer(self.vision_encoder.num_patches, config.vision_hidden_size)
            if getattr(config, "standardize_visual_tokens", False) else None
        )
        self.language_model = self._build_language_model()
        lm_dim = self.config.text_config.hidden_size

        text_dim = int(config.compressor_args.get("text_dim", lm_dim))
        self.compressor = build_compressor(config, text_dim)
        # The instruction reaches the compressor as the prompt's LM input embeddings; a Linear
        # maps them to the compressor's text width only when the two differ.
        self.text_projector = (
            nn.Linear(lm_dim, text_dim) if self.compressor.needs_text and text_dim != lm_dim else None
        )
        comp_dim = int(getattr(self.compressor, "out_dim", None) or config.vision_hidden_size)
        self.projector = CTReportProjector(
            comp_dim, config.projector_hidden_size or lm_dim, lm_dim, config.projector_hidden_act
        )
        # Auxiliary finding head (config.finding_loss_weight > 0): the multi-label findings predicted
        # from the COMPRESSED tokens (mean- and max-pooled), trained with binary cross-entropy
        # beside the LM's loss, so that what the compressor keeps must carry the findings the
        # report is scored on (a classification-guided report generator, as in PromptMRG, Jin et
        # al., AAAI 2024, but the LM still reads only the visual tokens). Positives weighted by
        # `finding_pos_weight` (set from the training split by the task; ones by default).
        n_find = int(getattr(config, "num_finding_labels", 0) or 0)
        if n_find and float(getattr(config, "finding_loss_weight", 0.0) or 0.0) > 0:
            self.finding_head = nn.Linear(2 * comp_dim, n_find)
            self.register_buffer("finding_pos_weight", torch.ones(n_find))
        else:
            self.finding_head = None
        # Finding tokens (config.finding_tokens): for each label l, embedding 2 l + 1 says "present"
        # and 2 l "absent"; the LM reads one per label after the visual tokens. Teacher-forced
        # with the true findings in training, the head's decisions when writing, so each report
        # states what the head predicted instead of greedy decoding's most frequent negation.
        self.finding_embedding = (
            nn.Embedding(2 * n_find, lm_dim) if self.finding_head is not None and getattr(config, "finding_tokens", False)
            else None
        )
        if config.prompt and config.prompt_token_ids is None:
            raise ValueError(
                "prompt_token_ids: the prompt's token ids are missing; build the config with "
                "CTReportConfig.from_tokenizer(tokenizer, ...) or pass prompt_token_ids"
            )
        self.post_init()
        if config.lora_rank:
            # after post_init: our _init_weights would otherwise re-initialise the adapters'
            # Linear layers (LoRA's B starts at zero, so that the adapted LM equals the base)
            self.language_model = self._attach_lora(self.language_model)

    def _build_language_model(self) -> PreTrainedModel:
        config = self.config
        if config.text_config is not None:
            # From a config (fresh model, or inside from_pretrained, which then loads all weights):
            # never read language_model_path again, so a saved model is self-contained.
            return AutoModelForCausalLM.from_config(config.text_config)
        lm = AutoModelForCausalLM.from_pretrained(config.language_model_path, local_files_only=True)
        for module in lm.modules():
            # keep the pretrained weights through our post_init's weight initialisation
            module._is_hf_initialized = True
        config.text_config = lm.config
        return lm

    def _attach_lora(self, lm: PreTrainedModel) -> nn.Module:
        """Wrap `lm` in a peft `PeftModelForCausalLM` with LoRA adapters on the config's
        `lora_target_modules` (rank `lora_rank`, scale `lora_alpha / lora_rank`, `lora_dropout`).
        Each name must match a module of the LM (as peft matches: the name or a dotted suffix);
        peft itself ignores a name that matches nothing as long as another one matches."""
        from peft import LoraConfig, TaskType, get_peft_model

        config = self.config
        targets = list(config.lora_target_modules)
        if targets != ["all-linear"]:
            names = [n for n, _ in lm.named_modules() if n]
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in lm.named_modules() if isinstance(m, nn.Linear)})
            for t in targets:
                if not any(n == t or n.endswith("." + t) for n in names):
                    raise ValueError(
                        f"lora_target_modules: {t!r} names no module of the language model ({type(lm).__name__}); "
                        f"its linear layers are {', '.join(linear)} (or give [all-linear])"
                    )
        lora = LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=config.lora_rank, lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout, target_modules=targets[0] if targets == ["all-linear"] else targets,
        )
        return get_peft_model(lm, lora)

    @property
    def has_lora(self) -> bool:
        """Whether the LM carries LoRA adapters (config.lora_rank > 0, not merged)."""
        return getattr(self.language_model, "peft_config", None) is not None  # a peft model (no import needed)

    def merge_lora(self) -> "CTReportModel":
        """Fold the LoRA adapters into the LM's weights (peft's `merge_and_unload`) and drop
        them: the LM is a plain transformers model again and `config.lora_rank` becomes 0, so a
        model saved afterwards loads without peft and runs as fast as the base. The logits agree
        with the adapted model's up to float rounding. Returns self."""
        if not self.has_lora:
            raise ValueError("merge_lora: this model has no LoRA adapters (lora_rank=0 or already merged)")
        self.language_model = self.language_model.merge_and_unload()
        self.config.lora_rank = 0
        return self

    def _init_weights(self, module: nn.Module) -> None:
        """Re-create each module's own initialisation rather than transformers' generic
        normal(0, 0.02): MONAI's truncated-normal position embeddings, torch's default Linear /
        Conv / LayerNorm init, the pixel-shuffle projection's group average (so an untrained
        shuffle equals average pooling) and the resamplers' 0.02-scaled latents. The LM is a
        `PreTrainedModel` and is initialised by its own `_init_weights`. Runs in post_init and
        for keys missing from a checkpoint."""
        if isinstance(module, PixelShuffle):
            for lin in module.proj.values():
                r = len(lin.weight[0]) // module.dim
                eye = torch.eye(module.out_dim, module.dim, device=lin.weight.device, dtype=lin.weight.dtype)
                lin.weight.data.copy_(eye.repeat(1, r) / r)
                if lin.bias is not None:
                    lin.bias.data.zero_()
        elif isinstance(module, PatchEmbeddingBlock) and module.pos_embed_type == "learnable":
            trunc_normal_(module.position_embeddings, mean=0.0, std=0.02, a=-2.0, b=2.0)
        elif isinstance(module, PerceiverResampler):
            module.latents.data.normal_(0.0, 0.02)
        elif isinstance(module, MatryoshkaQuery):
            module.queries.data.normal_(0.0, 0.02)
        elif isinstance(module, TokenStandardizer):
            module.reset()
        elif module is getattr(self, "finding_embedding", None):
            module.weight.data.normal_(0.0, float(getattr(self.config.text_config, "initializer_range", 0.02)))
        elif isinstance(module, (nn.Linear, nn.Conv3d, nn.LayerNorm, nn.BatchNorm3d)):
            module.reset_parameters()

    # -- embeddings (delegated so resize_token_embeddings and weight tying work) -------------

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    @property
    def num_visual_tokens(self) -> int:
        """K, the number of visual tokens per volume the LM receives."""
        return self.config.num_visual_tokens

    # -- stages ----------------------------------------------------------------------------

    def freeze_for_stage(self, stage: str | int, train_language_model: bool = False) -> dict[str, int]:
        """Set requires_grad for a training stage and return the trainable parameter counts.
        `train_language_model` also trains the LM in stage 1 (for an LM trained from scratch,
        which, unlike Argus' pretrained one, cannot read visual tokens it never learned).

        "lm": only the language model (text-only pretraining on reports; our default LM starts
              from random weights, Argus starts from a pretrained LLM instead)
        "vision": only the vision encoder (the label warm-up, `pretraining.LabelProbe`; Argus
              starts from a pretrained ViT instead)
        1:    only compressor + projector (+ text_projector); ViT and LM frozen (Argus stage 1,
              feature alignment). A frozen ViT runs under no_grad in `encode_images`.
        2:    everything, the ViT included (Argus stage 2 fine-tunes end to end).

        With LoRA (config.lora_rank > 0), "the language model" means its adapters: the LM's
        own weights (embeddings and output head included) stay frozen in every stage.
        """
        key = str(stage).lower().removeprefix("stage").strip("_ ")
        parts = {
            "lm": [self.language_model],
            "vision": [self.vision_encoder],
            "1": [self.compressor, self.projector, self.text_projector, self.finding_head, self.finding_embedding],
            "2": [self],
        }
        if key not in parts:
            raise ValueError(f"stage must be 'lm', 'vision', 1 or 2, got {stage!r}")
        self.requires_grad_(False)
        if key == "1" and train_language_model:
            parts[key].append(self.language_model)
        for module in parts[key]:
            if module is not None:
                module.requires_grad_(True)
        if self.has_lora:
            for name, p in self.language_model.named_parameters():
                if "lora_" not in name:  # peft's prefix of every adapter parameter
                    p.requires_grad_(False)
        counts = {
            name: sum(p.numel() for p in getattr(self, name).parameters() if p.requires_grad)
            for name in ("vision_encoder", "compressor", "projector", "language_model")
        }
        for name in ("text_projector", "finding_head", "finding_embedding"):
            if getattr(self, name) is not None:
                counts[name] = sum(p.numel() for p in getattr(self, name).parameters() if p.requires_grad)
        return counts

    def train(self, mode: bool = True) -> "CTReportModel":
        """As nn.Module.train, except that a frozen vision encoder stays in eval mode: stage 1
        must not move its BatchNorm statistics (conv stem) while its weights are fixed."""
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.vision_encoder.parameters()):
            self.vision_encoder.eval()
        return self

    @torch.no_grad()
    def fit_token_standardizer(self, pixel_batches) -> None:
        """Fit `token_standardizer` on the ViT tokens of `pixel_batches` (an iterable of
        [B, 1, X, Y, Z], normally the whole training split) with the encoder in eval mode."""
        if self.token_standardizer is None:
            raise ValueError("this model was built with standardize_visual_tokens=False")
        encoder = self.vision_encoder
        was_training = encoder.training
        encoder.eval()
        device = encoder.patch_embedding.position_embeddings.device
        # the encoder casts to its dtype (a float16 input slab by slab: CTViTEncoder.embed_patches)
        self.token_standardizer.fit(encoder(x.to(device=device)) for x in pixel_batches)
        encoder.train(was_training)

    # -- encoding --------------------------------------------------------------------------

    def prompt_ids(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """The prompt's token ids [B, P] (P = 0 without a prompt)."""
        ids = torch.tensor(self.config.prompt_token_ids or [], dtype=torch.long, device=device)
        return ids.unsqueeze(0).expand(batch_size, -1)

    def encode_images(self, pixel_values: torch.Tensor | None = None,
                      vision_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """pixel_values [B, C, X, Y, Z] -> (visual_embeds [B, K, H], info). Instead of the volume,
        `vision_tokens` [B, N, Dv] may give the ViT's output already computed (a frozen ViT's
        tokens from `medvtc.common.token_cache`); they go through the same standardiser,
        compressor and projector.

        info: "compressor_output" (the `CompressorOutput`, tokens [B, K, Dc]), "index" [B, K]
        and "assign" [B, K, N] (None where the method has none) to draw which ViT tokens were
        kept or merged, "mask" [B, K] (adaptive budgets) or None, "grid" the ViT grid,
        "compressed_grid" (or None), "num_visual_tokens" K.
        """
        encoder = self.vision_encoder
        dtype = encoder.patch_embedding.position_embeddings.dtype
        if vision_tokens is not None:
            expected = (math.prod(encoder.grid), self.config.vision_hidden_size)
            if tuple(vision_tokens.shape[1:]) != expected:
                raise ValueError(f"vision_tokens {tuple(vision_tokens.shape)}: expected [B, {expected[0]}, {expected[1]}]")
            tokens = vision_tokens.to(dtype)
        else:
            # A frozen encoder (stage 1) needs no autograd graph: saves its activations' memory.
            frozen = not any(p.requires_grad for p in encoder.parameters())
            with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
                # no .to(dtype) here: the encoder casts, a compact (float16) input slab by slab, so
                # a full-size CT's channels never exist whole in float32 (CTViTEncoder.embed_patches)
                tokens = encoder(pixel_values)  # [B, N, Dv]
        if self.token_standardizer is not None:
            tokens = self.token_standardizer(tokens)
        text = text_mask = None
        if self.compressor.needs_text:
            b = tokens.shape[0]
            text = self.get_input_embeddings()(self.prompt_ids(b, tokens.device))  # [B, P, H]
            if self.text_projector is not None:
                text = self.text_projector(text)
            text_mask = torch.ones(text.shape[:2], dtype=torch.long, device=tokens.device)
        out = self.compressor(tokens, grid=encoder.grid, budget=self.num_visual_tokens, text=text, text_mask=text_mask)
        embeds = self.projector(out.tokens)  # [B, K, H]
        info = {
            "compressor_output": out,
            "index": out.index,
            "assign": out.assign,
            "mask": out.mask,
            "grid": encoder.grid,
            "compressed_grid": out.grid,
            "num_visual_tokens": out.num_tokens,
        }
        return embeds, info

    def _sequence(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        batch_size: int | None = None,
        vision_tokens: torch.Tensor | None = None,
        finding_states: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, Any] | None]:
        """[visual][findings][prompt][input_ids] as inputs_embeds [B, L, H], attention_mask [B, L]
        and labels [B, L] (-100 before the report; None without labels). The finding tokens
        (config.finding_tokens, with an image only) state `finding_states` [B, L] in {0, 1}, or
        the head's decisions when it is None; info["finding_states"] holds the ones used."""
        embed = self.get_input_embeddings()
        if pixel_values is not None and vision_tokens is not None:
            raise ValueError("give pixel_values or vision_tokens, not both")
        if vision_tokens is not None:
            b, device = vision_tokens.shape[0], vision_tokens.device
        elif pixel_values is not None:
            b, device = pixel_values.shape[0], pixel_values.device
        elif input_ids is not None:
            b, device = input_ids.shape[0], input_ids.device
        else:
            b, device = batch_size or 1, embed.weight.device
        embeds, masks, labs, info = [], [], [], None
        if pixel_values is not None or vision_tokens is not None:
            vis, info = self.encode_images(pixel_values, vision_tokens)
            embeds.append(vis)
            # an adaptive-budget compressor pads with zeros: its mask keeps the LM off the padding
            vis_mask = info["mask"]
            masks.append(vis_mask.long() if vis_mask is not None else torch.ones(vis.shape[:2], dtype=torch.long, device=device))
            labs.append(torch.full(vis.shape[:2], IGNORE_INDEX, dtype=torch.long, device=device))
            if self.finding_embedding is not None:
                find = self.finding_token_embeds(info, finding_states)
                embeds.append(find)
                masks.append(torch.ones(find.shape[:2], dtype=torch.long, device=device))
                labs.append(torch.full(find.shape[:2], IGNORE_INDEX, dtype=torch.long, device=device))
        prompt = self.prompt_ids(b, device)
        if prompt.shape[1]:
            embeds.append(embed(prompt))
            masks.append(torch.ones_like(prompt))
            labs.append(torch.full_like(prompt, IGNORE_INDEX))
        if input_ids is not None:
            embeds.append(embed(input_ids))
            masks.append(attention_mask.long() if attention_mask is not None else torch.ones_like(input_ids))
            labs.append(labels if labels is not None else torch.full_like(input_ids, IGNORE_INDEX))
        if not embeds:
            raise ValueError("CTReportModel: nothing to encode (no pixel_values, no prompt and no input_ids)")
        dtype = embed.weight.dtype
        inputs_embeds = torch.cat([e.to(dtype) for e in embeds], dim=1)
        full_labels = torch.cat(labs, dim=1) if labels is not None else None
        return inputs_embeds, torch.cat(masks, dim=1), full_labels, info

    def finding_logits(self, info: dict[str, Any]) -> torch.Tensor:
        """The finding head's logits [B, L] from `encode_images`' info: the compressed tokens,
        mean- and max-pooled over the kept ones (an adaptive budget's padding left out)."""
        if self.finding_head is None:
            raise ValueError("this model has no finding head (config.finding_loss_weight is 0)")
        tokens = info["compressor_output"].tokens  # [B, K, Dc]
        mask = info["mask"]
        if mask is None:
            pooled = torch.cat([tokens.mean(1), tokens.amax(1)], dim=-1)
        else:
            keep = mask.bool().unsqueeze(-1)
            mean = (tokens * keep).sum(1) / keep.sum(1).clamp(min=1)
            pooled = torch.cat([mean, tokens.masked_fill(~keep, float("-inf")).amax(1)], dim=-1)
        return self.finding_head(pooled.to(self.finding_head.weight.dtype))

    def finding_token_embeds(self, info: dict[str, Any], finding_states: torch.Tensor | None = None) -> torch.Tensor:
        """The finding tokens [B, L, H]: `finding_states` [B, L] (1 present, 0 absent), or the
        head's decisions (probability >= config.finding_threshold, no gradient) when None. Sets
        info["finding_states"]."""
        n = self.finding_embedding.num_embeddings // 2
        if finding_states is None:
            with torch.no_grad():
                finding_states = torch.sigmoid(self.finding_logits(info)) >= self.config.finding_threshold
        if finding_states.ndim != 2 or finding_states.shape[1] != n:
            raise ValueError(f"finding_states {tuple(finding_states.shape)}: expected [B, {n}] (one 0/1 per label)")
        states = (finding_states > 0.5).long()
        info["finding_states"] = states
        index = 2 * torch.arange(n, device=states.device) + states  # [B, L]
        return self.finding_embedding(index)

    @torch.no_grad()
    def predict_findings(self, pixel_values: torch.Tensor | None = None,
                         vision_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Probabilities [B, L] of the findings, from the compressed tokens (finding head only)."""
        _, info = self.encode_images(pixel_values, vision_tokens)
        return torch.sigmoid(self.finding_logits(info))

    # -- training forward ------------------------------------------------------------------

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        vision_tokens: torch.Tensor | None = None,
        finding_labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """See the class docstring. Extra kwargs (output_hidden_states, logits_to_keep, ...) go
        to the language model. `finding_labels` [B, num_finding_labels] in {0, 1}: with the
        finding head, its weighted binary cross-entropy is added to the loss; with finding tokens,
        the tokens state them (teacher forcing), and the head's decisions when they are None."""
        if labels is not None and input_ids is None:
            raise ValueError("labels need input_ids (the report tokens they label)")
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(f"labels {tuple(labels.shape)} must match input_ids {tuple(input_ids.shape)}")
        # teacher forcing: the finding tokens state the true findings wherever they are given
        inputs_embeds, mask, full_labels, info = self._sequence(pixel_values, input_ids, attention_mask, labels,
                                                                vision_tokens=vision_tokens, finding_states=finding_labels)
        out = self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=mask, labels=full_labels, return_dict=True, **kwargs
        )
        loss = out.loss
        aux = info["compressor_output"].aux_loss if info is not None else None
        if loss is not None and aux is not None:
            loss = loss + aux
        if loss is not None and finding_labels is not None and self.finding_head is not None and info is not None:
            logits = self.finding_logits(info)
            bce = nn.functional.binary_cross_entropy_with_logits(
                logits, finding_labels.to(logits.dtype), pos_weight=self.finding_pos_weight.to(logits.dtype))
            loss = loss + self.config.finding_loss_weight * bce
        return CausalLMOutputWithPast(
            loss=loss,
            logits=out.logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )

    # -- generation ------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        max_new_tokens: int = 256,
        num_beams: int = 1,
        do_sample: bool = False,
        batch_size: int | None = None,
        finding_states: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Write reports: [B, <= max_new_tokens] generated token ids (prefix not included).

        LLaVA-style: the prefix [visual][prompt] is built as inputs_embeds and handed to the
        LM's own `generate`; for a decoder-only LM given inputs_embeds without input_ids,
        transformers returns only the new tokens. Finished sequences are padded with
        pad_token_id. pixel_values=None writes from the prompt alone (`batch_size` reports),
        to check the "lm" stage. With finding tokens, `finding_states` [B, L] (0/1) makes the
        report state those findings instead of the head's (to write from known labels). Other kwargs (length_penalty, early_stopping,
        num_return_sequences, return_dict_in_generate, ...) go to the LM's `generate`.
        """
        inputs_embeds, mask, _, _ = self._sequence(pixel_values, None, None, None, batch_size=batch_size,
                                                   finding_states=finding_states)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(self.config, key) is not None:
                kwargs.setdefault(key, getattr(self.config, key))
        return self.language_model.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=do_sample,
            **kwargs,
        )


AutoModel.register(CTReportConfig, CTReportModel, exist_ok=True)

__all__ = ["CTReportModel", "CTReportProjector", "IGNORE_INDEX", "build_compressor"]

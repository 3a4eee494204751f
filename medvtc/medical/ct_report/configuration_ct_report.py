"""Configuration of the CT report-generation model (after Argus, Liu et al., arXiv 2406.07146,
ACL Findings 2025): a 3D ViT reads the CT volume, a visual-token compressor shrinks its tokens, a
2-layer MLP projector maps them into a causal LM that writes the radiology report.

    config = CTReportConfig.from_tokenizer(tokenizer, compressor="pixel_shuffle", compressor_budget=64)

Shapes with the defaults: volume [B, 1, 64, 64, 32], patch (8, 8, 4) -> token grid (8, 8, 8),
N = 512 tokens of width 192 -> K = 64 compressed tokens -> [B, 64, 256] LM input embeddings.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Sequence

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

# "none" is an alias of the core's "identity" compressor: every ViT token reaches the LM.
NO_COMPRESSION = ("none", "identity")

# The default language model: a small LLaMA built from scratch (no pretrained weights are
# downloaded anywhere in this project), big enough to memorise report language after the
# text-only "lm" stage. vocab_size is overwritten from the tokenizer (see `from_tokenizer`).
DEFAULT_TEXT_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 2000,
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 688,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-6,
}


# LoRA's default targets: the attention projections of Llama (and of Mistral, Qwen2, Gemma, ...)
DEFAULT_LORA_TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


def _triple(value: Any, field: str) -> tuple[int, int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value, value)
    try:
        out = tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(f"{field} must be an int or 3 ints, got {value!r}") from None
    if len(out) != 3 or any(v <= 0 for v in out) or any(float(v) != float(o) for v, o in zip(value, out)):
        raise ValueError(f"{field} must be 3 positive ints, got {value!r}")
    return out  # type: ignore[return-value]


def _positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field} must be a positive int, got {value!r}")
    return value


class CTReportConfig(PretrainedConfig):
    """Configuration of `CTReportModel`.

    Vision (a MONAI ViT, `CTViTEncoder`):
      image_size        (X, Y, Z) voxels of the input volume; each side divisible by patch_size
      in_channels       1 for a windowed CT; 1 + len(hu_bins) + 1 with the HU-interval channels (`datasets.ct_rate.ct_input_channels`)
      patch_size        (px, py, pz); the token grid is (X/px, Y/py, Z/pz), N = its product
      vision_hidden_size, vision_layers, vision_heads, vision_mlp_dim, vision_dropout
      vision_qkv_bias   bias of the fused qkv projection (MONAI's ViT default: False)
      vision_stem       "patch" (MONAI's one strided convolution per patch, the plain ViT) or
                        "conv" (a small convolutional stem, `vision_encoder.conv_stem`)
      vision_gradient_checkpointing
                        recompute each ViT block in the backward pass (activation checkpointing);
                        named with the vision_ prefix because `PretrainedConfig` treats a plain
                        `gradient_checkpointing` kwarg as deprecated. `model.gradient_checkpointing_enable()`
                        switches it on for the ViT and the LM together.
      standardize_vision_input
                        standardise each input channel by its training-set mean and std before
                        the ViT (`channel_standardizer`; fitted before the vision stage)
      vision_input_min_std
                        its floor on a channel's std: at most a 1 / floor gain on a channel
      standardize_visual_tokens
                        standardise each ViT token by its position's mean and std over the
                        training set before the compressor (`token_standardizer`; fitted by
                        `CTReportModel.fit_token_standardizer`, identity until then)

    Compressor (from `medvtc.common.compressors`):
      compressor        a registered name (`list_compressors()`), or "none"/"identity" (no compression)
      compressor_budget K (int, 1 <= K <= N) or a keep-ratio (float in (0, 1]); ignored for "none"
      compressor_args   extra constructor arguments of the compressor (not `budget`, `dim`)

    Projector: `projector_hidden_act` ("gelu") between two Linear layers, as in LLaVA/Argus;
      `projector_hidden_size` defaults to the LM width.

    Language model:
      text_config       a LlamaConfig (or its dict, merged over `DEFAULT_TEXT_CONFIG`); any other
                        `model_type` in the dict is built from that type's config class.
                        None together with `language_model_path`: the LM and its config are
                        loaded from that local checkpoint when the model is first built, and the
                        config then records the loaded `text_config` so that a saved model is
                        self-contained (reloading never reads `language_model_path` again).
      language_model_path  optional local HF checkpoint of a causal LM (loaded offline)
      lora_rank         0 (default): the LM's own weights train. > 0: LoRA adapters of this rank
                        (the `peft` library; Hu et al., arXiv 2106.09685) are attached to the
                        LM's `lora_target_modules`, and only they train wherever a stage trains
                        the LM (`CTReportModel.freeze_for_stage`); the LM's weights stay frozen
      lora_alpha        LoRA scaling numerator (the update is B A x * lora_alpha / lora_rank)
      lora_dropout      dropout on the adapters' input, in [0, 1)
      lora_target_modules
                        names of the LM's linear layers that get adapters (peft matches a
                        module's name or its dotted suffix); default Llama's attention
                        projections q_proj, k_proj, v_proj, o_proj; ["all-linear"] is every
                        linear layer but the output head. A name that matches no module of the
                        LM is an error when the model is built.

    Findings (the 18 labels of the report's scoring):
      num_finding_labels  L, the labels the finding head predicts (0: no head)
      finding_loss_weight > 0: a head on the compressed tokens predicts the L findings, its BCE
                        added to the LM's loss with this weight (`CTReportModel.finding_logits`)
      finding_tokens    the LM also reads L finding tokens, one per label, each a learned
                        embedding of "present" or "absent": the true findings while training
                        (teacher forcing), the head's prediction when writing. The report is
                        then written from what the head decided (classification-guided
                        generation, PromptMRG, Jin et al., AAAI 2024). Needs the head.
      finding_threshold the head's probability at or above which a finding's token says "present"

    Text:
      prompt            text placed between the visual tokens and the report; it is also the
                        instruction given to instruction-guided compressors and the generation
                        prefix. "" for none (then no instruction-guided compressor).
      prompt_token_ids  the prompt under the report tokenizer; filled by `from_tokenizer`
      bos_token_id, eos_token_id, pad_token_id  (also copied into text_config)

    Sequence the LM sees: [K visual tokens][L finding tokens, with finding_tokens][prompt tokens][report tokens][eos].
    """

    model_type = "medvtc_ct_report"
    sub_configs = {"text_config": AutoConfig}

    def __init__(
        self,
        image_size: Sequence[int] = (64, 64, 32),
        in_channels: int = 1,
        patch_size: Sequence[int] = (8, 8, 4),
        vision_hidden_size: int = 192,
        vision_layers: int = 4,
        vision_heads: int = 4,
        vision_mlp_dim: int = 384,
        vision_dropout: float = 0.0,
        vision_qkv_bias: bool = False,
        vision_stem: str = "patch",
        vision_gradient_checkpointing: bool = False,
        standardize_visual_tokens: bool = True,
        standardize_vision_input: bool = False,
        vision_input_min_std: float = 0.01,
        compressor: str = "pixel_shuffle",
        compressor_budget: int | float = 64,
        compressor_args: dict[str, Any] | None = None,
        projector_hidden_size: int | None = None,
        projector_hidden_act: str = "gelu",
        text_config: dict[str, Any] | PretrainedConfig | None = None,
        language_model_path: str | None = None,
        lora_rank: int = 0,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.05,
        lora_target_modules: Sequence[str] = DEFAULT_LORA_TARGET_MODULES,
        prompt: str = "Findings:",
        prompt_token_ids: Sequence[int] | None = None,
        num_finding_labels: int = 0,
        finding_loss_weight: float = 0.0,
        finding_tokens: bool = False,
        finding_threshold: float = 0.5,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.image_size = _triple(image_size, "image_size")
        self.patch_size = _triple(patch_size, "patch_size")
        bad = [i for i, (s, p) in enumerate(zip(self.image_size, self.patch_size)) if s % p]
        if bad:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by patch_size {self.patch_size} "
                f"(axis {bad[0]}: {self.image_size[bad[0]]} % {self.patch_size[bad[0]]} != 0)"
            )
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.vision_hidden_size = _positive_int(vision_hidden_size, "vision_hidden_size")
        self.vision_layers = _positive_int(vision_layers, "vision_layers")
        self.vision_heads = _positive_int(vision_heads, "vision_heads")
        if vision_hidden_size % vision_heads:
            raise ValueError(f"vision_hidden_size={vision_hidden_size} must be divisible by vision_heads={vision_heads}")
        self.vision_mlp_dim = _positive_int(vision_mlp_dim, "vision_mlp_dim")
        if not 0.0 <= float(vision_dropout) < 1.0:
            raise ValueError(f"vision_dropout must lie in [0, 1), got {vision_dropout!r}")
        self.vision_dropout = float(vision_dropout)
        self.vision_qkv_bias = bool(vision_qkv_bias)
        if vision_stem not in ("patch", "conv"):
            raise ValueError(f"vision_stem must be 'patch' or 'conv', got {vision_stem!r}")
        if vision_stem == "conv" and any(p & (p - 1) for p in self.patch_size):
            raise ValueError(f"vision_stem='conv' needs power-of-two patch sizes, got {self.patch_size}")
        self.vision_stem = vision_stem
        self.vision_gradient_checkpointing = bool(vision_gradient_checkpointing)
        self.standardize_visual_tokens = bool(standardize_visual_tokens)
        self.standardize_vision_input = bool(standardize_vision_input)
        self.vision_input_min_std = float(vision_input_min_std)

        self.compressor = str(compressor)
        self.compressor_budget = compressor_budget
        self.compressor_args = dict(compressor_args or {})
        self._check_compressor()

        if projector_hidden_size is not None:
            _positive_int(projector_hidden_size, "projector_hidden_size")
        self.projector_hidden_size = projector_hidden_size
        self.projector_hidden_act = projector_hidden_act
        if isinstance(num_finding_labels, bool) or not isinstance(num_finding_labels, int) or num_finding_labels < 0:
            raise ValueError(f"num_finding_labels must be an int >= 0, got {num_finding_labels!r}")
        w = finding_loss_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"finding_loss_weight must be a number >= 0, got {w!r}")
        if w > 0 and num_finding_labels == 0:
            raise ValueError("finding_loss_weight > 0 needs num_finding_labels > 0 (the labels the head predicts)")
        self.num_finding_labels = num_finding_labels
        self.finding_loss_weight = float(w)
        if finding_tokens and w == 0:
            raise ValueError("finding_tokens=True needs the finding head (finding_loss_weight > 0): it predicts the "
                             "findings the tokens state")
        t = finding_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t < 1.0:
            raise ValueError(f"finding_threshold must be a probability in (0, 1), got {t!r}")
        self.finding_tokens = bool(finding_tokens)
        self.finding_threshold = float(t)

        self.language_model_path = None if language_model_path is None else str(language_model_path)
        if isinstance(text_config, dict):
            text_config = dict(text_config)
            model_type = text_config.pop("model_type", "llama")
            base = {k: v for k, v in DEFAULT_TEXT_CONFIG.items() if k != "model_type"} if model_type == "llama" else {}
            text_config = CONFIG_MAPPING[model_type](**{**base, **text_config})
        elif text_config is None and self.language_model_path is None:
            text_config = CONFIG_MAPPING["llama"](**{k: v for k, v in DEFAULT_TEXT_CONFIG.items() if k != "model_type"})
        elif text_config is not None and not isinstance(text_config, PretrainedConfig):
            raise ValueError(f"text_config must be a dict, a PretrainedConfig or None, got {type(text_config).__name__}")
        self.text_config = text_config
        self._set_lora(lora_rank, lora_alpha, lora_dropout, lora_target_modules)

        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {prompt!r}")
        self.prompt = prompt
        self.prompt_token_ids = None if prompt_token_ids is None else [int(t) for t in prompt_token_ids]
        if self.needs_text and not prompt:
            raise ValueError(
                f"prompt: compressor {self.compressor!r} is instruction-guided and needs a non-empty prompt"
            )
        if self.text_config is not None:
            # The LM's own generation defaults and loss use the same special tokens as ours.
            for key, value in (("bos_token_id", bos_token_id), ("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
                if value is not None:
                    setattr(self.text_config, key, value)
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)

    def _set_lora(self, rank: Any, alpha: Any, dropout: Any, targets: Any) -> None:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"lora_rank must be an int >= 0 (0: no LoRA), got {rank!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"lora_alpha must be a positive number, got {alpha!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"lora_dropout must lie in [0, 1), got {dropout!r}")
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"lora_target_modules must be a non-empty list of module names (e.g. [q_proj, v_proj]), got {targets!r}")
        self.lora_rank = rank
        self.lora_alpha = float(alpha)
        self.lora_dropout = float(dropout)
        self.lora_target_modules = list(targets)

    # -- derived sizes ---------------------------------------------------------------------

    @property
    def grid(self) -> tuple[int, int, int]:
        """The ViT token grid (X/px, Y/py, Z/pz)."""
        return tuple(s // p for s, p in zip(self.image_size, self.patch_size))  # type: ignore[return-value]

    @property
    def num_patches(self) -> int:
        return math.prod(self.grid)

    @property
    def compressor_name(self) -> str:
        """The registry name of the compressor ("none" resolves to "identity")."""
        return "identity" if self.compressor in NO_COMPRESSION else self.compressor

    @property
    def num_visual_tokens(self) -> int:
        """K, the number of visual tokens the LM receives."""
        if self.compressor in NO_COMPRESSION:
            return self.num_patches
        from medvtc.common.compressors.utils import resolve_budget

        return resolve_budget(self.compressor_budget, self.num_patches, "compressor_budget")

    @property
    def needs_text(self) -> bool:
        """Whether the compressor is instruction-guided (reads the prompt's embeddings)."""
        from medvtc.common.compressors import COMPRESSORS

        return bool(COMPRESSORS.get(self.compressor_name).needs_text)

    def _check_compressor(self) -> None:
        from medvtc.common.compressors import COMPRESSORS, list_compressors

        valid = list_compressors()
        if self.compressor not in NO_COMPRESSION and self.compressor not in valid:
            raise ValueError(
                f"compressor {self.compressor!r} is not registered; valid: {', '.join(['none', *valid])}"
            )
        cls = COMPRESSORS.get(self.compressor_name)
        if cls.needs_scores:
            raise ValueError(
                f"compressor {self.compressor!r} needs external importance scores (e.g. [CLS] attention), "
                "which the CT ViT does not provide"
            )
        for key in ("budget", "dim"):
            if key in self.compressor_args:
                raise ValueError(
                    f"compressor_args must not set {key!r}: "
                    + ("use compressor_budget" if key == "budget" else "it is vision_hidden_size")
                )
        params = inspect.signature(cls.__init__).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            # text_dim is always allowed: the model uses it to size the prompt projection
            unknown = [k for k in self.compressor_args if k not in params and k != "text_dim"]
            if unknown:
                valid = sorted(p for p in params if p not in ("self", "budget", "dim"))
                raise ValueError(
                    f"compressor_args: {self.compressor_name!r} has no argument {unknown[0]!r}; valid: {', '.join(valid)}"
                )
        budget = self.compressor_budget
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise ValueError(f"compressor_budget must be an int K or a float keep-ratio in (0, 1], got {budget!r}")
        if self.compressor in NO_COMPRESSION:
            return
        n = self.num_patches
        if isinstance(budget, float) and not 0.0 < budget <= 1.0:
            raise ValueError(f"compressor_budget: a float is a keep-ratio in (0, 1], got {budget}")
        if isinstance(budget, int) and not 0 < budget <= n:
            raise ValueError(
                f"compressor_budget K={budget} must satisfy 0 < K <= N={n} patch tokens "
                f"(image_size {self.image_size} / patch_size {self.patch_size} = grid {self.grid})"
            )
        from medvtc.common.compressors import resolve_compressor_args

        k = self.num_visual_tokens
        try:
            # the model's own resolution (build_compressor): a K the method cannot be built for on
            # this grid (e.g. no pixel-shuffle group factors) is refused here, with the nearest that work
            resolve_compressor_args(
                self.compressor_name, k, self.compressor_args, grid=self.grid,
                dim=self.vision_hidden_size, heads=self.vision_heads,
            )
        except ValueError as e:
            raise ValueError(f"compressor_budget K={k}: {e}") from None

    # -- construction helpers ------------------------------------------------------------

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> "CTReportConfig":
        """A config whose LM vocabulary, special tokens and prompt ids follow `tokenizer`.

        `text_config` in kwargs (a dict) is merged over the defaults; its vocab_size is set to
        len(tokenizer) unless given.
        """
        prompt = kwargs.get("prompt", "Findings:")
        text_config = kwargs.pop("text_config", None)
        if isinstance(text_config, PretrainedConfig):
            text_config = text_config.to_dict()
        if text_config is not None or kwargs.get("language_model_path") is None:
            text_config = {"vocab_size": len(tokenizer), **(text_config or {})}
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        return cls(
            text_config=text_config,
            prompt_token_ids=ids,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **kwargs,
        )

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        # tuples become lists in JSON anyway; keep them lists here so to_dict() == from_dict round trips
        out["image_size"] = list(self.image_size)
        out["patch_size"] = list(self.patch_size)
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        out = super().to_diff_dict()
        # transformers stores a sub-config as its diff against that class's defaults
        # (LlamaConfig: tie_word_embeddings=False, 4096 wide, ...). A partial dict given to
        # __init__ is merged over *our* small defaults, so a diff would reload as a different
        # LM; so save every key those defaults set explicitly, plus the usual diff.
        if self.text_config is not None:
            tc = self.text_config
            pinned = {k: getattr(tc, k) for k in DEFAULT_TEXT_CONFIG if hasattr(tc, k)}
            out["text_config"] = {**pinned, **tc.to_diff_dict()}
        return out


AutoConfig.register(CTReportConfig.model_type, CTReportConfig, exist_ok=True)

__all__ = ["CTReportConfig", "DEFAULT_LORA_TARGET_MODULES", "DEFAULT_TEXT_CONFIG"]

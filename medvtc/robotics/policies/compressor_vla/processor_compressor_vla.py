"""Pre/post-processing of the Compressor-VLA policy, as LeRobot 0.4.4 pipelines.

File and function names follow LeRobot's plugin convention (`configuration_X` -> `processor_X`,
`make_X_pre_post_processors`), so `lerobot.policies.factory.make_pre_post_processors(cfg)` finds
them for `cfg.type == "compressor_vla"`.

Preprocessor (a raw observation or a dataset batch in, the policy's batch out):
    rename (identity) -> add batch dim -> hashed-word tokenizer of `task` ->
    device -> normalise (dataset mean/std of images, state and action)
Postprocessor (the policy's action out): unnormalise -> CPU.

The instruction is tokenized without any vocabulary file or download: each lower-cased word
(``[a-z0-9]+``) maps to ``2 + crc32(word) mod (buckets - 2)`` (0 = padding, 1 = unknown/empty),
so a tokenizer is fully described by its bucket count and is saved with the pipeline's JSON.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch
from lerobot.processor import (
    AddBatchDimensionProcessorStep,
    DeviceProcessorStep,
    NormalizerProcessorStep,
    PolicyAction,
    PolicyProcessorPipeline,
    ProcessorStepRegistry,
    RenameObservationsProcessorStep,
    TokenizerProcessorStep,
    UnnormalizerProcessorStep,
)
from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action
from lerobot.utils.constants import POLICY_POSTPROCESSOR_DEFAULT_NAME, POLICY_PREPROCESSOR_DEFAULT_NAME

from medvtc.robotics.policies.compressor_vla.configuration_compressor_vla import CompressorVLAConfig

PAD_ID = 0
UNK_ID = 1
_WORD = re.compile(r"[a-z0-9]+")


class HashedWordTokenizer:
    """A vocabulary-free word tokenizer with the call signature LeRobot's `TokenizerProcessorStep`
    uses of a Hugging Face tokenizer: ``tok(texts, max_length=, truncation=, padding=,
    padding_side=, return_tensors="pt") -> {"input_ids": [B, L] long, "attention_mask": [B, L] long}``.

    Every text yields at least one token (UNK for a text with no words), so attention masks are
    never all zero.
    """

    def __init__(self, buckets: int = 4096) -> None:
        if buckets < 3:
            raise ValueError(f"buckets must be >= 3, got {buckets}")
        self.buckets = int(buckets)

    def word_id(self, word: str) -> int:
        return 2 + zlib.crc32(word.encode("utf-8")) % (self.buckets - 2)

    def encode(self, text: str) -> list[int]:
        ids = [self.word_id(w) for w in _WORD.findall(text.lower())]
        return ids or [UNK_ID]

    def __call__(
        self,
        text: str | list[str],
        max_length: int = 24,
        truncation: bool = True,
        padding: str | bool = "max_length",
        padding_side: str = "right",
        return_tensors: str = "pt",
    ) -> dict[str, torch.Tensor]:
        texts = [text] if isinstance(text, str) else list(text)
        seqs = [self.encode(t) for t in texts]
        if truncation:
            seqs = [s[:max_length] for s in seqs]
        if padding in ("max_length", True) and truncation:
            length = max_length
        else:
            length = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), length), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, s in enumerate(seqs):
            n = len(s)
            if padding_side == "left":
                ids[i, length - n:] = torch.tensor(s, dtype=torch.long)
                mask[i, length - n:] = 1
            else:
                ids[i, :n] = torch.tensor(s, dtype=torch.long)
                mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask}


@dataclass
@ProcessorStepRegistry.register(name="medvtc_hashed_tokenizer")
class HashedTokenizerProcessorStep(TokenizerProcessorStep):
    """LeRobot's `TokenizerProcessorStep` (task string -> `observation.language.tokens` /
    `.attention_mask`) with the built-in `HashedWordTokenizer`, so it saves and loads with no
    tokenizer files."""

    text_buckets: int = 4096
    padding: str = "max_length"
    max_length: int = 24
    tokenizer: Any | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.input_tokenizer = HashedWordTokenizer(self.text_buckets)

    def get_config(self) -> dict[str, Any]:
        cfg = super().get_config()
        cfg.pop("tokenizer_name", None)
        cfg["text_buckets"] = self.text_buckets
        return cfg


def make_compressor_vla_pre_post_processors(
    config: CompressorVLAConfig,
    dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[
    PolicyProcessorPipeline[dict[str, Any], dict[str, Any]],
    PolicyProcessorPipeline[PolicyAction, PolicyAction],
]:
    """The (preprocessor, postprocessor) pair of a Compressor-VLA policy.

    `dataset_stats` are the LeRobotDataset's `meta.stats` (mean/std per feature); without them
    the normaliser passes values through unchanged (fine for shape tests, wrong for training).
    """
    input_steps = [
        RenameObservationsProcessorStep(rename_map={}),
        AddBatchDimensionProcessorStep(),
        HashedTokenizerProcessorStep(
            max_length=config.tokenizer_max_length, text_buckets=config.text_buckets, padding="max_length"
        ),
        DeviceProcessorStep(device=config.device),
        NormalizerProcessorStep(
            features={**config.input_features, **config.output_features},
            norm_map=config.normalization_mapping,
            stats=dataset_stats,
            device=config.device,
        ),
    ]
    output_steps = [
        UnnormalizerProcessorStep(
            features=config.output_features, norm_map=config.normalization_mapping, stats=dataset_stats
        ),
        DeviceProcessorStep(device="cpu"),
    ]
    return (
        PolicyProcessorPipeline[dict[str, Any], dict[str, Any]](steps=input_steps, name=POLICY_PREPROCESSOR_DEFAULT_NAME),
        PolicyProcessorPipeline[PolicyAction, PolicyAction](
            steps=output_steps,
            name=POLICY_POSTPROCESSOR_DEFAULT_NAME,
            to_transition=policy_action_to_transition,
            to_output=transition_to_policy_action,
        ),
    )


__all__ = ["HashedTokenizerProcessorStep", "HashedWordTokenizer", "make_compressor_vla_pre_post_processors"]

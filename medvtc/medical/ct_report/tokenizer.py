"""A radiology-report tokenizer trained locally, and the encoding of reports for `CTReportModel`.

Byte-level BPE (GPT-2 style), not lower-cased WordPiece: byte-level BPE is lossless, so
`decode(encode(report)) == report` for every string. Generated reports then detokenise exactly
as written: capitals, "5.2 cm", "T2-weighted", "(n=3)", newlines and non-ASCII characters come
back unchanged, and nothing is ever <unk>. WordPiece decoding re-joins pieces with spaces around
punctuation ("5 . 2 cm", "t2 - weighted") and lower-casing loses information a report metric or a
reader may want; both would make exact-match checks and BLEU/ROUGE on generated text depend on
post-processing heuristics.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import BatchEncoding, PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0..3, in this order


def train_report_tokenizer(texts: Iterable[str], vocab_size: int = 2000, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` (the training reports).

    vocab_size counts the 4 special tokens and the 256 byte symbols; a small corpus may stop
    merging earlier (then len(tokenizer) < vocab_size). Special tokens: <pad>=0, <s>=1 (bos),
    </s>=2 (eos), <unk>=3 (never produced: every byte has a symbol). Nothing is added
    automatically when encoding; `encode_reports` appends eos itself.

    Deterministic: the same texts give the same vocabulary and merges (checked in the tests
    within a process, and by hand across separate processes with tokenizers 0.22).

    Save and load beside the model: `tok.save_pretrained(d)`,
    `PreTrainedTokenizerFast.from_pretrained(d)` (or `AutoTokenizer.from_pretrained(d)`).
    """
    texts = list(texts)
    if not texts:
        raise ValueError("train_report_tokenizer: texts is empty")
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size must be >= {len(SPECIAL_TOKENS) + 256} (specials + 256 bytes), got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    # add_prefix_space=False: a report's first word is encoded as written, so decoding gives the
    # exact string back (no leading space to strip).
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="right",
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids
        # transformers' clean-up would rewrite " ." -> "." and " n't" -> "n't"; byte-level
        # decoding is already exact
        clean_up_tokenization_spaces=False,
    )


def encode_reports(
    tokenizer: PreTrainedTokenizerFast,
    reports: Sequence[str],
    max_length: int | None = None,
) -> BatchEncoding:
    """The report part of `CTReportModel`'s input: report tokens + eos, right-padded.

    Returns input_ids [B, T], attention_mask [B, T] and labels [B, T] (= input_ids, -100 at
    padding). The model itself prepends the visual and prompt tokens (and -100 labels for them).
    With max_length, a longer report is cut to max_length - 1 tokens and still ends with eos.
    """
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("encode_reports: the tokenizer needs eos and pad tokens")
    ids = tokenizer(list(reports), add_special_tokens=False)["input_ids"]
    if max_length is not None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        ids = [x[: max_length - 1] for x in ids]
    ids = [x + [tokenizer.eos_token_id] for x in ids]
    t = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), t), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(ids), t, dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x)
        attention_mask[i, : len(x)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return BatchEncoding({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})


__all__ = ["encode_reports", "train_report_tokenizer"]

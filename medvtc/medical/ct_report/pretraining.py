"""The stages before Argus' two, for a model trained from scratch (no hub, no pretrained weights).

Argus starts from a pretrained LLM and a pretrained 3D ViT. We cannot download either, so two
warm-ups stand in for them, each training one part of `CTReportModel` through a small wrapper
whose checkpoints hold that part alone (so one warm-up can serve models that differ in their
compressor, as the benchmark's variants do):

- `TextOnlyLM` ("lm" stage): the language model learns the reports' language from text alone.
- `LabelProbe` ("vision" stage): the ViT learns to see the findings by predicting the 18
  multi-abnormality labels that CT-RATE ships with every volume (the supervision CT-CLIP-style
  encoders are pretrained with), through a linear probe on its pooled tokens.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from medvtc.medical.ct_report.modeling_ct_report import IGNORE_INDEX


class TextOnlyLM(nn.Module):
    """The model's language model on [prompt][report] sequences, as `CTReportModel.forward` builds
    them with `pixel_values=None`. forward(input_ids [B, T], attention_mask [B, T], labels [B, T])
    -> the mean next-token loss over the report tokens and eos."""

    def __init__(self, model) -> None:
        super().__init__()
        self.language_model = model.language_model
        prompt = torch.tensor(model.config.prompt_token_ids or [], dtype=torch.long)
        self.register_buffer("prompt_ids", prompt, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        prompt = self.prompt_ids.to(input_ids.device).unsqueeze(0).expand(input_ids.shape[0], -1)
        ids = torch.cat([prompt, input_ids], dim=1)
        mask = torch.cat([torch.ones_like(prompt), attention_mask.long()], dim=1)
        full_labels = torch.cat([torch.full_like(prompt, IGNORE_INDEX), labels], dim=1)
        return self.language_model(input_ids=ids, attention_mask=mask, labels=full_labels).loss


class LabelProbe(nn.Module):
    """The model's ViT with a linear multi-label head on its mean- and max-pooled tokens.

    forward(pixel_values [B, 1, X, Y, Z], labels [B, L] in {0, 1}) -> binary cross-entropy loss;
    `predict(pixel_values)` -> probabilities [B, L]. Positives are weighted by the training
    prevalence (`pos_weight` = negatives / positives, capped at 10) so rare findings count.
    """

    def __init__(self, model, num_labels: int, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.vision_encoder = model.vision_encoder
        width = self.vision_encoder.hidden_size
        self.head = nn.Linear(2 * width, num_labels)
        self.register_buffer("pos_weight", pos_weight if pos_weight is not None else torch.ones(num_labels), persistent=False)

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.vision_encoder(pixel_values)  # [B, N, D]; the encoder casts to its dtype
        return self.head(torch.cat([tokens.mean(1), tokens.amax(1)], dim=-1))

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.logits(pixel_values)
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=self.pos_weight)

    @torch.no_grad()
    def predict(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(pixel_values))


def label_pos_weight(labels: torch.Tensor, cap: float = 10.0) -> torch.Tensor:
    """[num_samples, L] training labels -> [L] negatives/positives, in [1/cap, cap]."""
    pos = labels.float().mean(0).clamp(1.0 / (cap + 1.0), cap / (cap + 1.0))
    return ((1.0 - pos) / pos).clamp(1.0 / cap, cap)


def label_collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Items of `CTReportDataset` -> pixel_values [B, 1, X, Y, Z], labels [B, L]."""
    return {"pixel_values": torch.stack([it["image"] for it in items]), "labels": torch.stack([it["labels"] for it in items])}


@torch.no_grad()
def label_probe_metrics(probe: LabelProbe, dataset, device, batch_size: int = 16,
                        names: Sequence[str] | None = None) -> dict[str, float]:
    """Validation loss and macro ROC-AUC (MONAI's `compute_roc_auc`, over the labels with both
    classes present in the split) of the probe; with the labels' `names`, also each label's AUC
    (`auc_<label in snake case>`, only where the split has both classes), so a stage's log says
    which findings the encoder sees and which it does not."""
    from monai.metrics import compute_roc_auc

    probs, truth, loss, n = [], [], 0.0, 0
    for start in range(0, len(dataset), batch_size):
        batch = label_collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
        x, y = batch["pixel_values"].to(device), batch["labels"].to(device)
        loss += float(probe(x, y)) * len(y)
        n += len(y)
        probs.append(probe.predict(x).float().cpu())
        truth.append(y.float().cpu())
    p, t = torch.cat(probs), torch.cat(truth)
    both = [j for j in range(t.shape[1]) if 0 < t[:, j].sum() < len(t)]
    auc = float(compute_roc_auc(p[:, both], t[:, both], average="macro")) if both else float("nan")
    out = {"loss": loss / max(n, 1), "auc": auc}
    if names is not None:
        if len(names) != t.shape[1]:
            raise ValueError(f"{len(names)} label names for {t.shape[1]} labels")
        for j in both:
            out["auc_" + "_".join(names[j].lower().replace("-", " ").split())] = float(compute_roc_auc(p[:, j], t[:, j]))
    return out


__all__ = ["LabelProbe", "TextOnlyLM", "label_collate", "label_pos_weight", "label_probe_metrics"]

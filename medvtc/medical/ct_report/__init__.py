"""CT radiology-report generation (after Argus, Liu et al., arXiv 2406.07146, ACL Findings 2025):
a MONAI 3D ViT reads the volume, a `medvtc.common.compressors` method shrinks its tokens, a
2-layer MLP projects them into a causal LM that writes the report.

    from medvtc.medical.ct_report import CTReportConfig, CTReportModel, train_report_tokenizer, encode_reports

Names are imported lazily (MONAI and the LM code load only when first used). Importing
`medvtc.medical.ct_report.modeling_ct_report` (or touching `CTReportModel`) registers the model
with `AutoConfig` / `AutoModel`.
"""

from __future__ import annotations

from medvtc.common.lazy_exports import lazy_exports

_EXPORTS = {
    "CTReportConfig": "configuration_ct_report",
    "CTReportModel": "modeling_ct_report",
    "CTReportProjector": "modeling_ct_report",
    "CTViTEncoder": "vision_encoder",
    "train_report_tokenizer": "tokenizer",
    "encode_reports": "tokenizer",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""Load a trained CT report generator and write reports, for research scripts and `medvtc report`.

    from medvtc.medical.ct_report.pipeline import CTReportGenerator
    generator = CTReportGenerator.from_pretrained("runs/ct-report/final")
    print(generator("scan.nii.gz"))          # or generator(hu_array, spacing=(0.75, 0.75, 1.5))

A trained model folder (written by `medvtc train --task ct-report` as `output_dir/final`) holds
the Hugging Face model (config.json, model.safetensors), its tokenizer, and
`preprocessor_config.json`: how a volume is turned into the model's input (size, spacing, HU
window), so a report is always written from a volume prepared as in training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from medvtc.common.errors import UserError

PREPROCESSOR_FILE = "preprocessor_config.json"


class CTReportGenerator:
    """A trained `CTReportModel`, its tokenizer and its preprocessing, ready to write reports."""

    def __init__(self, model, tokenizer, preprocessing: dict[str, Any], device: str | torch.device | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.preprocessing = dict(preprocessing)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None) -> "CTReportGenerator":
        from transformers import PreTrainedTokenizerFast

        from medvtc.medical.ct_report.modeling_ct_report import CTReportModel

        path = Path(path)
        if (path / "final" / "config.json").is_file():  # a run's output_dir
            path = path / "final"
        missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json", PREPROCESSOR_FILE) if not (path / f).is_file()]
        if missing:
            raise UserError(
                f"{path} is not a trained ct-report model folder (missing {', '.join(missing)}); pass the "
                f"`final` folder that `medvtc train --task ct-report` writes, or its run folder"
            )
        config = json.loads((path / "config.json").read_text())
        if config.get("model_type") != "medvtc_ct_report":
            raise UserError(f"{path / 'config.json'} is a {config.get('model_type')!r} model, not a ct-report model")
        model = CTReportModel.from_pretrained(path, local_files_only=True)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
        preprocessing = json.loads((path / PREPROCESSOR_FILE).read_text())
        return cls(model, tokenizer, preprocessing, device)

    # -- input -------------------------------------------------------------------------------
    def preprocess(self, volume: str | Path | np.ndarray | torch.Tensor, spacing: Sequence[float] | None = None) -> torch.Tensor:
        """A NIfTI path, or an [X, Y, Z] array in HU (with its voxel `spacing` in mm) -> [C, X', Y', Z']."""
        from medvtc.datasets.ct_rate import load_ct_volume, preprocess_ct_array

        p = self.preprocessing
        # hu_bins: absent from models saved before it existed (they read the window channel only)
        args = dict(spatial_size=p["spatial_size"], hu_window=p["hu_window"], resize=p["resize"], hu_bins=p.get("hu_bins") or (),
                    dtype=p.get("dtype", "float32"))  # dtype: only there when not float32 (data.dtype)
        if isinstance(volume, (str, Path)):
            return load_ct_volume(volume, spacing=p.get("spacing"), **args)
        return preprocess_ct_array(volume, spacing, target_spacing=p.get("spacing"), **args)

    # -- output ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_from_pixels(self, pixel_values: torch.Tensor, max_new_tokens: int = 256, num_beams: int = 1) -> list[str]:
        """pixel_values [B, C, X, Y, Z] already preprocessed -> B reports."""
        ids = self.model.generate(pixel_values.to(self.device), max_new_tokens=max_new_tokens, num_beams=num_beams)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def __call__(self, volume: str | Path | np.ndarray | torch.Tensor, spacing: Sequence[float] | None = None,
                 max_new_tokens: int = 256, num_beams: int = 1) -> str:
        """The report for one volume (a NIfTI path, or an array in HU with its spacing)."""
        pixels = self.preprocess(volume, spacing)[None]
        return self.generate_from_pixels(pixels, max_new_tokens, num_beams)[0]


__all__ = ["CTReportGenerator", "PREPROCESSOR_FILE"]

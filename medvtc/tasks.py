"""The tasks `--task` can name, imported lazily so `medvtc --help` stays fast."""

from __future__ import annotations

import importlib

from medvtc.common.errors import UserError
from medvtc.common.task import Task

TASKS: dict[str, tuple[str, str]] = {
    "compressors": (
        "medvtc.compression.task:CompressorsTask",
        "the shared compressor core: train a learned compressor on token grids, benchmark all methods",
    ),
    "ct-report": (
        "medvtc.medical.ct_report.task:CTReportTask",
        "CT report generation: a 3D ViT, a token compressor and a causal LM write the radiology report",
    ),
    "tokenseg": (
        "medvtc.medical.tokenseg.task:TokenSegTask",
        "TokenSeg 3D segmentation: boundary-aware sparse tokens (400 candidates, 100 kept) against MONAI's UNet, "
        "SegResNet, UNETR and SwinUNETR on MSD-layout data",
    ),
    "libero": (
        "medvtc.robotics.task:LiberoTask",
        "Compressor-VLA robot policy on LIBERO: scripted demos as a LeRobotDataset, LeRobot policy, simulator rollouts",
    ),
}


def task_names() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; valid tasks: {', '.join(task_names())}")
    module, cls = TASKS[name][0].split(":")
    return getattr(importlib.import_module(module), cls)()

"""The CT-RATE on-disk layout: file names, CSV columns and the 18 abnormality labels.

CT-RATE (Hamamci et al., "Developing Generalist Foundation Models from a Multimodal Dataset for
3D Computed Tomography", ibrahimethemhamamci/CT-CLIP) stores chest CTs as NIfTI files named
`{split}_{patient}_{scan}_{reconstruction}.nii.gz`, e.g. `valid_53_a_1.nii.gz`, nested by patient
and scan:

    <root>/dataset/train_fixed/train_1/train_1_a/train_1_a_1.nii.gz
    <root>/dataset/valid_fixed/valid_53/valid_53_a/valid_53_a_1.nii.gz
    <root>/dataset/radiology_text_reports/train_reports.csv        (and validation_reports.csv)
    <root>/dataset/multi_abnormality_labels/train_predicted_labels.csv  (and valid_predicted_labels.csv)

Reports CSV columns: VolumeName, ClinicalInformation_EN, Technique_EN, Findings_EN,
Impressions_EN ("Not given." when a section is empty). Labels CSV: VolumeName and one 0/1
column per label, in the official order below.

CT-RATE ships two official splits (train, valid). medvtc's three splits are: `train` and `val`
from the official train split, divided by patient (so no patient is in both), and `test` = the
official valid split. This module only names things; `medvtc.datasets.ct_rate` reads them and
`medvtc.datasets.ct_phantom` writes the embedded default in the same layout.
"""

from __future__ import annotations

import re
from pathlib import Path

CT_RATE_LABELS: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)

REPORT_COLUMNS: tuple[str, ...] = (
    "VolumeName",
    "ClinicalInformation_EN",
    "Technique_EN",
    "Findings_EN",
    "Impressions_EN",
)
NOT_GIVEN = "Not given."

# Official split name -> (volume folder, reports CSV, labels CSV), relative to <root>/dataset.
OFFICIAL_SPLITS: dict[str, tuple[str, str, str]] = {
    "train": ("train_fixed", "radiology_text_reports/train_reports.csv",
              "multi_abnormality_labels/train_predicted_labels.csv"),
    "valid": ("valid_fixed", "radiology_text_reports/validation_reports.csv",
              "multi_abnormality_labels/valid_predicted_labels.csv"),
}
# medvtc split -> official split it is drawn from.
SPLIT_SOURCE: dict[str, str] = {"train": "train", "val": "train", "test": "valid"}

VOLUME_NAME = re.compile(r"^(?P<split>[A-Za-z]+)_(?P<patient>[A-Za-z0-9]+)_(?P<scan>[A-Za-z0-9]+)_(?P<recon>[A-Za-z0-9]+)\.nii(\.gz)?$")


def parse_volume_name(name: str) -> dict[str, str]:
    """`valid_53_a_1.nii.gz` -> {"split": "valid", "patient": "53", "scan": "a", "recon": "1"}."""
    m = VOLUME_NAME.match(name)
    if m is None:
        raise ValueError(
            f"volume name {name!r} does not follow CT-RATE's split_patient_scan_recon.nii.gz pattern"
        )
    return {k: m.group(k) for k in ("split", "patient", "scan", "recon")}


def volume_relpath(name: str) -> Path:
    """Path of a volume below <root>/dataset: train_fixed/train_1/train_1_a/train_1_a_1.nii.gz."""
    p = parse_volume_name(name)
    official = "valid" if p["split"] == "valid" else "train"
    folder = OFFICIAL_SPLITS[official][0]
    patient = f"{p['split']}_{p['patient']}"
    return Path(folder) / patient / f"{patient}_{p['scan']}" / name

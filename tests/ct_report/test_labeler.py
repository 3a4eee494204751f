"""Report labeler: agreement with the phantom's ground truth, negation traps, real CT-RATE text."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import f1_score

from medvtc.datasets.ct_phantom import case_labels, sample_case
from medvtc.datasets.ct_rate_layout import CT_RATE_LABELS
from medvtc.datasets.ct_report_text import write_report
from medvtc.medical.ct_report import labeler
from medvtc.medical.ct_report.labeler import LABELS, label_report, label_reports


def _generated(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    texts, truth = [], []
    for i in range(n):
        case = sample_case(np.random.default_rng([seed, i, 0]))
        findings, impression = write_report(case, np.random.default_rng([seed, i, 2]))
        texts.append(findings + " " + impression)
        truth.append(case_labels(case))
    return texts, np.stack(truth)


def test_micro_f1_on_generated_reports():
    texts, truth = _generated(500, seed=21)
    assert (truth.sum(0) >= 10).all()  # every label has positives to get right
    pred = label_reports(texts)
    assert pred.shape == (500, 18) and set(np.unique(pred)) <= {0, 1}
    micro = f1_score(truth, pred, average="micro")
    assert micro >= 0.98, micro
    # No label is carried by the others: each one on its own is read well.
    per_label = f1_score(truth, pred, average=None)
    assert per_label.min() >= 0.9, dict(zip(LABELS, per_label.round(3)))


def _vec(*labels: str) -> list[int]:
    unknown = set(labels) - set(CT_RATE_LABELS)
    assert not unknown, unknown
    return [int(lab in labels) for lab in CT_RATE_LABELS]


NEGATION_TRAPS = [
    # Negation in one sentence must not reach the next.
    ("No pleural effusion. There is pericardial effusion.", _vec("Pericardial effusion")),
    ("There is no pleural effusion, but a small pericardial effusion is present.", _vec("Pericardial effusion")),
    # Normal statements that mention the organ but not the abnormality.
    ("Heart size is normal.", _vec()),
    ("Heart size is within normal limits.", _vec()),
    ("The heart is not enlarged.", _vec()),
    ("Heart size is not increased.", _vec()),
    ("Lymph nodes of non-pathological size are observed in the mediastinum.", _vec()),
    ("Millimetric lymph nodes in the mediastinum.", _vec()),
    ("Lymph nodes measuring less than 10 mm in short axis.", _vec()),
    # Coronary vs aortic calcification.
    ("Calcification in the coronary arteries.", _vec("Coronary artery wall calcification")),
    ("Calcified atherosclerotic plaques in the aorta.", _vec("Arterial wall calcification")),
    ("Atheromatous plaques in the aortic arch and coronary arteries.",
     _vec("Arterial wall calcification", "Coronary artery wall calcification")),
    ("Costal cartilage calcifications.", _vec()),
    ("Calcified lymph node in the right hilum.", _vec()),
    # Negations spanning lists.
    ("No pleural or pericardial effusion.", _vec()),
    ("Neither pleural nor pericardial effusion is seen.", _vec()),
    ("No pneumothorax, effusion or consolidation.", _vec()),
    ("No nodules, masses or infiltrates are seen.", _vec()),
    ("Cardiomegaly, pleural and pericardial effusion were not observed.", _vec()),
    ("No cardiomegaly or pericardial effusion.", _vec()),
    # Negation cues.
    ("Without pleural effusion.", _vec()),
    ("Pleural effusion was not observed.", _vec()),
    ("Consolidation is not detected.", _vec()),
    ("Negative for pulmonary nodules.", _vec()),
    ("The lungs are free of nodules and masses.", _vec()),
    ("No evidence of pericardial effusion.", _vec()),
    ("Pericardial effusion was ruled out.", _vec()),
    ("Pericardial thickening or effusion was not detected.", _vec()),
    # Scope ends at a new statement.
    ("Mild cardiomegaly, no pleural effusion.", _vec("Cardiomegaly")),
    ("The heart is enlarged, without pericardial effusion.", _vec("Cardiomegaly")),
    ("Atelectasis in the right lower lobe, consolidation was not observed.", _vec("Atelectasis")),
    ("No consolidation, atelectasis in the left lower lobe.", _vec("Atelectasis")),
    ("Atelectasis is observed in the right lower lobe and consolidation was not observed.", _vec("Atelectasis")),
    # Pseudo-negations and uncertainty (counted positive, as CheXpert's U-ones).
    ("Pleural effusion cannot be excluded.", _vec("Pleural effusion")),
    ("No significant change in the pleural effusion.", _vec("Pleural effusion")),
    # Qualifiers that belong to another organ.
    ("Pleural thickening and pericardial effusion.", _vec("Pericardial effusion")),
    ("Fluid in the pericardial space reaching 12 mm.", _vec("Pericardial effusion")),
    ("A 9 mm hypodense nodule in the left thyroid lobe.", _vec()),
    ("Subcutaneous emphysema in the right chest wall.", _vec()),
    ("Interventricular septal thickening.", _vec()),
]


@pytest.mark.parametrize("text,expected", NEGATION_TRAPS, ids=[t for t, _ in NEGATION_TRAPS])
def test_negation_traps(text, expected):
    assert label_report(text).tolist() == expected


REAL_STYLE = [
    ("Calcified atherosclerotic plaques in the aorta and coronary arteries.",
     _vec("Arterial wall calcification", "Coronary artery wall calcification")),
    ("Cardiac enlargement.", _vec("Cardiomegaly")),
    ("Heart size increased.", _vec("Cardiomegaly")),
    ("Ground-glass opacities in both lower lobes.", _vec("Lung opacity")),
    ("Air-space consolidation in the right lower lobe.", _vec("Consolidation")),
    ("Minimal pleural fluid on the left.", _vec("Pleural effusion")),
    ("Subsegmental atelectasis in the lingula.", _vec("Atelectasis")),
    ("Fibrotic bands in both upper lobes.", _vec("Pulmonary fibrotic sequela")),
    ("Sequelae fibrotic changes in the right lung apex.", _vec("Pulmonary fibrotic sequela")),
    ("Mosaic perfusion pattern in both lungs.", _vec("Mosaic attenuation pattern")),
    ("Hiatus hernia.", _vec("Hiatal hernia")),
    ("Sliding type hiatal hernia was observed at the lower end of the esophagus.", _vec("Hiatal hernia")),
    ("Pathologically enlarged lymph nodes in the subcarinal region.", _vec("Lymphadenopathy")),
    ("Mediastinal lymph nodes with a short axis of 15 mm.", _vec("Lymphadenopathy")),
    ("Emphysematous changes in both upper lobes.", _vec("Emphysema")),
    ("Bulla in the left upper lobe apex.", _vec("Emphysema")),
    ("There are mild bronchiectatic changes in both lungs.", _vec("Bronchiectasis")),
    ("Septal thickening in the lung bases.", _vec("Interlobular septal thickening")),
    ("Peribronchial and interlobular septal thickening.", _vec("Peribronchial thickening", "Interlobular septal thickening")),
    ("Thickening of the bronchial wall in the bilateral lower lobes.", _vec("Peribronchial thickening")),
    ("Pacemaker with leads in the right heart.", _vec("Medical material")),
    ("Port catheter in the right anterior chest wall.", _vec("Medical material")),
    ("Sternotomy wires are seen.", _vec("Medical material")),
    ("Stent in the left anterior descending artery.", _vec("Medical material")),
    ("Nodular opacity of 8 mm in the right upper lobe.", _vec("Lung nodule")),
    ("Crazy paving pattern in the left lower lobe.", _vec("Lung opacity", "Interlobular septal thickening")),
    ("Fibroatelectatic changes in the lingula.", _vec("Atelectasis", "Pulmonary fibrotic sequela")),
    ("Air trapping in both lower lobes.", _vec("Mosaic attenuation pattern")),
    # CT-RATE's boilerplate normal report: nothing.
    ("Trachea, both main bronchi are open. Mediastinal main vascular structures, heart contour, size are normal. "
     "Thoracic aorta diameter is normal. Pericardial effusion-thickening was not observed. Thoracic esophagus "
     "calibration was normal and no significant tumoral wall thickening was detected. No enlarged lymph nodes in "
     "prevascular, pre-paratracheal, subcarinal or bilateral hilar-axillary pathological dimensions were detected. "
     "When examined in the lung parenchyma window; Aeration of both lung parenchyma is normal and no nodular or "
     "infiltrative lesion is detected in the lung parenchyma. Pleural effusion-thickening was not detected. Upper "
     "abdominal organs included in the sections are normal. No space-occupying lesion was detected in the liver "
     "that entered the cross-sectional area. Bilateral adrenal glands were normal and no space-occupying lesion was "
     "detected.", _vec()),
    # CT-RATE-style abnormal report.
    ("Trachea, both main bronchi are open. Calcific plaques are observed in the aortic arch. Other mediastinal main "
     "vascular structures, heart contour, size are normal. Pericardial effusion-thickening was not observed. "
     "In the mediastinum, lymph nodes with short axes below 1 cm that did not reach pathological dimensions were "
     "observed. When examined in the lung parenchyma window; Linear atelectasis is present in both lung parenchyma. "
     "Subsegmental atelectasis is observed in the right middle lobe. Thickening of the bronchial wall and "
     "peribronchial budding tree-like reticulonodular densities are observed in the bilateral lower lobes. "
     "Peribronchial minimal consolidation is seen in the lower lobes.",
     _vec("Arterial wall calcification", "Atelectasis", "Peribronchial thickening", "Consolidation")),
]


@pytest.mark.parametrize("text,expected", REAL_STYLE, ids=[t[:60] for t, _ in REAL_STYLE])
def test_real_style_sentences(text, expected):
    assert label_report(text).tolist() == expected


def test_api_edges():
    assert LABELS == CT_RATE_LABELS
    assert label_report("").tolist() == [0] * 18
    assert label_report(None).tolist() == [0] * 18
    assert label_report(float("nan")).tolist() == [0] * 18
    assert label_reports([]).shape == (0, 18)
    out = label_reports(["Cardiomegaly.", "No cardiomegaly."])
    assert out.dtype == np.int64 and out[:, LABELS.index("Cardiomegaly")].tolist() == [1, 0]
    # "1.5 mm" is not a sentence break; "lobe.There" is.
    assert labeler.split_sentences("A 1.5 mm nodule.No effusion") == ["a 1.5 mm nodule", "no effusion"]


def test_thousand_reports_are_fast():
    texts, _ = _generated(1000, seed=33)
    labeler._label_sentence.cache_clear()
    t = time.perf_counter()
    label_reports(texts)
    # ~0.3 s on a busy 2-core machine; the bound only catches a pathological slowdown.
    assert time.perf_counter() - t < 5.0

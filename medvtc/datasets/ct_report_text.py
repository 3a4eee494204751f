"""Radiology reports for synthetic chest CTs, in the style of CT-RATE's English reports.

`write_report(case, rng) -> (findings, impression)` writes the Findings_EN and Impressions_EN of
a case drawn by `medvtc.datasets.ct_phantom.sample_case`. CT-RATE reports (Hamamci et al.,
ibrahimethemhamamci/CT-CLIP) are translated Turkish reports with a fixed anatomical order -
trachea and bronchi, mediastinum (vessels, heart, pericardium, oesophagus), lymph nodes, lung
parenchyma, pleura, upper abdomen and bones - mentioning positives with their size, lobe and
side, and negating many of the absent findings explicitly ("Pericardial effusion-thickening was
not observed.", "No mediastinal or hilar lymphadenopathy."). The templates follow that, with
several phrasings per sentence, a varied subset of negations (some covering two findings at
once, "No pleural or pericardial effusion."), and distractors a labeler must not count (a
thyroid nodule, "lymph nodes of non-pathological size").

Everything depends only on `case` and the draws from `rng`, so a report is reproducible.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["write_report", "NORMAL_IMPRESSIONS"]

NORMAL_IMPRESSIONS: tuple[str, ...] = (
    "No acute cardiopulmonary pathology.",
    "Normal chest CT.",
    "No significant pathological finding was detected in the thorax.",
    "Unremarkable non-contrast chest CT.",
)

Attrs = dict[str, Any]


def _choose(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _join(items: Sequence[str]) -> str:
    """['a'] -> 'a'; ['a', 'b'] -> 'a and b'; ['a', 'b', 'c'] -> 'a, b and c'."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _lobe(rng: np.random.Generator, lobe: str) -> str:
    """'right upper lobe' in one of CT-RATE's phrasings ('upper lobe of the right lung', ...)."""
    side, level, _ = lobe.split()
    return _choose(rng, (f"the {lobe}", f"the {level} lobe of the {side} lung", f"the {side} lung {level} lobe"))


def _lobes(rng: np.random.Generator, lobes: Sequence[str]) -> str:
    if len(lobes) == 1:
        return _lobe(rng, lobes[0])
    sides = {lobe.split()[0] for lobe in lobes}
    if len(sides) == 1 and rng.random() < 0.5:
        side = next(iter(sides))
        return f"the {_join([lobe.split()[1] for lobe in lobes])} lobes of the {side} lung"
    return "the " + _join(list(lobes))


# --------------------------------------------------------------------------------------------
# Positive sentences: one function per label, (attrs, rng) -> sentence
# --------------------------------------------------------------------------------------------

_MATERIAL = {
    "pacemaker": (
        "A cardiac pacemaker is present in the left pectoral region, with its leads extending into the right heart chambers.",
        "Pacemaker generator in the left anterior chest wall; its leads terminate in the right atrium and right ventricle.",
        "A pacemaker device is observed in the left infraclavicular subcutaneous tissue.",
    ),
    "port catheter": (
        "A port catheter is present in the right anterior chest wall, its tip at the cavoatrial junction.",
        "Port catheter in the right pectoral region, with the catheter extending into the superior vena cava.",
        "A subcutaneous venous port is observed on the right, with its catheter tip in the superior vena cava.",
    ),
    "sternotomy wires": (
        "Sternotomy wires are observed.",
        "Median sternotomy with sternal cerclage wires.",
        "Sternal wires consistent with previous median sternotomy are seen.",
    ),
    "central venous catheter": (
        "A central venous catheter is seen, with its tip in the superior vena cava.",
        "Right jugular central venous catheter with its tip at the cavoatrial junction.",
    ),
}


def _medical_material(a: Attrs, rng) -> str:
    return _choose(rng, _MATERIAL[a["kind"]])


_AORTIC_SITE_TEXT = {
    "ascending aorta": "ascending aorta",
    "aortic arch": "aortic arch",
    "descending aorta": "descending thoracic aorta",
    "supra-aortic arteries": "supra-aortic arterial branches",
}


def _aortic_sites(a: Attrs) -> str:
    return "the " + _join([_AORTIC_SITE_TEXT[s] for s in a["sites"]])


def _arterial_calcification(a: Attrs, rng) -> str:
    sites = _aortic_sites(a)
    amount = _choose(rng, {"mild": ("a few ", "mild ", "scattered "), "moderate": ("", "moderate "),
                           "extensive": ("extensive ", "diffuse ", "marked ")}[a["extent"]])
    return _cap(_choose(rng, (
        f"{amount}calcific atherosclerotic plaques are observed in {sites}.",
        f"{amount}atherosclerotic calcifications are seen in the walls of {sites}.",
        f"{amount}calcified atheroma plaques in {sites}.",
        f"there are {amount}calcified plaques in {sites}.",
        f"{amount}atherosclerotic changes with wall calcification in {sites}.",
    )))


_CORONARY_TEXT = {
    "left main": "left main coronary artery",
    "left anterior descending": "left anterior descending artery",
    "circumflex": "circumflex artery",
    "right coronary": "right coronary artery",
}
_CORONARY_SHORT = {"left main": "LMCA", "left anterior descending": "LAD", "circumflex": "Cx", "right coronary": "RCA"}


def _coronary_calcification(a: Attrs, rng) -> str:
    names = _join([_CORONARY_TEXT[v] for v in a["vessels"]])
    short = ", ".join(_CORONARY_SHORT[v] for v in a["vessels"])
    return _choose(rng, (
        f"Calcifications are observed in the {names}.",
        f"Coronary artery calcifications are seen ({short}).",
        f"Calcified plaques in the coronary arteries, involving the {names}.",
        f"Coronary artery wall calcification is present in the {names}.",
        f"Atherosclerotic calcification of the coronary arteries ({short}).",
    ))


def _cardiomegaly(a: Attrs, rng) -> str:
    adv = {"mild": "mildly", "moderate": "moderately", "marked": "markedly"}[a["degree"]]
    return _choose(rng, (
        "Cardiomegaly is observed.",
        f"The heart is {adv} enlarged.",
        "Heart size is increased.",
        f"{_cap(a['degree'])} cardiomegaly.",
        "Cardiac enlargement is noted.",
        f"Heart dimensions are {adv} increased.",
    ))


def _pericardial_effusion(a: Attrs, rng) -> str:
    t, amount = a["thickness_mm"], a["amount"]
    return _choose(rng, (
        f"Pericardial effusion reaching {t} mm in thickness is observed.",
        f"A {amount} pericardial effusion ({t} mm) is present.",
        f"Fluid measuring {t} mm in thickness is seen in the pericardial space.",
        f"{_cap(amount)} pericardial effusion with a maximum thickness of {t} mm.",
    ))


def _hiatal_hernia(a: Attrs, rng) -> str:
    size = a["size"]
    return _choose(rng, (
        f"A {size} hiatal hernia is observed.",
        f"{_cap(size)} sliding type hiatal hernia.",
        f"Hiatus hernia ({size}) is seen.",
        f"A {size} herniation of the stomach through the esophageal hiatus is seen.",
    ))


_STATION_TEXT = {
    "right paratracheal": "right paratracheal",
    "prevascular": "prevascular",
    "aortopulmonary window": "aortopulmonary window",
    "subcarinal": "subcarinal",
    "right hilar": "right hilar",
    "left hilar": "left hilar",
}


def _lymphadenopathy(a: Attrs, rng) -> str:
    st = _join([_STATION_TEXT[s] for s in a["stations"]])
    s = a["short_axis_mm"]
    return _choose(rng, (
        f"Lymph nodes of pathological size are observed in the {st} stations, the largest measuring {s} mm in short axis.",
        f"Enlarged lymph nodes in the {st} region, up to {s} mm.",
        f"{_cap(st)} lymphadenopathy with a short axis of {s} mm.",
        f"Pathologically enlarged lymph nodes ({s} mm) are seen in the {st} areas.",
        f"A conglomerate of enlarged lymph nodes measuring {s} mm in short axis in the {st} region.",
    ))


def _emphysema(a: Attrs, rng) -> str:
    ext, typ = a["extent"], a["type"]
    where = {"centrilobular": "predominantly in the upper lobes", "paraseptal": "in the subpleural areas",
             "panlobular": "predominantly in the lower lobes"}[typ]
    return _choose(rng, (
        f"{_cap(ext)} {typ} emphysematous changes are observed in both lungs.",
        f"{_cap(typ)} emphysema, {ext}, {where}.",
        f"Emphysema of {typ} type is seen {where}.",
        f"There are {ext} {typ} emphysematous areas {where}.",
    ))


def _atelectasis(a: Attrs, rng) -> str:
    lobe = _lobe(rng, a["lobe"])
    kind = a["kind"]
    kind_txt = {"subsegmental": "subsegmental", "linear": _choose(rng, ("linear", "plate-like")), "segmental": "segmental"}[kind]
    return _choose(rng, (
        f"{_cap(kind_txt)} atelectasis is observed in {lobe}.",
        f"{_cap(kind_txt)} atelectatic changes in {lobe}.",
        f"Atelectasis ({kind_txt}) is seen in {lobe}.",
    ))


def _lung_nodule(a: Attrs, rng) -> str:
    lobe = _lobe(rng, a["lobe"])
    size, count, kind = a["size_mm"], a.get("count", 1), a.get("kind", "solid")
    if count > 1:
        return _choose(rng, (
            f"Multiple nodules are seen in both lungs, the largest measuring {size} mm in {lobe}.",
            f"{count} nodules were detected, the largest being a {size} mm {kind} nodule in {lobe}.",
            f"Several {kind} nodules, the largest {size} mm in diameter, located in {lobe}.",
        ))
    return _choose(rng, (
        f"A {size} mm {kind} nodule is observed in {lobe}.",
        f"Nodule measuring {size} mm in {lobe}.",
        f"A {kind} nodule of {size} mm in diameter is seen in {lobe}.",
        f"In {lobe}, a {kind} nodular lesion of {size} mm is observed.",
    ))


def _lung_opacity(a: Attrs, rng) -> str:
    lobes = _lobes(rng, a["lobes"])
    patchy = "patchy " if "patchy" in a["pattern"] else ""
    return _choose(rng, (
        f"{_cap(patchy)}ground-glass opacities are observed in {lobes}.",
        f"Areas of {patchy}ground glass density in {lobes}.",
        f"{_cap(patchy)}ground glass densities are seen in {lobes}.",
        f"There are {patchy}ground-glass opacity areas in {lobes}.",
    ))


def _fibrotic(a: Attrs, rng) -> str:
    lobe = _lobe(rng, a["lobe"])
    kind = a["kind"]
    return {
        "fibrotic bands": _choose(rng, (f"Fibrotic bands are observed in {lobe}.",
                                        f"Fibrotic strands extending to the pleura in {lobe}.")),
        "fibrotic sequelae": _choose(rng, (f"Sequelae fibrotic changes in {lobe}.", f"Fibrotic sequelae are seen in {lobe}.")),
        "parenchymal bands": _choose(rng, (f"Parenchymal bands consistent with fibrotic sequelae in {lobe}.",
                                           f"Linear fibrotic densities in {lobe}.")),
    }[kind]


def _pleural_effusion(a: Attrs, rng) -> str:
    side, amount, t = a["side"], a["amount"], a["thickness_mm"]
    if side == "bilateral":
        return _choose(rng, (
            f"Bilateral pleural effusion, {amount}, up to {t} mm thick.",
            f"{_cap(amount)} bilateral pleural effusions are observed, measuring up to {t} mm.",
            f"Pleural effusion is seen in both hemithoraces, reaching {t} mm in thickness.",
        ))
    return _choose(rng, (
        f"A {amount} {side} pleural effusion with a thickness of {t} mm is observed.",
        f"{_cap(amount)} pleural effusion on the {side} side, measuring {t} mm at its thickest.",
        f"Pleural effusion reaching {t} mm in thickness is seen in the {side} hemithorax.",
        f"{_cap(side)} pleural effusion ({amount}, {t} mm).",
    ))


def _mosaic(a: Attrs, rng) -> str:
    ext = a["extent"]
    return _choose(rng, (
        "Mosaic attenuation pattern is observed in both lungs.",
        f"{_cap(ext)} mosaic attenuation in both lungs.",
        "Mosaic perfusion pattern is seen in both lung parenchyma.",
    ))


def _peribronchial(a: Attrs, rng) -> str:
    where = "in both lungs" if a["distribution"] == "bilateral" else "in both lower lobes"
    return _choose(rng, (
        f"Peribronchial thickening is observed {where}.",
        f"Bronchial wall thickening {where}.",
        f"Thickening of the bronchial walls is seen {where}.",
        f"Peribronchial thickenings {where}.",
    ))


def _consolidation(a: Attrs, rng) -> str:
    lobe = _lobe(rng, a["lobe"])
    if a.get("air_bronchograms", False):
        return _choose(rng, (
            f"Consolidation with air bronchograms is observed in {lobe}.",
            f"A consolidated area containing air bronchograms is seen in {lobe}.",
            f"Air-space consolidation with air bronchograms in {lobe}.",
        ))
    return _choose(rng, (
        f"Consolidation is observed in {lobe}.",
        f"Air-space consolidation in {lobe}.",
        f"A consolidated area is seen in {lobe}.",
    ))


def _bronchiectasis(a: Attrs, rng) -> str:
    lobes = _lobes(rng, a["lobes"])
    typ = a["type"]
    return _choose(rng, (
        f"{_cap(typ)} bronchiectasis is observed in {lobes}.",
        f"Bronchiectatic changes in {lobes}.",
        f"Dilated bronchi ({typ} bronchiectasis) are seen in {lobes}.",
    ))


def _septal(a: Attrs, rng) -> str:
    where = {"lower zones": "in the lower zones of both lungs", "subpleural": "in the subpleural areas",
             "diffuse": "diffusely in both lungs"}[a["distribution"]]
    return _choose(rng, (
        f"Interlobular septal thickening is observed {where}.",
        f"Thickening of the interlobular septa {where}.",
        f"Smooth interlobular septal thickening {where}.",
    ))


_POSITIVE: dict[str, Callable[[Attrs, np.random.Generator], str]] = {
    "Medical material": _medical_material,
    "Arterial wall calcification": _arterial_calcification,
    "Cardiomegaly": _cardiomegaly,
    "Pericardial effusion": _pericardial_effusion,
    "Coronary artery wall calcification": _coronary_calcification,
    "Hiatal hernia": _hiatal_hernia,
    "Lymphadenopathy": _lymphadenopathy,
    "Emphysema": _emphysema,
    "Atelectasis": _atelectasis,
    "Lung nodule": _lung_nodule,
    "Lung opacity": _lung_opacity,
    "Pulmonary fibrotic sequela": _fibrotic,
    "Pleural effusion": _pleural_effusion,
    "Mosaic attenuation pattern": _mosaic,
    "Peribronchial thickening": _peribronchial,
    "Consolidation": _consolidation,
    "Bronchiectasis": _bronchiectasis,
    "Interlobular septal thickening": _septal,
}

# --------------------------------------------------------------------------------------------
# Negations: (labels the sentence negates, phrasings). A sentence is used only when every
# label it names is absent; a label is negated at most once per report.
# --------------------------------------------------------------------------------------------

_NEGATIONS: dict[str, list[tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "mediastinum": [
        (("Cardiomegaly",), ("Heart size is normal.", "Heart size is within normal limits.", "The heart is not enlarged.",
                             "No cardiomegaly.", "Heart contour and size are normal.")),
        (("Pericardial effusion",), ("Pericardial effusion-thickening was not observed.", "No pericardial effusion was observed.",
                                     "No pericardial effusion.", "There is no pericardial fluid.")),
        (("Cardiomegaly", "Pericardial effusion"), ("Heart size is normal and no pericardial effusion is seen.",
                                                    "No cardiomegaly or pericardial effusion.")),
        (("Arterial wall calcification",), ("No atherosclerotic calcification was detected in the thoracic aorta.",
                                            "The thoracic aorta is of normal caliber without calcified plaques.")),
        (("Coronary artery wall calcification",), ("No calcification was observed in the coronary arteries.",
                                                   "No coronary artery calcification.")),
        (("Arterial wall calcification", "Coronary artery wall calcification"),
         ("No calcific atherosclerotic changes in the aorta or coronary arteries.",)),
        (("Hiatal hernia",), ("No hiatal hernia.",
                              "Thoracic esophagus calibration was normal and no hiatal hernia was detected.")),
    ],
    "lymph": [
        (("Lymphadenopathy",), (
            "No mediastinal or hilar lymphadenopathy.",
            "No enlarged lymph nodes in prevascular, pre-paratracheal, subcarinal or bilateral hilar-axillary "
            "pathological dimensions were detected.",
            "Lymph nodes of non-pathological size are seen in the mediastinum.",
            "Millimetric lymph nodes were observed in the mediastinum, without pathological enlargement.",
            "No lymph node was observed in pathological size and appearance in the mediastinal and hilar regions.",
        )),
    ],
    "lungs": [
        (("Lung nodule",), ("No nodule or mass was detected in both lungs.", "No pulmonary nodules.",
                            "There is no nodular lesion in either lung.")),
        (("Lung nodule", "Lung opacity"),
         ("Aeration of both lungs is normal and no nodular or infiltrative lesion is detected in the lung parenchyma.",)),
        (("Lung opacity",), ("No ground-glass opacity.", "No infiltrative lesion was detected in the lung parenchyma.")),
        (("Consolidation",), ("No consolidation.", "No consolidation was observed in either lung.")),
        (("Consolidation", "Lung opacity"), ("No consolidation or ground-glass opacity.",
                                             "No pneumonic infiltration or consolidation is seen.")),
        (("Emphysema",), ("No emphysematous changes.", "No emphysema.")),
        (("Atelectasis",), ("No atelectasis.", "There is no atelectasis.")),
        (("Pulmonary fibrotic sequela",), ("No fibrotic changes.", "No fibrotic sequelae are seen.")),
        (("Bronchiectasis",), ("No bronchiectasis.", "Bronchiectasis was not observed.")),
        (("Peribronchial thickening",), ("No peribronchial thickening.", "Bronchial walls are of normal thickness.")),
        (("Interlobular septal thickening",), ("No interlobular septal thickening.",)),
        (("Mosaic attenuation pattern",), ("No mosaic attenuation.", "Mosaic attenuation pattern is not seen.")),
    ],
    "pleura": [
        (("Pleural effusion",), ("No pleural effusion.", "Pleural effusion-thickening was not detected.",
                                 "There is no pleural effusion or pneumothorax.")),
        (("Pleural effusion", "Pericardial effusion"), ("No pleural or pericardial effusion.",
                                                        "Neither pleural nor pericardial effusion is seen.")),
        (("Pleural effusion", "Consolidation"), ("No pneumothorax, effusion or consolidation.",)),
    ],
}

# How often an absent finding is negated (CT-RATE reports nearly always state the pleura,
# pericardium, heart size and lymph nodes; rarer findings are negated less often).
_NEGATE_P = {
    "Pleural effusion": 0.85, "Pericardial effusion": 0.75, "Cardiomegaly": 0.75, "Lymphadenopathy": 0.8,
    "Lung nodule": 0.7, "Lung opacity": 0.45, "Consolidation": 0.45, "Hiatal hernia": 0.35,
    "Arterial wall calcification": 0.25, "Coronary artery wall calcification": 0.25, "Emphysema": 0.25,
    "Atelectasis": 0.25, "Pulmonary fibrotic sequela": 0.2, "Bronchiectasis": 0.2, "Peribronchial thickening": 0.15,
    "Interlobular septal thickening": 0.15, "Mosaic attenuation pattern": 0.1,
}

_FILLER = {
    "airways": ("Trachea and both main bronchi are patent.", "Trachea and main bronchi are open.",
                "The trachea and main bronchi are of normal caliber.",
                "Trachea and both main bronchi are open, no obstructive lesion."),
    "vessels": ("Mediastinal main vascular structures are of normal caliber.", "Thoracic aorta diameter is normal.",
                "Calibration of the thoracic main vascular structures is natural."),
    "esophagus": ("Thoracic esophagus calibration was normal and no significant tumoral wall thickening was detected.",
                  "The esophagus is unremarkable."),
    "lung_intro": ("When examined in the lung parenchyma window;", "In the lung parenchyma window:"),
    "lungs_clear": ("Both lungs are clear.", "Aeration of both lung parenchyma is normal.",
                    "Lung parenchyma is normally aerated."),
    "abdomen": ("Upper abdominal organs included in the sections are normal.",
                "No space-occupying lesion was detected in the liver that entered the cross-sectional area.",
                "Upper abdominal organs in the scan field are unremarkable.", "Bilateral adrenal glands were normal."),
    "bones": ("Bone structures in the study area are natural.", "Vertebral corpus heights are preserved.",
              "No lytic or destructive bone lesion."),
}
# Incidental findings outside the 18 labels: a labeler must not count them.
_DISTRACTORS = (
    "A hypodense nodule of 9 mm is seen in the left thyroid lobe.",
    "Degenerative osteophytes are present in the thoracic vertebrae.",
    "A simple cyst of 12 mm is seen in the liver.",
    "Calcified granuloma in the spleen.",
    "Hepatic steatosis.",
    "Costal cartilage calcifications.",
)

_SECTION_OF = {
    "Medical material": "mediastinum", "Arterial wall calcification": "mediastinum", "Cardiomegaly": "mediastinum",
    "Pericardial effusion": "mediastinum", "Coronary artery wall calcification": "mediastinum", "Hiatal hernia": "mediastinum",
    "Lymphadenopathy": "lymph", "Emphysema": "lungs", "Atelectasis": "lungs", "Lung nodule": "lungs", "Lung opacity": "lungs",
    "Pulmonary fibrotic sequela": "lungs", "Pleural effusion": "pleura", "Mosaic attenuation pattern": "lungs",
    "Peribronchial thickening": "lungs", "Consolidation": "lungs", "Bronchiectasis": "lungs",
    "Interlobular septal thickening": "lungs",
}
# Order of the mediastinal positives: vessels, heart, pericardium, coronaries, oesophagus, devices.
_MEDIASTINUM_ORDER = ("Arterial wall calcification", "Cardiomegaly", "Pericardial effusion",
                      "Coronary artery wall calcification", "Hiatal hernia", "Medical material")


def _negations(case: dict[str, Attrs], section: str, rng: np.random.Generator, negated: set[str]) -> list[str]:
    out = []
    for labels, phrases in _NEGATIONS[section]:
        if any(lab in case or lab in negated for lab in labels):
            continue
        p = float(np.mean([_NEGATE_P[lab] for lab in labels])) * (0.5 if len(labels) > 1 else 1.0)
        if rng.random() < p:
            out.append(_choose(rng, phrases))
            negated.update(labels)
    return out


def _impression(case: dict[str, Attrs], rng: np.random.Generator) -> str:
    if not case:
        return _choose(rng, NORMAL_IMPRESSIONS)
    parts: list[str] = []
    for label, a in case.items():
        if label == "Lung nodule":
            txt = (f"{a['size_mm']} mm nodule in the {a['lobe']}." if a.get("count", 1) == 1
                   else f"Multiple pulmonary nodules, the largest {a['size_mm']} mm in the {a['lobe']}.")
        elif label == "Pleural effusion":
            txt = f"{_cap(a['amount'])} {'bilateral' if a['side'] == 'bilateral' else a['side']} pleural effusion."
        elif label == "Pericardial effusion":
            txt = f"{_cap(a['amount'])} pericardial effusion."
        elif label == "Consolidation":
            txt = _choose(rng, (f"Consolidation in the {a['lobe']}.",
                                f"Consolidation in the {a['lobe']}, compatible with pneumonia."))
        elif label == "Atelectasis":
            txt = f"Atelectasis in the {a['lobe']}."
        elif label == "Lung opacity":
            txt = f"Ground-glass opacities in the {_join(a['lobes'])}."
        elif label == "Emphysema":
            txt = f"{_cap(a['type'])} emphysema."
        elif label == "Arterial wall calcification":
            txt = _choose(rng, ("Aortic atherosclerosis.", f"Atherosclerotic calcification of {_aortic_sites(a)}."))
        elif label == "Coronary artery wall calcification":
            txt = "Coronary artery calcification."
        elif label == "Cardiomegaly":
            txt = "Cardiomegaly."
        elif label == "Hiatal hernia":
            txt = "Hiatal hernia."
        elif label == "Lymphadenopathy":
            txt = "Hilar lymphadenopathy." if all("hilar" in s for s in a["stations"]) else "Mediastinal lymphadenopathy."
        elif label == "Medical material":
            txt = {"pacemaker": "Cardiac pacemaker.", "port catheter": "Port catheter in place.",
                   "sternotomy wires": "Post-sternotomy status with sternal wires.",
                   "central venous catheter": "Central venous catheter in place."}[a["kind"]]
        elif label == "Pulmonary fibrotic sequela":
            txt = f"Fibrotic sequelae in the {a['lobe']}."
        elif label == "Mosaic attenuation pattern":
            txt = "Mosaic attenuation pattern."
        elif label == "Peribronchial thickening":
            txt = "Peribronchial thickening."
        elif label == "Bronchiectasis":
            txt = "Bronchiectasis."
        else:
            txt = "Interlobular septal thickening."
        # Impressions summarise; minor findings are sometimes left to the findings section.
        if rng.random() < 0.85:
            parts.append(txt)
    if not parts:
        parts.append(_choose(rng, ("Findings as described above.",
                                   "No acute cardiopulmonary pathology other than the findings described above.")))
    return " ".join(parts)


def write_report(case: dict[str, Attrs], rng: np.random.Generator) -> tuple[str, str]:
    """(Findings_EN, Impressions_EN) for a case: positives with their attributes in anatomical
    order, a varied subset of explicit negations, and CT-RATE's boilerplate."""
    negated: set[str] = set()
    s: list[str] = [_choose(rng, _FILLER["airways"])]

    # Mediastinum, heart and vessels.
    if "Arterial wall calcification" not in case and rng.random() < 0.6:
        s.append(_choose(rng, _FILLER["vessels"]))
    done: set[str] = set()
    if "Arterial wall calcification" in case and "Coronary artery wall calcification" in case and rng.random() < 0.4:
        # Real reports often name the aorta and the coronaries in one sentence.
        a = case["Arterial wall calcification"]
        s.append(f"Atherosclerotic calcifications are observed in {_aortic_sites(a)} and in the coronary arteries.")
        done.update({"Arterial wall calcification", "Coronary artery wall calcification"})
    if "Cardiomegaly" in case and "Pericardial effusion" not in case and rng.random() < 0.25:
        s.append(_choose(rng, ("Heart size is increased; no pericardial effusion.",
                               "The heart is enlarged, without pericardial effusion.")))
        done.add("Cardiomegaly")
        negated.add("Pericardial effusion")
    for label in _MEDIASTINUM_ORDER:
        if label in case and label not in done:
            s.append(_POSITIVE[label](case[label], rng))
    s.extend(_negations(case, "mediastinum", rng, negated))
    if "Hiatal hernia" not in case and "Hiatal hernia" not in negated and rng.random() < 0.5:
        s.append(_choose(rng, _FILLER["esophagus"]))

    # Lymph nodes.
    if "Lymphadenopathy" in case:
        s.append(_lymphadenopathy(case["Lymphadenopathy"], rng))
    s.extend(_negations(case, "lymph", rng, negated))

    # Lung parenchyma (positives in a varied order), then the pleura.
    lung_pos = [lab for lab in case if _SECTION_OF[lab] == "lungs"]
    if rng.random() < 0.5:
        s.append(_choose(rng, _FILLER["lung_intro"]))
    if not lung_pos and rng.random() < 0.6:
        s.append(_choose(rng, _FILLER["lungs_clear"]))
    for idx in rng.permutation(len(lung_pos)):
        s.append(_POSITIVE[lung_pos[int(idx)]](case[lung_pos[int(idx)]], rng))
    s.extend(_negations(case, "lungs", rng, negated))
    if "Pleural effusion" in case:
        s.append(_pleural_effusion(case["Pleural effusion"], rng))
    elif "Pericardial effusion" in case and "Pleural effusion" not in negated and rng.random() < 0.3:
        # A negation and a positive in one sentence, split by "but".
        s.append("There is no pleural effusion, but pericardial effusion is present.")
        negated.add("Pleural effusion")
    s.extend(_negations(case, "pleura", rng, negated))

    # Upper abdomen and bones, with an occasional incidental finding.
    s.append(_choose(rng, _FILLER["abdomen"]))
    if rng.random() < 0.25:
        s.append(_choose(rng, _DISTRACTORS))
    s.append(_choose(rng, _FILLER["bones"]))
    return " ".join(s), _impression(case, rng)

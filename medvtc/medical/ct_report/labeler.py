"""Rule-based report labeler: chest-CT report text -> CT-RATE's 18 abnormality labels.

CT-RATE (Hamamci et al., ibrahimethemhamamci/CT-CLIP) labels its reports with a RadBERT
classifier fine-tuned on manual labels. That model is not shipped here, so clinical-efficacy
metrics (`medvtc.medical.ct_report.metrics`) use this labeler instead, in the spirit of the
CheXpert labeler and NegEx (Chapman et al. 2001): sentence splitting, per-label patterns
written from real radiology language, and negation cues with a scope.

Pipeline, per sentence (sentences are labelled independently and cached: real reports repeat
their boilerplate sentences thousands of times):

1. Normalise: lower case; "non-pathological" -> "nonpathological" (so "pathological" patterns
   cannot match it); other hyphens -> spaces ("ground-glass" -> "ground glass",
   "effusion-thickening" -> "effusion thickening"); pseudo-negations are rewritten so they do
   not negate ("cannot be excluded" -> "possible", "no significant change" -> "unchanged").
2. Mentions: (label, span) from each label's patterns, plus three label-specific readers:
   effusions (which of pleural/pericardial a given "effusion" or "fluid" belongs to, including
   coordinated qualifiers as in "no pleural or pericardial effusion"), vascular calcification
   (aorta vs coronary arteries, see below) and lymph nodes with a short axis >= 10 mm.
3. Negation: a mention is negated when
   * a pre-cue (no, not, without, absence of, negative for, free of, neither/nor, no evidence
     of ...) precedes it in the same scope, or
   * a post-cue (was not observed / detected / seen, is absent, has resolved, ruled out ...)
     follows it in the same scope, or
   * the matched text itself contains "not"/"no" ("the heart is not enlarged").
   Scopes end at sentence ends, ";", ":", contrast words (but, however, although, except, apart
   from, other than ...), "there is/are", and a positive assertion ("is seen", "are present",
   "was observed" ...). Commas continue a negated list ("No pneumothorax, effusion or
   consolidation.") unless the next part starts a new statement (starts with a determiner or a
   severity/quantity word, or asserts or locates something without being an or-list: "No
   consolidation, atelectasis in the left lower lobe." keeps the atelectasis); a post-cue reaches
   back over a comma only past a bare noun phrase, not past "X in the right lower lobe".
4. A label is 1 when any of its mentions in the report is not negated. Uncertain mentions
   ("possible consolidation", "cannot be excluded") count as positive, as CheXpert's U-ones
   policy does.

Label choices (how CT-RATE's labels co-occur, and where a phrase goes):
* Calcification or atherosclerosis in a sentence naming the coronary arteries (coronary, LAD,
  circumflex, RCA, left main) -> "Coronary artery wall calcification"; naming the aorta, its
  branches or arteries in general -> "Arterial wall calcification"; naming both -> both.
  Atherosclerosis or calcified plaques with no vessel named -> arterial wall (CT-RATE's catch-
  all for atherosclerosis). Calcification with no vessel and no atherosclerosis word (calcified
  nodule, lymph node, granuloma, costal cartilage, valve annulus) -> neither.
* "Effusion" with no qualifier is pleural; "fluid" counts only with a pleural or pericardial
  qualifier ("fluid in the pericardial space").
* "Nodular opacity" and "ground-glass nodule" -> Lung nodule only; nodules of the thyroid,
  adrenals, liver, spleen, kidneys, breast or skin -> nothing; "lung/pulmonary mass" -> nodule.
* Subcutaneous / mediastinal / interstitial emphysema (air in soft tissue) -> not Emphysema.
* "Fibroatelectatic" -> Atelectasis and Pulmonary fibrotic sequela; "crazy paving" -> Lung
  opacity and Interlobular septal thickening; "air trapping" -> Mosaic attenuation pattern;
  "air bronchograms" -> Consolidation; enlarged heart chambers -> Cardiomegaly.
* Medical material: any device or surgical material (pacemaker, port, catheter, stent, wires,
  sternotomy, clips, tubes, drains, prostheses, implants).
* "Lymph nodes of non-pathological size", "millimetric lymph nodes" -> not Lymphadenopathy.
"""

from __future__ import annotations

import functools
import re
from typing import Iterable

import numpy as np

from medvtc.datasets.ct_rate_layout import CT_RATE_LABELS

__all__ = ["LABELS", "label_report", "label_reports", "split_sentences"]

LABELS: tuple[str, ...] = CT_RATE_LABELS
_IDX = {label: i for i, label in enumerate(LABELS)}


def _rx(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns))


# --------------------------------------------------------------------------------------------
# Label patterns (on normalised text: lower case, hyphens as spaces, "non-" glued)
# --------------------------------------------------------------------------------------------

_PATTERNS: dict[str, re.Pattern[str]] = {
    "Medical material": _rx(
        r"\bpace ?makers?\b", r"\bports?\b", r"\bport a cath\b", r"\bchemoports?\b", r"\bcatheters?\b",
        r"\bstent(?:s|ed|ing)?\b", r"\bsternotomy\b", r"\bcerclage\b", r"\bwires?\b",
        r"\b(?:surgical|vascular|metallic|embolization|aneurysm) (?:clips?|coils?|materials?|sutures?|grafts?)\b",
        r"\bclips?\b", r"\bsutures?\b", r"\b(?:icd|defibrillator|cardiac device|loop recorder)\b",
        r"\b(?:endotracheal|tracheostomy|nasogastric|chest|thoracostomy|drainage|feeding) tubes?\b", r"\bdrains?\b",
        r"\bprosthe(?:sis|ses|tic)\b", r"\bimplants?\b", r"\bvalve replacement\b", r"\bforeign (?:body|bodies|material)\b",
        r"\bscrews?\b", r"\belectrodes?\b", r"\b(?:medical|surgical) (?:devices?|materials?)\b",
    ),
    "Cardiomegaly": _rx(
        r"\bcardiomegal\w*",
        r"\b(?:heart|cardiac) enlargement\b",
        r"\benlarge(?:d|ment of)(?: the)? (?:heart|cardiac (?:silhouette|contour|size|shadow))\b",
        r"\b(?:heart|cardiac) (?:size|sizes|dimensions?|diameters?|silhouette|contour|shadow|volume)"
        r"(?: (?:is|are|was|were|appears?|seems?))?(?: [a-z]+){0,2} (?:increased|enlarged|larger)\b",
        r"\bincrease(?:d|s)? (?:in )?(?:the )?(?:heart|cardiac) (?:size|sizes|dimensions?|diameters?|silhouette)\b",
        r"\bheart (?:is|was|appears?|seems?)(?: [a-z]+)? (?:enlarged|large|increased in size)\b",
        r"\bcardiothoracic ratio (?:is |was )?(?:increased|above|greater)\b",
        r"\b(?:left|right) (?:atri(?:um|al)|ventric(?:le|ular))(?: [a-z]+)? (?:enlargement|dilat\w+|enlarged)\b",
    ),
    "Hiatal hernia": _rx(
        r"\bhiat(?:al|us) hernia\w*", r"\bhiatal herniation\b", r"\bparaesophageal hernia\w*",
        r"\bsliding (?:type )?(?:hiatal )?hernia\w*", r"\bintrathoracic stomach\b", r"\bherniation of the stomach\b",
        r"\bhernia(?:tion)?(?: [a-z]+){0,4} (?:through|into|at|via) the (?:esophageal |oesophageal )?hiatus\b",
    ),
    "Lymphadenopathy": _rx(
        r"\blymphadenopath\w*", r"\badenopath\w*", r"\blymph node enlargement\b",
        r"\benlarged (?:[a-z]+ ){0,4}?(?:lymph )?nodes?\b",
        r"\blymph nodes?(?: [a-z,]+){0,8}? (?:of|in|with|at|reaching|showing) (?:a )?pathologic(?:al|ally)? "
        r"(?:size|sizes|dimensions?|diameters?|appearance|enlargement)\b",
        r"\bpathologic(?:al|ally)?(?: sized?| enlarged| dimensioned)? (?:[a-z]+ ){0,3}?lymph nodes?\b",
        r"\blymph nodes? (?:[a-z]+ ){0,4}?(?:is|are|was|were|appears?|appear) (?:pathologically )?enlarged\b",
        r"\b(?:bulky|conglomerate?s?)(?: of)? (?:[a-z]+ ){0,3}?(?:lymph )?nodes?\b",
    ),
    "Emphysema": _rx(r"\bemphysema\w*", r"\bbull(?:a|ae|ous)\b", r"\bblebs?\b"),
    "Atelectasis": _rx(
        r"\batelecta\w*", r"\bfibroatelecta\w*", r"\bdystelecta\w*",
        r"\b(?:lobar|segmental|subsegmental|lung|lobe) collapse\b", r"\bcollapsed? (?:[a-z]+ )?(?:lobe|lung|segment)\b",
    ),
    "Lung nodule": _rx(
        r"\b(?:micro)?nodul(?:e|es|ar|i)\b",
        r"\b(?:pulmonary|lung|parenchymal|spiculated) mass(?:es)?\b",
        r"\bmass(?:es)?(?: lesions?)? (?:[a-z]+ ){0,3}?(?:in|within|of) (?:the |both )?(?:[a-z]+ ){0,3}?(?:lobes?|lungs?)\b",
    ),
    "Lung opacity": _rx(
        r"\bground glass\b", r"\bopacit(?:y|ies)\b", r"\binfiltrat\w*", r"\bcrazy paving\b", r"\bggos?\b",
        r"\b(?:increased|patchy|hazy) (?:(?!mosaic\b)[a-z]+ )?(?:densit(?:y|ies)|attenuation)\b", r"\bdensity increases?\b",
    ),
    "Pulmonary fibrotic sequela": _rx(
        r"\bfibro(?:tic|sis|us|atelecta\w*|reticular|nodular)\w*", r"\bsequela\w*", r"\bparenchymal bands?\b",
        r"\b(?:parenchymal|pulmonary|lung|apical|linear) scar\w*", r"\bscarring\b", r"\bhoneycomb\w*",
    ),
    "Mosaic attenuation pattern": _rx(r"\bmosaic\b", r"\bair trapping\b"),
    "Peribronchial thickening": _rx(
        r"\bperibronchial\b(?=[a-z ,/]{0,40}\bthicken)", r"\bperibronchial (?:cuffing|thickenings?)\b",
        r"\bbronchial wall thickenings?\b", r"\bthicken(?:ing|ed)(?: of)?(?: the)? bronch(?:ial|us|i)(?: [a-z]+)? walls?\b",
        r"\bbronchial walls? (?:(?:is|are|was|were) )?(?:[a-z]+ )?thickened\b",
        r"\bperi ?bronchovascular (?:[a-z]+ )?thickening\b",
    ),
    "Consolidation": _rx(r"\bconsolidat\w*", r"\bair ?space (?:disease|opacit\w+|opacification)\b", r"\bair bronchograms?\b"),
    "Bronchiectasis": _rx(
        r"\bbronchiecta\w*", r"\bbronchiolecta\w*", r"\bbronch\w* dilat\w*",
        r"\bdilat\w* (?:of )?(?:the )?bronch(?:i|us|ial|ioles)\b",
    ),
    "Interlobular septal thickening": _rx(
        r"\b(?:interlobular )?septal (?:lines?|thickenings?)\b", r"\binterlobular\b(?=[a-z ,/]{0,40}\bthicken)",
        r"\bthicken(?:ing|ed)(?: of)?(?: the)? (?:interlobular )?sept(?:a|ae|al lines)\b",
        r"\binterlobular sept(?:a|ae|um) (?:(?:is|are|was|were) )?(?:[a-z]+ )?thickened\b", r"\bkerley\b", r"\bcrazy paving\b",
    ),
}

# Context that cancels a mention (window before/after the match, same sentence).
_NOT_LUNG_ORGAN = re.compile(
    r"\b(?:thyroid|adrenal|liver|hepatic|renal|kidneys?|spleen|splenic|breasts?|pancrea\w*|skin|subcutaneous|cutaneous|lymph)\b"
)
_NOT_LUNG_EMPHYSEMA = re.compile(r"\b(?:subcutaneous|mediastinal|interstitial|soft tissue|surgical)\s+$")
_NOT_SEPTAL = re.compile(r"\b(?:ventricular|atrial|interventricular|interatrial|nasal)\s+(?:[a-z]+\s+)?$")

# --------------------------------------------------------------------------------------------
# Negation and scope
# --------------------------------------------------------------------------------------------

_PRE = re.compile(
    r"\b(?:no|not|without|absence of|negative for|free of|neither|nor|never|rather than)\b"
)
_POST = re.compile(
    r"\b(?:(?:is|are|was|were|has been|have been|could be|can be|has|have|did|does|do)\s+)?(?:not|n't)\s+(?:been\s+)?"
    r"(?:seen|observed|detected|identified|present|noted|visuali[sz]ed|evident|demonstrated|found|appreciated|shown|"
    r"depicted|revealed|apparent|visible|delineated|encountered|monitored)\b"
    r"|\b(?:is|are|was|were)\s+(?:absent|excluded|ruled out|resolved)\b|\b(?:has|have)\s+(?:resolved|disappeared)\b"
    r"|\bruled out\b|\bexcluded\b"
)
_STARTER = (r"(?:the|a|an|there|mild|mildly|minimal|moderate|moderately|marked|markedly|severe|several|multiple|small|large|"
            r"extensive|few|some|no|not)")
_ASSERT = re.compile(
    r"\b(?:is|are|was|were|has been|have been|appears?|seems?)\s+(?:[a-z]+ly\s+)?"
    r"(?:seen|present|noted|observed|detected|identified|"
    r"visuali[sz]ed|evident|demonstrated|found|revealed|shown|depicted|increased|enlarged|thickened|dilated|consistent|"
    r"suggestive|compatible|likely)\b"
)
_HARD = re.compile(
    r";|:|\b(?:but|however|although|though|whereas|while|except|apart from|aside from|other than|besides|nevertheless|yet|"
    r"which|there (?:is|are|was|were))\b|\band (?=" + _STARTER + r"\b)"
)
_STARTS_STATEMENT = re.compile(r"^\s*" + _STARTER + r"\b")
_LIST_WORD = re.compile(r"\b(?:or|nor)\b")
_LOCATIVE = re.compile(r"\b(?:in|on|at|within|involving|measuring|of) (?:the|both)\b|\d+(?:\.\d+)?\s*(?:mm|cm)\b")

_PSEUDO = [
    (re.compile(r"\b(?:can ?not|could not|can't|couldn't|may not|not) be (?:ruled out|excluded)\b"), "possible"),
    (re.compile(r"\bnot excluded\b"), "possible"),
    (re.compile(r"\bno (?:significant |interval |marked )?(?:change|increase|decrease|progression|regression)\b"), "unchanged"),
    (re.compile(r"\bnot only\b"), "also"),
    (re.compile(r"\bnot significantly changed\b"), "unchanged"),
]


def _normalise(text: str) -> str:
    t = text.lower()
    t = re.sub(r"[\u2010-\u2015\u2212]", "-", t)
    t = re.sub(r"\bnon[- ]+(?=[a-z])", "non", t)
    t = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", t)
    for rx, rep in _PSEUDO:
        t = rx.sub(rep, t)
    return re.sub(r"\s+", " ", t).strip()


_SPLIT = re.compile(r"(?<=[.!?;])\s+|(?<=[a-z)\]][.;])(?=[a-z])|\n+")


def split_sentences(text: str) -> list[str]:
    """Sentences of a report (normalised). A period splits only before space or a letter, so
    "1.5 mm" stays whole; ";" splits too (CT-RATE: "... lung parenchyma window; Aeration ...")."""
    return [s.strip(" .") for s in _SPLIT.split(_normalise(text)) if s.strip(" .")]


class _Scope:
    """Where negation scopes end inside one sentence."""

    def __init__(self, s: str) -> None:
        self.words = sorted(m.start() for m in _HARD.finditer(s))  # punctuation and contrast words
        self.hard = sorted(set(self.words) | {m.start() for m in _ASSERT.finditer(s)})
        # Comma flags: fwd = a pre-cue's scope stops here; bwd = a post-cue's scope stops here.
        self.commas: list[tuple[int, bool, bool]] = []
        self.new_statement: list[int] = []  # commas followed by a determiner/quantity/negation word
        positions = [m.start() for m in re.finditer(",", s)]
        cuts = sorted(set(positions) | set(self.hard) | {len(s)})
        prev = 0
        for p in positions:
            nxt = next(c for c in cuts if c > p)
            after = s[p + 1:nxt]
            before = s[prev:p]
            starts = bool(_STARTS_STATEMENT.match(after))
            if starts:
                self.new_statement.append(p)
            fwd = starts or (
                bool(_ASSERT.search(after) or _LOCATIVE.search(after)) and not _LIST_WORD.search(after)
            )
            bwd = bool(_STARTS_STATEMENT.match(before)) or bool(_ASSERT.search(before)) or bool(_LOCATIVE.search(before))
            self.commas.append((p, fwd, bwd))
            prev = p + 1

    def open_between(self, a: int, b: int, forward: bool) -> bool:
        """True when nothing between positions a < b stops a scope travelling that way."""
        if any(a <= h < b for h in self.hard):
            return False
        for p, fwd, bwd in self.commas:
            if a <= p < b and (fwd if forward else bwd):
                return False
        return True


# --------------------------------------------------------------------------------------------
# Label-specific readers
# --------------------------------------------------------------------------------------------

_EFFUSION_NOUN = re.compile(
    r"\beffusions?\b|\bfluid\b|\bhydrothora\w*|\bhemothora\w*|\bhaemothora\w*|\bhydropericard\w*|\bhemopericard\w*"
)
_QUAL_CHAIN = re.compile(r"((?:pleural|pericardial)(?:\s*(?:,|/|or|and|and/or)\s*(?:pleural|pericardial))*)\s*$")
_QUAL_THICK = re.compile(r"(pleural|pericardial)\s+thickenings?\s*(?:,|/|or|and)\s*$")
_QUAL_AFTER = re.compile(
    r"^[^,;:]{0,50}?\b(?:in|within|into|of) (?:the |both )?(?:(?:right|left|bilateral) )?(pleura\w*|pericard\w*|hemithora\w*)\b"
)


def _effusion_mentions(s: str) -> list[tuple[int, int, int]]:
    out = []
    for m in _EFFUSION_NOUN.finditer(s):
        noun = m.group()
        if noun.startswith(("hydrothora", "hemothora", "haemothora")):
            out.append((_IDX["Pleural effusion"], m.start(), m.end()))
            continue
        if noun.startswith(("hydropericard", "hemopericard")):
            out.append((_IDX["Pericardial effusion"], m.start(), m.end()))
            continue
        before = s[max(0, m.start() - 60):m.start()]
        quals, start = [], m.start()
        chain = _QUAL_CHAIN.search(before) or _QUAL_THICK.search(before)
        if chain:
            quals = re.findall(r"pleural|pericardial", chain.group(1))
            start = m.start() - len(before) + chain.start()
        else:
            after = _QUAL_AFTER.match(s[m.end():m.end() + 80])
            if after:
                quals = ["pericardial" if after.group(1).startswith("pericard") else "pleural"]
            elif noun.startswith("effusion"):
                quals = ["pleural"]  # an unqualified effusion on chest CT is pleural
        for q in set(quals):
            out.append((_IDX["Pleural effusion" if q == "pleural" else "Pericardial effusion"], start, m.end()))
    return out


_CALC_TERM = re.compile(r"\b(?:atheroscleros\w*|atherosclerotic|atherom\w*|calcif\w*|calcific|plaques?)\b")
_ATHERO = re.compile(r"atherom|atheroscl|plaque")
_CORONARY_SITE = re.compile(
    r"\b(?:coronary|coronaries|lad|rca|lcx|lmca|cx|circumflex|left main|left anterior descending|obtuse marginal|diagonal)\b"
    r"(?:\s+(?:coronary\s+)?(?:arter(?:y|ies)|branch(?:es)?))?"
)
_OTHER_SITE = re.compile(
    r"\baort\w*|\barch\b|\b(?:carotid|subclavian|brachiocephalic|innominate|supra ?aortic|iliac|vertebral|celiac|mesenteric|"
    r"renal|femoral|arterial|vascular)\b|\barter(?:y|ies|ial)\b|\bvessels?\b"
)
_NOT_ARTERY = re.compile(r"\baortic valves?\b|\bmitral\b|\bvalvular\b|\bannul\w*|\bpulmonary arter(?:y|ies)\b")


def _calcification_mentions(s: str, scope: _Scope) -> list[tuple[int, int, int]]:
    """Which vessels a calcification/atherosclerosis mention refers to: sites named in the
    same statement (between contrast words, ";", ":" and commas followed by a determiner,
    quantity or negation; not at the verb, since the site usually follows it: "calcifications
    are seen in the LAD", nor at list commas: "in the arch, descending aorta and coronaries")."""
    out = []
    terms = list(_CALC_TERM.finditer(s))
    if not terms:
        return out
    breaks = sorted(set(scope.words) | set(scope.new_statement))
    for m in terms:
        lo = max([b for b in breaks if b <= m.start()], default=0)
        hi = min([b for b in breaks if b > m.start()], default=len(s))
        part = _NOT_ARTERY.sub(" ", s[lo:hi])
        coronary = bool(_CORONARY_SITE.search(part))
        other = bool(_OTHER_SITE.search(_CORONARY_SITE.sub(" ", part)))
        if coronary:
            out.append((_IDX["Coronary artery wall calcification"], m.start(), m.end()))
        if other or (not coronary and _ATHERO.search(m.group())):
            out.append((_IDX["Arterial wall calcification"], m.start(), m.end()))
    return out


_NODE_SIZE = re.compile(r"\blymph nodes?\b([^.;:]{0,70}?)(\d+(?:\.\d+)?)\s*(mm|cm)\b")
_SMALLER = re.compile(r"(?:less than|smaller than|below|under|<|not exceeding|millimetric)\s*$")


def _node_size_mentions(s: str) -> list[tuple[int, int, int]]:
    """Lymph nodes given a size of >= 10 mm (the usual short-axis threshold) are enlarged."""
    out = []
    for m in _NODE_SIZE.finditer(s):
        value = float(m.group(2)) * (10.0 if m.group(3) == "cm" else 1.0)
        if value >= 10.0 and not _SMALLER.search(m.group(1)):
            out.append((_IDX["Lymphadenopathy"], m.start(), m.end()))
    return out


def _mentions(s: str, scope: _Scope) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    for label, rx in _PATTERNS.items():
        for m in rx.finditer(s):
            a, b = m.start(), m.end()
            if label == "Lung nodule":
                if _NOT_LUNG_ORGAN.search(s[max(0, a - 25):a]) or _NOT_LUNG_ORGAN.search(re.split(r"[,;:]", s[b:b + 50])[0]):
                    continue
            elif label == "Lung opacity":
                if re.search(r"\bnodular\s+$", s[max(0, a - 10):a]) or re.match(r"\s+(?:[a-z]+\s+)?nodul", s[b:b + 25]):
                    continue
            elif label == "Emphysema" and _NOT_LUNG_EMPHYSEMA.search(s[max(0, a - 20):a]):
                continue
            elif label == "Interlobular septal thickening" and _NOT_SEPTAL.search(s[max(0, a - 30):a]):
                continue
            idx = _IDX[label]
            out.append((idx, a, b))
            text = m.group()
            if label == "Atelectasis" and text.startswith("fibroatelecta"):
                out.append((_IDX["Pulmonary fibrotic sequela"], a, b))
    out += _effusion_mentions(s)
    out += _calcification_mentions(s, scope)
    out += _node_size_mentions(s)
    return out


_INNER_NEG = re.compile(r"\b(?:no|not)\b")


@functools.lru_cache(maxsize=1 << 16)
def _label_sentence(s: str) -> tuple[int, ...]:
    """Indices of the labels asserted (mentioned and not negated) in one normalised sentence."""
    scope = _Scope(s)
    posts = [(m.start(), m.end()) for m in _POST.finditer(s)]
    pres = [m.end() for m in _PRE.finditer(s) if not any(a <= m.start() < b for a, b in posts)]
    positive = set()
    for idx, a, b in _mentions(s, scope):
        if idx in positive:
            continue
        if _INNER_NEG.search(s[a:b]):
            continue
        if any(c <= a and scope.open_between(c, a, forward=True) for c in pres):
            continue
        if any(c >= b and scope.open_between(b, c, forward=False) for c, _ in posts):
            continue
        positive.add(idx)
    return tuple(sorted(positive))


def label_report(text: str | None) -> np.ndarray:
    """18 ints (0/1) in CT-RATE's label order for one report (findings and/or impression).
    Empty or missing text (None, NaN) is all zeros."""
    out = np.zeros(len(LABELS), dtype=np.int64)
    if not isinstance(text, str) or not text.strip():
        return out
    for sentence in split_sentences(text):
        for idx in _label_sentence(sentence):
            out[idx] = 1
    return out


def label_reports(texts: Iterable[str | None]) -> np.ndarray:
    """[n, 18] int64 0/1 labels for many reports (one row per text, in order)."""
    rows = [label_report(t) for t in texts]
    return np.stack(rows) if rows else np.zeros((0, len(LABELS)), dtype=np.int64)

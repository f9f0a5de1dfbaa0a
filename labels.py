"""One label space for every corpus.

Convention (shared by every corpus, model and checkpoint of this project):

- ``EMOTIONS`` (neutral, happy, sad, angry, fearful, surprised, disgusted) are
  indices 0-6 everywhere;
- a corpus's other labels, sorted by name, follow from index 7;
- valence, arousal and dominance are mapped to 0-1 from the corpus's own scale
  (``normalize_vad``); a corpus without them carries NaN;
- ``FOUR_CLASS`` is the 4-class reduction used in the literature (IEMOCAP's
  ``excited`` merges into ``happy``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

VAD = ("valence", "arousal", "dominance")  # the dimensional ratings, each on 0-1 (NaN where unknown)
EMOTIONS = ["neutral", "happy", "sad", "angry", "fearful", "surprised", "disgusted"]
FOUR_CLASS = ["neutral", "happy", "sad", "angry"]
# Labels that are not emotions (MSP-Podcast X and O, IEMOCAP xxx and oth): by default no run trains or scores
# them (``data.load_corpus(exclude=...)``); they stay in the prepared datasets and in the label space.
NOT_EMOTIONS = ("no_agreement", "other")
# Labels merged into a 4-class label by the usual IEMOCAP protocol.
_FOUR_CLASS_MERGE = {"excited": "happy"}


def emotion_index(extra: list[str] | tuple[str, ...] = ()) -> dict[str, int]:
    """Name -> index: the seven ``EMOTIONS`` as 0-6, then ``extra`` sorted by name from 7."""
    clash = sorted(set(extra) & set(EMOTIONS))
    if clash:
        raise ValueError(f"extra labels {clash} are already among the seven shared EMOTIONS")
    names = EMOTIONS + sorted(set(extra))
    return {name: i for i, name in enumerate(names)}


@dataclass(frozen=True)
class CorpusSpec:
    """How one corpus writes its labels.

    codes: raw emotion code in the corpus's files -> label name.
    vad_scale: (low, high) of its valence/arousal/dominance ratings, or None.
    """

    name: str
    codes: dict[str, str]
    vad_scale: tuple[float, float] | None
    extra: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        extra = sorted({n for n in self.codes.values() if n not in EMOTIONS})
        object.__setattr__(self, "extra", tuple(extra))


CORPORA: dict[str, CorpusSpec] = {
    "msp_podcast": CorpusSpec(
        "msp_podcast",
        codes={
            "A": "angry", "S": "sad", "H": "happy", "U": "surprised", "F": "fearful",
            "D": "disgusted", "C": "contempt", "N": "neutral", "O": "other",
            "X": "no_agreement",
        },
        vad_scale=(1.0, 7.0),
    ),
    "iemocap": CorpusSpec(
        "iemocap",
        codes={
            "neu": "neutral", "hap": "happy", "sad": "sad", "ang": "angry", "fea": "fearful",
            "sur": "surprised", "dis": "disgusted", "exc": "excited", "fru": "frustrated",
            "oth": "other", "xxx": "no_agreement",
        },
        vad_scale=(1.0, 5.0),
    ),
    "ravdess": CorpusSpec(
        "ravdess",
        codes={
            "01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry",
            "06": "fearful", "07": "disgusted", "08": "surprised",
        },
        vad_scale=None,
    ),
    # EmoDB (Berlin): the sixth letter of the file name, German initials.
    "emodb": CorpusSpec(
        "emodb",
        codes={"W": "angry", "L": "boredom", "E": "disgusted", "A": "fearful", "F": "happy", "T": "sad",
               "N": "neutral"},
        vad_scale=None,
    ),
    # SAVEE: the letters before the sentence number (``a`` is anger).
    "savee": CorpusSpec(
        "savee",
        codes={"a": "angry", "d": "disgusted", "f": "fearful", "h": "happy", "n": "neutral", "sa": "sad",
               "su": "surprised"},
        vad_scale=None,
    ),
    # TESS: the last part of the file name (``ps``: pleasant surprise).
    "tess": CorpusSpec(
        "tess",
        codes={"angry": "angry", "disgust": "disgusted", "fear": "fearful", "happy": "happy", "neutral": "neutral",
               "ps": "surprised", "sad": "sad"},
        vad_scale=None,
    ),
    "crema_d": CorpusSpec(
        "crema_d",
        codes={"ANG": "angry", "DIS": "disgusted", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"},
        vad_scale=None,
    ),
    # The offline synthetic corpus of prepare.py: four acted-style classes, VAD on 0-1.
    "synthetic": CorpusSpec(
        "synthetic",
        codes={name: name for name in FOUR_CLASS},
        vad_scale=(0.0, 1.0),
    ),
}


def label_map(corpus: str) -> dict[str, int]:
    """The name -> index map of ``corpus`` (a key of ``CORPORA``)."""
    if corpus not in CORPORA:
        raise KeyError(f"unknown corpus {corpus!r}; known: {sorted(CORPORA)}")
    return emotion_index(CORPORA[corpus].extra)


def label_names(corpus: str) -> list[str]:
    """Label names of ``corpus`` in index order (the ``ClassLabel`` names)."""
    return list(label_map(corpus))


def normalize_vad(score: float, low: float, high: float) -> float:
    """Map ``score`` on the scale [low, high] to [0, 1]; NaN stays NaN.

    Raises ValueError naming the value and the scale when ``score`` lies outside it.
    """
    if math.isnan(score):
        return math.nan
    if not low <= score <= high:
        raise ValueError(f"VAD score {score} is outside the scale [{low}, {high}]")
    return (score - low) / (high - low)


def to_four_class(name: str) -> int | None:
    """Index 0-3 in ``FOUR_CLASS`` for a label name, or None when it is not one of the four."""
    name = _FOUR_CLASS_MERGE.get(name, name)
    return FOUR_CLASS.index(name) if name in FOUR_CLASS else None


def merge_label_names(names_per_corpus: list[list[str]]) -> list[str]:
    """Union of several corpora's label names, indexed by the convention.

    Every list must itself follow the convention (the seven, then extras sorted).
    """
    extra: set[str] = set()
    for names in names_per_corpus:
        if names[: len(EMOTIONS)] != EMOTIONS:
            raise ValueError(f"label names {names} do not start with the shared EMOTIONS {EMOTIONS}")
        extra.update(names[len(EMOTIONS):])
    return list(emotion_index(sorted(extra)))

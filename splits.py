"""Which speaker is in which split: the speaker-independent splits and folds of every corpus, as the literature
runs them. ``prepare.py`` applies them as it reads a corpus; ``fold_splits`` applies them to prepared rows.

    fold_speakers("emodb", 1)                    # (("03", "08"), ("10", "09")): a fold's test and validation speakers
    assign("emodb", speakers, default, fold=1)   # the split of each row
    fold_splits(rows, "savee")                   # every fold of a prepared corpus: name -> split -> row indices

A speaker is never in two splits of a fold. (EmoBox's EmoDB folds mix speakers across splits: they are
speaker-dependent, and the EmoDB folds here are not theirs.)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
from datasets import Dataset

from data import SPLITS

# EmoBox's six speaker-independent RAVDESS folds: fold -> test actors (the other 20 train and validate).
EMOBOX_FOLDS = {1: (1, 11, 20, 21), 2: (4, 10, 12, 14), 3: (8, 9, 19, 23), 4: (3, 5, 7, 24), 5: (2, 15, 16, 18),
                6: (6, 13, 17, 22)}
EMODB_MALES, EMODB_FEMALES = ("03", "10", "11", "12", "15"), ("08", "09", "13", "14", "16")
SAVEE_FOLDS = ("JE", "KL", "DC", "JK")  # EmoBox's leave-one-speaker-out order: fold K tests the K-th
# corpus -> its folds (``fold_speakers``); TESS has none (two speakers), IEMOCAP its sessions (``--test-session``).
FOLDS = {"ravdess": tuple(EMOBOX_FOLDS), "emodb": (1, 2, 3, 4, 5), "savee": (1, 2, 3, 4), "crema_d": (1, 2, 3, 4, 5)}


def speaker_id(corpus: str, speaker: str | int) -> str:
    """A speaker as a user writes it -> the corpus's ``speaker`` value: a RAVDESS actor number (3, "03") ->
    ``Actor_03``, an EmoDB number (3) -> ``03``; anything else as written."""
    text = str(speaker).strip()
    if text.isdigit() and corpus == "ravdess":
        return f"Actor_{int(text):02d}"
    if text.isdigit() and corpus == "emodb":
        return f"{int(text):02d}"
    return text


def emobox_fold(fold: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(test actors, validation actors) of EmoBox's RAVDESS ``fold`` (1-6). Validation: one male (odd) and one
    female (even) actor among the other 20, the (fold-1)-th of each sorted list, so that folds validate on
    different actors; the remaining 18 train."""
    if fold not in EMOBOX_FOLDS:
        raise ValueError(f"RAVDESS fold must be one of {sorted(EMOBOX_FOLDS)}, got {fold}")
    test = EMOBOX_FOLDS[fold]
    rest = [a for a in range(1, 25) if a not in test]
    males, females = [a for a in rest if a % 2], [a for a in rest if a % 2 == 0]
    return test, tuple(sorted((males[(fold - 1) % len(males)], females[(fold - 1) % len(females)])))


def fold_speakers(corpus: str, fold: int, genders: Mapping[str, str] | None = None
                  ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(test speakers, validation speakers) of ``corpus``'s speaker-independent ``fold``; every other speaker trains.

    - RAVDESS: EmoBox's six (``emobox_fold``).
    - EmoDB: males 03 10 11 12 15 and females 08 09 13 14 16 in id order; fold K (1-5) tests the K-th of each and
      validates the next pair (fold 5: the first). (EmoBox's EmoDB folds mix speakers across splits.)
    - SAVEE: EmoBox's leave-one-speaker-out, fold K (1-4) tests ``SAVEE_FOLDS[K-1]`` and validates the next
      fold's test speaker (fold 4: JE).
    - CREMA-D: within each sex (``genders``: speaker -> "male"/"female" of the speakers found), the actors in id
      order; fold K (1-5) tests every fifth from the K-th, validates the next residue (fold 5: the first).
    """
    if corpus not in FOLDS:
        raise ValueError(f"{corpus} has no folds: folds are defined for {', '.join(FOLDS)} (TESS has two speakers; "
                         "IEMOCAP's are its sessions, --test-session)")
    if fold not in FOLDS[corpus]:
        raise ValueError(f"{corpus} fold must be one of {list(FOLDS[corpus])}, got {fold}")
    k = fold - 1
    if corpus == "ravdess":
        test, validation = emobox_fold(fold)
        return tuple(speaker_id(corpus, a) for a in test), tuple(speaker_id(corpus, a) for a in validation)
    if corpus == "emodb":
        return (EMODB_MALES[k], EMODB_FEMALES[k]), (EMODB_MALES[(k + 1) % 5], EMODB_FEMALES[(k + 1) % 5])
    if corpus == "savee":
        return (SAVEE_FOLDS[k],), (SAVEE_FOLDS[(k + 1) % 4],)
    test, validation = [], []
    for sex in ("female", "male"):
        actors = sorted(a for a, g in (genders or {}).items() if g == sex)
        test += actors[k::5]
        validation += actors[(k + 1) % 5::5]
    return tuple(sorted(test)), tuple(sorted(validation))


def ravdess_split(actor: int) -> str:
    """RAVDESS's fixed split of an actor: 1-18 train, 19-20 validation, 21-24 test (each half male, half female)."""
    return "train" if actor <= 18 else "validation" if actor <= 20 else "test"


def iemocap_validation_speaker(test_session: int, sessions: list[int]) -> str:
    """Leave-one-session-out as SUPERB and EmoBox run it: ``test_session`` is test and the other sessions train,
    except one speaker of them that validates (speaker-disjoint from training): in the session numbered just
    below the test session (the last one for the first: 5 -> 4, 1 -> 5), the female speaker when the test
    session is odd, the male when it is even (5 -> Ses04F, 4 -> Ses03M, 3 -> Ses02F, 2 -> Ses01M, 1 -> Ses05F).
    """
    sessions = sorted(sessions)
    if test_session not in sessions:
        raise ValueError(f"test session {test_session} is not among the sessions found: {sessions}")
    if len(sessions) < 2:
        raise ValueError(f"leave-one-session-out needs at least 2 sessions, found {sessions}")
    return f"Ses{sessions[sessions.index(test_session) - 1]:02d}{'F' if test_session % 2 else 'M'}"


def assign(corpus: str, speakers: Sequence[str], default: Sequence[str], test_speakers: Collection[str | int] = (),
           validation_speakers: Collection[str | int] = (), fold: int | None = None,
           genders: Mapping[str, str] | None = None) -> list[str]:
    """The split of each row from its speaker: ``fold`` (``fold_speakers``, with ``genders`` for CREMA-D) or the given
    test/validation speakers (``speaker_id``; the rest train); with neither, ``default`` (the corpus's own split of
    each row). A speaker the corpus does not have, a speaker in both lists, or a split left empty is a ValueError
    naming them."""
    found = sorted(set(speakers))
    if fold is not None:
        if test_speakers or validation_speakers:
            raise ValueError("give either a fold or test/validation speakers, not both")
        test, validation = (set(s) for s in fold_speakers(corpus, fold, genders))
    else:
        test = {speaker_id(corpus, s) for s in test_speakers}
        validation = {speaker_id(corpus, s) for s in validation_speakers}
        unknown = sorted((test | validation) - set(found))
        if unknown:
            raise ValueError(f"{corpus}: unknown speaker(s) {unknown} in the test/validation speakers; the corpus's "
                             f"speakers are {found}")
        if not test and not validation:
            return list(default)
    if test & validation:
        raise ValueError(f"speakers {sorted(test & validation)} are in both the test and validation split")
    out = ["test" if s in test else "validation" if s in validation else "train" for s in speakers]
    empty = [s for s in SPLITS if s not in out]
    if empty:
        raise ValueError(f"the {'/'.join(empty)} split would be empty: test speakers {sorted(test)}, validation "
                         f"speakers {sorted(validation)}, speakers found {found}")
    return out


def fold_splits(rows: Dataset, corpus: str) -> dict[str, dict[str, list[int]]]:
    """The literature's folds over ``rows`` (every row of a prepared corpus): RAVDESS, EmoDB, SAVEE, CREMA-D, the
    folds of ``fold_speakers`` (named fold_K); IEMOCAP, leave-one-session-out (``iemocap_validation_speaker``,
    named test_session_N). Fold name -> split -> row indices; a fold with an empty split is a ValueError."""
    speaker = np.asarray(rows["speaker"])
    if corpus in FOLDS:
        gender = rows["gender"] if "gender" in rows.column_names else [""] * len(rows)
        genders = dict(zip(speaker, gender, strict=True))
        folds = {}
        for k in FOLDS[corpus]:
            test, validation = fold_speakers(corpus, k, genders)
            folds[f"fold_{k}"] = np.where(np.isin(speaker, test), "test",
                                          np.where(np.isin(speaker, validation), "validation", "train"))
    elif corpus == "iemocap":
        session = np.asarray(rows["session"])
        sessions = sorted({int(s) for s in session})
        folds = {f"test_session_{n}": np.where(session == n, "test", np.where(
            speaker == iemocap_validation_speaker(n, sessions), "validation", "train")) for n in sessions}
    else:
        raise ValueError(f"all folds at once: {', '.join(FOLDS)} or iemocap (leave-one-session-out), not {corpus}")
    out = {}
    for name, split in folds.items():
        out[name] = {s: np.flatnonzero(split == s).tolist() for s in SPLITS}
        empty = [s for s, rows_ in out[name].items() if not rows_]
        if empty:
            raise ValueError(f"{name}: the {'/'.join(empty)} split would be empty (speakers found: "
                             f"{sorted(set(speaker))})")
    return out

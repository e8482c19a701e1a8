"""The five MusTBench tasks built from a labelled track: TSG, LTR, TAD, GTO, MTR.

Answers are written as the benchmark writes them: ``M:SS`` (TSG), a letter (LTR A-D, GTO A-F),
free text (TAD), ``M:SS–M:SS`` intervals with an en dash (MTR; several joined by ``, ``). Each
question also gets its grounded trace (``QA.trace``, :mod:`must.data.traces`), built here from the
same labels so the two can never disagree.
Questions whose trivial answer would be right are not asked: no onset of a source that plays from
the first seconds, no offset at the track's end, no MTR interval covering most of the track; letter
positions are drawn uniformly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import pairwise, permutations

import numpy as np

from must.data.synth import (
    NO_CHANGE_TEXTS,
    SOURCE_CATEGORY,
    SOURCE_LABELS,
    SOURCE_NAMES,
    change_signature,
    describe_change,
)
from must.data import traces
from must.data.types import QA, TASKS, Track
from must.timecode import format_interval, format_time

LTR_LETTERS = "ABCD"
GTO_LETTERS = "ABCDEF"
#: GTO options: the six orders of X, Y, Z, lettered A-F in this fixed order.
GTO_ORDERS = tuple(permutations("XYZ"))
#: An onset earlier than this, or an offset later than ``duration - this``, is not asked (seconds).
TRIVIAL_MARGIN_S = 4.0
#: MTR is not asked when its answer intervals cover more than this fraction of the track (the whole-track
#: baseline's IoU on a question is exactly that fraction).
MTR_MAX_COVER = 0.4

_ONSET_Q = (
    "When does the {x} first appear in the audio?",
    "At what time does the {x} start playing for the first time?",
    "When can the {x} first be heard in this track?",
    "At what timestamp does the {x} come in?",
)
_OFFSET_Q = (
    "When does the {x} disappear for the last time in the audio?",
    "At what time does the {x} stop playing for good?",
    "When is the {x} last heard in this track?",
    "At what timestamp does the {x} finally drop out?",
)
_LTR_Q = (
    "What change happens in the music at around {t}?",
    "Which of the following best describes the transition at {t}?",
    "At {t}, what changes in the music?",
)
_TAD_Q = (
    "Describe the musical change that occurs at {t}.",
    "What changes in the music at around {t}? Describe it.",
    "Describe the transition happening at {t} in this track.",
)
_GTO_Q = (
    "The following three changes happen in this track:",
    "Three transitions occur in this audio:",
    "Consider these three changes in the music:",
)
_GTO_ASK = (
    "In what chronological order do they occur?",
    "Which option gives the order in which they happen?",
    "What is the correct temporal order?",
)
_MTR_Q = {
    "highest": (
        "When is(are) the highest arousal duration(s) in this audio?",
        "Which time interval(s) of the track have the highest energy and intensity?",
        "When is the music at its most intense (highest arousal)?",
    ),
    "lowest": (
        "When is(are) the lowest arousal duration(s) in this audio?",
        "Which time interval(s) of the track are the calmest (lowest arousal)?",
        "When is the music at its least intense (lowest arousal)?",
    ),
}


def _pick(rng: np.random.Generator, items: Sequence[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _last_section_start(track: Track) -> float:
    return track.transitions[-1].time if track.transitions else 0.0


def build_tsg(track: Track, rng: np.random.Generator) -> list[tuple]:
    """(category, qa_type, question, answer, answers, trace) for each non-trivial onset and offset."""
    out = []
    for src in SOURCE_NAMES:
        runs = track.sources.get(src)
        if not runs:
            continue
        x = SOURCE_LABELS[src]
        onset, offset = runs[0][0], runs[-1][1]
        if onset >= TRIVIAL_MARGIN_S:
            a = format_time(onset)
            out.append((SOURCE_CATEGORY[src], "onset", _pick(rng, _ONSET_Q).format(x=x), a, [a],
                        traces.tsg(src, "onset", a)))
        # A source still playing in the last section ends with the track: its offset is trivial.
        if offset <= track.duration - TRIVIAL_MARGIN_S and offset <= _last_section_start(track) + 0.5:
            a = format_time(offset)
            out.append((SOURCE_CATEGORY[src], "offset", _pick(rng, _OFFSET_Q).format(x=x), a, [a],
                        traces.tsg(src, "offset", a)))
    return out


def _opposite(change: dict) -> dict:
    """The change read backwards (in <-> out, louder <-> quieter…): a hard distractor."""
    flipped: dict = {}
    if change.get("in"):
        flipped["out"] = list(change["in"])
    if change.get("out"):
        flipped["in"] = list(change["out"])
    for name in ("loudness", "brightness", "density", "tempo"):
        if name in change:
            flipped[name] = list(reversed(change[name]))
    if "key" in change:
        flipped["key"] = list(reversed(change["key"]))
    return flipped


def _random_change(rng: np.random.Generator) -> dict:
    """A plausible change that did not happen here."""
    kind = _pick(rng, ("in", "out", "loudness", "brightness", "density", "tempo"))
    if kind in ("in", "out"):
        return {kind: [_pick(rng, SOURCE_NAMES)]}
    if kind == "tempo":
        a = int(rng.integers(80, 150))
        return {"tempo": [a, a + int(rng.choice([-20, 20]))]}
    up = bool(rng.random() < 0.5)
    return {kind: [0.3, 0.9] if up else [0.9, 0.3]}


def _distractors(track: Track, rng: np.random.Generator, exclude: Iterable[tuple], n: int) -> list[str]:
    """``n`` descriptions of changes whose signatures differ from ``exclude`` and from each other."""
    seen = set(exclude)
    out: list[str] = []
    pool = [t.change for t in track.transitions]
    pool = [pool[i] for i in rng.permutation(len(pool))] + [_opposite(c) for c in pool]
    for _ in range(40):
        pool.append(_random_change(rng))
    for change in pool:
        sig = change_signature(change)
        if not sig or sig in seen:
            continue
        seen.add(sig)
        out.append(describe_change(change, rng))
        if len(out) == n:
            break
    return out


def _lettered(options: list[str], letters: str) -> str:
    return "\n".join(f"{letter}. {text}" for letter, text in zip(letters, options))


def build_ltr(track: Track, rng: np.random.Generator) -> list[tuple]:
    """Four options per transition: the true change, two other changes, and "no change" (answer A-D)."""
    out = []
    for t in track.transitions:
        sig = change_signature(t.change)
        wrong = _distractors(track, rng, [sig], 2) + [_pick(rng, NO_CHANGE_TEXTS)]
        out.append(_ltr_item(rng, t.time, describe_change(t.change, rng), wrong, t.kind, traces.change_key(t.change)))
    # Sometimes ask at a moment where nothing changes, so "no change" is a real answer too.
    quiet = _quiet_time(track, rng)
    if quiet is not None and rng.random() < 0.5:
        wrong = _distractors(track, rng, [], 3)
        if len(wrong) == 3:
            out.append(_ltr_item(rng, quiet, _pick(rng, NO_CHANGE_TEXTS), wrong, "no_change", traces.change_key({})))
    return out


def _ltr_item(rng, time, correct, wrong, category, key):
    pos = int(rng.integers(4))
    wrong = [wrong[i] for i in rng.permutation(len(wrong))]
    options = wrong[:pos] + [correct] + wrong[pos:]
    t = format_time(time)
    q = _pick(rng, _LTR_Q).format(t=t) + "\n" + _lettered(options, LTR_LETTERS)
    letter = LTR_LETTERS[pos]
    return (category, "single_choice", q, letter, [letter], traces.ltr(t, key, letter))


def _quiet_time(track: Track, rng: np.random.Generator) -> float | None:
    """A time at least 6 s from every boundary and the track's ends, or None."""
    bounds = [0.0] + [t.time for t in track.transitions] + [track.duration]
    gaps = [(a, b) for a, b in pairwise(bounds) if b - a >= 14]
    if not gaps:
        return None
    a, b = gaps[int(rng.integers(len(gaps)))]
    return float(rng.uniform(a + 6, b - 6))


def build_tad(track: Track, rng: np.random.Generator) -> list[tuple]:
    """Describe the change at a transition; references: its description and a second wording."""
    out = []
    for t in track.transitions:
        refs = [t.description, describe_change(t.change, rng)]
        if refs[1] == refs[0]:
            refs = refs[:1]
        at = format_time(t.time)
        out.append((t.kind, "description", _pick(rng, _TAD_Q).format(t=at), refs[0], refs, traces.tad(at, traces.change_key(t.change), refs[0])))
    return out


def build_gto(track: Track, rng: np.random.Generator, max_questions: int = 2) -> list[tuple]:
    """Three described transitions X, Y, Z; the answer letter (A-F) names their true order."""
    distinct, seen = [], set()
    for t in track.transitions:
        sig = change_signature(t.change)
        if sig not in seen:
            seen.add(sig)
            distinct.append(t)
    if len(distinct) < 3:
        return []
    out = []
    for _ in range(max_questions if len(distinct) > 3 else 1):
        chosen = sorted(rng.choice(len(distinct), 3, replace=False).tolist())
        chrono = [distinct[i] for i in chosen]
        letter = int(rng.integers(6))
        order = GTO_ORDERS[letter]  # order[i] is the name of the i-th transition in time
        named = {name: chrono[i] for i, name in enumerate(order)}
        lines = [_pick(rng, _GTO_Q)] + [f"{name}: {named[name].description}" for name in "XYZ"]
        lines.append(_pick(rng, _GTO_ASK))
        lines += [f"{GTO_LETTERS[i]}. {' → '.join(o)}" for i, o in enumerate(GTO_ORDERS)]
        times = {name: format_time(named[name].time) for name in "XYZ"}
        keys = {name: traces.change_key(named[name].change) for name in "XYZ"}
        trace = traces.gto(times, keys, order, GTO_LETTERS[letter])
        out.append(
            ("ordering", "single_choice", "\n".join(lines), GTO_LETTERS[letter], [GTO_LETTERS[letter]], trace)
        )
    return out


def arousal_extreme(track: Track, which: str) -> list[tuple[float, float]]:
    """The interval(s) of highest (``which="highest"``) or lowest arousal, seconds."""
    values = [a.value for a in track.arousal]
    target = max(values) if which == "highest" else min(values)
    return [(a.start, a.end) for a in track.arousal if abs(a.value - target) < 1e-9]


def build_mtr(track: Track, rng: np.random.Generator) -> list[tuple]:
    """Highest and lowest arousal interval(s), unless they cover most of the track."""
    if len({a.value for a in track.arousal}) < 2:
        return []
    out = []
    for which in ("highest", "lowest"):
        spans = arousal_extreme(track, which)
        if sum(b - a for a, b in spans) > MTR_MAX_COVER * track.duration:
            continue
        refs = [format_interval(a, b) for a, b in spans]
        out.append((None, which, _pick(rng, _MTR_Q[which]), ", ".join(refs), refs, traces.mtr(which, refs)))
    return out


BUILDERS = {"TSG": build_tsg, "LTR": build_ltr, "TAD": build_tad, "GTO": build_gto, "MTR": build_mtr}


def build_qas(track: Track, seed: int, split: str = "train", tasks: Sequence[str] = TASKS) -> list[QA]:
    """Every question of ``tasks`` about ``track``; deterministic per (track, seed)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 3])
    qas: list[QA] = []
    for task in TASKS:
        if task not in tasks:
            continue
        for n, (category, qa_type, question, answer, answers, trace) in enumerate(BUILDERS[task](track, rng)):
            qas.append(
                QA(
                    id=f"{track.id}-{task.lower()}-{n}",
                    track_id=track.id,
                    task=task,
                    category=category,
                    qa_type=qa_type,
                    question=question,
                    answer=answer,
                    answers=list(answers),
                    split=split,
                    duration=float(track.duration),
                    trace=trace,
                )
            )
    return qas


def select_qas(qas: list[QA], k: int, seed: int) -> list[QA]:
    """At most ``k`` questions, taking tasks in turn (tasks balanced); ``k <= 0`` keeps all."""
    if k <= 0 or len(qas) <= k:
        return list(qas)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 4])
    by_task: dict[str, list[QA]] = {}
    for i in rng.permutation(len(qas)):
        by_task.setdefault(qas[i].task, []).append(qas[i])
    order = [t for t in TASKS if t in by_task]
    order = [order[i] for i in rng.permutation(len(order))]
    chosen: list[QA] = []
    while len(chosen) < k:
        for task in order:
            if by_task[task] and len(chosen) < k:
                chosen.append(by_task[task].pop())
    return sorted(chosen, key=lambda q: qas.index(q))


def trivial_answer(qa: QA, letter: str = "A") -> str:
    """The answer a model with no ears would give: ``0:00`` for onsets, the track's end for offsets,
    ``letter`` for LTR/GTO (pass the most frequent one, see :func:`most_frequent_letter`), a generic
    sentence for TAD, the whole track for MTR."""
    if qa.task == "TSG":
        return "0:00" if qa.qa_type == "onset" else format_time(qa.duration)
    if qa.task in ("LTR", "GTO"):
        return letter
    if qa.task == "TAD":
        return "The music changes."
    return format_interval(0.0, qa.duration)


def most_frequent_letter(qas: Iterable[QA]) -> dict[str, str]:
    """Task -> the most frequent reference letter among its questions (the majority-letter baseline)."""
    counts: dict[str, Counter] = {}
    for qa in qas:
        if qa.task in ("LTR", "GTO"):
            counts.setdefault(qa.task, Counter())[qa.answer] += 1
    return {task: c.most_common(1)[0][0] for task, c in counts.items()}

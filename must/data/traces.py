"""Grounded answers: short traces that name what they look up right before its time, answer last.

With ``model.answer_format: grounded`` the SFT targets, the captions and the GRPO completions are
traces built exactly from the strong labels::

    TSG   onset bass 0:12 → 0:12                 (offsets: "offset bass 0:40 → 0:40")
    LTR   1:12 onset kick → B                    (the time asked, its change's key, the option's letter)
    TAD   1:12 onset kick → The kick comes in.   (the time asked, its change's key, the description)
    GTO   X onset kick 0:40 Y louder 0:12 Z offset bass 1:05 Y → X → Z → E
    MTR   arousal highest 0:20–0:35 → 0:20–0:35

Every time is written right after the thing it belongs to, and that thing is one token (a source's
short name, ``kick`` rather than "kick drum", whose last token "drum" would not say which), so the
position that predicts the time already holds what is asked (one attention step into the audio; ``benchmarks/tsg_probe.py
--source-last``), and the letter tasks reach their letter through what was just written. A change is named by its
*key* (:func:`change_key`: ``onset kick``, ``louder``…), a fixed short phrase, so GTO's ``X`` is first
turned into what X is (a copy from the question) and only then into a time (one lookup into the audio),
and LTR's time into what changes there before its letter (with ``time_embedding.pointer_options`` the letter
points at the option line that says it). Only the
text after the last ``→`` is the MusTBench answer (:func:`final_answer`); it is all that is scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from must.data.synth import change_keys
from must.data.types import Track
from must.timecode import format_interval, format_time

ARROW = "→"


def tsg(source: str, kind: str, time: str) -> str:
    """``onset bass 0:12 → 0:12`` (``kind`` onset) or ``offset bass 0:40 → 0:40``: the source last,
    right before its time (``source`` is the short name, e.g. ``kick``)."""
    return f"{kind} {source} {time} {ARROW} {time}"


#: A change's key by its first phrase key (:func:`must.data.synth.change_keys`); ``in`` / ``out``
#: become ``onset <source>`` / ``offset <source>``, the words TSG's traces and the captions use.
_KEY_WORDS = {"tempo+": "faster", "tempo-": "slower", "key": "key", "loudness+": "louder", "loudness-": "quieter",
              "brightness+": "brighter", "brightness-": "darker", "density+": "denser", "density-": "sparser"}


def change_key(change: Mapping) -> str:
    """The fixed short name of a structured change, from its first phrase key: ``onset kick`` (the
    first source that enters), ``offset bass``, ``louder``, ``darker``…; ``nothing`` for no change.
    Deterministic, unlike the option texts' drawn wordings, so it can be learned from the audio."""
    keys = change_keys(dict(change))
    if not keys:
        return "nothing"
    first = keys[0]
    if first in ("in", "out"):
        return f"{'onset' if first == 'in' else 'offset'} {change[first][0]}"
    return _KEY_WORDS[first]


def ltr(time: str, key: str, letter: str) -> str:
    """``1:12 onset kick → B``: the asked time, the key of its change (:func:`change_key`), the letter of
    the option that says it. Not the option's text: its wording is drawn at random, so a model cannot
    write it from the audio, and a letter learned after the true text (teacher-forced) is then chosen
    after the model's own other wording (measured: ``benchmarks/results/grounded.md`` §7)."""
    return f"{time} {key} {ARROW} {letter}"


def tad(time: str, key: str, description: str) -> str:
    """``1:12 onset kick → The kick comes in.``: the asked time, its change's key, the description."""
    return f"{time} {key} {ARROW} {description}"


def gto(times: Mapping[str, str], keys: Mapping[str, str], order: Sequence[str], letter: str) -> str:
    """``X onset kick 0:40 Y louder 0:12 Z offset bass 1:05 Y → X → Z → E``: each transition's key
    (what X is, copied from the question) and time, their order as the option writes it, its letter."""
    named = " ".join(f"{name} {keys[name]} {times[name]}" for name in "XYZ")
    return f"{named} {f' {ARROW} '.join(order)} {ARROW} {letter}"


def mtr(which: str, intervals: Sequence[str]) -> str:
    """``arousal highest 0:20–0:35 → 0:20–0:35`` (several intervals joined by ``, ``)."""
    joined = ", ".join(intervals)
    return f"arousal {which} {joined} {ARROW} {joined}"


def final_answer(text: str) -> tuple[str, str | None]:
    """(answer, reason) of a grounded output: the text after its last ``→``; ``("", reason)`` when
    there is no ``→`` or nothing after it (a miss with a reason, never an exception)."""
    if ARROW not in text:
        return "", f"no final answer: a grounded answer ends with '{ARROW} <answer>'"
    answer = text.rsplit(ARROW, 1)[1].strip()
    return (answer, None) if answer else ("", f"nothing after the last '{ARROW}'")


def target(answer: str, trace: str, answer_format: str) -> str:
    """What a model is trained to write: the trace when ``grounded`` (``→ answer`` for rows with no
    labels, e.g. real MusTBench rows, so the format holds), else the answer."""
    if answer_format != "grounded":
        return answer
    return trace or f"{ARROW} {answer}"


def caption(track: Track) -> str:
    """The grounded caption of a track: every event in time order, in the traces' language, both
    directions: ``onset bass 0:12.`` (thing → time, every run's start and end; ``louder 0:25.`` for a
    change that is not a source's), ``0:25 onset kick The kick drum comes in.`` (time → key → wording),
    ``arousal highest 0:25–0:40.``, each sentence one lookup."""
    from must.data.tasks import arousal_extreme  # tasks imports this module

    events: list[tuple[float, int, str]] = []
    for src, runs in track.sources.items():
        for on, off in runs:
            events.append((on, 1, f"onset {src} {format_time(on)}."))
            if off < track.duration - 0.5:
                events.append((off, 1, f"offset {src} {format_time(off)}."))
    for t in track.transitions:
        key, at = change_key(t.change), format_time(t.time)
        if not key.startswith(("onset ", "offset ")):
            events.append((t.time, 0, f"{key} {at}."))
        events.append((t.time, 0, f"{at} {key} {t.description}"))
    if len({a.value for a in track.arousal}) >= 2:
        for which in ("highest", "lowest"):
            spans = arousal_extreme(track, which)
            joined = ", ".join(format_interval(a, b) for a, b in spans)
            events.append((spans[0][0], 2, f"arousal {which} {joined}."))
    return " ".join(text for _, _, text in sorted(events, key=lambda e: (e[0], e[1])))


"""Step rewards of grounded answers, from the strong labels: was each named thing right, each time close?

Both take TRL's signature ``f(prompts, completions, **columns)`` and read the reference trace from
the ``trace`` column (``QA.trace``, built by :mod:`must.data.traces`); rows without one get None
(TRL and :mod:`must.stages.grpo` skip it). The task reward on the final answer stays
:func:`must.rewards.must_reward`; these add dense credit for the steps that lead to it.

A trace is read as steps: each time it names, with the words written since the previous time (the
thing it belongs to). ``onset bass 0:12 → 0:12`` is the steps ``("onset bass", 12 s)`` and
``("→", 12 s)``; steps are paired with the reference's in order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from must.data.traces import ARROW, final_answer
from must.parsing import completion_text, parse_answer, parse_time

#: A step's time counts as right within this many seconds (MusTBench's Hit@3s).
STEP_TOLERANCE_S = 3.0
_TIME = re.compile(r"(?<![\d:])(?:\d{1,2}:)?\d{1,3}:[0-5]\d(?![\d:])")


def steps(trace: str) -> list[tuple[str, float]]:
    """(thing, seconds) for every time in ``trace``, thing = the words since the previous time."""
    out, last = [], 0
    for m in _TIME.finditer(trace):
        seconds = parse_time(m.group(0)).value
        thing = " ".join(trace[last : m.start()].replace(",", " ").split())
        out.append((thing, seconds))
        last = m.end()
    return out


def step_score(completion: str, reference: str, tolerance: float = STEP_TOLERANCE_S) -> float:
    """Mean over the reference's steps of half a point for the same thing and half for a time within
    ``tolerance`` seconds, paired in order; missing steps score 0, extra steps dilute the mean."""
    ref, got = steps(reference), steps(completion)
    if not ref:
        return 0.0
    total = 0.0
    for (r_thing, r_time), (g_thing, g_time) in zip(ref, got):
        total += 0.5 * (r_thing.lower() == g_thing.lower()) + 0.5 * (abs(r_time - g_time) <= tolerance)
    return total / max(len(ref), len(got))


def format_score(completion: str, reference: str, task: str) -> float:
    """1 when the completion is a trace of the reference's shape: as many steps, a final answer after
    ``→`` that the task's parser reads; 0.5 for a readable final answer with another number of steps;
    0 otherwise."""
    answer, reason = final_answer(completion)
    if reason is not None or not parse_answer(task, answer).ok:
        return 0.0
    return 1.0 if len(steps(completion)) == len(steps(reference)) else 0.5


def _rows(completions: Sequence[Any], columns: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    n = len(completions)
    refs = list(columns.get("trace") or [None] * n)
    tasks = list(columns.get("task") or [""] * n)
    return [(completion_text(c), r or None, str(t)) for c, r, t in zip(completions, refs, tasks, strict=True)]


def trace_step_reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """Step credit in [0, 1] (:func:`step_score`) against the ``trace`` column; None without one."""
    return [None if ref is None else step_score(text, ref) for text, ref, _ in _rows(completions, columns)]


def trace_format_reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """Trace shape in [0, 1] (:func:`format_score`) against the ``trace`` column; None without one."""
    return [None if ref is None else format_score(text, ref, task)
            for text, ref, task in _rows(completions, columns)]


__all__ = ["ARROW", "STEP_TOLERANCE_S", "format_score", "step_score", "steps", "trace_format_reward",
           "trace_step_reward"]

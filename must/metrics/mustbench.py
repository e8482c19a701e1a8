"""MusTBench scoring: one pure function per row, a DDP-safe collection, the published JSON shape, and
the trivial baselines.

Sub-metrics (the leaderboard's keys): ``tsg_onset``, ``tsg_offset`` (Hit@3s), ``ltr`` (accuracy),
``tad_meteor``, ``tad_clap``, ``gto`` (accuracy), ``mtr_iou``, ``mtr_f1``. A task's score is the mean of
its available sub-metrics; overall is the mean of the available ones of the eight, the rest named in
``missing``. Everything in the JSON is percent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchmetrics import Metric

from must.metrics.temporal import interval_union, is_hit, temporal_iou_f1
from must.metrics.text import meteor
from must.parsing import OPTION_LETTERS, parse_answer, parse_intervals, parse_option, parse_time, tsg_kind
from must.timecode import format_interval, format_time

#: Sub-metrics of each task, in the published table's order.
TASK_METRICS = {
    "TSG": {"onset": "tsg_onset", "offset": "tsg_offset"},
    "LTR": {"accuracy": "ltr"},
    "TAD": {"meteor": "tad_meteor", "clap": "tad_clap"},
    "GTO": {"accuracy": "gto"},
    "MTR": {"iou": "mtr_iou", "f1": "mtr_f1"},
}
#: The eight sub-metrics whose mean is ``overall``.
SUB_METRICS = tuple(name for subs in TASK_METRICS.values() for name in subs.values())


@dataclass
class RowScore:
    """How one prediction scored against one MusTBench row."""

    id: str
    task: str
    qa_type: str | None
    prediction: str | None
    parsed: Any
    """The parsed value (seconds, [start, end] list, letter, text) or None."""
    scores: dict[str, float] = field(default_factory=dict)
    """Sub-metric name -> value in [0, 1] this row adds (e.g. ``{"tsg_onset": 1.0}``)."""
    reason: str | None = None
    """Why the prediction was a miss (unparsable, impossible, no prediction, bad reference)."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly dict (the ``rows`` entries of ``scores.json``)."""
        return {
            "id": self.id,
            "task": self.task,
            "qa_type": self.qa_type,
            "prediction": self.prediction,
            "parsed": self.parsed,
            **{k: round(v, 6) for k, v in self.scores.items()},
            "reason": self.reason,
        }


def _answers(ref: Mapping[str, Any]) -> list[str]:
    answers = ref.get("answers")
    if answers is None or (not isinstance(answers, str) and len(answers) == 0):
        return [str(ref.get("answer", ""))]
    return [answers] if isinstance(answers, str) else [str(a) for a in answers]


def row_metric_names(ref: Mapping[str, Any]) -> list[str]:
    """The sub-metrics a reference row counts towards (``tad_clap`` only when CLAP is scored)."""
    task = str(ref["task"]).upper()
    if task == "TSG":
        return [f"tsg_{tsg_kind(ref.get('qa_type'), str(ref.get('question', '')))}"]
    return {"LTR": ["ltr"], "GTO": ["gto"], "TAD": ["tad_meteor"], "MTR": ["mtr_iou", "mtr_f1"]}.get(task, [])


def score_row(prediction: str | None, ref: Mapping[str, Any], k: float = 3.0) -> RowScore:
    """Score one prediction (raw model text, None when missing) against one reference row
    (``id, task, qa_type, question, answer, answers``). Never raises on the prediction."""
    task = str(ref["task"]).upper()
    qa_type = ref.get("qa_type")
    row = RowScore(str(ref.get("id", "")), task, None if qa_type is None else str(qa_type), prediction, None)
    names = row_metric_names(ref)
    row.scores = {n: 0.0 for n in names}
    if not names:
        row.reason = f"unknown task {task!r}"
        return row
    if prediction is None:
        row.reason = "no prediction"
        return row
    parsed = parse_answer(task, prediction)
    row.parsed = parsed.to_json()
    if not parsed.ok:
        row.reason = parsed.reason
        return row
    answers = _answers(ref)
    if task == "TSG":
        refs = [p.value for p in map(parse_time, answers) if p.ok]
        if not refs:
            row.reason = f"reference not a time: {answers!r}"
            return row
        row.scores[names[0]] = float(any(is_hit(parsed.value, r, k) for r in refs))
    elif task in OPTION_LETTERS:
        ref_letter = parse_option(answers[0], OPTION_LETTERS[task])
        row.scores[names[0]] = float(ref_letter.ok and parsed.value == ref_letter.value)
    elif task == "MTR":
        ref_ivs = [iv for p in map(parse_intervals, answers) if p.ok for iv in p.value]
        if not ref_ivs:
            row.reason = f"reference not an interval: {answers!r}"
            return row
        iou, f1 = temporal_iou_f1(parsed.value, ref_ivs)
        row.scores = {"mtr_iou": iou, "mtr_f1": f1}
    elif task == "TAD":
        row.scores["tad_meteor"] = meteor(parsed.value, answers)
    return row


def score_rows(
    predictions: Sequence[str | None], references: Sequence[Mapping[str, Any]], k: float = 3.0, clap: Any = None
) -> list[RowScore]:
    """:func:`score_row` over a batch; with a :class:`~must.metrics.text.ClapScore` as ``clap``, TAD rows
    also get ``tad_clap``."""
    rows = [score_row(p, r, k) for p, r in zip(predictions, references, strict=True)]
    tad = [i for i, r in enumerate(rows) if r.task == "TAD"]
    if clap is not None and tad:
        preds = [rows[i].parsed if rows[i].reason is None else None for i in tad]
        for i, s in zip(tad, clap.scores(preds, [_answers(references[i])[0] for i in tad]), strict=True):
            rows[i].scores["tad_clap"] = s
    return rows


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100.0 * x, 2)


def scores_json(means: Mapping[str, float | None], tasks_present: Iterable[str]) -> dict[str, Any]:
    """The published JSON shape from sub-metric means in [0, 1] (None = not measured): percent, task
    scores as means of available sub-metrics, absent tasks null, ``missing`` naming unmeasured ones."""
    present = {t.upper() for t in tasks_present}
    out: dict[str, Any] = {}
    missing = []
    for task, subs in TASK_METRICS.items():
        if task not in present:
            out[task] = None
            missing.extend(subs.values())
            continue
        block = {key: _pct(means.get(name)) for key, name in subs.items()}
        missing.extend(name for key, name in subs.items() if block[key] is None)
        got = [means[name] for name in subs.values() if means.get(name) is not None]
        block["score"] = _pct(sum(got) / len(got)) if got else None
        out[task] = block
    available = [means[n] for n in SUB_METRICS if means.get(n) is not None]
    out["overall"] = _pct(sum(available) / len(available)) if available else None
    out["missing"] = missing
    return out


class MusTBenchMetric(Metric):
    """All MusTBench sub-metrics at once, summed per process and synced exactly under DDP.

    ``update(predictions, references)``: predictions are raw model texts (None = missing, a miss), references
    the benchmark rows as dicts. ``compute()`` returns the JSON shape of :func:`scores_json` (no ``rows``).
    ``clap_dir``: a local CLAP model folder; without it ``tad_clap`` is reported missing.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, k: float = 3.0, clap_dir: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = k
        self.clap = None
        if clap_dir is not None:
            from must.metrics.text import ClapScore

            self.clap = ClapScore(clap_dir)
        for name in SUB_METRICS:
            self.add_state(f"{name}_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{name}_n", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        for task in TASK_METRICS:
            self.add_state(f"{task}_rows", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        predictions: Sequence[str | None] | None = None,
        references: Sequence[Mapping[str, Any]] | None = None,
        rows: Sequence[RowScore] | None = None,
    ) -> None:
        """Score and add a batch: raw ``predictions`` with their ``references``, or rows already scored by
        :func:`score_rows` (to keep the per-row results for a table or a log)."""
        if rows is None:
            rows = score_rows(predictions or [], references or [], self.k, self.clap)
        for row in rows:
            if row.task in TASK_METRICS:
                counter = getattr(self, f"{row.task}_rows")
                counter += 1
            for name, value in row.scores.items():
                total = getattr(self, f"{name}_sum")
                total += value
                count = getattr(self, f"{name}_n")
                count += 1

    def means(self) -> dict[str, float | None]:
        """Sub-metric means in [0, 1]; None where no row counted."""
        out = {}
        for name in SUB_METRICS:
            n = int(getattr(self, f"{name}_n"))
            out[name] = float(getattr(self, f"{name}_sum")) / n if n else None
        return out

    def compute(self) -> dict[str, Any]:
        """The published JSON shape (percent)."""
        return scores_json(self.means(), [t for t in TASK_METRICS if int(getattr(self, f"{t}_rows")) > 0])


def trivial_baseline_predictions(
    references: Sequence[Mapping[str, Any]], durations: Mapping[str, float] | None = None
) -> dict[str, str | None]:
    """Row id -> the trivial answer: ``0:00`` for onsets, the track's end for offsets, the most frequent
    reference letter of the task, the whole track for MTR; None where it needs an unknown duration (and
    for TAD, which has no trivial answer)."""
    durations = dict(durations or {})
    letters: dict[str, str] = {}
    for task, allowed in OPTION_LETTERS.items():
        counts = Counter(
            p.value
            for r in references
            if str(r["task"]).upper() == task
            for p in [parse_option(_answers(r)[0], allowed)]
            if p.ok
        )
        if counts:
            letters[task] = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    out: dict[str, str | None] = {}
    for r in references:
        task, rid = str(r["task"]).upper(), str(r["id"])
        dur = r.get("duration")
        dur = durations.get(str(r.get("track_id")), dur)
        dur = float(dur) if dur is not None and float(dur) > 0 else None
        if task == "TSG":
            kind = tsg_kind(r.get("qa_type"), str(r.get("question", "")))
            out[rid] = "0:00" if kind == "onset" else (format_time(dur) if dur else None)
        elif task in letters:
            out[rid] = letters[task]
        elif task == "MTR":
            out[rid] = format_interval(0.0, dur) if dur else None
        else:
            out[rid] = None
    return out


def trivial_baseline_scores(
    references: Sequence[Mapping[str, Any]] | Any, durations: Mapping[str, float] | None = None, k: float = 3.0
) -> dict[str, Any]:
    """Scores of the trivial baselines, in the JSON shape of :func:`scores_json`; a sub-metric whose
    baseline cannot be made (offsets or MTR without durations, TAD) is null and named in ``missing``."""
    refs = _records(references)
    preds = trivial_baseline_predictions(refs, durations)
    metric = MusTBenchMetric(k=k)
    made = [(preds[str(r["id"])], r) for r in refs if preds.get(str(r["id"])) is not None]
    if made:
        metric.update([p for p, _ in made], [r for _, r in made])
    return scores_json(metric.means(), {str(r["task"]).upper() for r in refs})


def _records(references: Any) -> list[dict[str, Any]]:
    """Rows as dicts from a DataFrame or a sequence of mappings."""
    if hasattr(references, "to_dict"):
        return [dict(r) for r in references.to_dict("records")]
    return [dict(r) for r in references]


__all__ = [
    "SUB_METRICS",
    "TASK_METRICS",
    "MusTBenchMetric",
    "RowScore",
    "interval_union",
    "score_row",
    "score_rows",
    "scores_json",
    "trivial_baseline_predictions",
    "trivial_baseline_scores",
]

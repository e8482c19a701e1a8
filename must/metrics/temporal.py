"""Temporal metrics: Hit@K for times, IoU and F1 over interval unions, option accuracy.

Each metric keeps sums and counts as ``torchmetrics`` states reduced with ``sum``, so the value after a
DDP sync is exactly the single-process value. Predictions may be raw model text (parsed with
:mod:`must.parsing`) or already-parsed values; an unparsable prediction or ``None`` counts as a miss.
All times in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torchmetrics import Metric

from must.parsing import parse_intervals, parse_option, parse_time

Interval = tuple[float, float]


def interval_union(intervals: Iterable[Sequence[float]]) -> list[Interval]:
    """Merge intervals (seconds) into sorted, disjoint ones; empty and reversed ones are dropped."""
    spans = sorted((float(a), float(b)) for a, b in intervals if float(b) > float(a))
    merged: list[Interval] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def union_length(intervals: Iterable[Sequence[float]]) -> float:
    """Seconds covered by the union of ``intervals``."""
    return sum(b - a for a, b in interval_union(intervals))


def intersection_length(a: Iterable[Sequence[float]], b: Iterable[Sequence[float]]) -> float:
    """Seconds covered by both unions."""
    ua, ub = interval_union(a), interval_union(b)
    total, i, j = 0.0, 0, 0
    while i < len(ua) and j < len(ub):
        lo, hi = max(ua[i][0], ub[j][0]), min(ua[i][1], ub[j][1])
        total += max(0.0, hi - lo)
        if ua[i][1] < ub[j][1]:
            i += 1
        else:
            j += 1
    return total


def temporal_iou_f1(pred: Iterable[Sequence[float]], ref: Iterable[Sequence[float]]) -> tuple[float, float]:
    """(IoU, F1) of the prediction union P against the reference union G:
    IoU = |P∩G| / |P∪G|, F1 = 2|P∩G| / (|P| + |G|); both 0 when nothing is covered."""
    pred, ref = list(pred), list(ref)
    inter = intersection_length(pred, ref)
    p_len, g_len = union_length(pred), union_length(ref)
    union = p_len + g_len - inter
    iou = inter / union if union > 0 else 0.0
    f1 = 2 * inter / (p_len + g_len) if p_len + g_len > 0 else 0.0
    return iou, f1


def is_hit(pred: float | None, ref: float, k: float = 3.0) -> bool:
    """|pred − ref| ≤ k seconds (inclusive); a missing prediction is not a hit."""
    # a hair of slack so that 3.0 written as 0:33 vs 0:30.0 is never lost to float rounding
    return pred is not None and abs(float(pred) - float(ref)) <= k + 1e-9


def _as_time(x: Any) -> float | None:
    if x is None or isinstance(x, (int, float)):
        return None if x is None else float(x)
    p = parse_time(x)
    return p.value if p.ok else None


def _as_intervals(x: Any) -> list[Interval] | None:
    if x is None:
        return None
    if isinstance(x, str):
        p = parse_intervals(x)
        return p.value if p.ok else None
    x = list(x)
    if len(x) == 2 and all(isinstance(v, (int, float)) for v in x):
        return [(float(x[0]), float(x[1]))]
    out: list[Interval] = []
    for item in x:
        got = _as_intervals(item)
        if got is None:
            return None
        out.extend(got)
    return out


class _MeanMetric(Metric):
    """Sum of per-sample scores over a count, both summed across processes."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _add(self, values: Sequence[float]) -> None:
        self.total += float(sum(values))
        self.count += len(values)

    def compute(self) -> torch.Tensor:
        """Mean per-sample score in [0, 1] (0 when nothing was seen)."""
        return self.total / self.count.clamp(min=1)


class HitAtK(_MeanMetric):
    """Fraction of predicted times within ``k`` seconds of the reference, inclusive (MusTBench: k = 3)."""

    def __init__(self, k: float = 3.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = k

    def update(self, preds: Sequence[float | str | None], target: Sequence[float | str]) -> None:
        """``preds``: seconds, model text or None (miss); ``target``: seconds or ``M:SS``."""
        self._add([float(is_hit(_as_time(p), _as_time(t), self.k)) for p, t in zip(preds, target, strict=True)])


class OptionAccuracy(_MeanMetric):
    """Fraction of predicted option letters equal to the reference letter."""

    def __init__(self, letters: str = "ABCDEF", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.letters = letters

    def update(self, preds: Sequence[str | None], target: Sequence[str]) -> None:
        """``preds``: model text (any usual dressing) or None; ``target``: the reference letter."""
        scores = []
        for p, t in zip(preds, target, strict=True):
            got = parse_option(p, self.letters) if p is not None else None
            ref = parse_option(t, self.letters)
            scores.append(float(got is not None and got.ok and ref.ok and got.value == ref.value))
        self._add(scores)


class _IntervalMetric(_MeanMetric):
    which = 0

    def update(self, preds: Sequence[Any], target: Sequence[Any]) -> None:
        """``preds``: model text, a list of (start, end) seconds, or None; ``target``: the reference
        intervals (text, one interval, or a list; all are merged into one union)."""
        scores = []
        for p, t in zip(preds, target, strict=True):
            pred, ref = _as_intervals(p), _as_intervals(t)
            scores.append(temporal_iou_f1(pred, ref)[self.which] if pred and ref else 0.0)
        self._add(scores)


class TemporalIoU(_IntervalMetric):
    """Mean over samples of |P∩G| / |P∪G|, P and G the unions of predicted and reference intervals."""

    which = 0


class TemporalF1(_IntervalMetric):
    """Mean over samples of 2|P∩G| / (|P| + |G|) over interval unions."""

    which = 1

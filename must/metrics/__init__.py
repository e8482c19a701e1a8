"""Metrics of must: temporal (Hit@K, IoU/F1 over unions, option accuracy), text (METEOR, CLAP) and the
MusTBench collection. All are ``torchmetrics.Metric``s whose states sum exactly across processes."""

from must.metrics.mustbench import (
    SUB_METRICS,
    TASK_METRICS,
    MusTBenchMetric,
    RowScore,
    score_row,
    score_rows,
    scores_json,
    trivial_baseline_predictions,
    trivial_baseline_scores,
)
from must.metrics.temporal import (
    HitAtK,
    OptionAccuracy,
    TemporalF1,
    TemporalIoU,
    intersection_length,
    interval_union,
    is_hit,
    temporal_iou_f1,
    union_length,
)
from must.metrics.text import ClapScore, Meteor, meteor, meteor_mode

__all__ = [
    "SUB_METRICS",
    "TASK_METRICS",
    "ClapScore",
    "HitAtK",
    "Meteor",
    "MusTBenchMetric",
    "OptionAccuracy",
    "RowScore",
    "TemporalF1",
    "TemporalIoU",
    "intersection_length",
    "interval_union",
    "is_hit",
    "meteor",
    "meteor_mode",
    "score_row",
    "score_rows",
    "scores_json",
    "temporal_iou_f1",
    "trivial_baseline_predictions",
    "trivial_baseline_scores",
    "union_length",
]

"""Hand-computed cases for Hit@K, option accuracy and IoU/F1 over interval unions."""

import pytest

from must.metrics import (
    HitAtK,
    OptionAccuracy,
    TemporalF1,
    TemporalIoU,
    intersection_length,
    interval_union,
    temporal_iou_f1,
)


def test_hit_at_3_is_inclusive():
    m = HitAtK(k=3.0)
    # errors: 3.0 (edge, hit), 3.5 (miss), 0 (hit), unparsable (miss), None (miss), 23:76 (miss)
    m.update(["0:33", "0:33.5", "30 s", "soon", None, "23:76"], ["0:30", "0:30", "0:30", "0:30", 30.0, "0:30"])
    assert m.compute().item() == pytest.approx(2 / 6)


def test_hit_edge_below_reference():
    m = HitAtK(k=3.0)
    m.update([27.0, 26.999], [30.0, 30.0])
    assert m.compute().item() == pytest.approx(0.5)


def test_option_accuracy_dressings():
    m = OptionAccuracy("ABCD")
    m.update(["C", "(C)", "C.", "Answer: C", "C) the bass enters", "B", "", "E"], ["C"] * 8)
    assert m.compute().item() == pytest.approx(5 / 8)


def test_union_merges_overlaps():
    assert interval_union([(10, 20), (15, 25), (30, 40), (40, 45)]) == [(10.0, 25.0), (30.0, 45.0)]
    assert interval_union([(5, 5), (9, 3)]) == []
    assert intersection_length([(0, 10), (20, 30)], [(5, 25)]) == 10.0


def test_iou_f1_several_references_and_overlapping_predictions():
    # P = [20,40] u [35,45] = [20,45] (25 s); G = [10,30] u [40,50] (20 + 10 = 30 s)
    # P n G = [20,30] + [40,45] = 15 s; P u G = 25 + 30 - 15 = 40 s
    iou, f1 = temporal_iou_f1([(20, 40), (35, 45)], [(10, 30), (40, 50)])
    assert iou == pytest.approx(15 / 40)
    assert f1 == pytest.approx(2 * 15 / (25 + 30))


def test_iou_f1_metrics_average_over_rows():
    iou, f1 = TemporalIoU(), TemporalF1()
    preds = ["0:57\u20131:12", "0:50-1:05", "1:12-0:57", "", [(0.0, 10.0)]]
    refs = ["0:57\u20131:12", ["0:57\u20131:12"], "0:57\u20131:12", "0:57\u20131:12", [(20.0, 30.0)]]
    for m in (iou, f1):
        m.update(preds, refs)
    # row 2: P=[50,65], G=[57,72]: inter 8, union 22, |P|+|G| = 30
    assert iou.compute().item() == pytest.approx((1 + 8 / 22) / 5)
    assert f1.compute().item() == pytest.approx((1 + 16 / 30) / 5)


def test_disjoint_and_empty():
    assert temporal_iou_f1([(0, 10)], [(20, 30)]) == (0.0, 0.0)
    assert temporal_iou_f1([], [(20, 30)]) == (0.0, 0.0)

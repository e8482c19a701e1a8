"""``must score`` on a small hand-made set reproduces hand-computed JSON exactly."""

import json

import pandas as pd
import pytest

from must.cli import main

M = 1 - 0.5 / 27  # METEOR of an exact 3-word match (one chunk): 0.981481...

REFS = [
    # id, task, qa_type, answers
    ("o1", "TSG", "onset", ["0:30"]),
    ("o2", "TSG", "onset", ["0:10"]),
    ("f1", "TSG", "offset", ["1:30"]),
    ("l1", "LTR", "change", ["C"]),
    ("l2", "LTR", "change", ["A"]),
    ("d1", "TAD", "change", ["the bass enters"]),
    ("g1", "GTO", "order", ["E"]),
    ("g2", "GTO", "order", ["E"]),
    ("m1", "MTR", None, ["0:10\u20130:30", "0:50\u20131:00"]),
    ("m2", "MTR", None, ["0:00\u20130:20"]),
]
PREDS = {
    "o1": "0:33",  # 3 s: the inclusive edge, a hit
    "o2": "<ANSWER> 00:14",  # 4 s: a miss
    "f1": "1:27",
    "l1": "C) the bass enters",
    # l2: no prediction -> wrong, listed
    "d1": "the bass enters",
    "g1": "Answer: E",
    "g2": "23:76",
    "m1": "0:20 - 0:40, 0:55\u20131:05",  # P 30 s, G 30 s, P n G 15 s: IoU 1/3, F1 1/2
    "m2": "0:00-0:10",  # P 10 s inside G 20 s: IoU 1/2, F1 2/3
}

EXPECTED = {
    "TSG": {"onset": 50.0, "offset": 100.0, "score": 75.0},
    "LTR": {"accuracy": 50.0, "score": 50.0},
    "TAD": {"meteor": 98.15, "clap": None, "score": 98.15},
    "GTO": {"accuracy": 50.0, "score": 50.0},
    "MTR": {"iou": 41.67, "f1": 58.33, "score": 50.0},
    # (0.5 + 1 + 0.5 + M + 0.5 + 5/12 + 7/12) / 7
    "overall": 64.02,
    "missing": ["tad_clap"],
    "missing_predictions": ["l2"],
    "unknown_predictions": [],
    "baseline": {
        # 0:00 misses both onsets; 1:40 (track end) is 10 s from 1:30
        "TSG": {"onset": 0.0, "offset": 0.0, "score": 0.0},
        # tie C/A -> A (first in order): right on l2 only; E on both GTO rows
        "LTR": {"accuracy": 50.0, "score": 50.0},
        "TAD": {"meteor": None, "clap": None, "score": None},
        "GTO": {"accuracy": 100.0, "score": 100.0},
        # whole track [0, 100]: m1 IoU .3, F1 60/130; m2 IoU .2, F1 40/120
        "MTR": {"iou": 25.0, "f1": 39.74, "score": 32.37},
        "overall": 35.79,
        "missing": ["tad_meteor", "tad_clap"],
    },
    "rows": [
        {"id": "o1", "task": "TSG", "qa_type": "onset", "prediction": "0:33", "parsed": 33.0, "tsg_onset": 1.0, "reason": None},
        {"id": "o2", "task": "TSG", "qa_type": "onset", "prediction": "<ANSWER> 00:14", "parsed": 14.0, "tsg_onset": 0.0, "reason": None},
        {"id": "f1", "task": "TSG", "qa_type": "offset", "prediction": "1:27", "parsed": 87.0, "tsg_offset": 1.0, "reason": None},
        {"id": "l1", "task": "LTR", "qa_type": "change", "prediction": "C) the bass enters", "parsed": "C", "ltr": 1.0, "reason": None},
        {"id": "l2", "task": "LTR", "qa_type": "change", "prediction": None, "parsed": None, "ltr": 0.0, "reason": "no prediction"},
        {"id": "d1", "task": "TAD", "qa_type": "change", "prediction": "the bass enters", "parsed": "the bass enters", "tad_meteor": round(M, 6), "reason": None},
        {"id": "g1", "task": "GTO", "qa_type": "order", "prediction": "Answer: E", "parsed": "E", "gto": 1.0, "reason": None},
        {"id": "g2", "task": "GTO", "qa_type": "order", "prediction": "23:76", "parsed": None, "gto": 0.0, "reason": "no option letter found"},
        {"id": "m1", "task": "MTR", "qa_type": None, "prediction": "0:20 - 0:40, 0:55\u20131:05", "parsed": [[20.0, 40.0], [55.0, 65.0]], "mtr_iou": 0.333333, "mtr_f1": 0.5, "reason": None},
        {"id": "m2", "task": "MTR", "qa_type": None, "prediction": "0:00-0:10", "parsed": [[0.0, 10.0]], "mtr_iou": 0.5, "mtr_f1": 0.666667, "reason": None},
    ],
}


@pytest.fixture
def files(tmp_path):
    rows = [
        {"id": i, "track_id": "t1", "task": t, "category": "c", "qa_type": q, "question": "?", "answer": a[0],
         "answers": a, "split": "test", "duration": 100.0}
        for i, t, q, a in REFS
    ]
    ref = tmp_path / "ref.parquet"
    pd.DataFrame(rows).to_parquet(ref)
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"id": k, "prediction": v}) + "\n" for k, v in PREDS.items()))
    return ref, pred


def test_must_score_reproduces_hand_computed_json(files, tmp_path, capsys):
    ref, pred = files
    out = tmp_path / "scores.json"
    assert main(["score", "--predictions", str(pred), "--references", str(ref), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == EXPECTED
    printed = capsys.readouterr().out
    assert "TSG on" in printed and "trivial baseline" in printed and "64.0" in printed
    assert "1 row(s) without a prediction, counted wrong: l2" in printed


def test_absent_task_is_null_and_bad_lines_are_named(tmp_path, files, capsys):
    ref, _ = files
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "o1", "prediction": "0:30"}\nnot json\n')
    assert main(["score", "--predictions", str(bad), "--references", str(ref)]) == 2
    assert f"{bad}:2: not a JSON line" in capsys.readouterr().err
    only_tsg = tmp_path / "tsg.parquet"
    df = pd.read_parquet(ref)
    df[df.task == "TSG"].to_parquet(only_tsg)
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "o1", "prediction": "0:30"}\n')
    out = tmp_path / "s.json"
    assert main(["score", "--predictions", str(good), "--references", str(only_tsg), "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["LTR"] is None and got["TAD"] is None and got["GTO"] is None and got["MTR"] is None
    assert got["TSG"] == {"onset": 50.0, "offset": 0.0, "score": 25.0}
    assert got["overall"] == 25.0 and got["missing_predictions"] == ["o2", "f1"]

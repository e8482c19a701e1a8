"""benchmarks/trace_times.py: the shares it reports on a hand-built predictions file, and a clear error."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "trace_times", Path(__file__).resolve().parents[1] / "benchmarks" / "trace_times.py")
tt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tt)


def test_shares_of_copied_first_times_and_single_time_traces(tmp_path, capsys):
    rows = [
        {"task": "LTR", "trace": "0:14 drums → A", "reference_trace": "0:13 drums → A"},  # 1 s off: a copy
        {"task": "LTR", "trace": "0:30 bass → B", "reference_trace": "0:13 drums → A"},  # 17 s off
        {"task": "LTR", "trace": "", "reference_trace": "0:13 drums → A"},  # no time at all
        {"task": "GTO", "trace": "X 0:05 Y 0:05 Z 0:05 → A", "reference_trace": "X 0:05 Y 0:20 Z 0:41 → A"},
        {"task": "GTO", "trace": "X 0:05 Y 0:21 Z 1:01 → B", "reference_trace": "X 0:05 Y 0:20 Z 1:01 → B"},
    ]
    got = tt.summarise(rows)
    assert got["LTR"]["rows"] == 3 and got["LTR"]["first_within_3s"] == pytest.approx(100 / 3)
    assert got["GTO"]["first_within_3s"] == 100.0 and got["GTO"]["one_time_only"] == 50.0
    assert tt.times("at 1:01 and 0:07") == [61, 7]
    path = tmp_path / "predictions.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tt.main([str(path)])
    out = capsys.readouterr().out
    assert re.search(r"LTR +3 rows +first within 3 s +33\.3% +one time only +0\.0%", out), out


def test_a_file_that_is_not_predictions_is_named(tmp_path):
    bad = tmp_path / "scores.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="scores.json: not a predictions file"):
        tt.main([str(bad)])


def test_keyed_steps_right_and_the_letter_given_them(tmp_path, capsys):
    ref_l = "0:13 onset kick → B"
    ref_g = "X onset kick 0:40 Y louder 0:12 Z offset bass 1:05 Y → X → Z → C"
    rows = [
        {"task": "LTR", "trace": "0:13 onset kick → B", "reference_trace": ref_l,
         "prediction": "B", "answer": "B"},  # key right, letter right
        {"task": "LTR", "trace": "0:13 onset kick → A", "reference_trace": ref_l,
         "prediction": "A", "answer": "B"},  # key right, letter wrong
        {"task": "LTR", "trace": "0:13 louder → B", "reference_trace": ref_l,
         "prediction": "B", "answer": "B"},  # key wrong, letter right
        {"task": "GTO", "trace": "X onset kick 0:40 Y louder 0:12 Z onset bass 1:05 Y → X → Z → C",
         "reference_trace": ref_g, "prediction": "C", "answer": "C"},  # 2 of 3 keys, order and letter right
        {"task": "GTO", "trace": "X onset kick 0:10 Y onset kick 0:12 Z onset kick 1:05 X → Y → Z → A",
         "reference_trace": ref_g, "prediction": "A", "answer": "C"},  # 1 of 3 keys, order wrong
    ]
    assert tt.change_key("0:13 offset bass The bass leaves. → A") == "offset bass"
    assert tt.change_key("1:12 louder → Everything becomes louder.") == "louder"
    assert tt.gto_parts(ref_g) == ({"X": "onset kick", "Y": "louder", "Z": "offset bass"}, ["Y", "X", "Z"])
    got = tt.steps_summary(rows)
    assert got["LTR"]["key_right"] == pytest.approx(200 / 3)
    assert got["LTR"]["letter_if_key_right"] == 50.0 and got["LTR"]["letter_if_key_wrong"] == 100.0
    assert got["GTO"]["keys_right"] == pytest.approx(100 * 3 / 6)
    assert got["GTO"]["order_right"] == 50.0 and got["GTO"]["letter_if_order_right"] == 100.0
    # right keys: X, Y of row 1 (0:40 and 0:12, both right), X of row 2 (0:10 against 0:40): 2 of 3 timed right
    assert got["GTO"]["time_if_key_right"] == pytest.approx(200 / 3)
    assert got["GTO"]["order_a_permutation"] == 100.0
    assert tt.gto_times("X onset kick 0:40 Y louder 1:12 Z X → X → Z → C") == {"X": 40, "Y": 72}
    assert tt.steps_summary([{**rows[3], "trace": "X onset kick 0:40 Y louder 0:12 Z onset bass 1:05 Y → Y → Z → C"}]
                            )["GTO"]["order_a_permutation"] == 0.0
    path = tmp_path / "predictions.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tt.main([str(path)])
    out = capsys.readouterr().out
    assert re.search(r"GTO +steps: keys right +50\.0% +time if key right +66\.7% +order a permutation +100\.0% +order right"
                     r" +50\.0% +letter if order right +100\.0%", out), out

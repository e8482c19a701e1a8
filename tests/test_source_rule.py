"""benchmarks/source_rule.py: the activity rules' answers on hand-built probability curves."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "source_rule", Path(__file__).resolve().parents[1] / "benchmarks" / "source_rule.py")
sr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sr)

TIMES = np.arange(10) + 0.5  # frames centred on 0.5 … 9.5 s, 1 s apart
PROBS = np.array([0.1, 0.1, 0.9, 0.8, 0.2, 0.9, 0.1, 0.6, 0.1, 0.1])


def test_first_and_last_frame_above_the_threshold():
    assert sr.rule_time(TIMES, PROBS, "onset", 0.5) == 2.0  # frame 2 starts at 2 s
    assert sr.rule_time(TIMES, PROBS, "offset", 0.5) == 8.0  # frame 7 (0.6) ends at 8 s
    assert sr.rule_time(TIMES, PROBS, "offset", 0.7) == 6.0  # above 0.7 the last is frame 5
    assert sr.rule_time(TIMES, PROBS, "onset", 0.95) is None


def test_smoothing_and_segments():
    np.testing.assert_allclose(sr.smooth(np.array([0.0, 3.0, 0.0, 0.0]), 3), [1.0, 1.0, 1.0, 0.0])
    # segments [0, 2), [2, 6), [6, 10): means 0.1, 0.7, 0.225
    assert sr.segment_time(TIMES, PROBS, [2.0, 6.0], "onset", 0.5) == 2.0
    assert sr.segment_time(TIMES, PROBS, [2.0, 6.0], "offset", 0.5) == pytest.approx(6.0)
    assert sr.segment_time(TIMES, PROBS, [2.0, 6.0], "offset", 0.8) is None

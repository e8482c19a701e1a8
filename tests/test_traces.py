"""Grounded traces: built from the labels, final answers read back, step and format rewards."""

import numpy as np
import pytest

from must.data import generate_track
from must.data.tasks import GTO_LETTERS, GTO_ORDERS, build_qas
from must.data.traces import caption, change_key, final_answer, gto, ltr, mtr, tad, target, tsg
from must.parsing import parse_answer, parse_intervals, parse_time
from must.rewards import REWARDS, must_reward
from must.timecode import format_time
from must.rewards.trace import format_score, step_score, steps, trace_format_reward, trace_step_reward


def test_builders_write_each_time_after_its_thing_and_the_answer_last():
    assert tsg("bass", "onset", "0:12") == "onset bass 0:12 → 0:12"
    assert tsg("bass", "offset", "0:40") == "offset bass 0:40 → 0:40"
    assert ltr("1:12", "onset kick", "B") == "1:12 onset kick → B"
    assert tad("1:12", "onset kick", "The kick comes in.") == "1:12 onset kick → The kick comes in."
    keys = {"X": "onset kick", "Y": "louder", "Z": "offset bass"}
    assert (gto({"X": "0:40", "Y": "0:12", "Z": "1:05"}, keys, ("Y", "X", "Z"), "C")
            == "X onset kick 0:40 Y louder 0:12 Z offset bass 1:05 Y → X → Z → C")
    assert mtr("highest", ["0:20–0:35", "1:00–1:10"]) == "arousal highest 0:20–0:35, 1:00–1:10 → 0:20–0:35, 1:00–1:10"


def test_change_key_names_the_first_phrase_key_whatever_the_wording():
    assert change_key({"in": ["kick", "snare"], "loudness": [0.3, 0.9]}) == "onset kick"
    assert change_key({"out": ["bass"]}) == "offset bass"
    assert change_key({"loudness": [0.9, 0.3], "brightness": [0.2, 0.8]}) == "quieter"
    assert change_key({"tempo": [120, 100]}) == "slower"
    assert change_key({"brightness": [0.2, 0.8]}) == "brighter"
    assert change_key({"key": [0, 7]}) == "key"
    assert change_key({}) == "nothing"


def test_final_answer_is_after_the_last_arrow_and_a_missing_one_is_a_reason():
    assert final_answer("X 0:40 Y 0:12 Z 1:05 Y → X → Z → C") == ("C", None)
    answer, reason = final_answer("onset bass 0:12")
    assert answer == "" and "no final answer" in reason
    assert final_answer("onset bass 0:12 →  ")[1] == "nothing after the last '→'"
    assert target("0:12", "onset bass 0:12 → 0:12", "grounded") == "onset bass 0:12 → 0:12"
    assert target("0:12", "", "grounded") == "→ 0:12"  # a row without labels keeps the format
    assert target("0:12", "onset bass 0:12 → 0:12", "plain") == "0:12"


@pytest.mark.parametrize("seed", range(12))
def test_every_synthetic_trace_agrees_with_the_labels(seed):
    track = generate_track(seed, render_audio=False)
    for qa in build_qas(track, seed):
        answer, reason = final_answer(qa.trace)
        assert reason is None and answer == qa.answer, qa.trace
        assert parse_answer(qa.task, answer).ok
        times = [t for _, t in steps(qa.trace)]
        if qa.task == "TSG":
            src = qa.trace.split()[1]
            assert _label(src) in qa.question  # the trace names the asked source
            runs = track.sources[src]
            truth = runs[0][0] if qa.qa_type == "onset" else runs[-1][1]
            assert times == [round(truth)] * 2
        elif qa.task == "GTO":
            order = GTO_ORDERS[GTO_LETTERS.index(qa.answer)]
            by_name = dict(zip("XYZ", times))
            assert [by_name[n] for n in order] == sorted(times)  # the order the letter names is the times' order
            assert {round(t.time) for t in track.transitions} >= set(times)
        elif qa.task in ("LTR", "TAD"):
            assert parse_time(qa.question.split("at ")[-1].split("?")[0].split(",")[0]).ok or times
        elif qa.task == "MTR":
            assert parse_intervals(answer).ok


def _label(src):
    from must.data.synth import SOURCE_LABELS

    return SOURCE_LABELS[src]


def test_grounded_caption_names_every_entry_and_change_in_time_order():
    track = generate_track(5, render_audio=False)
    text = caption(track)
    for src, runs in track.sources.items():
        assert f"onset {src} {format_time(runs[0][0])}" in text
    for t in track.transitions:
        key, at = change_key(t.change), format_time(t.time)
        assert f"{at} {key} {t.description}" in text  # time → key → wording
        assert f"{key} {at}" in text  # key → time ("onset pad 0:40" or "faster 0:13")
    onsets = sorted((runs[0][0], src) for src, runs in track.sources.items())
    where = [text.index(f"onset {src} {format_time(on)}") for on, src in onsets]
    assert where == sorted(where)  # events in time order


def test_step_reward_on_hand_built_traces():
    ref = "onset bass 0:12 → 0:12"
    assert step_score(ref, ref) == 1.0
    assert step_score("onset bass 0:14 → 0:14", ref) == 1.0  # within 3 s
    assert step_score("onset bass 0:20 → 0:20", ref) == 0.5  # things right, times wrong
    assert step_score("onset drums 0:12 → 0:12", ref) == 0.75  # first thing wrong
    assert step_score("onset bass 0:12", ref) == 0.5  # one of two steps
    gto_ref = "X 0:40 Y 0:12 Z 1:05 Y → X → Z → C"
    assert step_score("X 0:40 Y 0:30 Z 1:05 Y → X → Z → C", gto_ref) == pytest.approx(2.5 / 3)  # 3 steps
    out = trace_step_reward(None, ["onset bass 0:12 → 0:12", "x"], trace=[ref, None], task=["TSG", "TSG"])
    assert out == [1.0, None]


def test_format_reward_and_final_answer_routing():
    ref = "onset bass 0:12 → 0:12"
    assert format_score(ref, ref, "TSG") == 1.0
    assert format_score("bass 0:12 0:13 → 0:12", ref, "TSG") == 0.5
    assert format_score("onset bass 0:12", ref, "TSG") == 0.0
    assert trace_format_reward(None, ["→ C"], trace=[None], task=["LTR"]) == [None]
    cols = dict(task=["TSG", "TSG"], answer=["0:12", "0:12"], duration=[60.0, 60.0],
                answer_format=["grounded", "grounded"])
    good, missing = must_reward(None, ["onset bass 0:30 → 0:12", "onset bass 0:12"], **cols)
    assert good == pytest.approx(1.2)  # the final answer is scored, not the trace's first time
    assert missing == -0.5  # no final answer: bad format
    assert set(REWARDS) >= {"must_reward", "trace_step_reward", "trace_format_reward"}
    assert np.isfinite(good)

"""Parsing model output: every accepted spelling, and misses with reasons (never exceptions)."""

import pytest

from must.parsing import (
    completion_text,
    parse_answer,
    parse_interval,
    parse_intervals,
    parse_option,
    parse_time,
)


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("0:30", 30.0),
        ("00:30", 30.0),
        ("1:05", 65.0),
        ("12:07", 727.0),
        ("1:02:03", 3723.0),
        ("<ANSWER> 00:30", 30.0),
        ("<answer>1:12</answer>", 72.0),
        ("45 s", 45.0),
        ("45.5 seconds", 45.5),
        ("45", 45.0),
        ("The bass enters at 1:05.", 65.0),
        ("0:30.5", 30.5),
    ],
)
def test_times(text, seconds):
    got = parse_time(text)
    assert got.ok and got.value == seconds


@pytest.mark.parametrize(
    "text, reason",
    [
        ("23:76", "impossible time '23:76': seconds field 76 >= 60"),
        ("1:75:00", "impossible time '1:75:00': minutes field 75 >= 60"),
        ("", "empty output"),
        ("   ", "empty output"),
        ("I don't know", "no time found"),
        (None, "empty output"),
    ],
)
def test_time_misses_have_reasons(text, reason):
    got = parse_time(text)
    assert not got.ok and got.value is None and got.reason == reason


def test_clean_flag():
    assert parse_time("0:30").clean and parse_time("<ANSWER> 0:30").clean
    assert not parse_time("It starts at 0:30 I think").clean


@pytest.mark.parametrize(
    "text, intervals",
    [
        ("0:57\u20131:12", [(57.0, 72.0)]),  # en dash, as the benchmark writes it
        ("0:57-1:12", [(57.0, 72.0)]),
        ("0:57 \u2014 1:12", [(57.0, 72.0)]),
        ("0:57 to 1:12", [(57.0, 72.0)]),
        ("57 s to 72 s", [(57.0, 72.0)]),
        ("30-45 s", [(30.0, 45.0)]),
        ("0:10\u20130:20, 0:50\u20131:00", [(10.0, 20.0), (50.0, 60.0)]),
        ("From 0:10 to 0:20 and from 0:15-0:25.", [(10.0, 20.0), (15.0, 25.0)]),
    ],
)
def test_intervals(text, intervals):
    got = parse_intervals(text)
    assert got.ok and got.value == intervals


@pytest.mark.parametrize(
    "text, reason",
    [
        ("1:12-0:57", "interval ends before it starts: 1:12 > 0:57"),
        ("0:23:76-0:24:00", "impossible time '0:23:76': seconds field 76 >= 60"),
        ("0:30", "a single time, not an interval"),
        ("", "empty output"),
        ("the chorus", "no interval found"),
    ],
)
def test_interval_misses(text, reason):
    got = parse_intervals(text)
    assert not got.ok and got.reason == reason


def test_parse_interval_wants_exactly_one():
    assert parse_interval("0:10-0:20").value == (10.0, 20.0)
    assert parse_interval("0:10-0:20, 0:30-0:40").reason == "2 intervals, expected one"


@pytest.mark.parametrize(
    "text", ["C", "(C)", "C.", "Answer: C", "C) the bass enters…", "The answer is C", "**C**", "[C]", "c", "C: louder"]
)
def test_option_dressings(text):
    got = parse_option(text, "ABCD")
    assert got.ok and got.value == "C"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("E", "letter E is not an option (A-D)"),
        ("", "empty output"),
        ("A guitar enters", "no option letter found"),
        ("the bass", "no option letter found"),
    ],
)
def test_option_misses(text, reason):
    got = parse_option(text, "ABCD")
    assert not got.ok and got.reason == reason


def test_chat_format_completions():
    msgs = [{"role": "assistant", "content": "0:42"}]
    assert completion_text(msgs) == "0:42"
    assert parse_time(msgs).value == 42.0
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "(B)"}]}]
    assert parse_option(parts, "ABCD").value == "B"


def test_parse_answer_routes_by_task():
    assert parse_answer("TSG", "0:30").value == 30.0
    assert parse_answer("GTO", "F").value == "F"
    assert parse_answer("LTR", "F").reason == "letter F is not an option (A-D)"
    assert parse_answer("MTR", "0:10-0:20").value == [(10.0, 20.0)]
    assert parse_answer("TAD", "  the drums enter ").value == "the drums enter"
    assert parse_answer("XYZ", "1").reason == "unknown task 'XYZ'"


@pytest.mark.parametrize("junk", ["\x00\x01", "::::", "9" * 5000, "-" * 100, "0:", ":30", "1e999", "\u2013\u2013"])
def test_garbage_never_raises(junk):
    for task in ("TSG", "LTR", "TAD", "GTO", "MTR"):
        parse_answer(task, junk)

"""Rewards: graded, monotone in the error, penalties, None on other tasks, chat-format completions."""

import itertools
import math

import pytest

from must.rewards import (
    RewardConfig,
    description_reward,
    format_reward,
    interval_reward,
    must_reward,
    option_reward,
    reward_components,
    timestamp_reward,
)
from must.timecode import format_interval, format_time


def _tsg(completions, answer="1:00", duration=120.0):
    n = len(completions)
    return {"prompts": ["q"] * n, "completions": completions, "task": ["TSG"] * n, "answer": [answer] * n,
                "duration": [duration] * n}


def test_timestamp_reward_is_exponential_and_monotone():
    errors = [0, 1, 2, 3, 5, 10, 20, 40]
    got = timestamp_reward(**_tsg([format_time(60 + e) for e in errors]))
    assert got[0] == 1.0
    assert got[4] == pytest.approx(math.exp(-1))  # default scale 5 s
    assert all(a > b for a, b in itertools.pairwise(got))
    early = timestamp_reward(**_tsg([format_time(60 - e) for e in errors]))
    assert early == pytest.approx(got)  # symmetric


def test_interval_reward_monotone_in_shift():
    ref = "0:30\u20130:50"
    shifts = [0, 2, 5, 10, 15, 20, 25, 30, 45]
    comps = [format_interval(30 + s, 50 + s) for s in shifts]
    n = len(comps)
    got = interval_reward(prompts=["q"] * n, completions=comps, task=["MTR"] * n, answer=[ref] * n,
                          duration=[200.0] * n)
    assert got[0] == 1.0
    assert all(a > b for a, b in itertools.pairwise(got))  # strictly, through overlap and past it
    assert got[-1] > 0  # a near miss still gets some credit


def test_penalties_and_components():
    comps = ["0:30", "9:59", "23:76", "It is at 0:30", "0:00-2:00"]
    tasks = ["TSG", "TSG", "TSG", "TSG", "MTR"]
    out = reward_components(["q"] * 5, comps, task=tasks, answer=["0:30"] * 4 + ["0:30\u20130:50"], duration=[120.0] * 5)
    cfg = RewardConfig()
    assert out["total"][0] == pytest.approx(1.0 + cfg.format_weight)
    assert out["out_of_range"][1] == cfg.out_of_range_penalty  # 9:59 in a 2-minute track
    assert out["bad_format"][2] == cfg.bad_format_penalty and out["total"][2] == cfg.bad_format_penalty
    assert out["format"][3] == 0.5 and out["total"][3] == pytest.approx(1.0 + 0.5 * cfg.format_weight)
    assert out["degenerate"][4] == cfg.degenerate_penalty  # whole track as the interval
    assert out["total"][4] < out["accuracy"][4]


def test_task_rewards_are_none_on_other_tasks_and_router_covers_all():
    kw = {
        "prompts": ["q"] * 5,
        "completions": ["0:30", "(B)", "0:30-0:50", "the bass enters", "F"],
        "task": ["TSG", "LTR", "MTR", "TAD", "GTO"],
        "answer": ["0:30", "B", "0:30\u20130:50", "the bass enters", "E"],
        "duration": [100.0] * 5,
    }
    assert timestamp_reward(**kw) == [1.0, None, None, None, None]
    assert option_reward(**kw) == [None, 1.0, None, None, 0.0]
    assert interval_reward(**kw)[2] == 1.0
    assert description_reward(**kw)[3] == pytest.approx(1 - 0.5 / 27)
    assert format_reward(**kw) == [1.0] * 5
    total = must_reward(**kw)
    assert all(isinstance(x, float) for x in total) and total[4] == pytest.approx(0.2)


def test_chat_format_completions_and_logging_hook():
    logged = {}
    out = must_reward(
        prompts=[[{"role": "user", "content": "q"}]],
        completions=[[{"role": "assistant", "content": "0:30"}]],
        task=["TSG"], answer=["0:30"], duration=[None], log_metric=lambda k, v: logged.__setitem__(k, v),
    )
    assert out == [pytest.approx(1.2)]
    assert logged["must_reward/accuracy"] == 1.0 and logged["must_reward/format"] == 1.0


def test_option_reward_answers_column_and_empty():
    out = option_reward(prompts=["q", "q"], completions=["", "Answer: C"], task=["LTR", "LTR"],
                        answer=["x", "x"], answers=[["C"], ["C"]])
    assert out == [0.0, 1.0]

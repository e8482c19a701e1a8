"""Rewards of must: TRL-signature reward functions for the five MusTBench tasks and a router."""

from must.rewards.temporal import (
    COMPONENTS,
    RewardConfig,
    description_reward,
    format_reward,
    interval_reward,
    interval_score,
    make_must_reward,
    must_reward,
    option_reward,
    reward_components,
    score_completion,
    timestamp_reward,
    timestamp_score,
)
from must.rewards.trace import trace_format_reward, trace_step_reward

#: Reward functions a recipe can name (``stages.<grpo>.options.rewards``).
REWARDS = {
    "must_reward": must_reward,
    "trace_step_reward": trace_step_reward,
    "trace_format_reward": trace_format_reward,
    "timestamp_reward": timestamp_reward,
    "interval_reward": interval_reward,
    "option_reward": option_reward,
    "description_reward": description_reward,
    "format_reward": format_reward,
}

__all__ = [
    "COMPONENTS",
    "REWARDS",
    "trace_format_reward",
    "trace_step_reward",
    "RewardConfig",
    "description_reward",
    "format_reward",
    "interval_reward",
    "interval_score",
    "make_must_reward",
    "must_reward",
    "option_reward",
    "reward_components",
    "score_completion",
    "timestamp_reward",
    "timestamp_score",
]

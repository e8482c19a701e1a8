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

__all__ = [
    "COMPONENTS",
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

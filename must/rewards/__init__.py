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
    reward_config,
    score_completion,
    timestamp_reward,
    timestamp_score,
    with_config,
)
from must.rewards.trace import trace_format_reward, trace_step_reward

#: Reward functions a recipe can name (``stages.<grpo>.options.reward_funcs``), with the default RewardConfig.
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


def build_rewards(names: list[str], config: dict | None = None, where: str = "options") -> list:
    """The reward functions ``names`` (keys of :data:`REWARDS`) with ``config`` (RewardConfig fields, e.g.
    ``{"time_scale": 2.0}``) bound into those that take one; a wrong name or key is a ConfigError naming it."""
    from must.errors import ConfigError

    unknown = [n for n in names if n not in REWARDS]
    if unknown or not names:
        raise ConfigError(f"{where}.reward_funcs: unknown {unknown or 'empty list'}; choose from {sorted(REWARDS)}")
    cfg = reward_config(config, f"{where}.reward_config")
    return [with_config(REWARDS[n], cfg) for n in names]


__all__ = [
    "COMPONENTS",
    "REWARDS",
    "RewardConfig",
    "build_rewards",
    "description_reward",
    "format_reward",
    "interval_reward",
    "interval_score",
    "make_must_reward",
    "must_reward",
    "option_reward",
    "reward_components",
    "reward_config",
    "score_completion",
    "timestamp_reward",
    "timestamp_score",
    "trace_format_reward",
    "trace_step_reward",
    "with_config",
]

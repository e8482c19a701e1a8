"""The GRPO loss as pure functions on tensors: rewards -> advantages, log-probs -> the clipped surrogate with
its KL term, reduced as TRL's ``loss_type`` says, and the statistics that are logged beside it.

The formulas follow TRL 1.16's ``GRPOTrainer._compute_loss`` (token-level importance sampling), checked
number for number in ``tests/test_grpo_trl.py``. Shapes: R = N*G completions (row ``n * G + g`` is sample g
of prompt n), T completion tokens, V vocabulary, K reward functions.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from trl.trainer.utils import entropy_from_logits, nanstd, selective_log_softmax

from must.errors import ConfigError

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


def group_advantages(rewards: Tensor, num_generations: int, scale: str = "group") -> Tensor:
    """Group-relative advantages, as TRL's ``sum_then_normalize``.

    Args:
        rewards: (N*G,) total reward per completion; NaN marks an unscorable completion (left out of
            its group's mean and std, advantage 0).
        num_generations: G.
        scale: ``group`` divides by the group std + 1e-4, ``batch`` by the batch std, ``none`` not at all.

    Returns:
        (N*G,) advantages.
    """
    if scale not in SCALE_REWARDS:
        raise ConfigError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale!r}")
    grouped = rewards.view(-1, num_generations)
    advantages = grouped - torch.nanmean(grouped, dim=1, keepdim=True)
    if scale == "group":
        advantages = advantages / (nanstd(grouped, dim=1, keepdim=True) + 1e-4)
    elif scale == "batch":
        advantages = advantages / (nanstd(rewards) + 1e-4)
    return torch.nan_to_num(advantages.reshape(-1), nan=0.0)


def informative_groups(rewards: Tensor, num_generations: int) -> Tensor:
    """(N,) bool: groups whose (N*G,) rewards do not all agree, NaNs ignored (these carry a learning signal)."""
    grouped = rewards.view(-1, num_generations)
    spread = torch.nan_to_num(nanstd(grouped, dim=1), nan=0.0)
    return ~torch.isclose(spread, torch.zeros_like(spread))


def token_logps(logits: Tensor, completion_ids: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Log-prob of each completion token and the entropy of each position (no grad; for logging).

    logits (R, T, V), completion_ids (R, T) -> logps (R, T) differentiable, entropy (R, T).
    """
    logits = logits / temperature
    logps = selective_log_softmax(logits, completion_ids)  # TRL's memory-lean log_softmax + gather
    with torch.no_grad():
        entropy = entropy_from_logits(logits)
    return logps, entropy


def clipped_surrogate(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, epsilon_low: float, epsilon_high: float
) -> tuple[Tensor, Tensor]:
    """PPO/GRPO per-token loss ``-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)``, r = exp(logp - old).

    logps, old_logps (R, T); advantages (R,) or (R, T). Returns (per-token loss (R, T), ratio r (R, T)).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    return -torch.min(ratio * advantages, clipped * advantages), ratio


def reference_kl(logps: Tensor, ref_logps: Tensor, ratio: Tensor | None = None) -> Tensor:
    """Per-token k3 estimate of KL(policy || reference): exp(ref - logp) - (ref - logp) - 1, (R, T).

    With ``ratio`` (the importance ratio to the sampling policy, with its gradient) the estimate is
    multiplied by it, as TRL does by default (``use_bias_correction_kl``): the samples come from the
    old policy, so the KL gradient needs the same correction as the surrogate.
    """
    delta = ref_logps - logps
    kl = torch.exp(delta) - delta - 1
    return kl if ratio is None else kl * ratio


def aggregate_loss(
    per_token_loss: Tensor,
    mask: Tensor,
    loss_type: str,
    max_completion_length: int,
    num_items: Tensor | float | None = None,
) -> Tensor:
    """Reduce an (R, T) per-token loss to a scalar, as TRL does for each ``loss_type``.

    ``grpo``: mean over sequences of each sequence's token mean. ``bnpo``: token mean over the batch.
    ``dr_grpo``: token sum / (R * max_completion_length). ``dapo``: token sum / ``num_items`` (the
    tokens of the whole generation batch divided by the number of processes, so DDP's gradient mean
    gives the global token mean; defaults to this batch's token count).
    """
    mask = mask.to(per_token_loss.dtype)
    total = (per_token_loss * mask).sum()
    if loss_type == "grpo":
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return total / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return total / (per_token_loss.size(0) * max_completion_length)
    if loss_type == "dapo":
        items = mask.sum() if num_items is None else torch.as_tensor(num_items, dtype=mask.dtype)
        return total / items.clamp(min=1.0)
    raise ConfigError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def clip_fractions(
    ratio: Tensor, advantages: Tensor, mask: Tensor, epsilon_low: float, epsilon_high: float
) -> dict[str, Tensor]:
    """Share of completion tokens whose ratio was clipped: ``low`` (A < 0), ``high`` (A > 0), ``region`` (either)."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    low = (ratio < 1 - epsilon_low) & (advantages < 0)
    high = (ratio > 1 + epsilon_high) & (advantages > 0)
    return {k: masked_mean(v.float(), mask) for k, v in (("low", low), ("high", high), ("region", low | high))}


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over the positions where mask is 1 (0 when there are none)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def reward_name(func: Callable) -> str:
    """A reward function's log name: its ``__name__`` (or its class name for callable objects)."""
    return getattr(func, "__name__", type(func).__name__)


def score(
    reward_funcs: Sequence[Callable],
    prompts: list,
    completions: list[str],
    columns: dict[str, list],
) -> tuple[Tensor, dict[str, list[float]]]:
    """Call each reward function once on the whole batch, as TRL does (``log_metric`` included).

    Returns (R, K) float rewards (NaN where a function returned None), and what the functions logged
    through ``log_metric(name, value)`` (e.g. the router's components), name -> values.
    """
    table, logged = [], defaultdict(list)

    def log_metric(name: str, value: float) -> None:
        logged[name].append(float(value))

    for func in reward_funcs:
        values = func(prompts=prompts, completions=completions, log_metric=log_metric, **columns)
        table.append([math.nan if v is None else float(v) for v in values])
    rewards = torch.tensor(table, dtype=torch.float32).T.reshape(len(completions), len(reward_funcs))
    return rewards, dict(logged)


def total_reward(rewards_per_func: Tensor, weights: Tensor) -> Tensor:
    """(R, K) rewards, (K,) weights -> (R,) weighted sum ignoring NaN; NaN when every function returned None."""
    total = (rewards_per_func * weights).nansum(dim=1)
    return total.masked_fill(torch.isnan(rewards_per_func).all(dim=1), math.nan)

"""GRPO math on hand-built numbers: advantages, informative groups, clipping at both ends, KL, loss aggregation."""

import math

import pytest
import torch

from must.rl.losses import (
    aggregate_loss,
    clip_fractions,
    clipped_surrogate,
    group_advantages,
    informative_groups,
    reference_kl,
    score,
    total_reward,
)

NAN = math.nan


def test_group_advantages_mean_centred_and_std_scaled():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    std = math.sqrt(1 / 3)  # Bessel-corrected std of (1, 0, 0, 1)
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]) / torch.tensor([std + 1e-4] * 4 + [1e-4] * 4)
    torch.testing.assert_close(group_advantages(rewards, 4, "group"), expected)
    torch.testing.assert_close(group_advantages(rewards, 4, "none"), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    batch_std = torch.std(rewards).item()
    torch.testing.assert_close(
        group_advantages(rewards, 4, "batch"), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]) / (batch_std + 1e-4)
    )


def test_unscorable_completions_leave_the_baseline_and_get_zero_advantage():
    rewards = torch.tensor([3.0, NAN, 1.0, 2.0])
    adv = group_advantages(rewards, 4, "none")
    torch.testing.assert_close(adv, torch.tensor([1.0, 0.0, -1.0, 0.0]))


def test_informative_groups_drop_groups_whose_rewards_agree():
    rewards = torch.tensor([1, 1, 1, 1, 0, 1, 0, 0, NAN, 0.5, 0.5, 0.5, NAN, NAN, NAN, NAN])
    assert informative_groups(rewards, 4).tolist() == [False, True, False, False]


def test_clipping_at_both_ends():
    # ratios 1.5 and 0.5 against eps_low 0.2, eps_high 0.28, advantages +1 and -1
    old = torch.zeros(1, 4)
    logps = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.5]])).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, ratio = clipped_surrogate(logps, old, adv, 0.2, 0.28)
    # r=1.5,A=+1: clipped at 1.28; r=0.5,A=-1: clipped at 0.8; r=0.5,A=+1 and r=1.5,A=-1: unclipped (pessimistic)
    torch.testing.assert_close(loss, torch.tensor([[-1.28, 0.8, -0.5, 1.5]]))
    loss.sum().backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[0.0, 0.0, -0.5, 1.5]]))  # no gradient where clipped
    fr = clip_fractions(ratio, adv, torch.ones(1, 4), 0.2, 0.28)
    assert (fr["low"].item(), fr["high"].item(), fr["region"].item()) == (0.25, 0.25, 0.5)


def test_reference_kl_k3():
    logps = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.0, -1.0]])
    torch.testing.assert_close(reference_kl(logps, ref), torch.tensor([[0.0, math.e - 2.0]]))
    torch.testing.assert_close(reference_kl(logps, ref, torch.tensor([[2.0, 2.0]])), torch.tensor([[0.0, 2 * (math.e - 2)]]))


def test_loss_aggregation_by_type():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate_loss(per_token, mask, "grpo", 5).item() == pytest.approx((2.0 + 4.0) / 2)
    assert aggregate_loss(per_token, mask, "bnpo", 5).item() == pytest.approx(10 / 4)
    assert aggregate_loss(per_token, mask, "dapo", 5).item() == pytest.approx(10 / 4)
    assert aggregate_loss(per_token, mask, "dapo", 5, num_items=8.0).item() == pytest.approx(10 / 8)
    assert aggregate_loss(per_token, mask, "dr_grpo", 5).item() == pytest.approx(10 / (2 * 5))
    from must.errors import ConfigError  # here, not at the top: the GRPO imports above are being moved

    with pytest.raises(ConfigError, match=r"loss_type must be one of .*got 'ppo'"):
        aggregate_loss(per_token, mask, "ppo", 5)


def test_rewards_weighted_with_none_as_not_applicable():
    def a(prompts, completions, log_metric=None, **kw):
        log_metric("a/part", 0.25)  # TRL's hook for per-component logging
        return [1.0, None, 0.5]

    def b(prompts, completions, **kw):
        return [2.0, None, None]

    per_func, logged = score([a, b], ["p"] * 3, ["x", "y", "z"], {})
    assert logged == {"a/part": [0.25]}
    assert per_func.shape == (3, 2)
    total = total_reward(per_func, torch.tensor([1.0, 0.5]))
    assert total[0].item() == 2.0 and math.isnan(total[1].item()) and total[2].item() == 0.5

"""Our GRPO loss against TRL 1.16's own ``GRPOTrainer._compute_loss``, run on the same logits, advantages and masks.

TRL's method is called unbound on a stand-in ``self`` that carries exactly the attributes it reads
(from a real ``GRPOConfig``), and whose log-prob helper returns TRL's ``selective_log_softmax`` of the
given logits. So the check is against TRL's code, not a transcription of it.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import selective_log_softmax

from must.rl.losses import aggregate_loss, clip_fractions, clipped_surrogate, reference_kl, token_logps

B, T, V, MAX_LEN = 6, 5, 11, 7


@pytest.fixture(scope="module")
def args(tmp_path_factory):
    """One real GRPOConfig (building it is slow); loss type and beta are read from ``self``, not from it."""
    out = tmp_path_factory.mktemp("trl")
    return GRPOConfig(output_dir=str(out), report_to="none", use_cpu=True, epsilon=0.2, epsilon_high=0.28,
                      max_completion_length=MAX_LEN)


def trl_self(args, loss_type, beta, logps, entropies):
    accelerator = SimpleNamespace(
        num_processes=1,
        reduce=lambda x, reduction="sum": x,
        gather=lambda x: x,
        gather_for_metrics=lambda x: x,
    )
    return SimpleNamespace(
        args=args, beta=beta, loss_type=loss_type, epsilon_low=args.epsilon, epsilon_high=args.epsilon_high,
        importance_sampling_level=args.importance_sampling_level, top_entropy_quantile=args.top_entropy_quantile,
        off_policy_mask_threshold=args.off_policy_mask_threshold, use_vllm=False,
        vllm_importance_sampling_correction=args.vllm_importance_sampling_correction,
        max_completion_length=MAX_LEN, current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
        aux_loss_enabled=False, model=SimpleNamespace(training=True), accelerator=accelerator,
        _metrics={"train": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, entropies, None),
    )


def case(seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 3:] = 0
    mask[4, 1:] = 0
    advantages = torch.randn(B, generator=g)
    # old and reference log-probs far enough off that both clip ends trigger
    old = selective_log_softmax(logits + 0.6 * torch.randn(B, T, V, generator=g), ids)
    ref = selective_log_softmax(logits + 0.3 * torch.randn(B, T, V, generator=g), ids)
    return logits, ids, mask, advantages, old, ref


@pytest.mark.parametrize("beta", [0.0, 0.05])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_loss_and_gradient_match_trl(args, loss_type, beta):
    logits, ids, mask, advantages, old, ref = case(seed=3)
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": ids, "completion_mask": mask, "advantages": advantages,
        "old_per_token_logps": old, "num_items_in_batch": mask.sum(),
    }
    if beta:
        inputs["ref_per_token_logps"] = ref

    theirs_logits = logits.clone().requires_grad_()
    theirs_logps = selective_log_softmax(theirs_logits, ids)
    fake = trl_self(args, loss_type, beta, theirs_logps, torch.zeros(B, T))
    theirs = GRPOTrainer._compute_loss(fake, None, inputs)
    theirs.backward()

    ours_logits = logits.clone().requires_grad_()
    logps, _ = token_logps(ours_logits, ids)
    per_token, ratio = clipped_surrogate(logps, old, advantages, 0.2, 0.28)
    if beta:
        per_token = per_token + beta * reference_kl(logps, ref, ratio)
    ours = aggregate_loss(per_token, mask, loss_type, MAX_LEN, num_items=mask.sum())
    ours.backward()

    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_logits.grad, theirs_logits.grad, atol=1e-5, rtol=1e-5)
    clipped = clip_fractions(ratio.detach(), advantages, mask, 0.2, 0.28)
    assert clipped["low"] > 0 and clipped["high"] > 0  # the case exercises both ends
    for ours_key, trl_key in (("low", "low_mean"), ("high", "high_mean"), ("region", "region_mean")):
        assert clipped[ours_key].item() == pytest.approx(fake._metrics["train"][f"clip_ratio/{trl_key}"][0], abs=1e-6)
    if beta:
        kl = fake._metrics["train"]["kl"][0]
        ours_kl = reference_kl(logps, ref, ratio).detach()
        assert ((ours_kl * mask).sum() / mask.sum()).item() == pytest.approx(kl, abs=1e-6)


def test_single_pass_ratio_is_one_as_in_trl(args):
    """With one optimisation pass TRL uses the detached current log-probs as the old ones; so do we."""
    logits, ids, mask, advantages, _, _ = case(seed=5)
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": ids, "completion_mask": mask, "advantages": advantages, "num_items_in_batch": mask.sum(),
    }
    theirs_logps = selective_log_softmax(logits, ids)
    theirs = GRPOTrainer._compute_loss(trl_self(args, "dapo", 0.0, theirs_logps, torch.zeros(B, T)), None, inputs)
    logps, _ = token_logps(logits, ids)
    per_token, ratio = clipped_surrogate(logps, logps.detach(), advantages, 0.2, 0.28)
    assert torch.all(ratio == 1)
    torch.testing.assert_close(aggregate_loss(per_token, mask, "dapo", MAX_LEN), theirs, atol=1e-6, rtol=1e-6)

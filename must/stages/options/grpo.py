"""The ``options:`` of a ``grpo`` stage, in a module free of torch and lightning so that checking a
recipe (``must validate``) does not import the stage; ``must.stages.grpo.Options`` is this class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Optional

from must.stages.options.groups import Evaluation, Optimisation, Parameters

#: Reward functions a recipe can name: the keys of ``must.rewards.REWARDS`` (that module imports torch; a test keeps
#: the two equal), so a wrong name is refused when the recipe loads.
RewardName = Literal["must_reward", "trace_step_reward", "trace_format_reward", "timestamp_reward", "interval_reward",
                     "option_reward", "description_reward", "format_reward"]


@dataclass
class Options(Optimisation, Parameters, Evaluation):
    """The ``options:`` block of a ``grpo`` stage."""

    batch_size: int = 4
    """Dataset items per optimisation step; each brings ``questions_per_clip`` prompts (text rows: one)."""
    questions_per_clip: int = 1
    """Audio data: questions asked of each clip in a step (they share one audio encoding)."""
    num_generations: int = 8
    """G, completions sampled per prompt."""
    max_completion_length: int = 16
    """Longest completion, tokens (temporal answers are short)."""
    temperature: float = 1.0
    """Sampling temperature; the log-probs of the loss use the same one, as TRL does."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    train: Optional[List[str]] = None
    """Parameter globs to train (None: the projector, the time embedding, and the LLM's LoRA if it has one,
    else the LLM; the music encoder cannot train here)."""
    lr: float = 1e-5
    """AdamW learning rate (default for parameters no ``lrs`` glob matches)."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up, steps."""
    schedule: Literal["cosine", "constant"] = "constant"
    """After warm-up: ``cosine`` decay to 10 % at ``trainer.max_steps``, or ``constant``."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 = off); GRPO optimises by hand, so ``trainer.gradient_clip_val`` is refused here."""
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "dapo"
    """Loss aggregation: ``grpo`` (per-sequence mean), ``dr_grpo`` (over B * max length), ``dapo`` / ``bnpo`` (per token)."""
    epsilon_low: float = 0.2
    """Lower clip: the ratio is clipped at 1 - epsilon_low."""
    epsilon_high: float = 0.28
    """Upper clip: the ratio is clipped at 1 + epsilon_high (DAPO's clip-higher; TRL's default is 0.2)."""
    beta: float = 0.0
    """KL weight to the reference (the policy with its adapters off); 0 runs no reference pass."""
    num_iterations: int = 1
    """Optimisation passes over one batch of rollouts (mu in the GRPO paper)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the group std (``group``), the batch std (``batch``), or not (``none``, Dr. GRPO)."""
    refill_groups: bool = True
    """Drop groups whose rewards all agree and refill the batch with fresh prompts (DAPO)."""
    max_refills: int = 2
    """Extra sampling rounds per step to refill dropped groups; after that the batch keeps what it has."""
    mask_truncated_completions: bool = False
    """Leave completions that hit the length limit without EOS out of the loss."""
    reward_funcs: List[RewardName] = field(default_factory=lambda: ["must_reward"])
    """Reward functions by name (``must.rewards.REWARDS``; TRL's ``reward_funcs``): ``must_reward`` scores the
    final answer; ``trace_step_reward`` / ``trace_format_reward`` credit a grounded trace's steps and shape."""
    reward_weights: dict[str, float] = field(default_factory=dict)
    """Weight of each reward function by name (missing names weigh 1.0; TRL's ``reward_weights``)."""
    reward_config: dict[str, float] = field(default_factory=dict)
    """Settings of the temporal rewards (``must.rewards.RewardConfig`` fields, e.g. ``time_scale: 2.0``);
    missing ones keep their defaults."""
    share_prefix: bool = True
    """Run each prompt once per group in sampling and in the loss (off: the plain path, for comparison)."""
    kl_importance_correction: bool = True
    """Multiply the KL estimate by the importance ratio (TRL's ``use_bias_correction_kl``)."""
    disable_dropout: bool = True
    """Zero every dropout so the first pass's log-probs are the old policy's."""
    log_rollouts_every_n_steps: int = 10
    """Log a rollout table (audio, question, reference, each answer with its reward components, a
    timeline) and reward histograms per task every N rollout batches; 0 turns it off."""

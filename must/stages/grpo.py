"""Stage 4: GRPO — reinforcement learning with temporal rewards.

One training step:

1. take ``batch_size`` prompts; the policy *encodes* them once (for MusicLALM: the frozen audio
   encoder; the result is reused for the G samples and for every log-prob pass below);
2. sample G completions per prompt with :func:`must.rl.decoding.sample` (one prefill per prompt, its
   cache expanded to the G samples, rows stop at EOS);
3. score them with the reward functions (TRL signature ``f(prompts, completions, **columns)``), one
   call per function for the whole batch; weighted sum, ``None`` = not applicable;
4. group refill (DAPO's dynamic sampling, ``refill_groups``): groups whose rewards all agree carry no
   signal (zero advantage); drop them and sample fresh prompts to refill the batch, up to ``max_refills`` times;
5. group-relative advantages (mean-centred, optionally divided by the group std);
6. ``num_iterations`` optimisation passes over the batch: clipped surrogate with separate low/high
   clip, plus ``beta`` times the k3 KL to the reference (the policy with its LoRA adapters off).

The pieces live in :mod:`must.rl`: the loss maths (``losses``), the policy protocol and policies
(``policy``), rollouts and group refill (``rollouts``), prompt datasets (``data``), LM decoding
(``decoding``). This module wires them into a ``LightningModule``.

Speed notes (issue 6). The old-policy log-probs of the first pass are its own, detached (the weights
have not moved yet), so there is never a separate "old" forward: with ``num_iterations == 1`` the
ratio is exactly 1, with more passes the first pass stores them for the next ones. ``beta == 0``
runs no reference pass. The prompt is run once per prompt in the training forward too
(:func:`must.rl.decoding.completion_logits`).

The formulas follow TRL 1.16's ``GRPOTrainer._compute_loss`` (token-level importance sampling),
checked number for number in ``tests/test_grpo_trl.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from must.data.datasets import mustbench_tracks
from must.errors import ConfigError, MustError
from must.rl.data import PromptBatches, QAPrompts, SynthTracks, refill_rows
from must.rl.decoding import completion_logits
from must.rl.losses import (
    LOSS_TYPES,
    SCALE_REWARDS,
    aggregate_loss,
    clip_fractions,
    clipped_surrogate,
    group_advantages,
    informative_groups,
    masked_mean,
    reference_kl,
    reward_name,
    token_logps,
)
from must.rl.policy import MusicPolicy, Policy, adapters_off, check_policy, has_adapters
from must.rl.rollouts import (
    Rollouts,
    cat_rollouts,
    completion_token_ids,
    refill_groups,
    rollout_stats,
    sample_completions,
    score_rollouts,
)
from must.rl.timing import Timings, timed
from must.stages.options.grpo import Options


def train_globs(model: nn.Module, options: Options) -> tuple[list[str], list[str]]:
    """What GRPO trains, as (train, freeze) parameter globs: ``options.train``, or by default what stage 3 trains:
    projector, time embedding, the LLM's LoRA (the whole LLM when it has none). Pure; the stage and ``must plan``
    call it."""
    from must.models import params

    if options.train is not None:
        return list(options.train), list(options.freeze)
    llm = "llm.*lora_*" if has_adapters(model.llm) else "llm.*"
    names = [n for n, _ in model.named_parameters()]
    return [p for p in ("projector.*", "time_embedding.*", llm) if any(params.matches(n, [p]) for n in names)], list(options.freeze)


def set_trainable(model: nn.Module, train: Sequence[str], freeze: Sequence[str] = ()) -> None:
    """Train ``train`` minus ``freeze`` (globs over parameter names). The music encoder must stay frozen: its
    output is computed once per prompt and cached without gradients."""
    from must.stages import common

    common.set_trainable(model, train, freeze)
    if any(p.requires_grad for n, p in model.named_parameters() if n.startswith("encoder.")):
        raise ConfigError("options.train: the music encoder cannot train in grpo (its output is cached per prompt)")


def check_options(o: Options) -> None:
    """Refuse option values GRPO cannot run with, naming the key."""
    if o.loss_type not in LOSS_TYPES:
        raise ConfigError(f"options.loss_type: one of {LOSS_TYPES}, got {o.loss_type!r}")
    if o.scale_rewards not in SCALE_REWARDS:
        raise ConfigError(f"options.scale_rewards: one of {SCALE_REWARDS}, got {o.scale_rewards!r}")
    for key, ok, need in (
        ("num_generations", o.num_generations >= 2, "at least 2 (advantages compare samples of one prompt)"),
        ("batch_size", o.batch_size >= 1, "at least 1"),
        ("num_iterations", o.num_iterations >= 1, "at least 1"),
        ("max_completion_length", o.max_completion_length >= 1, "at least 1"),
        ("temperature", o.temperature > 0, "above 0"),
        ("top_p", 0 < o.top_p <= 1, "in (0, 1]"),
        ("epsilon_low", 0 <= o.epsilon_low < 1, "in [0, 1)"),
        ("epsilon_high", o.epsilon_high >= 0, "at least 0"),
    ):
        if not ok:
            raise ConfigError(f"options.{key}: must be {need}, got {getattr(o, key)!r}")


class GRPOStage(L.LightningModule):
    """Stage 4: GRPO on any :class:`~must.rl.policy.Policy` (see the module docstring).

    ``reward_funcs`` are called as TRL does; ``timings`` (a :class:`~must.rl.timing.Timings`), when given,
    collects where the time goes (for benchmarks).
    """

    Options = Options
    train_globs = staticmethod(train_globs)

    def __init__(
        self,
        policy: Policy,
        reward_funcs: Sequence[Callable],
        train_data: Any,
        options: Options | None = None,
        eval_fn: Callable[[nn.Module, Path, str], dict] | None = None,
        seed: int = 0,
        stage_dir: Path | None = None,
        timings: Timings | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False  # several optimiser passes per batch of rollouts
        check_policy(policy)
        self.policy, self.reward_funcs, self.train_data = policy, list(reward_funcs), train_data
        self.options = o = options or Options()
        self.eval_fn, self.seed, self.stage_dir, self.timings = eval_fn, seed, stage_dir, timings
        check_options(o)
        if not self.reward_funcs:
            raise ConfigError("a grpo stage needs at least one reward function")
        names = [reward_name(f) for f in self.reward_funcs]
        unknown = set(o.reward_weights) - set(names)
        if unknown:
            raise ConfigError(f"options.reward_weights: no reward function named {sorted(unknown)} (have {names})")
        self.reward_names = names
        self.register_buffer("reward_weights", torch.tensor([o.reward_weights.get(n, 1.0) for n in names]), False)
        if o.beta != 0.0 and not has_adapters(policy.lm):
            raise ConfigError("options.beta > 0 needs a LoRA (peft) policy: the reference is the policy with adapters off")
        if o.disable_dropout:
            for module in policy.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
        tok = policy.tokenizer
        eos = tok.eos_token_id
        self.eos_token_ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_token_ids[0]

    # -- construction from a recipe -----------------------------------------------------------

    @classmethod
    def from_context(cls, ctx: Any) -> GRPOStage:
        """Build the stage from the recipe: MusicLALM from ``ctx.init_dir`` (or ``recipe.model``), QA prompts
        from ``recipe.data``, rewards from :mod:`must.rewards` (``reward_funcs`` with ``reward_config`` bound)."""
        from must.rewards import build_rewards
        from must.stages import common

        o = ctx.options
        rewards = build_rewards(list(o.reward_funcs), dict(o.reward_config), f"stages.{ctx.stage.name}.options")
        cfg = ctx.recipe.data
        common.check_data_source(cfg, ctx.stage.name)
        model = common.build_model(ctx)
        set_trainable(model, *train_globs(model, o))
        policy = MusicPolicy(model, cfg.sample_rate, common.EncodingCache(cfg.encoding_cache_bytes))
        real = cfg.source == "mustbench"
        # A MusTBench parquet carries every reward column (task, answer, answers; duration from the audio).
        tracks = mustbench_tracks(cfg, cfg.train_split)[0] if real else SynthTracks(cfg, "train")
        data = QAPrompts(tracks, o.questions_per_clip, ctx.seed, model.cfg.answer_format)

        def evaluate(policy: MusicPolicy, out_dir: Path, name: str) -> dict:
            return common.evaluate(policy.model, cfg, out_dir, name, o.eval_max_new_tokens, o.eval_max_tracks)

        return cls(policy, rewards, data, o, eval_fn=evaluate, seed=ctx.seed, stage_dir=ctx.stage_dir)

    def save_model(self, path: Path) -> None:
        """Write the policy folder the next stage (or a user) loads."""
        self.policy.save_pretrained(Path(path))

    def evaluate(self, out_dir: Path, name: str) -> dict:
        """Score the policy (when the stage was given an evaluator): ``eval_fn(policy, out_dir, name)``."""
        return self.eval_fn(self.policy, Path(out_dir), name) if self.eval_fn else {}

    # -- Lightning --------------------------------------------------------------------------------

    def configure_optimizers(self):
        """The shared AdamW and schedule of every stage (:func:`must.stages.common.optimizer_config`)."""
        from must.stages import common

        if not any(p.requires_grad for p in self.policy.parameters()):
            raise MustError("grpo: the policy has no trainable parameters")
        return common.optimizer_config(self.policy, self.options, common.total_steps(self.trainer))

    def train_dataloader(self) -> DataLoader:
        """Endless, resumable order (:class:`must.resume.StepSampler`): a resumed stage reads the next prompts."""
        from must.resume import step_sampler

        o = self.options
        # Each batch of rollouts makes num_iterations optimizer steps.
        sampler = step_sampler(self, len(self.train_data), o.batch_size, self.seed,
                               steps_per_batch=o.num_iterations)
        return DataLoader(PromptBatches(self.train_data, sampler, o.batch_size), batch_size=None)

    def training_step(self, rows: list[dict], batch_idx: int) -> Tensor:
        o, G = self.options, self.options.num_generations
        roll, stats = self.collect(rows)
        ref_logps = self._reference_logps(roll) if o.beta != 0.0 else None
        advantages = group_advantages(roll.rewards, G, o.scale_rewards).to(self.device)
        mask = roll.completion_mask
        if o.mask_truncated_completions:
            mask = mask * roll.finished.unsqueeze(1)
        num_items = self._num_items(mask)
        opt, sched = self.optimizers(), self.lr_schedulers()
        old_logps = None
        for _ in range(o.num_iterations):
            with timed(self.timings, "update"):
                loss, logps, pass_stats = self.policy_loss(roll, advantages, mask, old_logps, ref_logps, num_items)
                opt.zero_grad(set_to_none=True)
                self.manual_backward(loss)  # under DDP, Lightning re-arms the gradient sync for each pass
                if o.max_grad_norm > 0:
                    self.clip_gradients(opt, gradient_clip_val=o.max_grad_norm, gradient_clip_algorithm="norm")
                opt.step()
                sched.step()  # manual optimisation: Lightning steps no scheduler; one step per optimiser step
            if old_logps is None and o.num_iterations > 1:
                old_logps = logps.detach()  # the first pass ran on the weights that sampled: the old policy
            stats.update(pass_stats)  # the last pass's ratios are the informative ones
        bar = {"reward", "train/loss"}
        n = len(roll.rows)
        self.log_dict({k: v for k, v in stats.items() if k in bar}, on_step=True, prog_bar=True, batch_size=n)
        self.log_dict({k: v for k, v in stats.items() if k not in bar}, on_step=True, batch_size=n)
        every = o.log_rollouts_every_n_steps
        # Counted in rollout batches (batch_idx): global_step advances num_iterations per batch.
        if every and batch_idx % every == 0 and getattr(self, "stage_dir", None) is not None:
            self._log_rollouts(roll)
        return loss.detach()

    def _log_rollouts(self, roll: Rollouts) -> None:
        """A rollout table and reward histograms per task (W&B media, or files under ``stage_dir/media``)."""
        from must.tracking import group_by_task, log_reward_histograms, log_rollout_table, rollout_rows

        if "task" not in roll.rows[0]:  # text-only rows (e.g. the TRL comparison) have no timeline to draw
            return
        G = self.options.num_generations
        completions = self.policy.decode(completion_token_ids(roll.completion_ids, roll.completion_mask))
        components = {name: roll.rewards_per_func[:, i].tolist() for i, name in enumerate(self.reward_names)}
        components["total"] = roll.rewards.tolist()
        sample_rate = getattr(self.policy, "sample_rate", 16000)
        rows = rollout_rows(roll.rows, completions, G, sample_rate, limit=4, components=components)
        log_rollout_table(self.logger, rows, self.global_step, self.stage_dir)
        tasks = [r["task"] for r in roll.rows for _ in range(G)]
        log_reward_histograms(self.loggers, group_by_task(tasks, roll.rewards.tolist()), self.global_step,
                              self.stage_dir)

    # -- rollouts ---------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, rows: list[dict]) -> tuple[Rollouts, dict[str, list[float]]]:
        """Encode N prompts once, sample G completions each, score them. Returns rollouts and components."""
        t = self.timings
        with timed(t, "encode"):
            encoded = self.policy.encode(rows)
        with timed(t, "sample"):
            samples = sample_completions(self.policy, encoded, self.options, self.eos_token_ids, self.pad_token_id,
                                         timings=None if t is None else t.seconds)
        with timed(t, "reward"):
            roll, components = score_rollouts(self.policy, rows, encoded, samples, self.reward_funcs,
                                              self.reward_weights, self.options.num_generations)
        if t is not None:
            t.counts["rollouts"] += roll.completion_ids.size(0)
        return roll, components

    def collect(self, rows: list[dict]) -> tuple[Rollouts, dict[str, float]]:
        """Sample and score ``rows``; with ``refill_groups``, replace groups whose rewards all agree."""
        o, G = self.options, self.options.num_generations
        components: list[dict] = []

        def draw(rows: list[dict]) -> Rollouts:
            roll, logged = self.generate(rows)
            components.append(logged)
            return roll

        def refill(round_: int) -> Rollouts:
            return draw(self._refill_rows(round_, self.global_step))

        roll = draw(rows)
        everything = [roll]
        stats = {"frac_reward_zero_std": 1.0 - informative_groups(roll.rewards, G).float().mean().item()}
        if o.refill_groups:
            roll, extra = refill_groups(roll, refill, G, o.max_refills, self.pad_token_id)
            everything += extra
            stats["refills"] = float(len(extra))
        stats.update(rollout_stats(cat_rollouts(everything, self.pad_token_id), components, self.reward_names))
        return roll, stats

    def _refill_rows(self, round_: int, step: int) -> list[dict]:
        """This process's fresh batch for refill round ``round_`` of step ``step`` (:func:`must.rl.data.refill_rows`)."""
        return refill_rows(self.train_data, self.options.batch_size, self.global_rank, step, round_)

    # -- the loss ---------------------------------------------------------------------------------

    def _logits(self, roll: Rollouts) -> Tensor:
        """(N*G, T, V) logits over the completions, prompts run once per group."""
        embeds, mask = self.policy.embed(roll.encoded)
        lm, G = self.policy.lm, self.options.num_generations
        return completion_logits(lm, embeds, mask, roll.completion_ids, G, share_prefix=self.options.share_prefix)

    @torch.no_grad()
    def _reference_logps(self, roll: Rollouts) -> Tensor:
        """Completion log-probs under the reference: the same policy with its LoRA adapters switched off."""
        with timed(self.timings, "reference"), adapters_off(self.policy.lm):
            logps, _ = token_logps(self._logits(roll), roll.completion_ids, self.options.temperature)
        return logps

    def _num_items(self, mask: Tensor) -> Tensor:
        """Completion tokens of the whole batch over all processes, divided by their number (dapo's normaliser)."""
        local = mask.sum().float()
        if self._trainer is None or self.trainer.world_size == 1:
            return local
        return self.trainer.strategy.reduce(local, reduce_op="mean")

    def policy_loss(
        self,
        roll: Rollouts,
        advantages: Tensor,
        mask: Tensor,
        old_logps: Tensor | None,
        ref_logps: Tensor | None,
        num_items: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        """One pass: (scalar loss, (N*G, T) log-probs with grad, logged statistics; the loss as ``train/loss``)."""
        o = self.options
        logps, entropy = token_logps(self._logits(roll), roll.completion_ids, o.temperature)
        old = logps.detach() if old_logps is None else old_logps  # first pass: ratio exactly 1
        per_token, ratio = clipped_surrogate(logps, old, advantages, o.epsilon_low, o.epsilon_high)
        stats = {}
        if ref_logps is not None:
            kl = reference_kl(logps, ref_logps, ratio if o.kl_importance_correction else None)
            per_token = per_token + o.beta * kl
            stats["kl"] = masked_mean(kl.detach(), mask).item()
        loss = aggregate_loss(per_token, mask, o.loss_type, o.max_completion_length, num_items)
        clipped = clip_fractions(ratio.detach(), advantages, mask, o.epsilon_low, o.epsilon_high)
        stats.update({f"clip_ratio/{k}": v.item() for k, v in clipped.items()})
        stats["entropy"] = masked_mean(entropy, mask).item()
        stats["train/loss"] = loss.item()
        return loss, logps, stats

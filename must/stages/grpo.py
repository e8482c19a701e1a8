"""Stage 4: GRPO — reinforcement learning with temporal rewards.

One training step:

1. take ``batch_size`` prompts; the policy *encodes* them once (for MusicLALM: the frozen audio
   encoder; the result is reused for the G samples and for every log-prob pass below);
2. sample G completions per prompt with :func:`must.sampling.sample` (one prefill per prompt, its
   cache expanded to the G samples, rows stop at EOS);
3. score them with the reward functions (TRL signature ``f(prompts, completions, **columns)``), one
   call per function for the whole batch; weighted sum, ``None`` = not applicable;
4. dynamic sampling (DAPO): groups whose rewards all agree carry no signal (zero advantage); drop
   them and sample fresh prompts to refill the batch, up to ``max_refills`` times;
5. group-relative advantages (mean-centred, optionally divided by the group std);
6. ``num_iterations`` optimisation passes over the batch: clipped surrogate with separate low/high
   clip, plus ``beta`` times the k3 KL to the reference (the policy with its LoRA adapters off).

Speed notes (issue 6). The old-policy log-probs of the first pass are its own, detached (the weights
have not moved yet), so there is never a separate "old" forward: with ``num_iterations == 1`` the
ratio is exactly 1, with more passes the first pass stores them for the next ones. ``beta == 0``
runs no reference pass. The prompt is run once per prompt in the training forward too
(:func:`must.sampling.completion_logits`).

The formulas follow TRL 1.16's ``GRPOTrainer._compute_loss`` (token-level importance sampling),
checked number for number in ``tests/test_grpo_trl.py``.

The policy is any ``nn.Module`` with (duck-typed, no base class):

- ``lm``: the Hugging Face causal LM (a peft model when LoRA is on);
- ``tokenizer``: decodes completions; its EOS / pad ids end and fill them;
- ``encode(rows) -> list``: one item per prompt row, the expensive part computed once (no grad);
- ``embed(items) -> (embeds (B, P, D), mask (B, P))``: left-padded prompt embeddings, differentiable
  (for MusicLALM the cheap trainable projector runs here);
- ``save_pretrained(path)``.

:class:`TextPolicy` is that object for a text-only causal LM (rows carry a ``prompt`` string).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn
from torch.utils.data import DataLoader
from trl.trainer.utils import entropy_from_logits, nanstd, selective_log_softmax

from must.errors import ConfigError, MustError
from must.sampling import completion_logits, sample
from must.stages.options.grpo import Options

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


# ----------------------------------------------------------------------------------------- pure functions


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


# ----------------------------------------------------------------------------------------- text policy


class TextPolicy(nn.Module):
    """A GRPO policy over a text-only Hugging Face causal LM; rows carry their prompt text under ``prompt``."""

    def __init__(self, lm: nn.Module, tokenizer: Any, prompt_key: str = "prompt"):
        super().__init__()
        self.lm, self.tokenizer, self.prompt_key = lm, tokenizer, prompt_key

    def encode(self, rows: list[dict]) -> list[Tensor]:
        """One (P_i,) token-id tensor per row (nothing is frozen in a text prompt: this is just tokenizing)."""
        texts = [row[self.prompt_key] for row in rows]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        device = self.lm.get_input_embeddings().weight.device
        return [torch.tensor(x, dtype=torch.long, device=device) for x in ids]

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Completion ids as text (special tokens dropped)."""
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def embed(self, items: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Left-pad the token ids and look up their embeddings: (B, P, D), (B, P)."""
        ids, mask = left_pad(items, self.tokenizer.pad_token_id)
        return self.lm.get_input_embeddings()(ids), mask

    def save_pretrained(self, path: Path) -> None:
        """Write the LM (adapters only when it is a peft model) and the tokenizer."""
        self.lm.save_pretrained(path)
        self.tokenizer.save_pretrained(path)


def left_pad(seqs: Sequence[Tensor], value: float) -> tuple[Tensor, Tensor]:
    """Stack 1-D (or (L, D)) tensors into (B, P[, D]) padded on the left, and its (B, P) long mask."""
    width = max(s.size(0) for s in seqs)
    out = seqs[0].new_full((len(seqs), width, *seqs[0].shape[1:]), value)
    mask = torch.zeros(len(seqs), width, dtype=torch.long, device=seqs[0].device)
    for i, s in enumerate(seqs):
        out[i, width - s.size(0) :] = s
        mask[i, width - s.size(0) :] = 1
    return out, mask


# ----------------------------------------------------------------------------------------- rollouts


@dataclass
class Rollouts:
    """N prompts with G scored completions each; row ``n * G + g`` is sample g of prompt n."""

    rows: list
    """N dataset rows."""
    encoded: list
    """N items from ``policy.encode`` (reused by every log-prob pass)."""
    completion_ids: Tensor
    """(N*G, T) long."""
    completion_mask: Tensor
    """(N*G, T) long, 1 up to and including EOS."""
    finished: Tensor
    """(N*G,) bool: ended with EOS."""
    rewards_per_func: Tensor
    """(N*G, K) float, NaN where not applicable."""
    rewards: Tensor
    """(N*G,) weighted total, NaN when unscorable."""

    def groups(self, index: Sequence[int], G: int) -> Rollouts:
        """The rollouts of the prompts at ``index``."""
        idx = torch.tensor(list(index), dtype=torch.long)
        rows_idx = (idx[:, None] * G + torch.arange(G)).reshape(-1)
        dev_idx = rows_idx.to(self.completion_ids.device)
        return Rollouts(
            [self.rows[i] for i in index],
            [self.encoded[i] for i in index],
            self.completion_ids[dev_idx],
            self.completion_mask[dev_idx],
            self.finished[dev_idx],
            self.rewards_per_func[rows_idx],
            self.rewards[rows_idx],
        )


def cat_rollouts(parts: Sequence[Rollouts], pad_token_id: int) -> Rollouts:
    """Concatenate rollouts from several sampling rounds (completions padded on the right to one length)."""
    if len(parts) == 1:
        return parts[0]
    width = max(p.completion_ids.size(1) for p in parts)

    def right(x: Tensor, value: int) -> Tensor:
        return nn.functional.pad(x, (0, width - x.size(1)), value=value)

    return Rollouts(
        [r for p in parts for r in p.rows],
        [e for p in parts for e in p.encoded],
        torch.cat([right(p.completion_ids, pad_token_id) for p in parts]),
        torch.cat([right(p.completion_mask, 0) for p in parts]),
        torch.cat([p.finished for p in parts]),
        torch.cat([p.rewards_per_func for p in parts]),
        torch.cat([p.rewards for p in parts]),
    )


def collate_rows(items: list) -> list[dict]:
    """Keep a batch as a flat list of row dicts (an item may be a list of rows; dataclass rows become dicts)."""
    rows = [r for item in items for r in (item if isinstance(item, list) else [item])]
    return [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r) for r in rows]


class PromptBatches(torch.utils.data.IterableDataset):
    """Endless batches of rows in a sampler's order.

    An iterable on purpose: Lightning then adds no DistributedSampler (it would try to materialise the
    endless, already rank-aware :class:`~must.resume.StepSampler` and never return).
    """

    def __init__(self, data: Any, sampler: Any, batch_size: int):
        self.data, self.sampler, self.batch_size = data, sampler, batch_size

    def __iter__(self):
        order = iter(self.sampler)
        while True:
            yield collate_rows([self.data[next(order)] for _ in range(self.batch_size)])


@contextlib.contextmanager
def adapters_off(lm: nn.Module):
    """Run ``lm`` without its LoRA adapters: a peft model's ``disable_adapter()``, or, for adapters injected
    in place (``peft.inject_adapter_in_model``), every tuner layer switched off; trainability is restored."""
    if hasattr(lm, "disable_adapter"):
        with lm.disable_adapter():
            yield
        return
    layers = [m for m in lm.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise ConfigError("options.beta > 0 needs LoRA adapters on the LLM: the reference is the policy without them")
    grads = [(p, p.requires_grad) for p in lm.parameters()]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for p, g in grads:
            p.requires_grad_(g)


def has_adapters(lm: nn.Module) -> bool:
    """True when ``lm`` carries LoRA adapters (a peft model or injected tuner layers)."""
    return hasattr(lm, "disable_adapter") or any(isinstance(m, BaseTunerLayer) for m in lm.modules())


# ----------------------------------------------------------------------------------------- the stage


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


class GRPOStage(L.LightningModule):
    """Stage 4: GRPO on any policy with differentiable prompt embeddings (see the module docstring)."""

    Options = Options
    train_globs = staticmethod(train_globs)

    def __init__(
        self,
        policy: nn.Module,
        reward_funcs: Sequence[Callable],
        train_data: Any,
        options: Options | None = None,
        eval_fn: Callable[[nn.Module, Path, str], dict] | None = None,
        seed: int = 0,
        stage_dir: Path | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False  # several optimiser passes per batch of rollouts
        self.policy = policy
        self.reward_funcs = list(reward_funcs)
        self.train_data = train_data
        self.options = options or Options()
        self.eval_fn, self.seed, self.stage_dir = eval_fn, seed, stage_dir
        o = self.options
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
        self.counters: dict[str, float] = defaultdict(float)  # cumulative seconds and calls, for benchmarks

    # -- construction from a recipe -----------------------------------------------------------

    @classmethod
    def from_context(cls, ctx: Any) -> GRPOStage:
        """Build the stage from the recipe: MusicLALM from ``ctx.init_dir`` (or ``recipe.model``), QA prompts
        from ``recipe.data``, rewards from :mod:`must.rewards`."""
        from must.rewards import REWARDS
        from must.stages import common

        o = ctx.options
        unknown = [r for r in o.rewards if r not in REWARDS]
        if unknown or not o.rewards:
            raise ConfigError(f"stages.{ctx.stage.name}.options.rewards: unknown {unknown or 'empty list'}; "
                              f"choose from {sorted(REWARDS)}")
        cfg = ctx.recipe.data
        common.check_data_source(cfg, ctx.stage.name)
        model = common.build_model(ctx)
        set_trainable(model, *train_globs(model, o))
        policy = MusicPolicy(model, cfg.sample_rate, common.EncodingCache())
        real = cfg.source == "mustbench"
        # A MusTBench parquet carries every reward column (task, answer, answers; duration from the audio).
        tracks = common.mustbench_tracks(cfg, cfg.train_split)[0] if real else SynthTracks(cfg, "train")
        data = QAPrompts(tracks, o.questions_per_clip, ctx.seed, model.cfg.answer_format)

        def evaluate(policy: MusicPolicy, out_dir: Path, name: str) -> dict:
            if real:
                return common.evaluate_parquet(policy.model, cfg, out_dir, name, o.eval_max_new_tokens)
            return common.evaluate_split(policy.model, cfg, out_dir, name=name, max_new_tokens=o.eval_max_new_tokens,
                                         max_tracks=o.eval_max_tracks)

        return cls(policy, [REWARDS[r] for r in o.rewards], data, o, eval_fn=evaluate, seed=ctx.seed,
                   stage_dir=ctx.stage_dir)

    def save_model(self, path: Path) -> None:
        """Write the policy folder the next stage (or a user) loads."""
        self.policy.save_pretrained(Path(path))

    def evaluate(self, out_dir: Path, name: str) -> dict:
        """Score the policy (when the stage was given an evaluator): ``eval_fn(policy, out_dir, name)``."""
        return self.eval_fn(self.policy, Path(out_dir), name) if self.eval_fn else {}

    # -- Lightning --------------------------------------------------------------------------------

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if not params:
            raise MustError("grpo: the policy has no trainable parameters")
        o = self.options
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)

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
        opt = self.optimizers()
        old_logps = None
        for it in range(o.num_iterations):
            t0 = time.perf_counter()
            loss, logps, pass_stats = self.policy_loss(roll, advantages, mask, old_logps, ref_logps, num_items)
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)  # under DDP, Lightning re-arms the gradient sync for each pass
            if o.max_grad_norm > 0:
                self.clip_gradients(opt, gradient_clip_val=o.max_grad_norm, gradient_clip_algorithm="norm")
            opt.step()
            if old_logps is None and o.num_iterations > 1:
                old_logps = logps.detach()  # the first pass ran on the weights that sampled: the old policy
            self.counters["update_s"] += time.perf_counter() - t0
            stats.update(pass_stats)  # the last pass's ratios are the informative ones
        self.counters["steps"] += o.num_iterations
        bar = {"reward", "loss"}
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

        G = self.options.num_generations
        ids = [c[m.bool()].tolist() for c, m in zip(roll.completion_ids.cpu(), roll.completion_mask.cpu())]
        completions = self.policy.decode(ids)
        components = {name: roll.rewards_per_func[:, i].tolist() for i, name in enumerate(self.reward_names)}
        components["total"] = roll.rewards.tolist()
        if "task" not in roll.rows[0]:  # text-only rows (e.g. the TRL comparison) have no timeline to draw
            return
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
        o, G, policy = self.options, self.options.num_generations, self.policy
        t0 = time.perf_counter()
        encoded = policy.encode(rows)
        t1 = time.perf_counter()
        embeds, mask = policy.embed(encoded)
        timings: dict[str, float] = {}
        s = sample(
            policy.lm,
            embeds,
            mask,
            G,
            o.max_completion_length,
            self.eos_token_ids,
            self.pad_token_id,
            temperature=o.temperature,
            top_p=o.top_p,
            share_prefix=o.share_prefix,
            timings=timings,
        )
        t2 = time.perf_counter()
        ids = [c[m.bool()].tolist() for c, m in zip(s.completion_ids.cpu(), s.completion_mask.cpu())]
        completions = policy.decode(ids)
        prompts = [row.get("prompt", row.get("question")) for row in rows for _ in range(G)]
        keys = [k for k, v in rows[0].items() if k != "prompt" and not hasattr(v, "shape")]  # no waveforms
        columns = {k: [row.get(k) for row in rows for _ in range(G)] for k in keys}
        columns["completion_ids"] = ids
        per_func, components = score(self.reward_funcs, prompts, completions, columns)
        if "task" in columns:  # MusTBench-style rows: share of answers the task's parser can read
            from must.parsing import parse_answer

            from must.data.traces import final_answer

            fmts = columns.get("answer_format") or [None] * len(completions)
            texts = [final_answer(c)[0] if f == "grounded" else c for c, f in zip(completions, fmts)]
            ok = [parse_answer(task, text).ok for task, text in zip(columns["task"], texts)]
            components["valid_format"] = [sum(ok) / len(ok)]
        t3 = time.perf_counter()
        c = self.counters
        c["encode_calls"] += 1
        c["encode_s"] += t1 - t0
        c["prefill_s"] += timings.get("prefill", 0.0)
        c["decode_s"] += timings.get("decode", 0.0)
        c["sample_s"] += t2 - t1
        c["reward_s"] += t3 - t2
        c["rollouts"] += len(completions)
        rewards = total_reward(per_func, self.reward_weights.cpu())
        roll = Rollouts(rows, encoded, s.completion_ids, s.completion_mask, s.finished, per_func, rewards)
        return roll, components

    def collect(self, rows: list[dict]) -> tuple[Rollouts, dict[str, float]]:
        """Sample and score ``rows``; with dynamic sampling, replace groups whose rewards all agree."""
        o, G, N = self.options, self.options.num_generations, len(rows)
        roll, components = self.generate(rows)
        everything, comps = [roll], [components]
        keep = informative_groups(roll.rewards, G)
        stats = {"frac_reward_zero_std": 1.0 - keep.float().mean().item()}
        if o.refill_groups:
            kept = [roll.groups(keep.nonzero().squeeze(-1).tolist(), G)]
            have, refills = int(keep.sum()), 0
            while have < N and refills < o.max_refills:
                more, more_components = self.generate(self._refill_rows(refills, self.global_step))
                everything.append(more)
                comps.append(more_components)
                good = informative_groups(more.rewards, G).nonzero().squeeze(-1).tolist()[: N - have]
                kept.append(more.groups(good, G))
                have, refills = have + len(good), refills + 1
            if have < N:  # refills spent: keep shapes (and DDP's backward count) with zero-signal groups
                dull = (~keep).nonzero().squeeze(-1).tolist()[: N - have]
                kept.append(roll.groups(dull, G))
            roll = cat_rollouts([k for k in kept if k.rows], self.pad_token_id)
            stats["refills"] = float(refills)
        stats.update(self._rollout_stats(cat_rollouts(everything, self.pad_token_id), comps))
        return roll, stats

    def _refill_rows(self, round_: int, step: int) -> list[dict]:
        """A fresh batch for refill round ``round_`` of optimisation step ``step``: tracks drawn by a generator
        seeded by (rank, step, round) and nothing else, so a resumed run refills exactly as the uninterrupted one."""
        n = self.options.batch_size
        gen = torch.Generator().manual_seed(1_000_003 * (self.global_rank + 1) + 7_919 * step + round_)
        idx = torch.randperm(len(self.train_data), generator=gen)[:n].tolist()
        return collate_rows([self.train_data[i] for i in idx])

    def _rollout_stats(self, roll: Rollouts, components: list[dict]) -> dict[str, float]:
        """Logged reward and completion statistics over every completion sampled this step."""
        stats = {
            "reward": torch.nanmean(roll.rewards).item(),
            "reward_std": nanstd(roll.rewards).item(),
            "completion_length": roll.completion_mask.sum(1).float().mean().item(),
            "completion_terminated": roll.finished.float().mean().item(),
        }
        for i, name in enumerate(self.reward_names):
            stats[f"rewards/{name}"] = torch.nanmean(roll.rewards_per_func[:, i]).item()
        merged: dict[str, list] = defaultdict(list)
        for part in components:
            for key, values in part.items():
                merged[key].extend(values)
        for key, values in merged.items():
            name = key if key == "valid_format" else f"rewards/{key}"
            stats[name] = float(sum(values)) / len(values)
        for key in [k for k in stats if not math.isfinite(stats[k])]:
            stats.pop(key)
        return stats

    # -- the loss ---------------------------------------------------------------------------------

    def _logits(self, roll: Rollouts) -> Tensor:
        """(N*G, T, V) logits over the completions, prompts run once per group."""
        embeds, mask = self.policy.embed(roll.encoded)
        lm, G = self.policy.lm, self.options.num_generations
        return completion_logits(lm, embeds, mask, roll.completion_ids, G, share_prefix=self.options.share_prefix)

    @torch.no_grad()
    def _reference_logps(self, roll: Rollouts) -> Tensor:
        """Completion log-probs under the reference: the same policy with its LoRA adapters switched off."""
        t0 = time.perf_counter()
        with adapters_off(self.policy.lm):
            logps, _ = token_logps(self._logits(roll), roll.completion_ids, self.options.temperature)
        self.counters["reference_passes"] += 1
        self.counters["reference_s"] += time.perf_counter() - t0
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
        """One pass: (scalar loss, (N*G, T) log-probs with grad, logged statistics)."""
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
        stats["loss"] = loss.item()
        return loss, logps, stats


# ----------------------------------------------------------------------------------------- MusicLALM


class MusicPolicy(nn.Module):
    """A GRPO policy over :class:`~must.models.lalm.MusicLALM`.

    ``encode`` runs the (frozen) music encoder once per distinct track of the rows and keeps the
    detached :class:`AudioEncoding`; ``embed`` re-runs only the cheap trainable part (projector + time
    embedding + the question's token embeddings) on it, so the G samples and every log-prob pass reuse
    one encoding. Rows carry ``waveform``, ``track_id`` and ``question``.
    """

    def __init__(self, model: nn.Module, sample_rate: int, cache: Any = None):
        super().__init__()
        self.model, self.sample_rate, self.cache = model, sample_rate, cache
        self.encoder_calls = 0  # calls of the music encoder (each a batch of distinct tracks), for benchmarks and tests

    @property
    def lm(self) -> nn.Module:
        return self.model.llm

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Completion ids as MusTBench text (time tokens rendered ``M:SS``)."""
        return self.model.decode(ids)

    @torch.no_grad()
    def encode(self, rows: list[dict]) -> list[tuple[Any, str]]:
        """One (encoding of the row's track, question) per row; each distinct track is encoded once."""
        first: dict[str, int] = {}
        for row in rows:
            first.setdefault(row["track_id"], len(first))
        waves = [None] * len(first)
        for row in rows:
            waves[first[row["track_id"]]] = row["waveform"]
        if self.cache is not None:  # frozen encoder, deterministic tokens: a track is encoded once per stage
            before = self.cache.calls
            enc = self.cache.get(self.model, list(first), waves, self.sample_rate)
            self.encoder_calls += self.cache.calls - before
        else:
            enc = self.model.encode_audio(waves, self.sample_rate).detach()
            self.encoder_calls += 1
        return [(enc.index_select([first[row["track_id"]]]), row["question"]) for row in rows]

    def embed(self, items: list[tuple[Any, str]]) -> tuple[Tensor, Tensor]:
        """Left-padded prompt embeddings (B, P, H) and mask (B, P); differentiable w.r.t. the projector."""
        seqs = []
        for enc, question in items:
            p = self.model.prompt_embeds(enc, [question])
            seqs.append(p["inputs_embeds"][0][p["attention_mask"][0].bool()])
        return left_pad(seqs, 0.0)

    def save_pretrained(self, path: Path) -> None:
        self.model.save_pretrained(path)


def set_trainable(model: nn.Module, train: Sequence[str], freeze: Sequence[str] = ()) -> None:
    """Train ``train`` minus ``freeze`` (globs over parameter names). The music encoder must stay frozen: its
    output is computed once per prompt and cached without gradients."""
    from must.stages import common

    common.set_trainable(model, train, freeze)
    if any(p.requires_grad for n, p in model.named_parameters() if n.startswith("encoder.")):
        raise ConfigError("options.train: the music encoder cannot train in grpo (its output is cached per prompt)")


class SynthTracks(torch.utils.data.Dataset):
    """Synthetic tracks of a split with their questions, rendered once per process (shared with stages 1-3)."""

    def __init__(self, cfg: Any, split: str = "train"):
        from must.data.datasets import split_size

        self.cfg, self.split, self.n = cfg, split, split_size(cfg, split)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        from must.data.datasets import synthetic_qas
        from must.stages.common import cached_track

        track = cached_track(self.cfg, self.split, index)
        qas = synthetic_qas(self.cfg, track, self.split, index)
        return {"waveform": track.audio, "qas": qas, "track_id": track.id, "duration": track.duration}


class QAPrompts(torch.utils.data.Dataset):
    """GRPO rows from a track dataset (items with ``waveform``, ``qas``, ``track_id``, ``duration``).

    Item i is a list of ``questions_per_clip`` rows of track i (a seeded choice among its questions);
    each row holds the waveform, the QA's columns (``task``, ``answer``, ``answers``, ...) for the reward
    router, and ``prompt`` = the question.
    """

    def __init__(self, tracks: Any, questions_per_clip: int = 1, seed: int = 0, answer_format: str = "plain"):
        self.tracks, self.k, self.seed = tracks, max(1, questions_per_clip), seed
        self.answer_format = answer_format  # a column for the rewards: grounded completions are traces

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, index: int) -> list[dict]:
        item = self.tracks[index]
        qas = list(item["qas"])
        order = torch.randperm(len(qas), generator=torch.Generator().manual_seed(self.seed * 100_003 + index))
        rows = []
        for j in order[: self.k].tolist():
            qa = dataclasses.asdict(qas[j]) if dataclasses.is_dataclass(qas[j]) else dict(qas[j])
            qa["duration"] = qa.get("duration") or item["duration"]
            rows.append({**qa, "waveform": item["waveform"], "track_id": item["track_id"], "prompt": qa["question"],
                         "answer_format": self.answer_format})
        return rows

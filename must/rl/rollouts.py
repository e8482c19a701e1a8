"""Rollouts: N prompts with G sampled, scored completions each, and the pure steps that make them —
sample (:func:`sample_completions`), score (:func:`score_rollouts`), refill the groups that carry no signal
(:func:`refill_groups`, DAPO's "dynamic sampling"), summarise (:func:`rollout_stats`).

"Group refill" is named apart from LM decoding (:mod:`must.rl.decoding`) and from the music encoder's
dynamic sampling of audio frames, which share nothing with it but the paper's word.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from trl.trainer.utils import nanstd

from must.rl.decoding import Samples, sample
from must.rl.losses import informative_groups, score, total_reward


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


@torch.no_grad()
def sample_completions(
    policy: Any, encoded: list, options: Any, eos_token_ids: Sequence[int], pad_token_id: int,
    timings: dict[str, float] | None = None,
) -> Samples:
    """G completions per encoded prompt (``options``: num_generations, max_completion_length, temperature, top_p,
    share_prefix); ``timings`` gets the seconds of the prefill and the decoding."""
    embeds, mask = policy.embed(encoded)
    o = options
    return sample(policy.lm, embeds, mask, o.num_generations, o.max_completion_length, eos_token_ids, pad_token_id,
                  temperature=o.temperature, top_p=o.top_p, share_prefix=o.share_prefix, timings=timings,
                  follow_rows=getattr(policy, "follow_rows", None))


def completion_token_ids(completion_ids: Tensor, completion_mask: Tensor) -> list[list[int]]:
    """(R, T) ids and mask -> each completion's real tokens (EOS included)."""
    return [c[m.bool()].tolist() for c, m in zip(completion_ids.cpu(), completion_mask.cpu())]


def reward_columns(rows: list[dict], G: int) -> tuple[list, dict[str, list]]:
    """The reward functions' ``prompts`` and keyword columns, each row repeated for its G completions
    (TRL passes every column but ``prompt``; waveforms stay out)."""
    prompts = [row.get("prompt", row.get("question")) for row in rows for _ in range(G)]
    keys = [k for k, v in rows[0].items() if k != "prompt" and not hasattr(v, "shape")]
    return prompts, {k: [row.get(k) for row in rows for _ in range(G)] for k in keys}


def valid_format_share(completions: list[str], columns: dict[str, list]) -> float:
    """Share of completions their task's parser can read (a grounded trace: its final answer)."""
    from must.data.traces import final_answer
    from must.parsing import parse_answer

    fmts = columns.get("answer_format") or [None] * len(completions)
    texts = [final_answer(c)[0] if f == "grounded" else c for c, f in zip(completions, fmts)]
    ok = [parse_answer(task, text).ok for task, text in zip(columns["task"], texts)]
    return sum(ok) / len(ok)


def score_rollouts(
    policy: Any, rows: list[dict], encoded: list, samples: Samples, reward_funcs: Sequence[Callable],
    weights: Tensor, G: int,
) -> tuple[Rollouts, dict[str, list[float]]]:
    """Decode and score ``samples`` of ``rows``: the rollouts, and what the reward functions logged
    (plus ``valid_format`` for MusTBench-style rows that carry a ``task``)."""
    ids = completion_token_ids(samples.completion_ids, samples.completion_mask)
    completions = policy.decode(ids)
    prompts, columns = reward_columns(rows, G)
    columns["completion_ids"] = ids
    per_func, components = score(reward_funcs, prompts, completions, columns)
    if "task" in columns:
        components["valid_format"] = [valid_format_share(completions, columns)]
    rewards = total_reward(per_func, weights.cpu())
    roll = Rollouts(rows, encoded, samples.completion_ids, samples.completion_mask, samples.finished, per_func, rewards)
    return roll, components


def refill_groups(
    roll: Rollouts, draw: Callable[[int], Rollouts], G: int, max_refills: int, pad_token_id: int
) -> tuple[Rollouts, list[Rollouts]]:
    """Group refill (DAPO's dynamic sampling): keep the groups of ``roll`` whose rewards differ, and fill the
    batch back to its N prompts with informative groups of fresh rounds ``draw(round)``, at most ``max_refills``
    of them. When the rounds are spent, zero-signal groups of ``roll`` pad the batch, so every step (and every
    DDP rank) trains on N groups.

    Returns (the N groups to train on, the extra rounds sampled).
    """
    N = len(roll.rows)
    keep = informative_groups(roll.rewards, G)
    kept, extra = [roll.groups(keep.nonzero().squeeze(-1).tolist(), G)], []
    have = int(keep.sum())
    while have < N and len(extra) < max_refills:
        more = draw(len(extra))
        extra.append(more)
        good = informative_groups(more.rewards, G).nonzero().squeeze(-1).tolist()[: N - have]
        kept.append(more.groups(good, G))
        have += len(good)
    if have < N:
        dull = (~keep).nonzero().squeeze(-1).tolist()[: N - have]
        kept.append(roll.groups(dull, G))
    return cat_rollouts([k for k in kept if k.rows], pad_token_id), extra


def rollout_stats(roll: Rollouts, components: list[dict], reward_names: Sequence[str]) -> dict[str, float]:
    """Logged reward and completion statistics over every completion sampled in a step (non-finite ones dropped)."""
    stats = {
        "reward": torch.nanmean(roll.rewards).item(),
        "reward_std": nanstd(roll.rewards).item(),
        "completion_length": roll.completion_mask.sum(1).float().mean().item(),
        "completion_terminated": roll.finished.float().mean().item(),
    }
    for i, name in enumerate(reward_names):
        stats[f"rewards/{name}"] = torch.nanmean(roll.rewards_per_func[:, i]).item()
    merged: dict[str, list] = defaultdict(list)
    for part in components:
        for key, values in part.items():
            merged[key].extend(values)
    for key, values in merged.items():
        name = key if key == "valid_format" else f"rewards/{key}"
        stats[name] = float(sum(values)) / len(values)
    return {k: v for k, v in stats.items() if math.isfinite(v)}

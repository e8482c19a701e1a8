"""LM decoding for GRPO: fast group sampling and log-prob passes for a Hugging Face causal LM fed with
prompt embeddings (the completions GRPO scores; not the audio-token selection of :mod:`must.models`).

GRPO draws G answers per prompt. Temporal answers are short (a timestamp, a letter, an interval), so
the prompt (audio tokens + question) dominates the cost. Both functions here therefore run the
prompt through the model ONCE per prompt and expand its key/value cache to the G samples:

- :func:`sample` prefills each prompt once, repeats the cache G times, then decodes token by token;
  rows stop at EOS and leave the batch (their cache rows are dropped), and the loop ends when every
  row has stopped.
- :func:`completion_logits` is the training-time forward: the prompt pass (with gradients, so the
  projector and the LoRA weights that touch the prompt get their share) runs on B rows, the
  completion pass on B*G rows reads the expanded cache.

Both take a left-padded batch of prompt embeddings, so any policy that can turn its prompt into
``inputs_embeds`` works: a text LM (token ids -> input embeddings) or an audio-language model
(encoded audio -> projector -> embeddings, beside the question's token embeddings). Position ids are
always given explicitly (``cumsum(mask) - 1``), so a left-padded row sees the same positions in
sampling and in the log-prob pass.

Sampling draws one uniform number per row and step from the generator, for every row of the full
B*G batch whether it is still running or not, and picks the token by inverse CDF: the draw a row
gets never depends on which other rows have stopped, so the prefix-shared path and the plain path
(each prompt repeated G times before the prefill) pick the same tokens under the same seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import CausalLMOutputWithPast

# transformers 5.x renamed `past_key_values` to `cache` (the old name warns); keep both working.
_CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class Samples:
    """G sampled completions per prompt; row ``b * G + g`` is sample g of prompt b."""

    completion_ids: Tensor
    """(B*G, T) long: sampled tokens, ``pad_token_id`` after a row's EOS; T <= max_new_tokens."""
    completion_mask: Tensor
    """(B*G, T) long: 1 for real tokens up to and including the first EOS, 0 after."""
    logps: Tensor
    """(B*G, T) float: log-prob of each sampled token under the temperature-scaled policy, 0 at padding."""
    finished: Tensor
    """(B*G,) bool: the row ended with an EOS (False: truncated at max_new_tokens)."""


def prompt_positions(mask: Tensor) -> Tensor:
    """Position ids for a left-padded batch: (B, P) mask -> (B, P) long, 0 at the first real token."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _pick(logits: Tensor, u: Tensor | None, temperature: float, top_p: float) -> Tensor:
    """Choose one token per row of (R, V) logits: argmax when ``u`` is None, else inverse-CDF with (R,) uniforms."""
    if u is None:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest head whose mass reaches top_p (the first token always stays)
        probs = probs * ((probs.cumsum(-1) - probs) < top_p)
    cdf = probs.cumsum(-1)
    index = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).clamp(max=cdf.size(-1) - 1)
    return order.gather(-1, index).squeeze(-1) if top_p < 1.0 else index.squeeze(-1)


def _prefill(lm, prompt_embeds: Tensor, prompt_mask: Tensor, positions: Tensor):
    """One forward over the prompts (B, P, D) that keeps the KV cache and the last position's logits."""
    return lm(inputs_embeds=prompt_embeds, attention_mask=prompt_mask, position_ids=positions,
              use_cache=True, logits_to_keep=1)


@torch.no_grad()
def sample(
    lm: nn.Module,
    prompt_embeds: Tensor,
    prompt_mask: Tensor,
    num_samples: int,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    share_prefix: bool = True,
    timings: dict[str, float] | None = None,
    follow_rows: Callable[[Tensor | None], None] | None = None,
) -> Samples:
    """Draw ``num_samples`` completions for each prompt.

    Args:
        lm: a Hugging Face causal LM (a peft model too) that accepts ``inputs_embeds``,
            ``past_key_values`` and ``position_ids``.
        prompt_embeds: (B, P, D) left-padded prompt embeddings.
        prompt_mask: (B, P) 1 for real prompt positions.
        num_samples: G, completions per prompt.
        max_new_tokens: T, the longest completion.
        eos_token_ids: tokens that end a completion (kept in it, as TRL does).
        pad_token_id: written after a row's EOS.
        temperature, top_p: the sampling distribution (ignored when ``greedy``).
        greedy: take the argmax instead of sampling.
        generator: source of the per-row uniforms (its device must match the model's).
        share_prefix: prefill each prompt once and expand its cache (True), or repeat the prompt G times
            before the prefill (False: the plain path, for checks and comparison).
        timings: when given, seconds spent are added under ``prefill`` and ``decode``.
        follow_rows: told, before each decoding call, the prompt of each row still decoding (a (rows,) long
            tensor; rows of finished completions leave the batch), and None at the end (the policy's
            ``follow_rows``: a time pointer keeps its audio keys per prompt).
    """
    t0 = time.perf_counter()
    G, device = num_samples, prompt_embeds.device
    eos = torch.tensor(list(eos_token_ids), device=device)
    if not share_prefix:
        prompt_embeds = prompt_embeds.repeat_interleave(G, 0)
        prompt_mask = prompt_mask.repeat_interleave(G, 0)
    positions = prompt_positions(prompt_mask)
    out = _prefill(lm, prompt_embeds, prompt_mask, positions)
    cache, logits = getattr(out, _CACHE), out.logits[:, -1]
    next_pos = positions[:, -1:] + 1
    if share_prefix:
        cache.batch_repeat_interleave(G)
        logits = logits.repeat_interleave(G, 0)
        prompt_mask = prompt_mask.repeat_interleave(G, 0)
        next_pos = next_pos.repeat_interleave(G, 0)

    t1 = time.perf_counter()
    rows = logits.size(0)
    tokens = torch.full((rows, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logps = torch.zeros(rows, max_new_tokens, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    active = torch.arange(rows, device=device)  # full-batch index of each row still in the cache
    attn = prompt_mask
    steps = 0
    prompt_of = torch.arange(rows, device=device) // G  # rows of one prompt sit adjacent
    for t in range(max_new_tokens):
        u = None if greedy else torch.rand(rows, device=device, generator=generator)[active]
        tok = _pick(logits, u, temperature, top_p)
        scaled = logits.float() / (1.0 if greedy else temperature)
        logps[active, t] = torch.log_softmax(scaled, -1).gather(-1, tok[:, None]).squeeze(-1)
        tokens[active, t] = tok
        steps = t + 1
        done = torch.isin(tok, eos)
        finished[active[done]] = True
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        if bool(done.any()):  # drop stopped rows from the batch and the cache
            keep = (~done).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            active, tok, attn, next_pos = active[keep], tok[keep], attn[keep], next_pos[keep]
        attn = torch.cat([attn, attn.new_ones(attn.size(0), 1)], dim=1)
        if follow_rows is not None:
            follow_rows(prompt_of[active])
        out = lm(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos, use_cache=True, **{_CACHE: cache})
        cache, logits, next_pos = getattr(out, _CACHE), out.logits[:, -1], next_pos + 1

    if follow_rows is not None:
        follow_rows(None)
    if timings is not None:
        timings["prefill"] = timings.get("prefill", 0.0) + t1 - t0
        timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - t1
    tokens, logps = tokens[:, :steps], logps[:, :steps]
    is_eos = torch.isin(tokens, eos)
    # a row's mask runs through its first EOS (inclusive); rows without EOS keep every token
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    mask = (~after_eos).long()
    return Samples(tokens.masked_fill(after_eos, pad_token_id), mask, logps * mask, finished)


def completion_logits(
    lm: nn.Module,
    prompt_embeds: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    num_samples: int,
    *,
    share_prefix: bool = True,
) -> Tensor:
    """Logits that score each completion token, differentiable.

    Args:
        lm: the causal LM (as in :func:`sample`).
        prompt_embeds: (B, P, D) left-padded prompt embeddings (may carry gradients).
        prompt_mask: (B, P) 1 for real positions.
        completion_ids: (B*G, T) completions, row ``b * G + g`` belongs to prompt b.
        num_samples: G.
        share_prefix: one prompt pass per prompt whose cache serves its G completions (True), or one
            pass over the concatenated prompt + completion per row (False).

    Returns:
        (B*G, T, V) logits; position t predicts ``completion_ids[:, t]``. Positions after a row's EOS
        are computed but meaningless; mask them in the loss.
    """
    G, T = num_samples, completion_ids.size(1)
    completion_embeds = lm.get_input_embeddings()(completion_ids[:, : T - 1])
    if share_prefix and torch.is_grad_enabled() and _checkpointing(lm):
        share_prefix = False  # checkpointed layers drop the KV cache in a gradient pass: concatenate instead
    if not share_prefix:
        embeds = torch.cat([prompt_embeds.repeat_interleave(G, 0), completion_embeds], dim=1)
        mask = torch.cat([prompt_mask.repeat_interleave(G, 0), prompt_mask.new_ones(completion_ids.shape)], 1)
        mask = mask[:, : embeds.size(1)]
        out = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=prompt_positions(mask), logits_to_keep=T)
        return out.logits[:, -T:]  # some wrappers (e.g. Qwen2-Audio) ignore logits_to_keep
    positions = prompt_positions(prompt_mask)
    out = _prefill(lm, prompt_embeds, prompt_mask, positions)
    first = out.logits[:, -1:].repeat_interleave(G, 0)  # (B*G, 1, V): scores completion token 0
    if T == 1:
        return first
    cache = getattr(out, _CACHE)
    if cache is None or cache.get_seq_length() == 0:  # the model kept no cache: never score without the prompt
        return completion_logits(lm, prompt_embeds, prompt_mask, completion_ids, G, share_prefix=False)
    cache.batch_repeat_interleave(G)
    mask = prompt_mask.repeat_interleave(G, 0)
    mask = torch.cat([mask, mask.new_ones(mask.size(0), T - 1)], dim=1)
    start = positions[:, -1:].repeat_interleave(G, 0) + 1
    rest = lm(
        inputs_embeds=completion_embeds,
        attention_mask=mask,
        position_ids=start + torch.arange(T - 1, device=start.device),
        use_cache=True,
        **{_CACHE: cache},
    ).logits
    return torch.cat([first, rest], dim=1)


def _checkpointing(lm: nn.Module) -> bool:
    """Whether a training-mode Hugging Face model inside ``lm`` recomputes its layers (gradient checkpointing)."""
    return any(getattr(m, "gradient_checkpointing", False) and m.training for m in lm.modules())

"""Time tokens: one vocabulary entry per time step, tied between audio tokens, prompts and the LM head.

With ``model.time_embedding.kind: tokens`` a time is one token ``<|t83|>`` (83 steps of
``resolution`` seconds), not the digits ``1:23``. Each audio token's time embedding is the input
embedding of its step's token, and the LM-head rows of the time tokens are those same embeddings,
so naming the time of a found audio token is a copy: one attention step, not a spelling
(``benchmarks/tsg_probe.py --answer token``; DESIGN.md "How a model finds a time").

Text stays MusTBench text everywhere outside the model: :func:`to_tokens` turns every ``M:SS``
(``H:MM:SS``) of a prompt, caption or answer into time tokens on the way in, and :func:`to_text`
renders generated time tokens as ``M:SS`` on the way out, so what is scored, logged and saved is
unchanged.

We use one flat table (``max_seconds / resolution + 1`` tokens) rather than a composed
minute + second pair: every time is then a single copy, and the table's rows carry a monotone
component (:func:`init_rows`), so "earlier" and "later" are linear in the embedding.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from must.timecode import format_time

_TOKEN = re.compile(r"<\|t(\d+)\|>")
# M:SS or H:MM:SS not glued to other digits or colons (so "10:30:15" is one time, "1:2" none), with
# the space before it: the time token stands for " 1:23", so the position that predicts a time is
# the word it belongs to, not a lone space token.
_TIME = re.compile(r" ?(?<![\d:])(?:(\d{1,2}):)?(\d{1,3}):([0-5]\d)(?![\d:])")
# A rendered time follows these without a space (interval dashes, brackets, line starts).
_GLUED = set("([–-/\n ")


def token_name(step: int) -> str:
    """The text of time token ``step`` (``step * resolution`` seconds)."""
    return f"<|t{step}|>"


def names(count: int) -> list[str]:
    """All ``count`` time-token strings, in id order."""
    return [token_name(k) for k in range(count)]


def count_for(max_seconds: float, resolution: float) -> int:
    """Tokens needed to name every step from 0 to ``max_seconds`` inclusive."""
    return int(round(max_seconds / resolution)) + 1


def to_tokens(text: str, resolution: float, count: int) -> str:
    """Every ``M:SS`` / ``H:MM:SS`` in ``text`` as its time token (times past the table clamp to its end)."""

    def sub(m: re.Match) -> str:
        hours, minutes, secs = int(m.group(1) or 0), int(m.group(2)), int(m.group(3))
        seconds = hours * 3600 + minutes * 60 + secs
        return token_name(min(count - 1, int(round(seconds / resolution))))

    return _TIME.sub(sub, text)


def to_text(text: str, resolution: float) -> str:
    """Every time token in ``text`` rendered as ``M:SS`` (the benchmark's spelling), a space before
    it unless it opens the text or follows a dash, bracket or space (the inverse of :func:`to_tokens`
    on text written the benchmark's way)."""

    def sub(m: re.Match) -> str:
        glued = m.start() == 0 or text[m.start() - 1] in _GLUED
        return ("" if glued else " ") + format_time(int(m.group(1)) * resolution)

    return _TOKEN.sub(sub, text)


def steps(times: torch.Tensor, resolution: float, count: int) -> torch.Tensor:
    """(...) seconds -> (...) long time-token steps, rounded and clamped to the table."""
    return (times.detach() / resolution).round().long().clamp(0, count - 1)


@torch.no_grad()
def init_rows(embedding: nn.Embedding, first: int, count: int, resolution: float, seed: int = 0) -> None:
    """Initialise rows ``first .. first + count`` of a token embedding as new time tokens.

    Each row is the mean existing row plus noise of the existing rows' scale (so a pretrained LLM
    sees ordinary-sized inputs), plus a monotone ramp along one fixed direction: ``(t / 60 s)``
    times a quarter of a row's norm, so later times lie further along it and comparisons of times
    are linear from the first step.
    """
    w = embedding.weight
    if w.is_meta:  # must plan counts parameters on the meta device: nothing to initialise
        return
    g = torch.Generator().manual_seed(seed)
    old = w[:first].float()
    std = old.std().item() if first > 1 else 0.02
    noise = torch.randn(count, w.shape[1], generator=g) * std
    direction = torch.randn(w.shape[1], generator=g)
    direction = direction / direction.norm()
    minutes = torch.arange(count, dtype=torch.float32) * resolution / 60.0
    ramp = minutes[:, None] * direction * (0.25 * std * w.shape[1] ** 0.5)
    base = old.mean(0) if first > 1 else torch.zeros(w.shape[1])
    w[first : first + count] = (base + noise + ramp).to(w.dtype)


def tie_head(llm: nn.Module, first: int, count: int, scale: float = 1.0):
    """Make the LM head's logits of the time tokens ``h @ E[time]^T`` with ``E`` the input embedding.

    Models that tie all output rows to the input embeddings (SmolLM2, ``tie_word_embeddings``) need
    nothing; for the others a forward hook overwrites those logits, so the time tokens' output and
    input rows are one parameter (the head's own rows for them are left unused). Returns the hook
    handle, or None when the weights are already shared. ``scale`` multiplies those logits (a diagnostic of
    ``benchmarks/tsg_probe.py --time-logit-scale``: a larger scale did not make the lookup form sooner).
    """
    head, embed = llm.get_output_embeddings(), llm.get_input_embeddings()
    if head is None or (head.weight is embed.weight and scale == 1.0):
        return None

    def hook(module, inputs, logits):
        h = inputs[0]
        rows = embed.weight[first : first + count].to(h.dtype)
        if scale != 1.0:  # on the (count, H) rows, not the (B, L, count) logits
            rows = rows * scale
        logits = logits.clone()
        logits[..., first : first + count] = h @ rows.T
        return logits

    return head.register_forward_hook(hook)


def add_to(llm: nn.Module, tokenizer, resolution: float, max_seconds: float) -> None:
    """Give a freshly built LLM and its tokenizer the time tokens (a no-op when they are there)."""
    count = count_for(max_seconds, resolution)
    if token_name(0) in tokenizer.get_vocab():
        return
    first = len(tokenizer)
    tokenizer.add_tokens(names(count))
    embed = llm.get_input_embeddings()
    if embed.weight.shape[0] < first + count:
        llm.resize_token_embeddings(first + count, mean_resizing=False)
    init_rows(llm.get_input_embeddings(), first, count, resolution)


def first_id(tokenizer, count: int) -> int:
    """Id of ``<|t0|>``; the ``count`` time tokens must be contiguous (they are added in one block)."""
    vocab = tokenizer.get_vocab()
    ids = [vocab.get(token_name(k)) for k in (0, count - 1)]
    if None in ids or ids[1] - ids[0] != count - 1:
        from must.errors import MustError

        raise MustError(
            f"the tokenizer lacks the {count} time tokens <|t0|>..{token_name(count - 1)} in one block: "
            "model.time_embedding.kind=tokens needs a model built with them (resolution and max_seconds "
            "as saved)"
        )
    return ids[0]

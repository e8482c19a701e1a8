"""What GRPO needs of a model (the :class:`Policy` protocol) and the two policies of must: a text-only
causal LM (:class:`TextPolicy`) and :class:`~must.models.lalm.MusicLALM` (:class:`MusicPolicy`).

The split between ``encode`` and ``embed`` is what makes GRPO cheap on audio: ``encode`` runs the expensive,
frozen part once per prompt (the music encoder), ``embed`` the cheap trainable part (projector, token
embeddings) each time a pass needs the prompt, so the G samples and every log-prob pass share one encoding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn

from must.errors import ConfigError
from must.models import params


@runtime_checkable
class Policy(Protocol):
    """A GRPO policy: an ``nn.Module`` (its ``parameters()`` are what the optimiser sees) that turns dataset
    rows into differentiable prompt embeddings for its causal LM. No base class: any object with these works."""

    @property
    def lm(self) -> nn.Module:
        """The Hugging Face causal LM that samples and scores completions (a peft model when LoRA is on)."""

    @property
    def tokenizer(self) -> Any:
        """Its EOS / pad ids end and fill the completions."""

    def encode(self, rows: list[dict]) -> list:
        """One item per row, the expensive part of the prompt computed once (no grad)."""

    def embed(self, items: list) -> tuple[Tensor, Tensor]:
        """Left-padded prompt embeddings (B, P, D) and their (B, P) mask, differentiable."""

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Completion token ids as the text the rewards read."""

    def param_groups(self, lrs: dict[str, float], default_lr: float, weight_decay: float = 0.0) -> list[dict]:
        """AdamW groups of the trainable parameters, learning rate by the first matching name glob of ``lrs``."""

    def save_pretrained(self, path: Path) -> None:
        """Write the folder the next stage (or a user) loads."""

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def modules(self) -> Iterator[nn.Module]: ...


def check_policy(policy: Any) -> None:
    """Raise a :class:`ConfigError` naming each member of :class:`Policy` that ``policy`` lacks."""
    missing = [name for name in ("lm", "tokenizer", "encode", "embed", "decode", "param_groups", "save_pretrained",
                                 "parameters", "modules") if not hasattr(policy, name)]
    if missing:
        raise ConfigError(f"grpo: the policy {type(policy).__name__} lacks {missing} (see must.rl.policy.Policy)")


def left_pad(seqs: Sequence[Tensor], value: float) -> tuple[Tensor, Tensor]:
    """Stack 1-D (or (L, D)) tensors into (B, P[, D]) padded on the left, and its (B, P) long mask."""
    width = max(s.size(0) for s in seqs)
    out = seqs[0].new_full((len(seqs), width, *seqs[0].shape[1:]), value)
    mask = torch.zeros(len(seqs), width, dtype=torch.long, device=seqs[0].device)
    for i, s in enumerate(seqs):
        out[i, width - s.size(0) :] = s
        mask[i, width - s.size(0) :] = 1
    return out, mask


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

    def param_groups(self, lrs: dict[str, float], default_lr: float, weight_decay: float = 0.0) -> list[dict]:
        """AdamW groups over the trainable parameters; globs match this module's names (``lm.*``)."""
        return params.param_groups(self, lrs, default_lr, weight_decay)

    def save_pretrained(self, path: Path) -> None:
        """Write the LM (adapters only when it is a peft model) and the tokenizer."""
        self.lm.save_pretrained(path)
        self.tokenizer.save_pretrained(path)


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
        seqs, rows = [], []
        pointer = self.model.pointer
        for enc, question in items:
            p = self.model.prompt_embeds(enc, [question])
            seqs.append(p["inputs_embeds"][0][p["attention_mask"][0].bool()])
            if pointer is not None:  # where this prompt's audio tokens are, before the batch is padded
                rows.append(pointer.row(0))
        embeds, mask = left_pad(seqs, 0.0)
        if pointer is not None:
            pointer.stack_rows(rows, [embeds.shape[1] - len(s) for s in seqs])
        return embeds, mask

    def param_groups(self, lrs: dict[str, float], default_lr: float, weight_decay: float = 0.0) -> list[dict]:
        """The model's groups: globs match MusicLALM's names (``projector.*``, ``llm.*lora_*``), as in stages 1-3."""
        return self.model.param_groups(lrs, default_lr, weight_decay)

    def save_pretrained(self, path: Path) -> None:
        self.model.save_pretrained(path)

    @property
    def follow_rows(self):
        """The model's time pointer's row map, for a sampler that drops finished rows (None without one)."""
        return None if self.model.pointer is None else self.model.pointer.follow


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

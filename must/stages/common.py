"""Pure helpers the stages share: building the model, freezing, optimisers, the encoding cache, packed
multi-question sequences, task-balanced answer-only loss, and the stages' one evaluation (:func:`evaluate`).

The stages' datasets and the track cache are the data layer's (:mod:`must.data.datasets`, :mod:`must.data.cache`).

No base classes: each stage module is self-contained and calls these functions.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from must.data.config import DataConfig

# The dataset layer is must.data.datasets; evaluate reads these two, and must/stages/grpo.py reads them here
# until it moves to must/rl/.
from must.data.datasets import cached_track, mustbench_tracks
from must.errors import ConfigError
from must.models import params
from must.models.lalm import AudioEncoding, MusicLALM

# The prompt builder is must.models.prompts (MusicLALM.prompt_inputs builds on it); the stages call it as
# common.pack_questions (benchmarks/sft_step.py times it there).
from must.models.prompts import block_mask, pack_questions  # noqa: F401

# ----------------------------------------------------------------------------------------- model


def build_model(ctx: Any) -> MusicLALM:
    """The stage's starting model: the ``init_from`` folder when given, else built from ``recipe.model``."""
    if ctx.init_dir is not None:
        from must.models.folder import load_model

        return load_model(ctx.init_dir, trust_remote_code=trusted_parts(ctx.recipe.model))
    return MusicLALM.from_config(ctx.recipe.model)


def trusted_parts(model_cfg: Any) -> list[str]:
    """The model parts whose shipped code the recipe allows to run (``model.<part>.trust_remote_code``): an
    ``init_from`` folder gets only what the user's recipe grants, never what its own config asks for."""
    return [part for part in ("encoder", "llm") if getattr(model_cfg, part).trust_remote_code]


def disable_inert_lora(model: torch.nn.Module) -> list:
    """Switch off LoRA adapters that cannot change anything: all their weights frozen and every ``lora_B``
    exactly zero, so each adds exactly 0.0 (the tiny recipe's SFT and captions keep the LLM's adapters at
    zero for GRPO). Skipping them saves two matmuls per adapted linear layer, forward and backward, and
    changes no number. Returns the layers switched off (none if any adapter weight trains or is non-zero),
    for :func:`enable_lora`."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and not m.disable_adapters]
    weights = [(n, p) for m in layers for n, p in m.named_parameters() if "lora_" in n]
    if not weights or any(p.requires_grad for _, p in weights):
        return []
    if any(bool(p.detach().ne(0).any()) for n, p in weights if "lora_B" in n):
        return []
    for m in layers:
        m.enable_adapters(False)
    return layers


def enable_lora(layers: list) -> None:
    """Switch adapters off by :func:`disable_inert_lora` back on, still frozen (peft's ``enable_adapters``
    marks them trainable)."""
    for m in layers:
        frozen = [p for n, p in m.named_parameters() if "lora_" in n and not p.requires_grad]
        m.enable_adapters(True)
        for p in frozen:
            p.requires_grad_(False)


def set_trainable(model: torch.nn.Module, train: Sequence[str], freeze: Sequence[str] = ()) -> int:
    """Train exactly the parameters matching a glob of ``train``, minus those matching ``freeze``; returns how many train."""
    params.trainable(model, list(train))
    if freeze:
        params.freeze(model, list(freeze))
    n = sum(p.requires_grad for p in model.parameters())
    if n == 0:
        raise ConfigError(f"options.train {list(train)} minus options.freeze {list(freeze)} leaves nothing to train")
    return n


def optimizer_config(model: MusicLALM, options: Any, max_steps: int) -> dict:
    """AdamW over the trainable parameters as ``options`` (a stage's :class:`~must.stages.options.groups.Optimisation`
    fields) say: learning rate per name glob in ``lrs``, linear warm-up, then cosine decay to 10 % over
    ``max_steps`` or constant; in Lightning's ``configure_optimizers`` format."""
    o = options
    groups = model.param_groups(dict(o.lrs), o.lr, o.weight_decay)
    opt = torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(lr_factor, warmup_steps=o.warmup_steps,
                                                                     max_steps=max_steps, schedule=o.schedule))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def total_steps(trainer: Any) -> int:
    """Optimiser steps the fit will take (the schedule's length): ``trainer.max_steps``, or Lightning's
    estimate when the run is bounded by epochs."""
    return int(trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else int(trainer.estimated_stepping_batches)


def lr_factor(step: int, warmup_steps: int, max_steps: int, schedule: str = "cosine") -> float:
    """The learning rate at optimiser step ``step`` as a fraction of the peak: linear warm-up over
    ``warmup_steps``, then 1 (``constant``) or a cosine from 1 down to 0.1 at ``max_steps`` (``cosine``)."""
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    if schedule == "constant":
        return 1.0
    total = max(1, int(max_steps))
    progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------- data


def check_synthetic(cfg: DataConfig, stage: str) -> None:
    """Stages that need the synthetic tracks' strong labels (stage 1's curves, stage 2's captions): refuse a
    real-data config with a clear message."""
    if cfg.source != "synthetic":
        raise ConfigError(f"stage '{stage}': data.source '{cfg.source}' is not supported by this stage "
                          "(synthetic only; SFT and GRPO also train on a MusTBench parquet); evaluate real data with `must eval`")


def check_data_source(cfg: DataConfig, stage: str) -> None:
    """A stage that trains on synthetic music or a MusTBench parquet: the source is known and complete."""
    if cfg.source == "synthetic":
        return
    if cfg.source != "mustbench":
        raise ConfigError(f"stage '{stage}': data.source must be 'synthetic' or 'mustbench', got '{cfg.source}'")
    if not cfg.parquet:
        raise ConfigError(f"stage '{stage}': data.source 'mustbench' needs data.parquet (a MusTBench-format parquet)")


class EncodingCache:
    """Encoded audio per track id, kept while the encoder is frozen (detached, on the CPU), at most ``max_bytes``
    of tensors (``data.encoding_cache_bytes``; least recently used tracks dropped, and encoded again when met).

    With a frozen encoder an encoding never changes, so each track goes through the backbone once per
    stage however many epochs pass over it (deterministic sampling: the cached tokens are the eval ones).
    """

    def __init__(self, max_bytes: int = 1024**3):
        from must.data.cache import ByteLRU, encoding_bytes

        self.items: ByteLRU[AudioEncoding] = ByteLRU(max_bytes, encoding_bytes)
        self.calls = 0

    def get(self, model: MusicLALM, ids: Sequence[str], waves: Sequence[np.ndarray | torch.Tensor],
            sample_rate: int) -> AudioEncoding:
        """The (B, ...) encoding of ``waves``, encoding only the tracks not held."""
        rows = {tid: self.items.get(tid) for tid in dict.fromkeys(ids)}
        todo = [i for i, tid in enumerate(ids) if rows[tid] is None]
        if todo:
            with torch.no_grad():
                enc = model.encode_audio([waves[i] for i in todo], sample_rate, stochastic=False)
            self.calls += 1
            for j, i in enumerate(todo):
                row = enc.index_select([j])
                # Kept for this batch even when the budget cannot hold it.
                rows[ids[i]] = self.items.put(ids[i], trim_encoding(row, int(row.mask.sum())))
        return stack_encodings([rows[t] for t in ids], model.device)


def trim_encoding(enc: AudioEncoding, n_tokens: int) -> AudioEncoding:
    """One row cut to its real tokens (so rows of different batches can be re-stacked), detached, CPU."""
    enc = enc.detach()
    out = {}
    for name in ("features", "times", "mask"):
        out[name] = getattr(enc, name)[:, :n_tokens].cpu()
    nf = int(enc.frame_mask.sum())
    for name in ("transition_probs", "frame_times", "frame_mask"):
        out[name] = getattr(enc, name)[:, :nf].cpu()
    return AudioEncoding(covered_seconds=enc.covered_seconds.cpu(), durations=enc.durations.cpu(),
                         host_embeds=None if enc.host_embeds is None else enc.host_embeds.cpu(),
                         host_mask=None if enc.host_mask is None else enc.host_mask.cpu(),
                         encoder_calls=enc.encoder_calls, **out)


def _pad_stack(tensors: list[torch.Tensor], value=0) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    return torch.cat([F.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1]), value=value) for t in tensors])


def stack_encodings(rows: Sequence[AudioEncoding], device: torch.device) -> AudioEncoding:
    """Stack single-row encodings (as :func:`trim_encoding` makes) into one batch on ``device``."""
    out = {}
    for name in ("features", "times", "mask", "transition_probs", "frame_times", "frame_mask"):
        out[name] = _pad_stack([getattr(r, name) for r in rows], False if name.endswith("mask") else 0).to(device)
    host = None
    if rows[0].host_embeds is not None:
        host = (_pad_stack([r.host_embeds for r in rows]).to(device),
                _pad_stack([r.host_mask for r in rows], False).to(device))
    return AudioEncoding(covered_seconds=torch.cat([r.covered_seconds for r in rows]),
                         durations=torch.cat([r.durations for r in rows]),
                         host_embeds=host[0] if host else None, host_mask=host[1] if host else None,
                         encoder_calls=0, **out)


# ----------------------------------------------------------------------------------------- packing



def per_block_loss(logits: torch.Tensor, labels: torch.Tensor, block: torch.Tensor, n_blocks: int,
                   positions: torch.Tensor | None = None) -> torch.Tensor:
    """Answer-only loss normalised per question: (B, L, V) logits -> (n_blocks,) mean token CE of each block.

    With ``positions`` (K,) (see :func:`answer_positions`) the logits are (B, K, V), those of the
    positions ``positions`` only (each predicting the token after it); the result is the same.
    """
    if positions is None:
        shift_logits = logits[:, :-1].float()
        shift_labels = labels[:, 1:]
        shift_block = block[:, 1:]
    else:
        shift_logits = logits.float()
        shift_labels = labels[:, positions + 1]
        shift_block = block[:, positions + 1]
    ce = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                         ignore_index=-100, reduction="none")
    valid = (shift_labels.reshape(-1) != -100)
    idx = shift_block.reshape(-1).clamp_min(0)
    sums = torch.zeros(n_blocks, device=logits.device).index_add(0, idx[valid], ce[valid])
    counts = torch.zeros(n_blocks, device=logits.device).index_add(0, idx[valid], torch.ones_like(ce[valid]))
    return sums / counts.clamp_min(1)


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) labels -> (K,) sorted positions whose next token is a label in some row: the only logits the
    answer-only loss reads (a tenth of a packed SFT row), for the LM head's ``logits_to_keep``."""
    return torch.nonzero((labels[:, 1:] != -100).any(0)).squeeze(1)


@lru_cache(maxsize=16)
def _takes_logits_to_keep(cls: type) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def answer_logits(llm: torch.nn.Module, packed: dict[str, torch.Tensor],
                  pointer: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LLM on a packed batch (:func:`pack_questions`), returning ``(logits, positions)`` for
    :func:`per_block_loss`: the LM head runs on the :func:`answer_positions` only when the model's forward
    takes ``logits_to_keep`` (HF causal LMs; saves most of the head's matmuls and the softmax over the
    vocabulary), else on every position (``positions`` None). ``pointer`` (the model's time pointer) is told
    which positions the head reads, so a packed call's blocks stay apart there."""
    inputs = {k: packed[k] for k in ("inputs_embeds", "attention_mask", "position_ids")}
    positions = None
    if _takes_logits_to_keep(type(llm)):
        positions = answer_positions(packed["labels"])
        inputs["logits_to_keep"] = positions
    with pointer.keeping(positions) if pointer is not None else contextlib.nullcontext():
        return llm(**inputs, use_cache=False).logits, positions


def block_losses(llm: torch.nn.Module, packed: dict[str, torch.Tensor], by_row: bool = False,
                 pointer: Any = None) -> torch.Tensor:
    """(n_blocks,) answer-only loss of each question of a packed batch (:func:`pack_questions`).

    ``by_row``: one LLM call per row, cut to its own length, instead of one call on the padded batch.
    On a CPU, where the batch is computed row after row anyway, this skips the padding (a quarter of the
    tokens of the tiny recipe's SFT batches, more of the quadratic attention); the losses are the same.
    ``pointer``: the model's time pointer (``model.pointer``), told which row each call holds.
    """
    if not by_row or packed["inputs_embeds"].shape[0] == 1:
        logits, positions = answer_logits(llm, packed, pointer)
        return per_block_loss(logits, packed["labels"], packed["block"], packed["n_blocks"], positions)
    total = None
    for b, n in enumerate(packed["lengths"].tolist()):
        row = {"inputs_embeds": packed["inputs_embeds"][b: b + 1, :n],
               "attention_mask": packed["attention_mask"][b: b + 1, :, :n, :n],
               "position_ids": packed["position_ids"][b: b + 1, :n], "labels": packed["labels"][b: b + 1, :n]}
        with pointer.only_row(b) if pointer is not None else contextlib.nullcontext():
            logits, positions = answer_logits(llm, row, pointer)
        # A block lies in one row: the other rows add exactly 0 to its loss.
        losses = per_block_loss(logits, row["labels"], packed["block"][b: b + 1, :n], packed["n_blocks"], positions)
        total = losses if total is None else total + losses
    return total


def balanced_loss(losses: torch.Tensor, tasks: Sequence[str],
                  weights: dict[str, float] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Tasks balanced in the batch: the (weighted) mean over tasks of each task's mean per-question loss.

    ``losses`` (Q,), ``tasks`` the Q task names. Returns (scalar loss, task -> its mean loss).
    """
    per_task: dict[str, torch.Tensor] = {}
    for task in dict.fromkeys(tasks):
        sel = torch.tensor([t == task for t in tasks], device=losses.device)
        per_task[task] = losses[sel].mean()
    w = {t: (weights or {}).get(t, 1.0) for t in per_task}
    total = sum(w[t] * v for t, v in per_task.items()) / max(sum(w.values()), 1e-9)
    return total, per_task


# ----------------------------------------------------------------------------------------- evaluation


def evaluate(model: MusicLALM, data: DataConfig, out_dir: Path, name: str, max_new_tokens: int = 40,
             max_tracks: int | None = None, tasks: Sequence[str] | None = None, split: str = "test",
             quiet: bool = False) -> dict:
    """A stage's evaluation, the same for every stage and data source: the synthetic ``split`` (its first
    ``max_tracks`` tracks, rendered from the run's cache) or ``data.eval_split`` of ``data.parquet`` (its
    ``tasks``), answered, scored and reported by :func:`must.eval.evaluate_loaded` as ``must eval`` does:
    ``scores.json`` (trivial baselines beside), ``predictions.jsonl``, ``report.md``, ``plots/`` in ``out_dir``.
    Prints the table and chance; returns :func:`must.eval.summary` for the stage's record."""
    from must.data.datasets import split_questions, split_size
    from must.eval import CHANCE, evaluate_loaded, print_scores, summary

    out_dir = Path(out_dir)
    if data.source == "mustbench":
        _, qas, audio = mustbench_tracks(data, data.eval_split, tasks)
        what = f"{data.parquet} (split '{data.eval_split}', {len(qas)} questions)"
        references = [q.to_row() for q in qas]
    else:
        n = split_size(data, split) if max_tracks is None else min(max_tracks, split_size(data, split))
        tracks = {t.id: t for t in (cached_track(data, split, i) for i in range(n))}
        qas = split_questions(data, list(tracks.values()), split)
        counts = {t: sum(q.task == t for q in qas) for t in dict.fromkeys(q.task for q in qas)}
        what = f"the synthetic {split} split ({len(tracks)} tracks, {len(qas)} questions {counts})"
        references = [{**q.to_row(), "trace": q.trace} for q in qas]  # the labels' trace beside a grounded answer

        def audio(track_id: str) -> tuple[np.ndarray, int]:
            return tracks[track_id].audio, tracks[track_id].sample_rate

    if not quiet:  # answering can take minutes: say what is running before the table comes
        print(f"[must] {name}: answering {len(qas)} questions of {what} …", flush=True)
    scores = evaluate_loaded(model, references, audio, out_dir, model_name=name, batch_size=32,
                             max_new_tokens=max_new_tokens, progress=False, notes=[f"data: {what}"])
    if not quiet:
        print(f"\n[must] {name}: MusTBench on {what}, {scores['seconds']:.0f} s", file=sys.stdout)
        print_scores(scores, name)
        print("chance level: " + ", ".join(f"{k} {v:.1f}" for k, v in CHANCE.items()) + "\n", flush=True)
    return summary(scores)

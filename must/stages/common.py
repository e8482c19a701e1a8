"""Pure helpers the stages share: building the model, freezing, optimisers, a track cache, packed
multi-question sequences, task-balanced answer-only loss, and evaluation on a synthetic split.

No base classes: each stage module is self-contained and calls these functions.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from must.data.config import DataConfig
from must.data.types import QA, Track
from must.errors import ConfigError
from must.models import params
from must.models.lalm import AudioEncoding, MusicLALM

#: Chance level of the letter tasks (a uniformly random option), percent.
CHANCE = {"LTR": 100 / 4, "GTO": 100 / 6}


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


_TRACKS: OrderedDict[tuple, Track] = OrderedDict()
#: Tracks kept rendered in this process (the runner runs every stage in one process, so stage 1's
#: renders serve stages 2-4 and every evaluation).
TRACK_CACHE_SIZE = 4096


def cached_track(cfg: DataConfig, split: str, index: int) -> Track:
    """Track ``index`` of ``split`` (a pure function of the data config), rendered once per process."""
    from must.data.datasets import synthetic_track

    key = (cfg.seed, cfg.min_seconds, cfg.max_seconds, cfg.sample_rate, split, index)
    track = _TRACKS.get(key)
    if track is None:
        track = synthetic_track(cfg, split, index)
        _TRACKS[key] = track
        if len(_TRACKS) > TRACK_CACHE_SIZE:
            _TRACKS.popitem(last=False)
    else:
        _TRACKS.move_to_end(key)
    return track


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


def mustbench_tracks(cfg: DataConfig, split: str, tasks: Sequence[str] | None = None):
    """The tracks of one split of ``cfg.parquet`` (rows whose ``split`` column is ``split``, of ``tasks``).

    Returns ``(tracks, qas, audio_dir)``: ``tracks`` is a :class:`must.data.real.SkipBroken` over a
    :class:`must.data.real.MustBenchDataset` (items ``waveform``, ``qas``, ``track_id``, ``duration``), so
    a file that is missing or fails to load is skipped and counted, and more than
    ``cfg.max_broken_fraction`` failing stops training with the files named.
    """
    from must.data.real import MustBenchDataset, SkipBroken
    from must.errors import MustError

    parquet = Path(cfg.parquet)
    audio_dir = Path(cfg.audio_dir) if cfg.audio_dir else parquet.parent
    stamp = parquet.stat().st_mtime_ns if parquet.is_file() else 0
    rows = _parquet_rows(str(parquet), str(audio_dir), stamp)
    qas = [q for q in rows if q.split == split and (tasks is None or q.task in tasks)]
    if not qas:
        splits = sorted({q.split for q in rows})
        raise MustError(f"{parquet}: no rows with split '{split}' for tasks {list(tasks or cfg.tasks)} "
                        f"(splits present: {splits})")
    tracks = SkipBroken(MustBenchDataset(qas, audio_dir, cfg.sample_rate), cfg.max_broken_fraction)
    return tracks, qas, audio_dir


@lru_cache(maxsize=4)
def _parquet_rows(parquet: str, audio_dir: str, stamp: int) -> tuple[QA, ...]:
    """The parquet's rows, validated once (columns, tasks, every reference parsed) and shared by the train,
    validation and evaluation splits; ``stamp`` (the file's mtime) makes an edited file read again."""
    from must.data.real import load_mustbench

    return tuple(load_mustbench(parquet, audio_dir, check_audio=False))


def evaluate_parquet(model: MusicLALM, cfg: DataConfig, out_dir: Path, name: str, max_new_tokens: int = 40,
                     tasks: Sequence[str] | None = None) -> dict:
    """``cfg.eval_split`` of ``cfg.parquet`` answered, scored and reported as ``must eval`` does
    (``scores.json``, ``predictions.jsonl``, ``report.md``, ``plots/``); prints the table, returns the summary."""
    from must.eval import evaluate_loaded, print_scores

    _, qas, audio_dir = mustbench_tracks(cfg, cfg.eval_split, tasks)
    scores = evaluate_loaded(model, [q.to_row() for q in qas], audio_dir, out_dir, model_name=name,
                             max_new_tokens=max_new_tokens, progress=False)
    print(f"\n[must] {name}: MusTBench on {cfg.parquet} (split '{cfg.eval_split}', {len(qas)} questions)")
    print_scores(scores, name)
    return summary(scores)


class EncodingCache:
    """Encoded audio per track id, kept while the encoder is frozen (detached, on the CPU).

    With a frozen encoder an encoding never changes, so each track goes through the backbone once per
    stage however many epochs pass over it (deterministic sampling: the cached tokens are the eval ones).
    """

    def __init__(self, max_items: int = 4096):
        self.items: OrderedDict[str, AudioEncoding] = OrderedDict()
        self.max_items = max_items
        self.calls = 0

    def get(self, model: MusicLALM, ids: Sequence[str], waves: Sequence[np.ndarray | torch.Tensor],
            sample_rate: int) -> AudioEncoding:
        """The (B, ...) encoding of ``waves``, encoding only the tracks not seen before."""
        todo = [i for i, tid in enumerate(ids) if tid not in self.items]
        if todo:
            with torch.no_grad():
                enc = model.encode_audio([waves[i] for i in todo], sample_rate, stochastic=False)
            self.calls += 1
            for j, i in enumerate(todo):
                row = enc.index_select([j])
                n = int(row.mask.sum())
                self.items[ids[i]] = trim_encoding(row, n)
                if len(self.items) > self.max_items:
                    self.items.popitem(last=False)
        return stack_encodings([self.items[t] for t in ids], model.device)


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


def pack_questions(model: MusicLALM, encoding: AudioEncoding, questions: Sequence[Sequence[str]],
                   answers: Sequence[Sequence[str]] | None = None,
                   max_answer_tokens: int | None = None) -> dict[str, torch.Tensor]:
    """Several questions about one clip in one sequence: each question block sees the audio, not the others.

    Row ``b`` is ``[chat prefix][host tokens][MusT tokens]`` once, then for each question ``j`` the block
    ``[rest of the user turn + question j][assistant header][answer j + EOS]``. When the question comes
    before the music (``model.cfg.question_position`` ``before`` or ``both``) the audio tokens depend on
    it, so every question gets its own row (its question is then in the shared part too). Positions restart after
    the audio for every block, and a 4-D mask lets a block attend to the shared prefix and causally to
    itself only, so each block computes exactly what the unpacked prompt would (checked in the tests)
    while the audio runs once.

    Returns ``inputs_embeds`` (B, L, H), ``attention_mask`` (B, 1, L, L) additive float (0 = attend),
    ``position_ids`` (B, L), ``labels`` (B, L) (-100 but on answers + EOS), ``block`` (B, L) long
    (-1 on the shared part and padding, else the question's index in the flattened list),
    ``lengths`` (B,) long (each row's real tokens; the rest is right padding) and ``n_blocks`` (total questions). Answers are cut to ``max_answer_tokens`` (None: ``model.cfg.max_answer_tokens``).
    """
    dev = model.device
    cut = max_answer_tokens or model.cfg.max_answer_tokens
    audio = model.project(encoding)
    eos = model.tokenizer.eos_token_id
    ids_of = _text_ids_memo(model)
    # Lay every row out first (token ids and where they go, audio spans), then fill one padded tensor:
    # all text goes through the embedding in one call (one lookup and one backward, not one per piece).
    text_ids, text_at, audio_at, rows = [], [], [], []
    flat = 0
    for b, qs, ans in _shared_groups(model, questions, answers):
        r = len(rows)
        before, first_after = model.prompt_parts(qs[0])
        ids = ids_of(before)
        text_ids += ids
        text_at += [(r, i) for i in range(len(ids))]
        n = len(ids)
        pieces = []
        if encoding.host_embeds is not None:
            pieces.append(encoding.host_embeds[b][encoding.host_mask[b]].to(dev, audio.dtype))
        pieces.append(audio[b][encoding.mask[b].to(dev)])
        for piece in pieces:
            audio_at.append((r, n, piece))
            n += len(piece)
        n_shared = n
        lab, blk, pos = [-100] * n_shared, [-1] * n_shared, list(range(n_shared))
        for j, q in enumerate(qs):
            after = first_after if j == 0 else model.prompt_parts(q)[1]
            ids = ids_of(after)
            a_ids = [] if ans is None else ids_of(ans[j])[:cut] + [eos]
            m = len(ids) + len(a_ids)
            text_ids += ids + a_ids
            text_at += [(r, i) for i in range(n, n + m)]
            n += m
            lab += [-100] * len(ids) + a_ids
            blk += [flat] * m
            pos += list(range(n_shared, n_shared + m))
            flat += 1
        rows.append((lab, blk, pos))
    length = max(len(lab) for lab, _, _ in rows)
    bsz = len(rows)
    inputs = audio.new_zeros(bsz, length, model.hidden_size)
    at = torch.tensor(text_at, dtype=torch.long, device=dev).reshape(-1, 2)
    emb = model.llm.get_input_embeddings()(torch.tensor(text_ids, dtype=torch.long, device=dev))
    inputs = inputs.index_put((at[:, 0], at[:, 1]), emb.to(audio.dtype))
    for r, lo, piece in audio_at:
        inputs[r, lo: lo + len(piece)] = piece
    lab_t = torch.full((bsz, length), -100, dtype=torch.long)
    blk_t = torch.full((bsz, length), -1, dtype=torch.long)
    pos_t = torch.zeros(bsz, length, dtype=torch.long)
    real = torch.zeros(bsz, length, dtype=torch.bool)
    for i, (la, bl, po) in enumerate(rows):
        n = len(la)
        lab_t[i, :n] = torch.tensor(la)
        blk_t[i, :n] = torch.tensor(bl)
        pos_t[i, :n] = torch.tensor(po)
        real[i, :n] = True
    lab_t, blk_t, pos_t, real = (t.to(dev) for t in (lab_t, blk_t, pos_t, real))
    allowed = block_mask(blk_t, real)
    mask = torch.where(allowed, 0.0, torch.finfo(inputs.dtype).min).to(inputs.dtype)[:, None]
    return {"inputs_embeds": inputs, "attention_mask": mask, "position_ids": pos_t, "labels": lab_t,
            "block": blk_t, "lengths": real.sum(1), "n_blocks": flat}


#: Token ids of prompt and answer texts per model, so a question asked again (every epoch) is not
#: tokenised again. Assumes ``model.text_ids`` is a pure function of the text for a given tokenizer;
#: the memo starts afresh when the tokenizer object or its size changes.
_IDS_MEMO: "weakref.WeakKeyDictionary[MusicLALM, tuple[tuple, OrderedDict]]" = weakref.WeakKeyDictionary()
IDS_MEMO_SIZE = 65536


def _text_ids_memo(model: MusicLALM):
    """``model.text_ids``, memoised per model (least recently used texts dropped past ``IDS_MEMO_SIZE``)."""
    key = (id(model.tokenizer), len(model.tokenizer))
    held = _IDS_MEMO.get(model)
    if held is None or held[0] != key:
        held = _IDS_MEMO[model] = (key, OrderedDict())
    memo = held[1]

    def ids_of(text: str) -> list[int]:
        ids = memo.get(text)
        if ids is None:
            ids = memo[text] = model.text_ids(text)
            if len(memo) > IDS_MEMO_SIZE:
                memo.popitem(last=False)
        else:
            memo.move_to_end(text)
        return list(ids)

    return ids_of


def _shared_groups(model: MusicLALM, questions: Sequence[Sequence[str]],
                   answers: Sequence[Sequence[str]] | None):
    """(clip index, questions, answers or None) per packed row: all of a clip's questions share one row,
    unless the question comes before the music (``model.question_position``), when the audio tokens
    depend on the question and each question gets its own row."""
    for b, qs in enumerate(questions):
        ans = None if answers is None else answers[b]
        if model.cfg.question_position == "after":
            yield b, qs, ans
        else:
            for j, q in enumerate(qs):
                yield b, [q], None if ans is None else [ans[j]]


def block_mask(block: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, L) block ids (-1 = shared) and real-token mask -> (B, L, L) bool, True where query i may see key k.

    Causal; a key in the shared part is seen by every query, a key in a block only by its own block.
    Padding queries see themselves only (no all-masked rows, so no NaN).
    """
    n = block.shape[1]
    allowed = block[:, :, None] == block[:, None, :]  # same block (the shared part is block -1 too)
    allowed |= ((block == -1) & real)[:, None, :]  # the shared part is seen by every block
    allowed &= torch.ones(n, n, dtype=torch.bool, device=block.device).tril()
    allowed &= real[:, None, :] & real[:, :, None]
    allowed.diagonal(dim1=1, dim2=2)[~real] = True
    return allowed


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


def answer_logits(llm: torch.nn.Module, packed: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LLM on a packed batch (:func:`pack_questions`), returning ``(logits, positions)`` for
    :func:`per_block_loss`: the LM head runs on the :func:`answer_positions` only when the model's forward
    takes ``logits_to_keep`` (HF causal LMs; saves most of the head's matmuls and the softmax over the
    vocabulary), else on every position (``positions`` None)."""
    inputs = {k: packed[k] for k in ("inputs_embeds", "attention_mask", "position_ids")}
    positions = None
    if _takes_logits_to_keep(type(llm)):
        positions = answer_positions(packed["labels"])
        inputs["logits_to_keep"] = positions
    return llm(**inputs, use_cache=False).logits, positions


def block_losses(llm: torch.nn.Module, packed: dict[str, torch.Tensor], by_row: bool = False) -> torch.Tensor:
    """(n_blocks,) answer-only loss of each question of a packed batch (:func:`pack_questions`).

    ``by_row``: one LLM call per row, cut to its own length, instead of one call on the padded batch.
    On a CPU, where the batch is computed row after row anyway, this skips the padding (a quarter of the
    tokens of the tiny recipe's SFT batches, more of the quadratic attention); the losses are the same.
    """
    if not by_row or packed["inputs_embeds"].shape[0] == 1:
        logits, positions = answer_logits(llm, packed)
        return per_block_loss(logits, packed["labels"], packed["block"], packed["n_blocks"], positions)
    total = None
    for b, n in enumerate(packed["lengths"].tolist()):
        row = {"inputs_embeds": packed["inputs_embeds"][b: b + 1, :n],
               "attention_mask": packed["attention_mask"][b: b + 1, :, :n, :n],
               "position_ids": packed["position_ids"][b: b + 1, :n], "labels": packed["labels"][b: b + 1, :n]}
        logits, positions = answer_logits(llm, row)
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


def generate_answers(model: MusicLALM, tracks: Sequence[Track], qas: Sequence[QA], max_new_tokens: int = 40,
                     batch_size: int = 32) -> dict[str, str]:
    """Greedy answers, QA id -> text. Tracks are encoded once each, several at a time, and the
    questions of several tracks share one ``generate`` call of up to ``batch_size`` rows: on the CPU a
    decoding step costs about the same for 4 rows as for 32, and per-track calls made evaluation of
    the tiny recipe's 384 test questions take minutes."""
    by_track: dict[str, list[QA]] = {}
    for qa in qas:
        by_track.setdefault(qa.track_id, []).append(qa)
    asked = [t for t in tracks if by_track.get(t.id)]
    out: dict[str, str] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            group: list[Track] = []
            for k, track in enumerate(asked):
                group.append(track)
                n_rows = sum(len(by_track[t.id]) for t in group)
                if n_rows >= batch_size or k == len(asked) - 1:
                    out.update(_answer_group(model, group, by_track, max_new_tokens, batch_size))
                    group = []
    finally:
        model.train(was_training)
    return out


def _answer_group(model: MusicLALM, group: Sequence[Track], by_track: dict[str, list[QA]],
                  max_new_tokens: int, batch_size: int) -> dict[str, str]:
    """The answers to every question of ``group``'s tracks (same sample rate), encoded in one call."""
    enc = model.encode_audio([t.audio for t in group], group[0].sample_rate, stochastic=False)
    rows = [(i, qa) for i, t in enumerate(group) for qa in by_track[t.id]]
    out = {}
    for lo in range(0, len(rows), batch_size):
        chunk = rows[lo: lo + batch_size]
        texts = model.generate(enc.index_select([i for i, _ in chunk]), [qa.question for _, qa in chunk],
                               max_new_tokens=max_new_tokens)
        for (_, qa), t in zip(chunk, texts):
            out[qa.id] = t[0]  # the whole output: a grounded trace is split by the caller
    return out


def evaluate_split(model: MusicLALM, data: DataConfig, out_dir: Path, split: str = "test", name: str = "model",
                   max_new_tokens: int = 40, max_tracks: int | None = None, quiet: bool = False) -> dict:
    """Answer every question of a synthetic split, score it as ``must score`` does (trivial baselines
    beside), write ``scores.json`` and ``predictions.jsonl`` to ``out_dir``, print the table and chance.

    Returns a small summary (the sub-metrics, their baselines, seconds) for the stage's record.
    """
    from must.data.datasets import split_questions, split_size
    from must.eval import print_scores, score_predictions, write_json

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    n = split_size(data, split) if max_tracks is None else min(max_tracks, split_size(data, split))
    tracks = [cached_track(data, split, i) for i in range(n)]
    qas = split_questions(data, tracks, split)
    if not quiet:  # answering can take minutes: say what is running before the table comes
        print(f"[must] {name}: answering {len(qas)} questions on {len(tracks)} {split} tracks …", flush=True)
    outputs = generate_answers(model, tracks, qas, max_new_tokens)
    parts = {k: model.split_answer(v) for k, v in outputs.items()}
    preds = {k: v[0] for k, v in parts.items()}
    scores = score_predictions(preds, [qa.to_row() for qa in qas])
    seconds = time.perf_counter() - t0
    scores["seconds"] = round(seconds, 2)
    scores["chance"] = dict(CHANCE)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "scores.json", scores)
    with (out_dir / "predictions.jsonl").open("w", encoding="utf-8") as fh:
        for qa in qas:
            rec = {"id": qa.id, "task": qa.task, "qa_type": qa.qa_type, "prediction": preds.get(qa.id),
                   "answer": qa.answer}
            _, trace, reason = parts.get(qa.id, (None, None, None))
            if trace is not None:  # the model's own trace beside the answer it ends with
                rec.update(trace=trace, reference_trace=qa.trace, reason=reason)
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    if not quiet:
        counts = {t: sum(q.task == t for q in qas) for t in dict.fromkeys(q.task for q in qas)}
        print(f"\n[must] {name}: MusTBench on the synthetic {split} split ({len(tracks)} tracks, {len(qas)} "
              f"questions {counts}), {seconds:.0f} s", file=sys.stdout)
        print_scores(scores, name)
        print("chance level: " + ", ".join(f"{k} {v:.1f}" for k, v in CHANCE.items()) + "\n", flush=True)
    return summary(scores)


def summary(scores: dict) -> dict:
    """The sub-metrics of a scores dict and of its baseline, flat (``tsg_onset``, …, ``baseline/tsg_onset``)."""
    keys = {"tsg_onset": ("TSG", "onset"), "tsg_offset": ("TSG", "offset"), "ltr": ("LTR", "accuracy"),
            "tad_meteor": ("TAD", "meteor"), "gto": ("GTO", "accuracy"), "mtr_iou": ("MTR", "iou"),
            "mtr_f1": ("MTR", "f1")}
    out: dict[str, Any] = {"overall": scores.get("overall"), "seconds": scores.get("seconds")}
    for k, (task, sub) in keys.items():
        out[k] = (scores.get(task) or {}).get(sub)
        out[f"baseline/{k}"] = ((scores.get("baseline") or {}).get(task) or {}).get(sub)
    return out

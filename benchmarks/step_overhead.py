"""What the framework costs: each stage's training step of the tiny recipe against the bare model's step.

Builds each stage of ``recipes/tiny.yaml`` as the runner does (``stage_class(kind).from_context``, random
weights of the recipe's shapes unless ``--init-from``) and runs it in the runner's own ``Trainer``
(``must.runner.build_trainer``: its checkpoint, RNG, finite-loss and progress callbacks; CSV logger in place
of W&B; validation off). A callback times each step and, right after it, in the same process, a **reference**
on the very tokens the stage's model saw (steps and references alternate, so load from neighbours falls on
both alike):

- ``captions`` (lm_adapt), ``sft``: a bare Hugging Face LLM of the same config (no LoRA: both stages train the
  whole LLM), forward + backward + AdamW over all its weights, one call per packed row at the row's real
  length (so padding, if the stage computes it, counts as framework cost), next-token loss on every position;
- ``grpo``: the same LLM with the recipe's LoRA (only the adapters train, as in the stage), forward + backward +
  AdamW over the loss pass's tokens: the B left-padded prompts once, their G completions each on the prompt's
  cache (:func:`must.rl.decoding.completion_logits`, the cheapest exact way to score them), full-vocabulary loss;
  no sampling (the rollout is reported beside it);
- ``encoder`` (encoder_adapt): there is no LLM, so the reference is the encoder itself (a copy of the stage's,
  same trainable parameters): ``encode_frames`` on the same waveforms (the whole tracks and the source crops),
  backward of its heads' mean, AdamW.

Each step is split (thread CPU time, exclusive: a part nested in another counts to itself only) into
``encoder`` (SFT/captions/GRPO: the encoding cache and the frozen encoder; stage 1: ``encode_frames``),
``prompt`` (``pack_questions`` with the projector; GRPO ``policy.embed``; stage 1: target padding and the
crops' targets), ``rollout`` (GRPO: ``sample``, prefill + decoding), ``rewards`` (GRPO: decoding to text,
reward functions, format parsing), ``llm fwd`` (the LLM's forward with gradients), ``loss+glue`` (the rest
of ``training_step``: losses, task balance, advantages), ``backward``, ``optimiser`` (AdamW, zero_grad,
clipping, Lightning's closure), ``logging`` (``self.log``/``log_dict``, rollout tables, the logger's writes)
and ``loop+data`` (what is left between two step starts: Lightning's loop, callbacks, the next batch).

Tracks are rendered before the clock starts, as in the recipe, whose stage 1 renders every training track.
With a frozen encoder SFT, captions and GRPO encode each track once per stage; a short run meets only new
tracks, so ``x mix`` also gives the ratio with the encoder weighted as the recipe meets new tracks
(:data:`NEW_TRACK_SHARE`; a cached encoding costs about 1 ms, counted as 0).

    python benchmarks/step_overhead.py                  # all four stages, 8 steps each: ~1.5 min on 2 busy cores
    python benchmarks/step_overhead.py --stages sft grpo --steps 10

The clock is this thread's CPU time (``time.thread_time``; torch runs on one thread here): wall time swings
with the neighbours' load, CPU time much less. ``benchmarks/sft_step.py`` is the SFT deep dive (new vs cached
tracks, before/after its speed-ups); this script reuses its ``clock`` setting.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sft_step  # the SFT benchmark beside this file: its clock setting is shared

#: The parts of a step, in the order the table shows them.
PARTS = ("encoder", "prompt", "rollout", "rewards", "llm fwd", "loss+glue", "backward", "optimiser", "logging",
         "loop+data")
#: The reference's parts.
REF_PARTS = ("fwd", "bwd", "adamw")
#: Share of a stage's steps that meet a track not encoded yet in the tiny recipe (the encoding cache is per
#: stage): captions 320 steps x 4 clips over 400 tracks -> 100 steps; SFT 450 x 2 -> 200 steps; GRPO 15 x 4
#: tracks (2 questions each) over 400 -> all (about); stage 1 trains the encoder, so it always runs.
NEW_TRACK_SHARE = {"encoder_adapt": 1.0, "lm_adapt": 100 / 320, "sft": 200 / 450, "grpo": 1.0}
#: The target: a stage's step at most this many times its reference.
TARGET = 1.3


# ----------------------------------------------------------------------------------------- pure helpers


class PartClock:
    """Exclusive time per named part: time spent in a part entered inside another counts to the inner one only.

    ``now`` is the clock read (seconds); parts accumulate until :meth:`take`.
    """

    def __init__(self, now: Callable[[], float] = time.thread_time):
        self.now = now
        self.parts: dict[str, float] = defaultdict(float)
        self.stack: list[list] = []  # [part, start, seconds of nested parts]

    def enter(self, part: str) -> None:
        self.stack.append([part, self.now(), 0.0])

    def exit(self) -> float:
        """Close the innermost part; returns its inclusive seconds."""
        part, start, nested = self.stack.pop()
        spent = self.now() - start
        self.parts[part] += spent - nested
        if self.stack:
            self.stack[-1][2] += spent
        return spent

    @contextmanager
    def part(self, name: str):
        self.enter(name)
        try:
            yield
        finally:
            self.exit()

    def wrap(self, fn: Callable, part: str, record: Callable | None = None) -> Callable:
        """``fn`` timed as ``part``; ``record(result, *args, **kwargs)`` sees each call (outside the clock)."""

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with self.part(part):
                out = fn(*args, **kwargs)
            if record is not None:
                record(out, *args, **kwargs)
            return out

        return timed

    def take(self) -> dict[str, float]:
        out = dict(self.parts)
        self.parts.clear()
        return out


def close_step(parts: dict[str, float], start: float, end: float, outside: float = 0.0) -> dict[str, float]:
    """One step's parts (seconds) with ``loop+data`` = what the timed parts leave of ``end - start - outside``
    (``outside``: time spent on the reference in between, not the stage's)."""
    out = {k: v for k, v in parts.items() if k in PARTS}
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)} (known: {PARTS})")
    out["loop+data"] = out.get("loop+data", 0.0) + (end - start - outside) - sum(out.values())
    return out


def summarise(steps: list[dict[str, float]], refs: list[dict[str, float]], new_share: float = 1.0) -> dict:
    """Mean ms per part over the steps and their references, and the ratios.

    ``steps``/``refs``: seconds per part, one dict per step (missing parts are 0). Returns ``parts`` and
    ``ref`` (ms per part), ``total``, ``ref_total`` (ms), ``ratio`` (total / reference), ``ratio_no_encoder``
    ((total - encoder) / reference) and ``ratio_mix`` (the encoder part weighted by ``new_share``, the share
    of the recipe's steps that meet a track not encoded yet).
    """
    if not steps or len(steps) != len(refs):
        raise ValueError(f"need one reference per step, got {len(steps)} steps and {len(refs)} references")
    parts = {p: 1000 * float(np.mean([s.get(p, 0.0) for s in steps])) for p in PARTS}
    ref = {p: 1000 * float(np.mean([r.get(p, 0.0) for r in refs])) for p in REF_PARTS}
    total, ref_total = sum(parts.values()), sum(ref.values())
    enc = parts["encoder"]
    return {"parts": parts, "ref": ref, "total": total, "ref_total": ref_total, "ratio": total / ref_total,
            "ratio_no_encoder": (total - enc) / ref_total,
            "ratio_mix": (total - (1 - new_share) * enc) / ref_total}


def markdown(rows: dict[str, dict]) -> str:
    """The figures of :func:`summarise` per stage as one markdown table (ms per step)."""
    head = ["stage", *PARTS, "total", "ref fwd", "ref bwd", "ref adamw", "ref total", "x", "x no enc", "x mix"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, s in rows.items():
        cells = [f"{s['parts'][p]:.1f}" if s["parts"][p] else "-" for p in PARTS]
        cells += [f"**{s['total']:.1f}**", *(f"{s['ref'][p]:.1f}" for p in REF_PARTS), f"**{s['ref_total']:.1f}**"]
        no_enc = "-" if s.get("encoder_is_reference") else f"{s['ratio_no_encoder']:.2f}"
        cells += [f"**{s['ratio']:.2f}**", no_enc, f"{s['ratio_mix']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- references


def bare_llm(llm: torch.nn.Module, lora: Any = None) -> torch.nn.Module:
    """A fresh random Hugging Face LLM of ``llm``'s config (vocabulary, sizes, attention kernel), no adapters;
    with ``lora`` (a LoraConfig) the recipe's adapters are added and only they train."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(llm.config)
    torch.manual_seed(1)
    ref = AutoModelForCausalLM.from_config(cfg, attn_implementation=cfg._attn_implementation)
    if lora is not None and lora.r > 0:
        from must.models.lora import add_lora

        ref = add_lora(ref, lora)
    return ref.train()


def _adamw(module: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)


def _timed_update(loss_fn: Callable[[], torch.Tensor], opt: torch.optim.Optimizer) -> dict[str, float]:
    t0 = sft_step.clock()
    loss = loss_fn()
    t1 = sft_step.clock()
    loss.backward()
    t2 = sft_step.clock()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {"fwd": t1 - t0, "bwd": t2 - t1, "adamw": sft_step.clock() - t2}


def rows_reference(ref, opt, lengths: list[int]) -> dict[str, float]:
    """Bare LLM forward + backward + AdamW on one row of each length (random ids, loss on every position)."""
    vocab = ref.config.vocab_size

    def loss():
        total = 0.0
        for n in lengths:
            ids = torch.randint(0, vocab, (1, n))
            total = total + ref(input_ids=ids, labels=ids, use_cache=False).loss
        return total

    return _timed_update(loss, opt)


def grpo_reference(ref, opt, prompt_mask: torch.Tensor, completion_shape: tuple, G: int) -> dict[str, float]:
    """The LoRA LLM on the loss pass's tokens: (B, P) prompts once, (B*G, T) completions on their cache."""
    from must.rl.decoding import completion_logits

    vocab = ref.config.vocab_size

    def loss():
        embeds = ref.get_input_embeddings()(torch.randint(0, vocab, prompt_mask.shape))
        ids = torch.randint(0, vocab, completion_shape)
        logits = completion_logits(ref, embeds, prompt_mask, ids, G)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids.reshape(-1))

    return _timed_update(loss, opt)


@torch.no_grad()
def generate_reference(ref, prompt_mask: torch.Tensor, G: int, steps: int) -> float:
    """Seconds of Hugging Face ``generate`` sampling G completions of exactly ``steps`` tokens for each of
    the (B, P) left-padded prompts (random embeddings): the bare LLM's rollout, beside the stage's sampler."""
    embeds = ref.get_input_embeddings()(torch.randint(0, ref.config.vocab_size, prompt_mask.shape))
    t0 = sft_step.clock()
    ref.generate(inputs_embeds=embeds, attention_mask=prompt_mask, do_sample=True, num_return_sequences=G,
                 max_new_tokens=steps, min_new_tokens=steps, pad_token_id=ref.config.pad_token_id or 0)
    return sft_step.clock() - t0


def encoder_reference(enc, opt, calls: list[tuple]) -> dict[str, float]:
    """The encoder on the same waveforms: ``encode_frames`` per recorded call, backward of its heads' mean."""

    def loss():
        total = 0.0
        for waves, sr in calls:
            frames = enc.encode_frames(waves, sr)
            total = total + frames.transition_logits.mean()
            if frames.source_logits is not None:
                total = total + frames.source_logits.mean()
        return total

    return _timed_update(loss, opt)


# ----------------------------------------------------------------------------------------- one stage


def build_stage(recipe, spec, init_from: Path | None, out: Path):
    """The stage module as ``must.runner.run_stage`` builds it (seeded the same way) and its Trainer."""
    import lightning as L

    from must.config import StageContext, stage_class, stage_options
    from must.runner import build_trainer, stage_seed

    cls = stage_class(spec.kind)
    options = stage_options(cls, spec.options, f"stage '{spec.name}' options")
    seed = stage_seed(recipe.seed, spec.name)
    L.seed_everything(seed, workers=True, verbose=False)
    stage_dir = out / spec.name
    stage_dir.mkdir(parents=True, exist_ok=True)
    module = cls.from_context(StageContext(recipe, spec, options, init_from, stage_dir, seed))
    # The runner's initial_evaluation callback is left out: evaluations before the first step are not a step's cost.
    return module, build_trainer(recipe, spec, stage_dir, group="step_overhead")


class Probe:
    """Times one stage's steps (parts on a :class:`PartClock`) and runs the reference after each one."""

    def __init__(self, kind: str, module, reference: Callable[[], dict[str, float]]):
        self.kind, self.module, self.reference = kind, module, reference
        self.clock = PartClock(sft_step.clock)
        self.steps: list[dict] = []
        self.refs: list[dict] = []
        self.seen: dict[str, list] = defaultdict(list)  # what the model saw this step, for the reference
        self.seen_total: dict[str, int] = defaultdict(int)  # counts over the whole run (values logged)
        self.generate_refs: list[float] = []  # GRPO: HF generate on each step's rollout shapes, seconds
        self.lengths: list[int] = []  # packed row lengths over all steps (tokens)
        self.padded: list[int] = []  # padded width of each packed batch
        self._undo: list[Callable] = []
        self._start = None
        self._outside = 0.0

    def patch(self, obj, attr: str, part: str, record: Callable | None = None) -> None:
        old = getattr(obj, attr)
        had = attr in vars(obj)
        setattr(obj, attr, self.clock.wrap(old, part, record))
        self._undo.append(lambda: setattr(obj, attr, old) if had else delattr(obj, attr))

    def hook_forward(self, module: torch.nn.Module, part: str) -> None:
        pre = module.register_forward_pre_hook(lambda *_: self.clock.enter(part))
        post = module.register_forward_hook(lambda *_: self.clock.exit() and None)  # None: keep the output
        self._undo += [pre.remove, post.remove]

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    # -- what each stage's parts are ------------------------------------------------------------------

    def install(self) -> None:
        m = self.module
        self.patch(m, "training_step", "loss+glue")
        self.patch(m, "log", "logging", lambda *a, **k: self.seen_total.__setitem__("logged", self.seen_total["logged"] + 1))
        self.patch(m, "log_dict", "logging")
        self.patch(m, "clip_gradients", "optimiser")
        if self.kind == "encoder_adapt":
            self.patch(m.model.encoder, "encode_frames", "encoder",
                       lambda out, waves, sr: self.seen["calls"].append((list(waves), sr)))
            self.patch(m, "crop_source_loss", "prompt")
            self.patch(m, "_outputs", "prompt")
        elif self.kind in ("lm_adapt", "sft"):
            from must.stages import common

            def packed(out, *a, **k):
                lengths = out["lengths"].tolist()
                self.seen["lengths"] += lengths
                self.lengths += lengths
                self.padded.append(out["inputs_embeds"].shape[1])

            self.patch(m, "_encode", "encoder")
            self.patch(common, "pack_questions", "prompt", packed)
            self.hook_forward(m.model.llm, "llm fwd")
        elif self.kind == "grpo":
            from must.rl import rollouts
            from must.rl.timing import Timings
            from must.stages import grpo

            m.timings = Timings()  # counts the rollouts (refills included)

            def scored(out, lm, embeds, mask, ids, G, **k):
                self.seen["loss_pass"].append((mask.detach().cpu(), tuple(ids.shape), G))
                self.lengths.append(int(mask.shape[1]))
                self.padded.append(int(ids.shape[1]))

            self.patch(m.policy, "encode", "encoder")
            self.patch(m.policy, "embed", "prompt")
            def sampled(out, lm, embeds, mask, G, *a, **k):
                self.seen["rollouts"].append((mask.detach().cpu(), G, int(out.completion_ids.shape[1])))

            self.patch(rollouts, "sample", "rollout", sampled)
            self.patch(rollouts, "score", "rewards")
            self.patch(m, "generate", "rewards")  # what generate does besides encode/embed/sample/score
            self.patch(m, "collect", "loss+glue")
            self.patch(m, "policy_loss", "loss+glue")
            self.patch(m, "_log_rollouts", "logging")
            self.patch(grpo, "completion_logits", "llm fwd", scored)
        else:
            raise ValueError(f"no probe for stage kind {self.kind!r}")

    def callback(self, warmup: int):
        import lightning as L

        probe = self

        class Timer(L.Callback):
            def on_train_start(self, trainer, pl_module):
                opt = trainer.optimizers[0]
                pre = opt.register_step_pre_hook(lambda *_: probe.clock.enter("optimiser"))
                post = opt.register_step_post_hook(lambda *_: probe.clock.exit() and None)
                probe._undo += [pre.remove, post.remove]
                logger = trainer.logger
                if logger is not None:
                    probe.patch(logger, "log_metrics", "logging")
                    probe.patch(logger, "save", "logging")

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                now = probe.clock.now()
                parts = probe.clock.take()
                if probe._start is not None and batch_idx > warmup:  # the previous step, now that it ended
                    probe.steps.append(close_step(parts, probe._start, now, probe._outside))
                probe._start, probe._outside = now, 0.0

            def on_before_backward(self, trainer, pl_module, loss):
                probe.clock.enter("backward")

            def on_after_backward(self, trainer, pl_module):
                probe.clock.exit()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                t0 = probe.clock.now()
                ref = probe.reference()
                probe.seen.clear()
                if batch_idx >= warmup:
                    probe.refs.append(ref)
                probe._outside += probe.clock.now() - t0

        return Timer()


def make_reference(kind: str, module, recipe, probe: Probe) -> tuple[Callable[[], dict], str]:
    """The reference closure for a stage (reading ``probe.seen``) and a line saying what it is."""
    if kind == "encoder_adapt":
        enc = copy.deepcopy(module.model.encoder)  # before the probe patches the stage's encoder
        opt = _adamw(enc)
        n = sum(p.numel() for p in enc.parameters() if p.requires_grad)
        return (lambda: encoder_reference(enc, opt, probe.seen["calls"]),
                f"the encoder (copy, {n / 1e6:.2f} M trainable): encode_frames on the same waveforms + backward + AdamW")
    if kind == "grpo":
        ref = bare_llm(module.policy.lm, recipe.model.llm.lora)
        opt = _adamw(ref)

        def run():
            parts = [grpo_reference(ref, opt, *seen) for seen in probe.seen["loss_pass"]]
            out = {p: sum(x[p] for x in parts) for p in REF_PARTS}
            probe.generate_refs.append(sum(generate_reference(ref, *seen) for seen in probe.seen["rollouts"]))
            return out

        return run, "bare Qwen2 + the recipe's LoRA (adapters train), prompts once + completions on their cache"
    ref = bare_llm(module.model.llm)
    opt = _adamw(ref)
    n = sum(p.numel() for p in ref.parameters())
    return (lambda: rows_reference(ref, opt, probe.seen["lengths"]),
            f"bare Qwen2 ({n / 1e6:.2f} M, all trained), one call per packed row at its real length")


def run_stage(recipe, spec, args, out: Path) -> tuple[dict, str]:
    module, trainer = build_stage(recipe, spec, args.init_from, out)
    probe = Probe(spec.kind, module, dict)  # reference set just below
    probe.reference, what = make_reference(spec.kind, module, recipe, probe)
    probe.install()
    trainer.callbacks.append(probe.callback(args.warmup))
    try:
        trainer.fit(module)
    finally:
        probe.restore()
    steps = probe.steps[: args.steps]
    summary = summarise(steps, probe.refs[: len(steps)], NEW_TRACK_SHARE[spec.kind])
    extra = []
    if probe.lengths and spec.kind != "grpo":
        extra.append(f"packed rows {np.mean(probe.lengths):.0f} real tokens (mean), batches padded to "
                     f"{np.mean(probe.padded):.0f}")
    summary["encoder_is_reference"] = spec.kind == "encoder_adapt"
    if spec.kind == "grpo":
        p = summary["parts"]
        train = p["llm fwd"] + p["loss+glue"] + p["backward"] + p["optimiser"]
        gen = 1000 * float(np.mean(probe.generate_refs[: len(steps)]))
        summary["generate_ref"] = gen
        extra.append(f"training side (llm fwd + loss+glue + backward + optimiser) {train:.1f} ms = "
                     f"{train / summary['ref_total']:.2f}x the reference; rollout {p['rollout']:.1f} ms against "
                     f"{gen:.1f} ms for HF generate on the same prompts, G and lengths ({p['rollout'] / gen:.2f}x); "
                     f"rewards {p['rewards']:.1f} ms")
        n = module.timings.counts["rollouts"]
        extra.append(f"loss pass: prompts padded to {np.mean(probe.lengths):.0f}, completions {np.mean(probe.padded):.0f} "
                     f"tokens wide; {n / max(1, len(probe.steps) + args.warmup + 1):.0f} rollouts a step "
                     f"(group refills included)")
    runs = len(probe.steps) + args.warmup + 1
    extra.append(f"{probe.seen_total['logged'] / runs:.0f} values logged a step "
                 f"({summary['parts']['logging'] / max(1, probe.seen_total['logged'] / runs):.2f} ms each)")
    summary["note"] = "; ".join([what, *extra])
    summary["steps"] = len(steps)
    return summary, f"{spec.name} ({spec.kind})"


def captions_variants(recipe, args, out: Path) -> None:
    """What the captions step's LLM forward + backward would cost done as SFT does it, on the same batches
    (alternating): as the stage runs it (padded batch, frozen zero LoRA adapters on, every position's
    logits); with those adapters off (``common.disable_inert_lora``); and also one call per row at its real
    length with the caption positions' logits only (``common.block_losses(by_row=True)``). Prints ms (mean)
    and the largest loss difference to the stage's own."""
    from must.stages import common
    from must.stages.lm_adapt import caption_loss

    spec = next(s for s in recipe.stages if s.kind == "lm_adapt")
    module, _ = build_stage(recipe, spec, args.init_from, out)
    model, clock = module.model, sft_step.clock
    loader = iter(module.train_dataloader())
    batches = [next(loader) for _ in range(args.warmup + args.steps)]

    def as_is(enc, b):
        return caption_loss(model, enc, b["prompt"], b["caption"], module.max_tokens)

    def by_row(enc, b):
        packed = common.pack_questions(model, enc, [[p] for p in b["prompt"]], [[c] for c in b["caption"]],
                                       module.max_tokens)
        return common.block_losses(model.llm, packed, by_row=True)

    variants = {"as the stage runs": (as_is, False), "inert LoRA off": (as_is, True),
                "inert LoRA off + by row, caption logits only": (by_row, True)}
    times, diffs = defaultdict(list), defaultdict(float)
    for i, b in enumerate(batches):
        model.encoder.eval()
        enc = module._encode(b)  # cached after the first visit: not timed below
        first = None
        for name, (fn, off) in variants.items():
            layers = common.disable_inert_lora(model.llm) if off else []
            t0 = clock()
            losses = fn(enc, b)
            losses.mean().backward()
            spent = clock() - t0
            common.enable_lora(layers)
            model.zero_grad(set_to_none=True)
            first = losses.detach() if first is None else first
            diffs[name] = max(diffs[name], float((losses.detach() - first).abs().max()))
            if i >= args.warmup:
                times[name].append(spent)
    print(f"\ncaptions step, packing + LLM forward + backward (no optimiser), {args.steps} batches, ms (mean):\n")
    print("| variant | ms | x the stage's | largest loss difference |\n|---|---|---|---|")
    base = np.mean(times["as the stage runs"])
    for name in variants:
        print(f"| {name} | {1000 * np.mean(times[name]):.1f} | {np.mean(times[name]) / base:.2f} | {diffs[name]:.1e} |")


def prerender(recipe) -> float:
    """Render every training track (the recipe's stage 1 does) before any clock runs; seconds."""
    from must.data.datasets import cached_track

    t0 = time.perf_counter()
    for i in range(recipe.data.train_tracks):
        cached_track(recipe.data, "train", i)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per stage (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--stages", nargs="*", default=None, help="stage names of the recipe (default: all)")
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "tiny.yaml")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="a model folder every selected stage starts from (e.g. runs/tiny/sft/model for grpo)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: this thread's CPU time (steady on a shared machine); wall: wall time")
    ap.add_argument("--captions-variants", action="store_true",
                    help="also time the captions step's LLM the way SFT runs it (adapters off, by row)")
    args = ap.parse_args()
    sft_step.clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    from must.config import load_recipe

    n = args.warmup + args.steps + 1  # +1: a step ends when the next one starts
    with tempfile.TemporaryDirectory(prefix="step_overhead_") as tmp:
        base = load_recipe(args.recipe)
        names = args.stages or [s.name for s in base.stages]
        overrides = [f"output_dir={tmp}", "logger.kind=csv"]
        for name in names:
            overrides += [f"stages.{name}.trainer.max_steps={n}", f"stages.{name}.trainer.limit_val_batches=0",
                          f"stages.{name}.trainer.accelerator=cpu"]
        recipe = load_recipe(args.recipe, overrides)
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        render_s = prerender(recipe)
        rows, notes = {}, {}
        for spec in recipe.stages:
            if spec.name in names:
                summary, label = run_stage(recipe, spec, args, Path(tmp))
                rows[label], notes[label] = summary, summary["note"]
        if args.captions_variants:
            captions_variants(recipe, args, Path(tmp))
        wall = time.perf_counter() - t0
    print(f"\n{args.recipe.name}, {args.steps} timed steps per stage after {args.warmup} warm-up, "
          f"{torch.get_num_threads()} thread(s), {args.clock} clock, ms per step (mean); {wall:.0f} s wall "
          f"({render_s:.0f} s rendering {recipe.data.train_tracks} tracks); load average "
          f"{load0[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end\n")
    print(markdown(rows))
    print()
    for label, note in notes.items():
        print(f"- {label}: reference = {note}")
    for label, s in rows.items():
        print(f"step_overhead[{label.split()[0]}]={s['ratio']:.2f}")


if __name__ == "__main__":
    main()

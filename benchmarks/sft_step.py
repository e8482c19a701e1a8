"""Where an SFT step of the tiny recipe goes: data, encoder, packing, LLM forward, loss, backward, optimizer.

Builds the tiny recipe's ``sft`` stage (``recipes/tiny.yaml``: model from its ``model`` block, random
weights of the recipe's shapes; the stage's options, dataset, sampler, encoding cache and AdamW) and
runs its real ``training_step`` by hand, timing each part:

- ``data``: ``next()`` on the stage's train DataLoader. As in the recipe, where stages 1-2 have rendered
  every training track before SFT, the tracks are rendered first (``--cold`` leaves them to the loader);
- ``encoder``: ``SFTStage._encode`` (the encoder is frozen in the tiny recipe's SFT, so each track is
  encoded once and cached: ``new`` = a track's first visit, ``cached`` = later ones);
- ``pack``: ``common.pack_questions`` (chat prompts, tokenisation, embeddings, the 4-D block mask);
- ``llm fwd``: the LLM's forward; ``loss+log``: the rest of ``training_step`` (per-question loss,
  task balance, ``self.log`` calls, which are no-ops outside a Trainer);
- ``backward``, ``optimizer`` (AdamW step + zero_grad).

The steps run twice over the same batches: first pass = new tracks, second = cached encodings.
``sft_step_ms`` weighs them as the tiny recipe does (450 steps x 2 clips over 400 tracks: 200 steps
meet new tracks, 250 cached ones). ``--lightning`` also times ``Trainer.fit`` over the same number of
steps (new tracks, so compare with the first pass; the difference is Lightning and logging). A bare
Qwen2 of the same size (LLMConfig defaults, no LoRA) doing forward + backward + AdamW on 2 x 500
tokens is printed as the reference.

    python benchmarks/sft_step.py --steps 20 --lightning
    python benchmarks/sft_step.py --set model.time_embedding.pointer_options=false   # a recipe override
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from must.config import load_recipe, stage_options
from must.models.lalm import MusicLALM
from must.stages import common
from must.stages.sft import SFTStage

ROOT = Path(__file__).resolve().parents[1]
#: The clock every part is read with: this thread's CPU time by default (torch on one thread runs its
#: kernels and the CPU backward on the calling thread), so the figures hold on a machine shared with
#: other jobs; ``--clock wall`` for wall time.
clock = time.thread_time
PARTS = ("data", "encoder", "pack", "llm fwd", "loss+log", "backward", "optimizer")


def sft_spec(recipe):
    """The recipe's sft stage block."""
    return next(s for s in recipe.stages if s.kind == "sft")


def build_stage(recipe, seed: int = 0) -> SFTStage:
    spec = next(s for s in recipe.stages if s.kind == "sft")
    torch.manual_seed(seed)
    stage = SFTStage(MusicLALM.from_config(recipe.model), recipe.data,
                     stage_options(SFTStage, spec.options, "sft options"), recipe.seed)
    return stage


class Timers:
    """Wall time of ``pack_questions`` and of the LLM forward inside ``training_step`` (patched/hooked)."""

    def __init__(self, stage: SFTStage):
        self.t: dict[str, float] = defaultdict(float)
        self.lengths: list[int] = []  # packed row lengths, tokens
        self.maxima: list[int] = []  # padded length of each packed batch
        self._pack = common.pack_questions

        def pack(*a, **k):
            t0 = clock()
            out = self._pack(*a, **k)
            self.t["pack"] += clock() - t0
            real = out["inputs_embeds"].detach().abs().sum(-1) > 0  # padding rows are exact zeros
            self.lengths += real.sum(1).tolist()
            self.maxima.append(real.shape[1])
            return out

        common.pack_questions = pack
        llm = stage.model.llm
        llm.register_forward_pre_hook(lambda *_: self.t.__setitem__("_llm", clock()))
        llm.register_forward_hook(lambda *_: self.t.__setitem__(
            "llm fwd", self.t["llm fwd"] + clock() - self.t["_llm"]))

    def take(self) -> dict[str, float]:
        out = {k: v for k, v in self.t.items() if not k.startswith("_")}
        self.t.clear()
        return out


def run_steps(stage: SFTStage, batches: list, opt, timers: Timers, loader=None, n: int = 0) -> list[dict]:
    """One timed training step per batch (or ``n`` batches read from ``loader``); ms per part."""
    rows = []
    for i in range(n if loader is not None else len(batches)):
        row = {}
        t0 = clock()
        if loader is not None:
            batches.append(next(loader))
        batch = batches[i]
        row["data"] = clock() - t0
        encode = stage._encode
        t_enc = {}

        def timed_encode(b):
            t1 = clock()
            out = encode(b)
            t_enc["encoder"] = clock() - t1
            return out

        stage._encode = timed_encode
        t1 = clock()
        loss = stage.training_step(batch, i)
        step_s = clock() - t1
        stage._encode = encode
        row.update(t_enc)
        row.update(timers.take())
        row["loss+log"] = step_s - row["encoder"] - row["pack"] - row["llm fwd"]
        t1 = clock()
        loss.backward()
        row["backward"] = clock() - t1
        t1 = clock()
        opt.step()
        opt.zero_grad()
        row["optimizer"] = clock() - t1
        rows.append({k: 1000 * v for k, v in row.items()})
    return rows


def lightning_ms(recipe, steps: int, warmup: int) -> float:
    """Trainer.fit per step, start to start of consecutive batches after ``warmup`` (fresh stage, new
    tracks, tracks already rendered), ms (mean, on ``clock``)."""
    import lightning as L

    starts: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_start(self, *_):
            starts.append(clock())

        def on_train_end(self, *_):
            starts.append(clock())

    stage = build_stage(recipe)
    trainer = L.Trainer(accelerator="cpu", max_steps=warmup + steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, use_distributed_sampler=False, log_every_n_steps=10,
                        callbacks=[Clock()])
    trainer.fit(stage)
    return 1000 * float(np.mean(np.diff(starts[warmup:])))


def reference_ms(tokens: int = 500, rows: int = 2, repeats: int = 6) -> float:
    """A bare random Qwen2 of the tiny size: forward + backward + AdamW on ``rows`` x ``tokens``, ms (median)."""
    from must.models.config import HostConfig, LLMConfig
    from must.models.llm import build_llm

    torch.manual_seed(0)
    llm, _ = build_llm(LLMConfig(), HostConfig())
    opt = torch.optim.AdamW(llm.parameters(), lr=1e-4)
    ids = torch.randint(0, llm.config.vocab_size, (rows, tokens))
    walls = []
    for _ in range(repeats):
        t0 = clock()
        out = llm(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        walls.append(clock() - t0)
    return 1000 * float(np.median(walls[1:]))


def table(name: str, rows: list[dict]) -> dict[str, float]:
    means = {p: float(np.mean([r[p] for r in rows])) for p in PARTS}
    cells = " | ".join(f"{means[p]:.1f}" for p in PARTS)
    print(f"| {name} | {cells} | {sum(means.values()):.1f} |")
    return means


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per pass (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of recipes/tiny.yaml")
    ap.add_argument("--cold", action="store_true", help="render tracks in the loader (not beforehand)")
    ap.add_argument("--lightning", action="store_true", help="also time Trainer.fit per step")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: this thread's CPU time (steady on a shared machine); wall: wall time")
    args = ap.parse_args()
    global clock
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml", args.set)
    stage = build_stage(recipe)
    opt = common.optimizer_config(stage.model, stage.options, sft_spec(recipe).trainer.max_steps)["optimizer"]
    stage.on_train_start()  # what Trainer.fit calls before the first step
    n = args.warmup + args.steps
    if not args.cold:  # the recipe's stages 1-2 render every training track before SFT: render those read
        dry = iter(stage.train_dataloader())
        for _ in range(n + (args.warmup + args.steps if args.lightning else 0)):
            next(dry)
    loader = iter(stage.train_dataloader())
    timers = Timers(stage)
    batches: list = []
    first = run_steps(stage, batches, opt, timers, loader, n)[args.warmup:]
    second = run_steps(stage, batches, opt, timers)[args.warmup:]  # same clips: cached encodings
    questions = [len(q) for b in batches for q in b["qas"]]
    print(f"tiny recipe SFT, {args.steps} steps per pass, {torch.get_num_threads()} thread(s), {args.clock} clock, "
          f"{'cold' if args.cold else 'pre-rendered'} tracks, {np.mean(questions):.1f} questions a clip, "
          f"packed rows of {np.mean(timers.lengths):.0f} tokens (mean; max per step {np.mean(timers.maxima):.0f})")
    print("\n| ms per step (mean) | " + " | ".join(PARTS) + " | total |")
    print("|---" * (len(PARTS) + 2) + "|")
    a = table("new tracks (1st pass)", first)
    b = table("cached encodings (2nd pass)", second)
    new_frac = 200 / 450  # tiny recipe: 450 steps x 2 clips over 400 tracks -> 200 steps of new tracks
    mix = {p: new_frac * a[p] + (1 - new_frac) * b[p] for p in PARTS}
    print("| recipe mix (200 new / 250 cached) | " + " | ".join(f"{mix[p]:.1f}" for p in PARTS)
          + f" | {sum(mix.values()):.1f} |\n")
    if args.lightning:
        print(f"Trainer.fit: {lightning_ms(recipe, args.steps, args.warmup):.1f} ms per step ({args.steps} steps, new tracks; "
              f"compare the 1st pass total {sum(a.values()):.1f})")
    print(f"reference: bare Qwen2 (LLMConfig defaults) fwd+bwd+AdamW on 2 x 500 tokens: {reference_ms():.1f} ms")
    print(f"sft_step_ms={sum(mix.values()):.1f}")


if __name__ == "__main__":
    main()

"""``must plan``'s memory estimate against measured peak memory on the CPU, per stage of a recipe.

    python benchmarks/plan_vs_measured.py recipes/tiny.yaml [key=value ...] [--steps 3]

Method (CPU, no GPU here): each stage is built from the recipe's ``model`` block (no earlier stage is
run: memory does not depend on the weights' values) and fitted for ``--steps`` optimizer steps by the
runner's own ``build_trainer``. A thread samples the process's resident set size (``/proc/self/statm``)
every 2 ms. The baseline is the RSS at the start of the first training batch (model built, weights in
memory, first batch already read; every training track was rendered before fit so data rendering does
not count); the measured figure is the peak RSS growth from there to the end of training: gradients,
optimizer state and activations, which ``must plan`` estimates as ``grads + optimizer + activations``.
Weights are compared separately (bytes of the parameters vs the plan's ``weights``). RSS growth is an
upper bound on live tensor memory (glibc keeps freed blocks; autograd's workspace and Python objects
count too).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import lightning as L

from must.config import StageContext, load_recipe, stage_class, stage_options
from must.plan import GIB, plan_stage, skeleton
from must.runner import build_trainer, stage_seed

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class PeakRSS(L.Callback):
    """Baseline RSS at the first training batch, peak RSS sampled every 2 ms until training ends."""

    def __init__(self):
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread = None

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._thread is None:
            self.base = self.peak = rss()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()

    def on_train_end(self, trainer, pl_module):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def prerender(recipe) -> None:
    """Render every training track once (the stages' track cache), so fit measures no audio synthesis."""
    from must.data.datasets import cached_track

    for i in range(recipe.data.train_tracks):
        cached_track(recipe.data, "train", i)


def measure(recipe, stage, out: Path, steps: int) -> dict:
    cls = stage_class(stage.kind)
    options = stage_options(cls, stage.options, stage.name)
    for flag in ("eval_init", "eval_final"):  # evaluations before training are not training memory
        if hasattr(options, flag):
            options = replace(options, **{flag: False})
    trainer_cfg = replace(stage.trainer, max_steps=steps, checkpoint_every_n_steps=10**6, limit_val_batches=0,
                          val_check_interval=None, enable_progress_bar=False, accelerator="cpu", devices=1,
                          strategy="auto")
    stage = replace(stage, init_from=None, trainer=trainer_cfg)
    seed = stage_seed(recipe.seed, stage.name)
    L.seed_everything(seed, verbose=False)
    stage_dir = out / stage.name
    ctx = StageContext(recipe, stage, options, None, stage_dir, seed)
    module = cls.from_context(ctx)
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    trainer = build_trainer(recipe, stage, stage_dir, "bench")
    probe = PeakRSS()
    trainer.callbacks.append(probe)
    trainer.fit(module)
    return {"weights": weights, "growth": probe.peak - probe.base}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="/tmp/plan_vs_measured")
    parser.add_argument("--stages", nargs="*", default=None)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, [*args.overrides, "logger.kind=none"])
    if not os.environ.get("MUST_PVM_CHILD"):
        # One fresh process per stage: in one process the allocator would reuse the memory an earlier
        # stage freed, and RSS would not grow.
        print(f"# {args.recipe} {' '.join(args.overrides)}  ({args.steps} steps per stage, CPU, fp32)")
        print("| stage | plan weights GiB | params GiB | plan grads+optim+activ GiB | measured peak RSS growth GiB | ratio |")
        print("|---|---|---|---|---|---|", flush=True)
        for stage in recipe.stages:
            if not args.stages or stage.name in args.stages:
                subprocess.run([sys.executable, __file__, args.recipe, *args.overrides, "--steps", str(args.steps),
                                "--out", args.out, "--stages", stage.name], env={**os.environ, "MUST_PVM_CHILD": "1"},
                               check=True, stdout=sys.stdout, stderr=subprocess.DEVNULL)
        return
    prerender(recipe)
    for stage in recipe.stages:
        if args.stages and stage.name not in args.stages:
            continue
        plan = plan_stage(recipe, replace(stage, trainer=replace(stage.trainer, devices=1, strategy="auto")),
                          skeleton(recipe.model))
        m = plan.memory_gib
        est = m["grads"] + m["optimizer"] + m["activations"]
        got = measure(recipe, stage, Path(args.out), args.steps)
        ratio = (got["growth"] / GIB) / est if est else float("nan")
        print(f"| {stage.name} | {m['weights']:.3f} | {got['weights'] / GIB:.3f} | {est:.3f} | "
              f"{got['growth'] / GIB:.3f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()

"""Stage 1 in isolation: how fast does the tiny recipe's encoder learn source activity and boundaries?

Trains ``EncoderAdaptation``'s own losses in-process (no Trainer) on the tiny recipe's synthetic
train split and reports, on ``--val`` validation tracks, frame-level source-activity F1 (logit > 0)
and boundary F1 at ±1 / ±3 s for a grid of peak thresholds and minimum peak gaps (seconds). Issue
"Grounded answers" item 6 asks for source F1 ≥ 0.85 and boundary F1 (±3 s) ≥ 0.8.

    python benchmarks/encoder_probe.py --steps 200 model.encoder.frame_stats=true model.encoder.layers=0
    python benchmarks/encoder_probe.py --steps 200 --bs 16 --crop 8 model.encoder.frame_stats=true

``--crop S`` trains on random S-second crops (``--bs`` tracks a step) instead of whole tracks.
Results: benchmarks/results/encoder_probe.md.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from must.config import load_recipe
from must.data.datasets import Stage1Tracks
from must.data.datasets import collate as _collate
from must.models.lalm import MusicLALM
from must.stages import common
from must.stages.encoder_adapt import EncoderAdaptation, boundary_hits, f1, pick_peaks

GRID = [(t, gap) for t in (0.3, 0.4, 0.5, 0.6, 0.7) for gap in (2.0, 4.0)]


def crop(item: dict, seconds: float, rate: float, gen: torch.Generator) -> dict:
    """A random ``seconds``-long crop of one Stage1Tracks item, targets and labels shifted to it."""
    n, width = len(item["transition"]), int(seconds * rate)
    if n <= width:
        return item
    f0 = int(torch.randint(0, n - width + 1, (1,), generator=gen))
    t0, t1 = f0 / rate, (f0 + width) / rate
    spf = int(item["sample_rate"] / rate)
    mood = item["mood"]
    mood = mood[(mood[:, 0] >= t0) & (mood[:, 1] <= t1)].clone()
    mood[:, :2] -= t0
    return {"waveform": item["waveform"][f0 * spf:(f0 + width) * spf], "sample_rate": item["sample_rate"],
            "transition": item["transition"][f0:f0 + width], "activity": item["activity"][f0:f0 + width],
            "mood": mood, "boundaries": [b - t0 for b in item["boundaries"] if t0 <= b < t1]}


@torch.no_grad()
def evaluate(stage: EncoderAdaptation, val: Stage1Tracks, n: int) -> dict:
    """Source F1 and boundary F1 on the first ``n`` validation tracks."""
    stage.model.eval()
    src, hits, n_true = [0, 0, 0], {k: [0, 0] for k in GRID}, 0
    for lo in range(0, n, 4):
        batch = _collate([val[i] for i in range(lo, min(n, lo + 4))])
        _, raw = stage.losses(batch)
        frames, mask = raw["frames"], raw["mask"]
        probs = torch.sigmoid(frames.transition_logits).masked_fill(~mask, 0).numpy()
        times = frames.times.numpy()
        for i, true in enumerate(batch["boundaries"]):
            k = int(mask[i].sum())
            n_true += len(true)
            for thr, gap in GRID:
                peaks = pick_peaks(probs[i, :k], times[i, :k], thr, gap)
                hits[(thr, gap)][0] += boundary_hits(peaks, true, 3.0)[0]
                hits[(thr, gap)][1] += len(peaks)
        on = (frames.source_logits > 0) & mask[..., None]
        act = (raw["activity"] > 0.5) & mask[..., None]
        src = [src[0] + int((on & act).sum()), src[1] + int(on.sum()), src[2] + int(act.sum())]
    stage.model.train()
    return {"source_f1": round(f1(*src), 3),
            "boundary_f1_3s": {f"thr {t} gap {g:g}s": round(f1(tp, p, n_true), 3) for (t, g), (tp, p) in hits.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps")
    ap.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (warm-up, cosine)")
    ap.add_argument("--bs", type=int, default=4, help="tracks (or crops) per step")
    ap.add_argument("--crop", type=float, default=0.0, help="train on random crops this long, seconds (0: whole tracks)")
    ap.add_argument("--val", type=int, default=16, help="validation tracks")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. model.encoder.frame_stats=true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    recipe = load_recipe("recipes/tiny.yaml", a.overrides)
    torch.manual_seed(0)
    model = MusicLALM.from_config(recipe.model)
    opts = EncoderAdaptation.Options(lr=a.lr, batch_size=a.bs)
    stage = EncoderAdaptation(model, recipe.data, opts)
    rate = model.encoder.frame_rate
    train = Stage1Tracks(recipe.data, "train", rate, recipe.data.train_tracks)
    val = Stage1Tracks(recipe.data, "val", rate, a.val)
    oc = common.optimizer_config(model, replace(opts, lrs={}), a.steps)
    opt, sched = oc["optimizer"], oc["lr_scheduler"]["scheduler"]
    gen = torch.Generator().manual_seed(0)
    start = time.time()
    for step in range(a.steps):
        idx = torch.randint(0, recipe.data.train_tracks, (a.bs,), generator=gen).tolist()
        items = [train[i] for i in idx]
        if a.crop:
            items = [crop(it, a.crop, rate, gen) for it in items]
        parts, _ = stage.losses(_collate(items))
        loss = stage._total(parts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(1, a.steps // 2) == 0:
            losses = {k: round(v.item(), 3) for k, v in parts.items()}
            print(f"step {step + 1}", losses, evaluate(stage, val, a.val), f"{time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()

"""What limits stage 1's source-activity F1: the features, or how the steps are batched?

Precomputes ``must.models.encoder.mel_statistics`` (the ``frame_stats`` shortcut's input: per-frame
log-mel mean and spread, the ±1 s average, the 2 s before/after change) for ``--train`` tiny-recipe
tracks, then trains a 2-layer MLP on them with Adam and reports validation BCE and F1 (logit > 0) on
16 validation tracks. ``--batch frames`` draws 512 frames at random from all tracks a step;
``--batch tracks --tracks K [--crop F]`` draws K whole tracks (or random F-frame crops of them), as
stage 1 does. Results: benchmarks/results/encoder_probe.md.

    python benchmarks/source_mlp.py --batch frames
    python benchmarks/source_mlp.py --batch tracks --tracks 4
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from must.config import load_recipe
from must.data.datasets import cached_track
from must.data.targets import source_activity
from must.models.audio import log_mel
from must.models.encoder import mel_statistics


def features(data, split: str, n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per track: (frames, 5 * 64) statistics at 10 Hz and (frames, sources) activity."""
    xs, ys = [], []
    for i in range(n):
        track = cached_track(data, split, i)
        wave = torch.from_numpy(np.asarray(track.audio, dtype=np.float32))[None]
        wave = F.pad(wave, (0, (-wave.shape[1]) % 1600))
        mel = log_mel(wave, track.sample_rate, 64, hop=160, n_fft=400)
        y = torch.from_numpy(source_activity(track, 10.0))
        x = mel_statistics(mel, 10, 10, 20)[0][: len(y)]
        xs.append(x)
        ys.append(y[: len(x)])
    return xs, ys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=100, help="training tracks")
    ap.add_argument("--steps", type=int, default=200, help="Adam steps")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    ap.add_argument("--batch", choices=["frames", "tracks"], default="frames", help="what a step draws")
    ap.add_argument("--frames", type=int, default=512, help="--batch frames: frames a step")
    ap.add_argument("--tracks", type=int, default=4, help="--batch tracks: tracks a step")
    ap.add_argument("--crop", type=int, default=0, help="--batch tracks: a random crop this many frames (0: whole)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    data = load_recipe("recipes/tiny.yaml", []).data
    xtr, ytr = features(data, "train", a.train)
    xva, yva = features(data, "val", 16)
    x_all, y_all, xv, yv = torch.cat(xtr), torch.cat(ytr), torch.cat(xva), torch.cat(yva)
    torch.manual_seed(0)
    k, h = x_all.shape[1], 128
    net = nn.Sequential(nn.LayerNorm(k), nn.Linear(k, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, y_all.shape[1]))
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    for step in range(a.steps):
        if a.batch == "frames":
            idx = torch.randint(0, len(x_all), (a.frames,))
            xb, yb = x_all[idx], y_all[idx]
        else:
            picks = torch.randint(0, len(xtr), (a.tracks,)).tolist()
            width = a.crop or 10**9
            starts = [int(torch.randint(0, max(1, len(xtr[i]) - width + 1), (1,))) for i in picks]
            xb = torch.cat([xtr[i][s:s + width] for i, s in zip(picks, starts)])
            yb = torch.cat([ytr[i][s:s + width] for i, s in zip(picks, starts)])
        loss = F.binary_cross_entropy_with_logits(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            with torch.no_grad():
                logits = net(xv)
                bce = F.binary_cross_entropy_with_logits(logits, yv).item()
                on, act = logits > 0, yv > 0.5
                f1 = 2 * int((on & act).sum()) / (int(on.sum()) + int(act.sum()))
            print(f"step {step + 1}: train BCE {loss.item():.3f}  val BCE {bce:.3f}  val F1 {f1:.3f}", flush=True)


if __name__ == "__main__":
    main()

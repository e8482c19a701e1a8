"""How stage 1's boundary picking (``peak_threshold``, ``peak_min_gap_seconds``) sets its boundary F1.

Runs a trained stage-1 model's transition head over tracks of a synthetic split once, then scores every
pair of picking settings on the same curves (greedy one-to-one matching within ``--tol`` seconds, as the
stage's validation does). Choose on the training split, report on the validation split:

    python benchmarks/boundary_peaks.py runs/tiny/encoder/model recipes/tiny.yaml --split train --tracks 64
    python benchmarks/boundary_peaks.py runs/tiny/encoder/model recipes/tiny.yaml --split val
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from must.config import load_recipe
from must.data.datasets import Stage1Tracks
from must.models.lalm import MusicLALM
from must.stages.encoder_adapt import boundary_hits, f1, pick_peaks


def curves(model: MusicLALM, data, split: str, tracks: int) -> list[tuple[np.ndarray, np.ndarray, list[float]]]:
    """(times (F,) seconds, transition probabilities (F,), true boundaries in seconds) per track."""
    ds = Stage1Tracks(data, split, model.encoder.frame_rate, tracks)
    out = []
    with torch.no_grad():
        for i in range(len(ds)):
            item = ds[i]
            frames = model.encoder.encode_frames([item["waveform"]], item["sample_rate"])
            n = min(int(frames.mask[0].sum()), len(item["transition"]))
            out.append((frames.times[0, :n].numpy(), torch.sigmoid(frames.transition_logits[0, :n]).numpy(),
                        list(item["boundaries"])))
    return out


def score(items, threshold: float, gap: float, tol: float) -> float:
    """Boundary F1 over all tracks (counts summed, as the validation metric)."""
    tp = n_pred = n_true = 0
    for times, probs, true in items:
        peaks = pick_peaks(probs, times, threshold, gap)
        hit, p, t = boundary_hits(peaks, true, tol)
        tp, n_pred, n_true = tp + hit, n_pred + p, n_true + t
    return f1(tp, n_pred, n_true)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a stage-1 model folder (e.g. runs/tiny/encoder/model)")
    p.add_argument("recipe", help="the recipe whose data section built it")
    p.add_argument("--split", default="val", choices=("train", "val", "test"))
    p.add_argument("--tracks", type=int, help="tracks of the split (default: all of it)")
    p.add_argument("--tol", type=float, default=3.0, help="matching tolerance, seconds")
    p.add_argument("--thresholds", type=float, nargs="*", default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    p.add_argument("--gaps", type=float, nargs="*", default=[2.0, 3.0, 4.0, 5.0, 6.0])
    args = p.parse_args(argv)
    data = load_recipe(args.recipe).data
    n = args.tracks or {"train": data.train_tracks, "val": data.val_tracks, "test": data.test_tracks}[args.split]
    model = MusicLALM.from_pretrained(args.model).eval()
    items = curves(model, data, args.split, n)
    print(f"{args.split}: {n} tracks, {sum(len(t) for *_, t in items)} boundaries; F1 at +-{args.tol:g} s")
    print("gap \\ threshold " + " ".join(f"{t:6.2f}" for t in args.thresholds))
    for gap in args.gaps:
        print(f"{gap:15.1f} " + " ".join(f"{score(items, t, gap, args.tol):6.3f}" for t in args.thresholds))


if __name__ == "__main__":
    main()

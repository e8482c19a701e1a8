"""Does stage 1's source head already know TSG's answers? A rule on its activity, no LLM.

For each TSG question of a run's predictions (``<run>/<stage>/eval/predictions.jsonl``, the synthetic test
split of ``recipe``), the rule answers from the trained encoder's source-activity probabilities alone: the
first frame (onset) or the last frame (offset) where the asked source's probability, averaged over
``--smooth`` seconds, is above ``--threshold``. Its Hit@3s beside the model's says where TSG's misses are
made: in the encoder (the rule misses too) or between the encoder and the answer (the rule hits).

    python benchmarks/source_rule.py runs/tiny recipes/tiny.yaml
    python benchmarks/source_rule.py runs/tiny recipes/tiny.yaml --encoder /tmp/other/encoder/model   # same questions
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from must.config import load_recipe
from must.data.datasets import cached_track
from must.data.synth import SOURCE_NAMES
from must.models.lalm import MusicLALM
from must.stages.encoder_adapt import pick_peaks
from must.parsing import parse_time


def rule_time(times: np.ndarray, probs: np.ndarray, kind: str, threshold: float) -> float | None:
    """The first (``onset``) or last (``offset``) frame time, seconds, whose probability is above ``threshold``:
    an onset at the frame's start, an offset at its end (frames are centred, ``times`` (F,) seconds)."""
    on = np.nonzero(probs > threshold)[0]
    if not len(on):
        return None
    half = (times[1] - times[0]) / 2 if len(times) > 1 else 0.0
    return float(times[on[0]] - half) if kind == "onset" else float(times[on[-1]] + half)


def segment_time(times: np.ndarray, probs: np.ndarray, bounds: list[float], kind: str, threshold: float) -> float | None:
    """The start of the first (``onset``) or the end of the last (``offset``) segment between ``bounds`` (seconds,
    the transition head's peaks) whose mean probability is above ``threshold``: a source changes only at a
    section boundary in the synthetic music, so a segment's frames vote together."""
    edges = [float(times[0]) - 0.5 * (times[1] - times[0])] + list(bounds) + [float(times[-1]) + 0.5 * (times[1] - times[0])]
    active = [(a, b) for a, b in zip(edges[:-1], edges[1:])
              if ((times >= a) & (times < b)).any() and probs[(times >= a) & (times < b)].mean() > threshold]
    if not active:
        return None
    return active[0][0] if kind == "onset" else active[-1][1]


def smooth(probs: np.ndarray, frames: int) -> np.ndarray:
    """(F,) moving average over ``frames`` frames (centred, same length)."""
    if frames <= 1:
        return probs
    pad = np.pad(probs, (frames // 2, frames - 1 - frames // 2), mode="edge")
    return np.convolve(pad, np.ones(frames) / frames, mode="valid")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run folder (its encoder/model and <stage>/eval/predictions.jsonl)")
    p.add_argument("recipe", help="the recipe of the run (its data section built the test split)")
    p.add_argument("--stage", default="grpo", help="whose predictions to compare with")
    p.add_argument("--encoder", help="another stage-1 model folder to read the activity from (default: the run's)")
    p.add_argument("--threshold", type=float, nargs="*", default=[0.3, 0.5, 0.7])
    p.add_argument("--smooth", type=float, nargs="*", default=[0.0, 1.0, 2.0], help="seconds")
    p.add_argument("--peak-threshold", type=float, default=0.5, help="boundary peaks, as stage 1 picks them")
    p.add_argument("--peak-gap", type=float, default=6.0, help="seconds between boundary peaks")
    args = p.parse_args(argv)
    run = Path(args.run)
    data = load_recipe(args.recipe).data
    model = MusicLALM.from_pretrained(args.encoder or run / "encoder" / "model").eval()
    rows = [json.loads(line) for line in open(run / args.stage / "eval" / "predictions.jsonl")]
    rows = [r for r in rows if r["task"] == "TSG"]
    probs: dict[int, tuple[np.ndarray, np.ndarray, list[float]]] = {}
    with torch.no_grad():
        for r in rows:
            i = int(r["id"].split("-")[2])
            if i not in probs:
                track = cached_track(data, "test", i)
                f = model.encoder.encode_frames([track.audio], track.sample_rate)
                n = int(f.mask[0].sum())
                times = f.times[0, :n].numpy()
                bounds = pick_peaks(torch.sigmoid(f.transition_logits[0, :n]).numpy(), times, args.peak_threshold,
                                    args.peak_gap)
                probs[i] = (times, torch.sigmoid(f.source_logits[0, :n]).numpy(), bounds)
    rate = model.encoder.frame_rate
    print(f"{args.encoder or run}: {len(rows)} TSG questions on {len(probs)} test tracks; Hit@3s")
    for kind in ("onset", "offset"):
        mine = [r for r in rows if r["qa_type"] == kind]
        hits = [r["parsed"] is not None and abs(float(r["parsed"]) - parse_time(r["answer"]).value) <= 3 for r in mine]
        print(f"  {kind:6s} model ({args.stage}) {100 * np.mean(hits):5.1f}  ({len(mine)} questions)")
        for sec in args.smooth:
            for th in args.threshold:
                got = []
                for r in mine:
                    times, pr, _ = probs[int(r["id"].split("-")[2])]
                    src = r["reference_trace"].split()[1]
                    t = rule_time(times, smooth(pr[:, SOURCE_NAMES.index(src)], int(round(sec * rate))), kind, th)
                    got.append(t is not None and abs(t - parse_time(r["answer"]).value) <= 3)
                both = np.mean([g and h for g, h in zip(got, hits)])
                print(f"  {kind:6s} rule smooth {sec:.0f} s threshold {th:.1f}  {100 * np.mean(got):5.1f}"
                      f"  (both {100 * both:.1f})")
        for th in args.threshold:
            got = []
            for r in mine:
                times, pr, bounds = probs[int(r["id"].split("-")[2])]
                src = r["reference_trace"].split()[1]
                t = segment_time(times, pr[:, SOURCE_NAMES.index(src)], bounds, kind, th)
                got.append(t is not None and abs(t - parse_time(r["answer"]).value) <= 3)
            print(f"  {kind:6s} rule per segment (peaks {args.peak_threshold} / {args.peak_gap} s) threshold {th:.1f}"
                  f"  {100 * np.mean(got):5.1f}")


if __name__ == "__main__":
    main()

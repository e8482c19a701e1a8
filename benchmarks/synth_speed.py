"""How fast synthetic music is made: seconds of 16 kHz audio per wall second on one core.

Full-length tracks (2-6 min, as MusTBench's), labels, stage-1 targets, captions and all five tasks'
questions included. The first track warms the per-process note-template cache and is timed apart.

    python benchmarks/synth_speed.py [--tracks 20] [--seed 0]

The last line is ``realtime_factor=<float>`` (warm tracks; target >= 300).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as in a dataloader worker
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import time

from must.data.config import DataConfig
from must.data.synth import caption_text, generate_track
from must.data.targets import mood_change_clips, source_activity, transition_curve
from must.data.tasks import build_qas


def make(seed: int, cfg: DataConfig) -> tuple[float, int]:
    """Everything the four stages take from one track; returns (duration seconds, questions)."""
    track = generate_track(seed, cfg)
    qas = build_qas(track, seed, "train")
    caption_text(track)
    transition_curve(track, 2.5, cfg.transition_sigma_s)
    source_activity(track, 2.5)
    mood_change_clips(track, cfg.mood_window_s)
    return track.duration, len(qas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-rate", type=int, default=16000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cfg = DataConfig(sample_rate=args.sample_rate, min_seconds=120.0, max_seconds=360.0)
    t0 = time.perf_counter()
    first, _ = make(args.seed, cfg)
    cold = first / (time.perf_counter() - t0)
    print(f"cold first track: {first:.1f} s of audio, {cold:.0f}x real time (fills the template cache)")
    audio_s, questions, t0, c0 = 0.0, 0, time.perf_counter(), time.process_time()
    for seed in range(args.seed + 1, args.seed + 1 + args.tracks):
        d, q = make(seed, cfg)
        audio_s += d
        questions += q
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"{args.tracks} tracks, {audio_s / 60:.1f} min of audio at {args.sample_rate} Hz, {questions} questions, "
        f"{wall:.2f} s wall on one core"
    )
    print(f"cpu_realtime_factor={audio_s / cpu:.1f} (audio seconds per CPU second; robust to a busy machine)")
    print(f"realtime_factor={audio_s / wall:.1f}")


if __name__ == "__main__":
    main()

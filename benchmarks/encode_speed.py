"""Encoding speed of the MusT encoder: seconds of audio encoded per wall-clock second.

Runs ``MusicLALM.encode_audio`` (windowing, backbone, transition head, sampling, coverage guard) in
eval mode on a noise track, for the tiny and a small built-in backbone, with dynamic and uniform
sampling. Prints a markdown table (median over repeats); the last line is ``audio_seconds_per_s=<float>`` for the default
(tiny backbone, dynamic sampling).

    python benchmarks/encode_speed.py --seconds 120 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from must.models.config import ModelConfig
from must.models.lalm import MusicLALM

BACKBONES = {
    "tiny": dict(width=128, layers=3, heads=4),  # the default recipe's encoder
    "small": dict(width=384, layers=6, heads=6),
}


def measure(backbone: str, mode: str, seconds: float, repeats: int, batch: int) -> float:
    cfg = ModelConfig()
    for k, v in BACKBONES[backbone].items():
        setattr(cfg.encoder, k, v)
    cfg.sampling.mode = mode
    torch.manual_seed(0)
    model = MusicLALM.from_config(cfg).eval()
    waves = [
        (np.random.default_rng(i).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
        for i in range(batch)
    ]
    with torch.no_grad():
        model.encode_audio(waves[:1], 16000)  # warm-up
        walls = []
        for _ in range(repeats):
            start = time.perf_counter()
            enc = model.encode_audio(waves, 16000)
            walls.append(time.perf_counter() - start)
    assert enc.covered_seconds.min().item() >= seconds - 0.2
    # median: the machine is shared, a mean would mostly measure the neighbours
    return seconds * batch / float(np.median(walls))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="track length, seconds")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1, help="tracks per encode_audio call")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"track {args.seconds:.0f} s, batch {args.batch}, repeats {args.repeats}, torch threads "
        f"{torch.get_num_threads()}, CPU"
    )
    print("| backbone | sampling | audio s / wall s |")
    print("|---|---|---|")
    default = None
    for backbone in BACKBONES:
        for mode in ("dynamic", "uniform"):
            speed = measure(backbone, mode, args.seconds, args.repeats, args.batch)
            print(
                f"| {backbone} ({BACKBONES[backbone]['layers']}x{BACKBONES[backbone]['width']}) | {mode} | {speed:.1f} |"
            )
            if backbone == "tiny" and mode == "dynamic":
                default = speed
    print(f"audio_seconds_per_s={default:.2f}")


if __name__ == "__main__":
    main()

"""``must synth``: write synthetic tracks, their labels and a MusTBench-format parquet."""

from __future__ import annotations

import argparse

from must.errors import MustError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracks", type=int, required=True, help="number of tracks (split 80/10/10 train/val/test by track; with fewer than 10: 1 train, then 1 test, then 1 val, the rest train)"
    )
    parser.add_argument("--out", required=True, help="output folder (audio/, labels/, mustbench.parquet); what an earlier must synth wrote there is replaced, other files are kept")
    parser.add_argument("--seed", type=int, default=0, help="seed offset; same seed, same tracks")
    parser.add_argument("--min-seconds", type=float, default=20.0, help="shortest track, seconds")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="longest track, seconds")
    parser.add_argument("--sample-rate", type=int, default=16000, help="sample rate of the FLAC files, Hz")


def handler(args: argparse.Namespace) -> int:
    from must.data.export import write_synthetic

    if args.tracks < 1:
        raise MustError(f"--tracks must be at least 1, got {args.tracks}")
    if not 5 <= args.min_seconds <= args.max_seconds:
        raise MustError(
            f"need 5 <= --min-seconds <= --max-seconds, got {args.min_seconds} and {args.max_seconds}"
        )
    path = write_synthetic(
        args.out, args.tracks, args.seed, args.min_seconds, args.max_seconds, args.sample_rate
    )
    print(f"[must] wrote {args.tracks} tracks and {path}")
    return 0

"""How a grounded trace's times relate to the reference trace's, per task, from a predictions file.

    python benchmarks/trace_times.py runs/tiny/grpo/eval/predictions.jsonl [more.jsonl ...]

For each task: ``first within 3 s`` is the share of traces whose first ``M:SS`` is within 3 s of the
reference trace's first (for LTR and TAD that is the asked time, which the trace should copy; for TSG
the time looked up), and ``one time only`` the share of traces with two or more times that are all the same
(GTO's trace should name three different times). Seconds, 3 s as MusTBench's Hit@3s.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

TIME = re.compile(r"\b(\d+):(\d{2})\b")


def times(text: str) -> list[int]:
    """Every ``M:SS`` of ``text`` in seconds, in order."""
    return [int(m) * 60 + int(s) for m, s in TIME.findall(text or "")]


def summarise(rows: list[dict], tol: float = 3.0) -> dict[str, dict[str, float]]:
    """Per task: rows, share whose first trace time is within ``tol`` s of the reference's, share of
    traces with 2+ times that are all one time."""
    by = defaultdict(lambda: [0, 0, 0, 0])  # rows, first-time hits, multi-time traces, of those one time only
    for r in rows:
        got, ref = times(r.get("trace")), times(r.get("reference_trace"))
        c = by[r["task"]]
        c[0] += 1
        c[1] += bool(got and ref and abs(got[0] - ref[0]) <= tol)
        if len(got) >= 2:
            c[2] += 1
            c[3] += len(set(got)) == 1
    return {t: {"rows": n, "first_within_3s": 100 * hit / n, "one_time_only": 100 * same / multi if multi else 0.0}
            for t, (n, hit, multi, same) in sorted(by.items())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("predictions", nargs="+", type=Path, help="predictions.jsonl files (must eval / must run)")
    args = ap.parse_args(argv)
    for path in args.predictions:
        try:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"{path}: not a predictions file ({e})")
        print(path)
        for task, s in summarise(rows).items():
            print(f"  {task:4s} {s['rows']:4d} rows  first within 3 s {s['first_within_3s']:5.1f}%  "
                  f"one time only {s['one_time_only']:5.1f}%")


if __name__ == "__main__":
    main()

"""How a grounded trace's times relate to the reference trace's, per task, from a predictions file.

    python benchmarks/trace_times.py runs/tiny/grpo/eval/predictions.jsonl [more.jsonl ...]

For each task: ``first within 3 s`` is the share of traces whose first ``M:SS`` is within 3 s of the
reference trace's first (for LTR and TAD that is the asked time, which the trace should copy; for TSG
the time looked up), and ``one time only`` the share of traces with two or more times that are all the same
(GTO's trace should name three different times). Seconds, 3 s as MusTBench's Hit@3s.

Then the keyed traces' steps, each against the reference trace (``must.data.traces``): LTR's and TAD's
``key right`` (the change key after the asked time, ``onset kick`` or ``louder``), LTR's letter right when the
key is right and when it is not (was the option chosen from what the trace named?); GTO's keys copied right
(X's, Y's and Z's key, each of the three), the time named after a right key within 3 s, the written order a
permutation of X, Y, Z at all, order right (the ``Y → X → Z`` written equals the reference's), and its letter
right when the order is right.
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


_GTO_STEP = re.compile(r"([XYZ]) (.*?) (\d+:\d{2})")


def change_key(trace: str) -> str:
    """The change key after an LTR/TAD trace's first time: ``onset kick`` / ``offset bass`` or one word."""
    head = (trace or "").split("→")[0]
    words = TIME.sub(" ", head).split()
    if not words:
        return ""
    return " ".join(words[:2]) if words[0] in ("onset", "offset") else words[0]


def gto_parts(trace: str) -> tuple[dict[str, str], list[str]]:
    """({X: key, ...}, the written order [Y, X, Z]) of a GTO trace ``X onset kick 0:40 … Y → X → Z → E``."""
    parts = (trace or "").split("→")
    keys = {name: key for name, key, _ in _GTO_STEP.findall(parts[0])}
    order = [parts[0].split()[-1]] + [p.strip() for p in parts[1:-1]] if len(parts) >= 3 else []
    return keys, order


def gto_times(trace: str) -> dict[str, int]:
    """{X: seconds, ...}: the time each label's step names in a GTO trace."""
    head = (trace or "").split("→")[0]
    return {name: times(at)[0] for name, _, at in _GTO_STEP.findall(head)}


def _pct(a: int, b: int) -> float | None:
    return 100 * a / b if b else None


def steps_summary(rows: list[dict], tol: float = 3.0) -> dict[str, dict[str, float | None]]:
    """Per task (LTR, TAD, GTO), the share of each step of the keyed trace that is right (module doc)."""
    out: dict[str, dict[str, float | None]] = {}
    for task in ("LTR", "TAD"):
        rs = [r for r in rows if r["task"] == task]
        if not rs:
            continue
        right = [change_key(r.get("trace")) == change_key(r.get("reference_trace")) for r in rs]
        hit = [str(r.get("prediction", "")).strip() == str(r.get("answer", "")).strip() for r in rs]
        s = {"rows": len(rs), "key_right": _pct(sum(right), len(rs))}
        if task == "LTR":
            s["letter_if_key_right"] = _pct(sum(h for h, k in zip(hit, right) if k), sum(right))
            s["letter_if_key_wrong"] = _pct(sum(h for h, k in zip(hit, right) if not k), len(rs) - sum(right))
        out[task] = s
    rs = [r for r in rows if r["task"] == "GTO"]
    if rs:
        keys_right = slots = timed = order_right = letter_right = permutations = 0
        for r in rs:
            (got, got_order), (ref, ref_order) = gto_parts(r.get("trace")), gto_parts(r.get("reference_trace"))
            got_at, ref_at = gto_times(r.get("trace")), gto_times(r.get("reference_trace"))
            slots += len(ref)
            right = [name for name, key in ref.items() if got.get(name) == key]
            keys_right += len(right)
            timed += sum(name in got_at and abs(got_at[name] - ref_at[name]) <= tol for name in right)
            permutations += sorted(got_order) == ["X", "Y", "Z"]
            if got_order and got_order == ref_order:
                order_right += 1
                letter_right += str(r.get("prediction", "")).strip() == str(r.get("answer", "")).strip()
        out["GTO"] = {"rows": len(rs), "keys_right": _pct(keys_right, slots),
                      "time_if_key_right": _pct(timed, keys_right), "order_a_permutation": _pct(permutations, len(rs)),
                      "order_right": _pct(order_right, len(rs)), "letter_if_order_right": _pct(letter_right, order_right)}
    return out


def _fmt(v: float | None) -> str:
    return "  n/a" if v is None else f"{v:5.1f}"


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
        for task, s in steps_summary(rows).items():
            named = "  ".join(f"{k.replace('_', ' ')} {_fmt(v)}%" for k, v in s.items() if k != "rows")
            print(f"  {task:4s} steps: {named}")


if __name__ == "__main__":
    main()

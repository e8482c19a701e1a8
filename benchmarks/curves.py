"""Learning curves of a recipe run, from each stage's CSV log: a markdown summary and a plot.

Reads ``OUTPUT_DIR/<stage>/logs/metrics.csv`` (the CSV logger's file) of every stage in run order and
writes, per stage, the training metrics averaged over ``--bins`` equal step ranges (the log is noisy
step to step) and every validation row as logged; the plot shows the losses (and GRPO's reward) of
each stage against its step.

    python benchmarks/curves.py runs/tiny                      # prints the markdown
    python benchmarks/curves.py runs/tiny --md curves.md --png curves.png
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
from pathlib import Path

from must.runner import read_record

#: Per-question loss of a letter answer at chance (letter + EOS: uniform over the letters, EOS certain,
#: averaged over the 2 tokens); drawn as dashed lines so a letter task stuck at chance is visible.
CHANCE_LOSS = {"loss_LTR": math.log(4) / 2, "loss_GTO": math.log(6) / 2}

#: Columns that are bookkeeping, not curves.
SKIP = {"epoch", "step", "train/questions", "train/broken_audio_files"}


def read_log(path: Path) -> tuple[list[int], dict[str, list[tuple[int, float]]]]:
    """(steps seen, column -> [(step, value)]) of one ``metrics.csv``; empty cells are skipped."""
    columns: dict[str, list[tuple[int, float]]] = {}
    steps: list[int] = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            step = int(row["step"])
            steps.append(step)
            for key, value in row.items():
                if key in SKIP or value in ("", None):
                    continue
                columns.setdefault(key, []).append((step, float(value)))
    return steps, columns


def stage_dirs(run: Path) -> list[Path]:
    """The run's stage folders that hold a CSV log, in the order the stages ran (``record.json``'s start)."""
    found = [d for d in run.iterdir() if (d / "logs" / "metrics.csv").is_file()]

    return sorted(found, key=lambda d: ((read_record(d) or {}).get("started_at", ""), d.name))


def binned(points: list[tuple[int, float]], edges: list[int]) -> list[float | None]:
    """Mean value of the points whose step falls in each ``(edges[i], edges[i+1]]`` range (None: no point)."""
    out = []
    for lo, hi in itertools.pairwise(edges):
        vals = [v for s, v in points if lo < s <= hi]
        out.append(sum(vals) / len(vals) if vals else None)
    return out


def _fmt(v: float | None) -> str:
    if v is None or math.isnan(v):
        return ""
    if v == 0:
        return "0"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def stage_markdown(name: str, columns: dict[str, list[tuple[int, float]]], last_step: int, bins: int) -> list[str]:
    """A stage's section: training metrics (averaged per step range when logged more often than
    ``2 * bins`` times, else as logged), then validation rows; constant columns go in one line."""
    constant = {k: v[0][1] for k, v in columns.items() if len({x for _, x in v}) == 1 and len(v) > 1}
    columns = {k: v for k, v in columns.items() if k not in constant}
    train = {k: v for k, v in columns.items() if not k.startswith("val/")}
    val = {k: v for k, v in columns.items() if k.startswith("val/")}
    lines = [f"### {name}", ""]
    if train:
        keys = sorted(train)
        logged = sorted({s for k in keys for s, _ in train[k]})
        ranges = len(logged) > 2 * bins
        if ranges:
            edges = [round(last_step * i / bins) for i in range(bins + 1)]
            edges[0] = -1  # so step 0 falls in the first range
        else:  # few points: one row per logged step
            edges = [-1] + logged
        cols = [binned(train[k], edges) for k in keys]
        lines += ["| steps | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for i in range(len(edges) - 1):
            lo, hi = max(0, edges[i] + 1), edges[i + 1]
            label = f"{lo}–{hi}" if ranges else f"{hi}"
            lines.append(f"| {label} | " + " | ".join(_fmt(c[i]) for c in cols) + " |")
        lines.append("")
    if val:
        keys = sorted(val)
        steps = sorted({s for k in keys for s, _ in val[k]})
        lines += ["| val step | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for s in steps:
            cells = [_fmt(next((v for st, v in val[k] if st == s), None)) for k in keys]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines.append("")
    if constant:
        lines += ["Constant over the run: " + ", ".join(f"`{k}` {_fmt(v)}" for k, v in sorted(constant.items())) + ".", ""]
    return lines


def plot(stages: list[tuple[str, dict]], path: Path) -> None:
    """One panel per stage: its loss curves (and GRPO's reward), a moving average over ~5 % of the steps;
    the letter tasks' chance-level losses dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.4), squeeze=False)
    for ax, (name, columns) in zip(axes[0], stages):
        for key, points in sorted(columns.items()):
            if key.startswith("val/") or not ("loss" in key or key.split("/")[-1] == "reward"):
                continue
            steps, vals = zip(*points)
            w = max(1, len(vals) // 20)
            smooth = [sum(vals[max(0, i - w + 1): i + 1]) / min(w, i + 1) for i in range(len(vals))]
            short = key.split("/")[-1]
            line, = ax.plot(steps, smooth, label=short, lw=1.2)
            if short in CHANCE_LOSS:
                ax.axhline(CHANCE_LOSS[short], color=line.get_color(), ls="--", lw=0.8)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a recipe's output_dir")
    parser.add_argument("--bins", type=int, default=6, help="step ranges the training metrics are averaged over")
    parser.add_argument("--md", type=Path, help="write the markdown here (default: print it)")
    parser.add_argument("--png", type=Path, help="also plot the curves to this file")
    args = parser.parse_args()
    if not args.run.is_dir():
        parser.error(f"{args.run}: not a folder (pass a recipe's output_dir)")
    dirs = stage_dirs(args.run)
    if not dirs:
        parser.error(f"{args.run}: no <stage>/logs/metrics.csv (was the run logged with `logger: {{kind: csv}}`?)")
    lines, stages = [f"## Learning curves of `{args.run}`", ""], []
    for d in dirs:
        steps, columns = read_log(d / "logs" / "metrics.csv")
        lines += stage_markdown(d.name, columns, max(steps, default=0), args.bins)
        stages.append((d.name, columns))
    text = "\n".join(lines)
    if args.md:
        args.md.write_text(text + "\n")
    else:
        print(text)
    if args.png:
        plot(stages, args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

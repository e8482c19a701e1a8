"""Pictures of what a model answered: reference vs prediction on the track's time axis (PNG, matplotlib Agg).

Times in seconds. More plots (transition curves, token placement) can sit beside :func:`plot_timeline`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from must.parsing import parse_intervals, parse_time
from must.timecode import format_time

Interval = tuple[float, float]


def _as_marks(values: Any) -> tuple[list[float], list[Interval]]:
    """Split a parsed value into point times and intervals (seconds)."""
    if values is None:
        return [], []
    if isinstance(values, (int, float)):
        return [float(values)], []
    items = list(values)
    if len(items) == 2 and all(isinstance(v, (int, float)) for v in items):
        return [], [(float(items[0]), float(items[1]))]
    times: list[float] = []
    spans: list[Interval] = []
    for item in items:
        t, s = _as_marks(item)
        times += t
        spans += s
    return times, spans


def plot_timeline(
    path: str | Path,
    duration: float,
    reference: Any,
    prediction: Any,
    title: str = "",
    note: str | None = None,
) -> Path:
    """Draw reference (top lane) and prediction (bottom lane) on a 0..duration axis and save a PNG.

    ``reference``/``prediction``: a time (seconds), an interval (start, end), a list of either, or None
    (drawn as "no answer"). ``note``: e.g. the failure reason or the score.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 1.9), dpi=100)
    lanes = {"reference": (1.0, "tab:green", reference), "prediction": (0.0, "tab:orange", prediction)}
    end = max(float(duration or 0), 1.0)
    for (y, color, value) in lanes.values():
        times, spans = _as_marks(value)
        for a, b in spans:
            ax.broken_barh([(a, max(b - a, end * 0.002))], (y - 0.3, 0.6), facecolors=color, alpha=0.7)
            end = max(end, b)
        for t in times:
            ax.plot([t, t], [y - 0.35, y + 0.35], color=color, linewidth=3)
            end = max(end, t)
        if not times and not spans:
            ax.text(end / 2, y, "no answer", ha="center", va="center", color="gray", fontsize=9)
    ax.set_yticks([0, 1], ["prediction", "reference"])
    ax.set_ylim(-0.6, 1.6)
    ax.set_xlim(0, end)
    ticks = [end * i / 6 for i in range(7)]
    ax.set_xticks(ticks, [format_time(t) for t in ticks])
    ax.set_xlabel("track time (M:SS)")
    ax.axvline(float(duration or 0), color="black", linewidth=0.8, linestyle=":")
    ax.set_title((title + (f" — {note}" if note else ""))[:110], fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _reference_value(ref: Mapping[str, Any]) -> Any:
    answers = ref.get("answers")
    answers = [ref.get("answer", "")] if answers is None or len(answers) == 0 else list(answers)
    if str(ref["task"]).upper() == "TSG":
        return [p.value for p in map(parse_time, answers) if p.ok]
    return [iv for p in map(parse_intervals, answers) if p.ok for iv in p.value]


def plot_rows(
    references: Sequence[Mapping[str, Any]],
    predictions: Mapping[str, Mapping[str, Any]],
    out_dir: str | Path,
    n_per_task: int = 4,
    tasks: Sequence[str] = ("TSG", "MTR"),
) -> list[Path]:
    """Timeline PNGs for the first ``n_per_task`` rows of each of ``tasks``: ``out_dir/<task>_<id>.png``.

    ``predictions``: row id -> record with ``parsed``, ``reason``/``error`` and ``duration`` (seconds).
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    count: dict[str, int] = {}
    for ref in references:
        task = str(ref["task"]).upper()
        if task not in tasks or count.get(task, 0) >= n_per_task:
            continue
        rec = predictions.get(str(ref["id"]), {})
        duration = float(rec.get("duration") or ref.get("duration") or 0)
        note = rec.get("error") or rec.get("reason")
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(ref["id"]))
        title = f"{task} {ref.get('qa_type') or ''} {ref['id']}".replace("  ", " ")
        written.append(plot_timeline(out_dir / f"{task}_{safe}.png", duration, _reference_value(ref),
                                     rec.get("parsed"), title, note))
        count[task] = count.get(task, 0) + 1
    return written

"""Pictures of music and of what a model answered, as PNG files (matplotlib, no display needed).

Every function draws on its own :class:`matplotlib.figure.Figure` (never pyplot's global state, so it is
safe in notebooks, threads and training loops), writes ``path`` and returns it as a :class:`~pathlib.Path`.
Times are in seconds everywhere; axes are labelled ``M:SS``.

- :func:`plot_track`: spectrogram, each source's playing spans (onset/offset bars), section boundaries
  and the arousal curve of a :class:`~must.data.types.Track`.
- :func:`plot_transition_curve`: the encoder's transition probability vs the true boundaries (stage 1).
- :func:`plot_timeline`: one reference vs one prediction on the track's time axis.
- :func:`plot_answers`: a reference and several sampled answers (one lane each, with their rewards).
- :func:`plot_histograms`: one histogram per name (e.g. GRPO rewards per task).
- :func:`plot_rows`: timelines for the first rows of an evaluation (used by ``must eval``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from must.parsing import parse_answer, parse_intervals, parse_time
from must.timecode import format_time

Interval = tuple[float, float]

#: Colours of the reference and of answers judged right / wrong.
REFERENCE_COLOR, GOOD_COLOR, BAD_COLOR, NEUTRAL_COLOR = "tab:green", "tab:blue", "tab:red", "tab:orange"
BOUNDARY_STYLE = {"color": "black", "linestyle": "--", "linewidth": 0.9, "alpha": 0.6}


# ------------------------------------------------------------------------------------------ helpers


def _figure(width: float, height: float, rows: int = 1, height_ratios: Sequence[float] | None = None):
    """A figure with ``rows`` axes sharing the time axis (no pyplot: the Agg canvas is the default)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": list(height_ratios)} if height_ratios else None)
    return fig, list(axes[:, 0])


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _time_axis(ax: Any, end: float, max_ticks: int = 8, label: bool = True) -> None:
    """x from 0 to ``end`` seconds, ticks at round times (5 s, 10 s, 30 s, 1 min …) written ``M:SS``."""
    end = max(float(end), 1.0)
    ax.set_xlim(0, end)
    step = next((s for s in (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 1800) if end / s <= max_ticks), 3600)
    ticks = [i * step for i in range(int(end // step) + 1)]
    ax.set_xticks(ticks, [format_time(t) for t in ticks])
    if label:
        ax.set_xlabel("track time (M:SS)")


def _boundaries(axes: Sequence[Any], times: Sequence[float]) -> None:
    for ax in axes:
        for t in times:
            ax.axvline(float(t), **BOUNDARY_STYLE)


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


def _draw_marks(ax: Any, y: float, value: Any, color: str, end: float, label: str = "no answer") -> float:
    """Draw times (ticks) and intervals (bars) of ``value`` in the lane at ``y``; returns the furthest time."""
    times, spans = _as_marks(value)
    for a, b in spans:
        ax.broken_barh([(a, max(b - a, end * 0.004))], (y - 0.3, 0.6), facecolors=color, alpha=0.75)
        end = max(end, b)
    for t in times:
        ax.plot([t, t], [y - 0.38, y + 0.38], color=color, linewidth=3)
        end = max(end, t)
    if not times and not spans:
        ax.text(0.5, y, label, ha="center", va="center", color="gray", fontsize=8,
                transform=ax.get_yaxis_transform())
    return end


def _furthest(value: Any) -> float:
    times, spans = _as_marks(value)
    return max([*times, *(b for _, b in spans), 0.0])


# ------------------------------------------------------------------------------------------ a track


def _log_spectrogram(audio: np.ndarray, sample_rate: int, n_bands: int = 80, max_columns: int = 1500):
    """Power in log-spaced frequency bands, dB: ((bands, frames), band edges Hz (bands+1,), frame times s)."""
    from matplotlib import mlab

    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    n_fft = 1024 if sample_rate >= 16000 else 512
    # a hop that keeps at most ``max_columns`` frames: a 6-minute track stays a light image
    hop = max(n_fft // 4, int(np.ceil(len(audio) / max_columns)))
    if len(audio) < n_fft:
        audio = np.pad(audio, (0, n_fft - len(audio)))
    power, freqs, times = mlab.specgram(audio, NFFT=n_fft, Fs=sample_rate, noverlap=max(n_fft - hop, 0),
                                        window=np.hanning(n_fft), mode="psd")
    edges = np.geomspace(30.0, sample_rate / 2, n_bands + 1)
    band = np.clip(np.searchsorted(edges, freqs) - 1, 0, n_bands - 1)
    keep = freqs >= edges[0]
    pooled = np.zeros((n_bands, power.shape[1]))
    np.add.at(pooled, band[keep], power[keep])
    counts = np.bincount(band[keep], minlength=n_bands)[:, None]
    pooled = pooled / np.maximum(counts, 1)
    # a band no FFT bin falls into (narrow low bands) takes its upper neighbour's value
    for i in range(n_bands - 2, -1, -1):
        if counts[i, 0] == 0:
            pooled[i] = pooled[i + 1]
    db = 10 * np.log10(np.maximum(pooled, 1e-12))
    return np.maximum(db, db.max() - 80.0), edges, times


def plot_track(
    path: str | Path,
    track: Any,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    title: str | None = None,
    sources: Sequence[str] | None = None,
) -> Path:
    """Spectrogram, source playing spans, section boundaries and arousal of a track, as one PNG.

    ``track``: a :class:`~must.data.types.Track` (times in seconds). ``audio`` (samples,) and
    ``sample_rate`` override ``track.audio``; with no audio at all the spectrogram panel is left out.
    ``sources``: the source lanes to draw, in order (default: those in ``track.sources``).
    Boundaries (``track.transitions``) are dashed lines through every panel, labelled with what changed.
    """
    audio = track.audio if audio is None else audio
    sr = int(sample_rate or track.sample_rate)
    names = list(sources) if sources is not None else list(track.sources)
    duration = float(track.duration)
    panels = (["spectrogram"] if audio is not None else []) + ["sources"] + (["arousal"] if track.arousal else [])
    ratios = {"spectrogram": 3.0, "sources": max(1.2, 0.32 * len(names)), "arousal": 1.0}
    fig, axes = _figure(11, sum(ratios[p] for p in panels) * 0.9 + 0.9, len(panels), [ratios[p] for p in panels])
    ax_of = dict(zip(panels, axes, strict=True))

    if audio is not None:
        ax = ax_of["spectrogram"]
        db, edges, _ = _log_spectrogram(audio, sr)
        ax.imshow(db, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
                  extent=(0, len(np.asarray(audio).reshape(-1)) / sr, 0, len(edges) - 1))
        hz = [60, 250, 1000, 4000]
        ax.set_yticks([np.interp(np.log(h), np.log(edges), np.arange(len(edges))) for h in hz if h < edges[-1]],
                      [f"{h // 1000}k" if h >= 1000 else str(h) for h in hz if h < edges[-1]])
        ax.set_ylabel("Hz")

    ax = ax_of["sources"]
    palette = [f"C{i % 10}" for i in range(len(names))]
    for i, name in enumerate(names):
        y = len(names) - 1 - i
        runs = track.sources.get(name, [])
        ax.broken_barh([(a, b - a) for a, b in runs], (y - 0.35, 0.7), facecolors=palette[i], alpha=0.85)
        for a, b in runs:  # onset and offset ticks, so the exact TSG answers are visible
            ax.plot([a, a], [y - 0.45, y + 0.45], color="black", linewidth=1)
            ax.plot([b, b], [y - 0.45, y + 0.45], color="black", linewidth=1)
    ax.set_yticks(range(len(names)), list(reversed(names)))
    ax.set_ylim(-0.6, max(len(names), 1) - 0.4)

    if "arousal" in ax_of:
        ax = ax_of["arousal"]
        xs = [v for seg in track.arousal for v in (seg.start, seg.end)]
        ys = [seg.value for seg in track.arousal for _ in (0, 1)]
        ax.plot(xs, ys, color="tab:purple")
        ax.fill_between(xs, ys, alpha=0.2, color="tab:purple")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("arousal")

    bounds = [float(t.time) for t in track.transitions]
    _boundaries(axes, bounds)
    top = axes[0]
    for t in track.transitions:
        top.text(t.time, 1.0, f" {t.kind}", transform=top.get_xaxis_transform(), rotation=0, fontsize=7,
                 va="bottom", ha="left", clip_on=False)
    for i, ax in enumerate(axes):
        _time_axis(ax, duration, label=i == len(axes) - 1)
    fig.suptitle(title if title is not None else f"{track.id} ({format_time(duration)})", fontsize=10)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ stage 1


def plot_transition_curve(
    path: str | Path,
    times: Sequence[float],
    probs: Sequence[float],
    boundaries: Sequence[float],
    target: Sequence[float] | None = None,
    peaks: Sequence[float] | None = None,
    threshold: float | None = None,
    duration: float | None = None,
    title: str = "",
) -> Path:
    """The predicted transition probability per frame vs the true boundaries (stage 1).

    ``times`` (frames,) frame centres in seconds; ``probs`` (frames,) in [0, 1]; ``boundaries`` true
    boundary times, seconds (dashed lines); ``target`` (frames,) the training target curve (grey);
    ``peaks`` picked boundary times (triangles); ``threshold`` the peak-picking threshold (dotted line).
    """
    times = np.asarray(times, dtype=float).reshape(-1)
    probs = np.asarray(probs, dtype=float).reshape(-1)
    fig, (ax,) = _figure(10, 2.6)
    if target is not None:  # a target built at another length (padding, rounding) is cut to the shorter
        target = np.asarray(target, dtype=float).reshape(-1)
        m = min(len(times), len(target))
        ax.fill_between(times[:m], target[:m], color="gray", alpha=0.3, label="target")
    ax.plot(times, probs, color="tab:blue", linewidth=1.4, label="predicted")
    if threshold is not None:
        ax.axhline(threshold, color="tab:blue", linestyle=":", linewidth=0.8)
    if peaks:
        ax.plot(list(peaks), [1.04] * len(peaks), "v", color="tab:red", markersize=7, label="picked",
                clip_on=False)
    _boundaries([ax], boundaries)
    ax.plot([], [], **BOUNDARY_STYLE, label="true boundary")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("P(transition)")
    end = duration if duration else (float(times[-1]) + (times[1] - times[0] if len(times) > 1 else 0) / 2
                                     if len(times) else 1.0)
    _time_axis(ax, end)
    ax.legend(loc="upper right", fontsize=7, ncols=4, framealpha=0.8)
    ax.set_title(title[:110], fontsize=9)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ answers


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
    fig, (ax,) = _figure(8, 1.9)
    end = max(float(duration or 0), 1.0)
    for y, color, value in ((1.0, REFERENCE_COLOR, reference), (0.0, NEUTRAL_COLOR, prediction)):
        end = max(end, _draw_marks(ax, y, value, color, end))
    ax.set_yticks([0, 1], ["prediction", "reference"])
    ax.set_ylim(-0.6, 1.6)
    _time_axis(ax, end)
    ax.axvline(float(duration or 0), color="black", linewidth=0.8, linestyle=":")
    ax.set_title((title + (f" — {note}" if note else ""))[:110], fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


_QUESTION_TIME = re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?\b")


def question_times(question: str) -> list[float]:
    """Times (seconds) written in a question, e.g. the ``1:05`` of "What changes at 1:05?"."""
    found = (parse_time(m.group()) for m in _QUESTION_TIME.finditer(question or ""))
    return [p.value for p in found if p.ok]


def reference_value(task: str, answers: Sequence[str]) -> Any:
    """The drawable value of reference answer texts: times (TSG), intervals (MTR), else the first text."""
    task = str(task).upper()
    if task == "TSG":
        return [p.value for p in map(parse_time, answers) if p.ok]
    if task == "MTR":
        return [iv for p in map(parse_intervals, answers) if p.ok for iv in p.value]
    return answers[0] if answers else None


def plot_answers(
    path: str | Path,
    task: str,
    duration: float,
    reference: str | Sequence[str],
    answers: Sequence[str],
    scores: Sequence[float | None] | None = None,
    question: str = "",
    boundaries: Sequence[float] = (),
    title: str = "",
) -> Path:
    """A reference and several answers to one question, one lane each, on the track's time axis.

    Temporal tasks (TSG times, MTR intervals) are drawn as ticks and bars; for LTR, GTO and TAD the answer
    text is written in its lane and the question's times (e.g. "at 1:05") are marked. ``scores``: one
    per answer (e.g. the total reward), shown in the lane label and colouring it (blue >= 0.5 > red).
    ``boundaries``: true section boundaries in seconds (dashed), when known.
    """
    task = str(task).upper()
    refs = [reference] if isinstance(reference, str) else list(reference)
    temporal = task in ("TSG", "MTR")
    n = len(answers)
    fig, (ax,) = _figure(9, 1.1 + 0.42 * (n + 1))
    end = max(float(duration or 0), 1.0)
    ref_value = reference_value(task, refs)
    labels = ["reference"]
    if temporal:
        end = max(end, _draw_marks(ax, n, ref_value, REFERENCE_COLOR, end, "unreadable reference"))
    for k, text in enumerate(answers):
        y = float(n - 1 - k)
        score = None if scores is None else scores[k]
        color = NEUTRAL_COLOR if score is None else (GOOD_COLOR if score >= 0.5 else BAD_COLOR)
        labels.append(f"#{k + 1}" + ("" if score is None else f" {score:+.2f}"))
        if temporal:
            parsed = parse_answer(task, text)
            end = max(end, _draw_marks(ax, y, parsed.value if parsed.ok else None, color, end,
                                       f"unreadable: {str(text)[:50]!r}"))
    if not temporal:
        for t in question_times(question):
            ax.axvline(t, color=REFERENCE_COLOR, linewidth=2.5, alpha=0.6)
            end = max(end, t)
        for k, text in enumerate([str(ref_value or ""), *map(str, answers)]):
            y = float(n - k)
            score = None if k == 0 or scores is None else scores[k - 1]
            color = REFERENCE_COLOR if k == 0 else (
                NEUTRAL_COLOR if score is None else (GOOD_COLOR if score >= 0.5 else BAD_COLOR))
            ax.text(0.01, y, text.replace("\n", " ")[:90] or "(empty)", color=color, fontsize=8, va="center",
                    ha="left", transform=ax.get_yaxis_transform())
    _boundaries([ax], boundaries)
    ax.set_yticks([n - i for i in range(n + 1)], labels)
    ax.set_ylim(-0.6, n + 0.6)
    _time_axis(ax, end)
    ax.axvline(float(duration or 0), color="black", linewidth=0.8, linestyle=":")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title((title or f"{task}: {question}")[:110], fontsize=9)
    return _save(fig, path)


def plot_histograms(
    path: str | Path,
    values: Mapping[str, Sequence[float]],
    bins: int = 20,
    value_range: tuple[float, float] | None = None,
    title: str = "",
    xlabel: str = "reward",
) -> Path:
    """One histogram panel per name (e.g. total reward per task), sharing ``value_range`` and ``bins``."""
    names = [k for k, v in values.items() if len(v)]
    if value_range is None:
        flat = [float(x) for k in names for x in values[k] if np.isfinite(x)]
        lo, hi = (min(flat), max(flat)) if flat else (0.0, 1.0)
        value_range = (lo, hi if hi > lo else lo + 1.0)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.6 * max(len(names), 1) + 0.6, 2.4), dpi=100)
    axes = fig.subplots(1, max(len(names), 1), sharey=True, squeeze=False)[0]
    for ax, name in zip(axes, names, strict=False):
        xs = np.asarray([float(x) for x in values[name]], dtype=float)
        xs = xs[np.isfinite(xs)]
        ax.hist(xs, bins=bins, range=value_range, color="tab:blue", alpha=0.8)
        ax.set_title(f"{name} (n={len(xs)}, mean {xs.mean():.2f})" if len(xs) else name, fontsize=9)
        ax.set_xlabel(xlabel)
    if not names:
        axes[0].text(0.5, 0.5, "no values", ha="center", va="center", transform=axes[0].transAxes)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ eval rows


def _reference_value(ref: Mapping[str, Any]) -> Any:
    answers = ref.get("answers")
    answers = [ref.get("answer", "")] if answers is None or len(answers) == 0 else list(answers)
    return reference_value(str(ref["task"]), [str(a) for a in answers]) if str(ref["task"]).upper() in (
        "TSG", "MTR") else []


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
        title = f"{task} {ref.get('qa_type') or ''} {ref['id']}".replace("  ", " ")
        written.append(plot_timeline(out_dir / f"{task}_{safe_name(ref['id'])}.png", duration,
                                     _reference_value(ref), rec.get("parsed"), title, note))
        count[task] = count.get(task, 0) + 1
    return written


def safe_name(text: Any) -> str:
    """``text`` with every character but letters, digits, ``-`` and ``_`` replaced by ``_`` (a file name)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(text))

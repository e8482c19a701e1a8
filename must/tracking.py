"""Show what a stage does while it trains: rollout tables with audio and timelines, reward histograms,
transition curves. One call works with every logger the runner builds:

- a Lightning ``WandbLogger`` (online or offline) or a ``wandb`` run: a ``wandb.Table`` with
  ``wandb.Audio`` and ``wandb.Image`` cells, ``wandb.Histogram``s, ``wandb.Image``s, logged at the
  trainer's global step (W&B's ``trainer/global_step`` axis, as Lightning logs metrics). The audio and
  the images are also logged as media panels, so the run folder (``wandb/offline-run-*/files/media``)
  holds them too: a W&B table keeps its own media in an artifact staged outside the run folder;
- a ``CSVLogger``, no logger (``None``/``False``) or anything else: the same content as files under
  ``STAGE_DIR/media/<key>/step_<step>/`` (``rows.csv`` + ``rows.jsonl`` + FLAC + PNG for tables, a PNG and
  a JSON of the values for histograms, PNGs for curves); nothing is written when ``stage_dir`` is None.

Every function logs on global rank 0 only (Lightning's ``rank_zero_only``), so a stage may call it from
every process. Typical use inside a stage (``self.logger``, ``self.global_step``, ``self.stage_dir``)::

    rows = rollout_rows(batch_rows, completions, num_generations, sample_rate=sr, limit=4)
    log_rollout_table(self.logger, rows, self.global_step, self.stage_dir)
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_only

from must import viz

TEMPORAL_TASKS = ("TSG", "MTR")


# ------------------------------------------------------------------------------------------ rows


@dataclass
class RolloutRow:
    """One question of a rollout table: its audio, the reference and every sampled answer with its rewards."""

    question: str
    """The question text as the model saw it."""
    reference: list[str]
    """Reference answer text(s) (MTR may have several intervals)."""
    answers: list[str]
    """The sampled answers (one for greedy validation, G in GRPO)."""
    rewards: list[dict[str, float]] = field(default_factory=list)
    """Reward components per answer (e.g. ``accuracy``, ``format``, penalties, ``total``); may be empty."""
    task: str = ""
    """MusTBench task (``TSG``, ``LTR``, ``TAD``, ``GTO``, ``MTR``)."""
    track_id: str = ""
    """The track asked about."""
    audio: Any = None
    """Mono waveform (samples,), numpy or torch; None logs no audio."""
    sample_rate: int = 16000
    """Sample rate of ``audio``, Hz."""
    duration: float | None = None
    """Track length, seconds (None: taken from ``audio``)."""
    boundaries: list[float] = field(default_factory=list)
    """True section boundaries, seconds (dashed lines on the timeline), when known."""
    timeline: str | None = None
    """A timeline PNG already drawn; None draws one with :func:`must.viz.plot_answers`."""

    def length(self) -> float:
        """Track length in seconds (``duration``, else the audio's length, else 0)."""
        if self.duration:
            return float(self.duration)
        if self.audio is not None:
            return len(_wave(self.audio)) / float(self.sample_rate)
        return 0.0

    def totals(self) -> list[float | None]:
        """The total reward of each answer (the ``total`` component, else None)."""
        out = []
        for k in range(len(self.answers)):
            comp = self.rewards[k] if k < len(self.rewards) else {}
            total = comp.get("total")
            out.append(float(total) if total is not None and math.isfinite(total) else None)
        return out


def _as_row(row: RolloutRow | Mapping[str, Any]) -> RolloutRow:
    if isinstance(row, RolloutRow):
        return row
    data = dict(row)
    ref = data.get("reference")
    data["reference"] = [ref] if isinstance(ref, str) else list(ref or [])
    return RolloutRow(**data)


def _wave(audio: Any) -> np.ndarray:
    if hasattr(audio, "detach"):
        audio = audio.detach().float().cpu().numpy()
    return np.asarray(audio, dtype=np.float32).reshape(-1)


def _reference_texts(qa: Mapping[str, Any]) -> list[str]:
    answers = qa.get("answers")
    if answers is not None and not isinstance(answers, str) and len(answers) > 0:
        return [str(a) for a in answers]
    return [str(qa.get("answer", ""))]


def rollout_row(
    qa: Any,
    answers: Sequence[str],
    audio: Any = None,
    sample_rate: int = 16000,
    boundaries: Sequence[float] = (),
    rewards: Sequence[Mapping[str, float]] | None = None,
    reward_config: Any = None,
) -> RolloutRow:
    """A :class:`RolloutRow` for one question: ``qa`` a :class:`~must.data.types.QA` or a row dict (``question``,
    ``answer``, ``answers``, ``task``, ``track_id``, ``duration``; ``waveform`` is used when ``audio`` is None).

    ``rewards``: components per answer; None scores them with :func:`must.rewards.score_completion`
    (``reward_config`` a :class:`~must.rewards.RewardConfig`, None for the defaults).
    """
    from must.rewards import score_completion

    row = asdict(qa) if is_dataclass(qa) else dict(qa)
    refs = _reference_texts(row)
    audio = row.get("waveform") if audio is None else audio
    duration = row.get("duration") or None
    if rewards is None:
        kwargs = {} if reward_config is None else {"cfg": reward_config}
        rewards = [score_completion(row.get("task", ""), a, row.get("answer"), refs, duration, **kwargs)
                   for a in answers]
    return RolloutRow(
        question=str(row.get("question") or row.get("prompt") or ""),
        reference=refs,
        answers=[str(a) for a in answers],
        rewards=[{k: _float(v) for k, v in r.items()} for r in rewards],
        task=str(row.get("task", "")).upper(),
        track_id=str(row.get("track_id", "")),
        audio=audio,
        sample_rate=int(sample_rate),
        duration=float(duration) if duration else None,
        boundaries=[float(b) for b in boundaries],
    )


def rollout_rows(
    rows: Sequence[Mapping[str, Any]],
    completions: Sequence[str],
    num_generations: int = 1,
    sample_rate: int = 16000,
    limit: int | None = 4,
    boundaries: Mapping[str, Sequence[float]] | None = None,
    reward_config: Any = None,
    components: Mapping[str, Sequence[float]] | None = None,
) -> list[RolloutRow]:
    """Group ``completions`` (``len(rows) * num_generations``, each prompt's G answers adjacent, as GRPO
    samples them) under their rows; keep the first ``limit`` questions (None: all).

    ``rows``: one dict per prompt (a QA's columns plus ``waveform``); ``boundaries``: track id -> true
    boundary times in seconds, when known. ``components``: reward name -> one value per completion (the
    rewards the trainer used, e.g. each reward function's output and ``total``); None scores the answers
    with :func:`must.rewards.score_completion` (``reward_config``).
    """
    G = max(int(num_generations), 1)
    if len(completions) != len(rows) * G:
        raise ValueError(f"rollout_rows: {len(completions)} completions for {len(rows)} rows x {G} generations")
    for name, values in (components or {}).items():
        if len(values) != len(completions):
            raise ValueError(f"rollout_rows: components[{name!r}] has {len(values)} values for "
                             f"{len(completions)} completions")
    keep = rows if limit is None else rows[:limit]
    out = []
    for i, r in enumerate(keep):
        span = range(i * G, (i + 1) * G)
        given = None if components is None else [
            {name: _float(values[j]) for name, values in components.items()} for j in span]
        out.append(rollout_row(r, [completions[j] for j in span], sample_rate=sample_rate,
                               boundaries=(boundaries or {}).get(str(r.get("track_id")), ()), rewards=given,
                               reward_config=reward_config))
    return out


def _float(value: Any) -> float:
    """A reward value as a float (tensors included; None, e.g. a task reward on another task, is NaN)."""
    if value is None:
        return math.nan
    return float(value.item() if hasattr(value, "item") else value)


# ------------------------------------------------------------------------------------------ loggers


def _loggers(logger: Any) -> list[Any]:
    if logger is None or logger is False:
        return []
    if isinstance(logger, (list, tuple)):
        return [lg for item in logger for lg in _loggers(item)]
    return [logger]


def _is_wandb_logger(logger: Any) -> bool:
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover - lightning is a dependency
        return False
    return isinstance(logger, WandbLogger)


def _is_wandb_run(obj: Any) -> bool:
    try:
        import wandb
    except ImportError:
        return False
    return isinstance(obj, wandb.Run)


def wandb_targets(logger: Any) -> list[Any]:
    """The W&B destinations among ``logger`` (a logger, a list of loggers, a wandb run, or None)."""
    return [lg for lg in _loggers(logger) if _is_wandb_logger(lg) or _is_wandb_run(lg)]


def _wandb_log(target: Any, payload: dict[str, Any], step: int) -> None:
    if _is_wandb_logger(target):
        target.log_metrics(payload, step=step)  # Lightning adds trainer/global_step, W&B's x axis here
    else:
        target.log({**payload, "trainer/global_step": step})


def _scalar_loggers(logger: Any) -> list[Any]:
    return [lg for lg in _loggers(logger) if not _is_wandb_run(lg) and hasattr(lg, "log_metrics")]


def media_dir(stage_dir: str | Path, key: str, step: int) -> Path:
    """Where files for ``key`` at ``step`` go without W&B: ``STAGE_DIR/media/<key>/step_<step:06d>``."""
    return Path(stage_dir) / "media" / Path(*[viz.safe_name(p) for p in key.split("/") if p]) / f"step_{int(step):06d}"


# ------------------------------------------------------------------------------------------ tables


def _printable(text: str) -> str:
    """``text`` with control characters as spaces: an untrained model samples them, and matplotlib warns once
    per missing glyph for each one it is asked to draw."""
    return "".join(ch if ch.isprintable() else " " for ch in str(text))


def _timeline(row: RolloutRow, path: Path) -> Path:
    if row.timeline:
        return Path(row.timeline)
    question = _printable(row.question)
    return viz.plot_answers(path, row.task, row.length(), row.reference, [_printable(a) for a in row.answers],
                            row.totals(), question, row.boundaries, title=f"{row.task} {row.track_id}: {question}")


def _component_names(rows: Sequence[RolloutRow]) -> list[str]:
    names: dict[str, None] = {}
    for row in rows:
        for comp in row.rewards:
            names.update(dict.fromkeys(comp))
    return list(names)


def _mean(values: Iterable[float | None]) -> float | None:
    xs = [v for v in values if v is not None and math.isfinite(v)]
    return sum(xs) / len(xs) if xs else None


@rank_zero_only
def log_rollout_table(
    logger: Any,
    rows: Sequence[RolloutRow | Mapping[str, Any]],
    step: int,
    stage_dir: str | Path | None = None,
    key: str = "rollouts",
) -> Path | None:
    """Log questions with their audio, reference, sampled answers, reward components and timeline image.

    W&B: a ``wandb.Table`` under ``key`` (columns ``step, track_id, task, audio, question, reference,
    answer_k, reward_k, mean_reward, rewards, timeline``) plus ``key/audio`` and ``key/timeline`` media.
    Otherwise: ``media_dir(stage_dir, key, step)`` with ``rows.csv`` (one line per answer and its
    components), ``rows.jsonl`` (one line per question), ``audio/<track_id>.flac`` (one per track: rows with
    the same ``track_id`` share it) and ``timeline/*.png``.
    Returns that folder (None under W&B or without ``stage_dir``).
    """
    rows = [_as_row(r) for r in rows]
    if not rows:  # e.g. a validation run that asked nothing: log nothing rather than an empty table
        return None
    targets = wandb_targets(logger)
    if targets:
        with tempfile.TemporaryDirectory(prefix="must-rollouts-") as tmp:
            payload = _wandb_table(rows, step, Path(tmp), key)
            for target in targets:
                _wandb_log(target, payload, step)
        return None
    if stage_dir is None:
        return None
    return _write_table(rows, step, media_dir(stage_dir, key, step))


def _wandb_table(rows: list[RolloutRow], step: int, tmp: Path, key: str) -> dict[str, Any]:
    import wandb

    G = max((len(r.answers) for r in rows), default=0)
    columns = ["step", "track_id", "task", "audio", "question", "reference"]
    columns += [f"answer_{k + 1}" for k in range(G)] + [f"reward_{k + 1}" for k in range(G)]
    columns += ["mean_reward", "rewards", "timeline"]
    table = wandb.Table(columns=columns)
    audios: dict[str, Any] = {}  # one wandb.Audio per track: the rows of a track share it
    images = []
    for i, row in enumerate(rows):
        caption = f"{row.task} {row.track_id}: {row.question}"[:200]
        audio = None
        if row.audio is not None:
            name = row.track_id or f"row{i}"
            if name not in audios:
                audios[name] = wandb.Audio(np.clip(_wave(row.audio), -1, 1), sample_rate=row.sample_rate,
                                           caption=row.track_id or caption)
            audio = audios[name]
        image = wandb.Image(str(_timeline(row, tmp / f"{i:02d}.png")), caption=caption)
        images.append(image)
        totals = row.totals()
        answers = row.answers + [None] * (G - len(row.answers))
        totals = totals + [None] * (G - len(totals))
        table.add_data(step, row.track_id, row.task, audio, row.question, " | ".join(row.reference), *answers,
                       *totals, _mean(totals), json.dumps(row.rewards), image)
    payload: dict[str, Any] = {key: table, f"{key}/timeline": images}
    if audios:
        payload[f"{key}/audio"] = list(audios.values())
    return payload


def _write_table(rows: list[RolloutRow], step: int, out: Path) -> Path:
    import soundfile as sf

    out.mkdir(parents=True, exist_ok=True)
    names = _component_names(rows)
    fields = ["step", "row", "track_id", "task", "question", "reference", "sample", "answer", *names,
              "audio", "timeline"]
    with (out / "rows.csv").open("w", newline="", encoding="utf-8") as fh_csv, \
            (out / "rows.jsonl").open("w", encoding="utf-8") as fh_json:
        writer = csv.DictWriter(fh_csv, fieldnames=fields)
        writer.writeheader()
        for i, row in enumerate(rows):
            stem = f"{i:02d}_{viz.safe_name(row.track_id)}" if row.track_id else f"{i:02d}"
            audio = None
            if row.audio is not None:  # one file per track: the rows of a track share it
                audio = Path("audio") / f"{viz.safe_name(row.track_id) if row.track_id else stem}.flac"
                if not (out / audio).exists():
                    (out / "audio").mkdir(exist_ok=True)
                    sf.write(out / audio, np.clip(_wave(row.audio), -1, 1), row.sample_rate, subtype="PCM_16")
            timeline = _timeline(row, out / "timeline" / f"{stem}.png")
            timeline = timeline.relative_to(out) if timeline.is_relative_to(out) else timeline
            for k, answer in enumerate(row.answers):
                comp = row.rewards[k] if k < len(row.rewards) else {}
                writer.writerow({"step": step, "row": i, "track_id": row.track_id, "task": row.task,
                                 "question": row.question, "reference": " | ".join(row.reference), "sample": k,
                                 "answer": answer, **{n: comp.get(n) for n in names},
                                 "audio": str(audio) if audio else "", "timeline": str(timeline)})
            record = {"step": step, "row": i, "track_id": row.track_id, "task": row.task, "question": row.question,
                      "reference": row.reference, "answers": row.answers, "rewards": row.rewards,
                      "duration": row.length(), "boundaries": row.boundaries,
                      "audio": str(audio) if audio else None, "sample_rate": row.sample_rate,
                      "timeline": str(timeline)}
            fh_json.write(json.dumps(record, ensure_ascii=False) + "\n")
    return out


# ------------------------------------------------------------------------------------------ rewards


def group_by_task(tasks: Sequence[str], values: Sequence[float]) -> dict[str, list[float]]:
    """``{task: [values of that task]}`` from parallel lists (e.g. each completion's task and total reward)."""
    if len(tasks) != len(values):
        raise ValueError(f"group_by_task: {len(tasks)} tasks for {len(values)} values")
    out: dict[str, list[float]] = {}
    for task, value in zip(tasks, values, strict=True):
        out.setdefault(str(task).upper(), []).append(float(value))
    return out


@rank_zero_only
def log_reward_histograms(
    logger: Any,
    rewards_by_task: Mapping[str, Sequence[float]],
    step: int,
    stage_dir: str | Path | None = None,
    key: str = "rewards/by_task",
) -> Path | None:
    """Histograms of rewards per task: ``wandb.Histogram`` under ``key/<task>`` on W&B, else a PNG (one panel
    per task) and the values as JSON in ``STAGE_DIR/media/<key>/``. Each task's mean goes to every scalar
    logger as ``key/<task>_mean`` (W&B's and the others beside it in a list of loggers). Returns the PNG path
    (None under W&B or without ``stage_dir``)."""
    values = {str(t): [float(v) for v in vs if v is not None and math.isfinite(float(v))]
              for t, vs in rewards_by_task.items()}
    means = {f"{key}/{t}_mean": sum(vs) / len(vs) for t, vs in values.items() if vs}
    if not means:
        return None
    targets = wandb_targets(logger)
    if targets:
        import wandb

        payload: dict[str, Any] = {f"{key}/{t}": wandb.Histogram(vs) for t, vs in values.items() if vs}
        for target in targets:
            _wandb_log(target, {**payload, **means}, step)
        for lg in _scalar_loggers(logger):  # e.g. the CSV logger beside W&B (pass the trainer's ``loggers``)
            if lg not in targets:
                lg.log_metrics(means, step=step)
        return None
    for lg in _scalar_loggers(logger):
        lg.log_metrics(means, step=step)
    if stage_dir is None:
        return None
    out = media_dir(stage_dir, key, step)
    out.mkdir(parents=True, exist_ok=True)
    (out / "values.json").write_text(json.dumps(values))
    return viz.plot_histograms(out / "histograms.png", values, title=f"{key} at step {step}")


# ------------------------------------------------------------------------------------------ stage 1


@dataclass
class TransitionCurve:
    """A track's predicted transition curve and its truth (stage 1); times in seconds."""

    times: Any
    """Frame centres, seconds, shape (frames,)."""
    probs: Any
    """Predicted transition probability per frame, (frames,), in [0, 1]."""
    boundaries: list[float]
    """True boundary times, seconds."""
    track_id: str = ""
    """Track name for the caption and file name."""
    target: Any = None
    """Training target curve per frame (frames,), or None."""
    peaks: list[float] | None = None
    """Boundary times picked from ``probs``, or None."""
    threshold: float | None = None
    """Peak-picking threshold, or None."""
    duration: float | None = None
    """Track length, seconds (None: the last frame)."""


def _np(x: Any) -> Any:
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float).reshape(-1)


def _plot_curve(curve: TransitionCurve, path: Path, step: int) -> Path:
    return viz.plot_transition_curve(path, _np(curve.times), _np(curve.probs), list(curve.boundaries),
                                     _np(curve.target), curve.peaks, curve.threshold, curve.duration,
                                     title=f"{curve.track_id} transition probability at step {step}".strip())


@rank_zero_only
def log_transition_plot(
    logger: Any,
    curves: TransitionCurve | Mapping[str, Any] | Sequence[TransitionCurve | Mapping[str, Any]],
    step: int,
    stage_dir: str | Path | None = None,
    key: str = "val/transitions",
) -> list[Path]:
    """Plot predicted transition curves against the true boundaries (:func:`must.viz.plot_transition_curve`):
    a list of ``wandb.Image`` under ``key`` on W&B, else PNGs in ``STAGE_DIR/media/<key>/step_<step>/``.
    ``curves``: one or several :class:`TransitionCurve` (or dicts of its fields). Returns the PNGs written
    to the stage folder (empty under W&B or without ``stage_dir``)."""
    if isinstance(curves, (TransitionCurve, Mapping)):
        curves = [curves]
    curves = [c if isinstance(c, TransitionCurve) else TransitionCurve(**c) for c in curves]
    if not curves:
        return []
    names = [f"{i:02d}" + (f"_{viz.safe_name(c.track_id)}" if c.track_id else "") for i, c in enumerate(curves)]
    targets = wandb_targets(logger)
    if targets:
        import wandb

        with tempfile.TemporaryDirectory(prefix="must-curves-") as tmp:
            images = [wandb.Image(str(_plot_curve(c, Path(tmp) / f"{n}.png", step)), caption=c.track_id or n)
                      for c, n in zip(curves, names, strict=True)]
            for target in targets:
                _wandb_log(target, {key: images}, step)
        return []
    if stage_dir is None:
        return []
    out = media_dir(stage_dir, key, step)
    return [_plot_curve(c, out / f"{n}.png", step) for c, n in zip(curves, names, strict=True)]


# ------------------------------------------------------------------------------------------ config


@rank_zero_only
def log_resolved_config(logger: Any, config: Any) -> None:
    """Attach a resolved config (a dataclass such as ``RecipeConfig``, or a dict) to every logger's
    hyperparameters: the W&B run config, the CSV logger's ``hparams.yaml``.

    The runner already gives each W&B run ``{"recipe": ..., "stage": ...}`` and writes ``recipe.yaml`` and
    each stage's ``record.json``; call this from your own training loop or to fill ``hparams.yaml``.
    """
    if is_dataclass(config):
        from must.config import to_dict

        config = to_dict(config)
    for lg in _loggers(logger):
        if hasattr(lg, "log_hyperparams"):
            lg.log_hyperparams(dict(config))
        elif _is_wandb_run(lg):
            lg.config.update(dict(config), allow_val_change=True)

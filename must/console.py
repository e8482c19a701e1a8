"""What ``must run`` shows on the terminal: library noise moved to a log file, a progress bar or status line
per stage, and a one-screen summary at the end.

- :class:`LibraryNoise` (a context manager the runner holds for the whole run) sends the banners, tips,
  model summaries and warnings of Lightning, transformers, torch, W&B … to ``OUTPUT_DIR/run.log`` instead of
  the terminal, and counts them. Everything is restored when the run ends: nothing is changed at import.
- :class:`StageProgress` (a Lightning callback the runner adds to every stage's Trainer) draws a tqdm bar on
  a terminal and prints one status line every few seconds otherwise (``[must] sft  step 150/450  loss 1.23
  elapsed 1:02  eta 2:04``).
- :func:`summary_lines` is the closing table: per stage its status, steps, wall time, scores and outputs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, TextIO

from lightning.pytorch.callbacks import Callback

#: The loggers whose records go to the run log (their children propagate to them). Not ``must`` (our own
#: messages stay on the terminal), not ``wandb`` (it keeps its own ``debug.log`` in each run folder and is
#: kept quiet with ``WANDB_SILENT``).
LIBRARY_LOGGERS = (
    "lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning",
    "lightning_utilities", "transformers", "torch", "peft", "trl", "accelerate", "datasets", "huggingface_hub",
    "matplotlib", "PIL", "urllib3", "filelock", "fsspec", "numexpr",
)

#: Seconds between two status lines when stdout is not a terminal (``MUST_STATUS_SECONDS`` overrides it).
STATUS_EVERY_S = 10.0


def status_interval() -> float:
    """Seconds between status lines: ``MUST_STATUS_SECONDS`` when set (a number), else :data:`STATUS_EVERY_S`."""
    value = os.environ.get("MUST_STATUS_SECONDS")
    try:
        return max(float(value), 0.0) if value else STATUS_EVERY_S
    except ValueError:
        return STATUS_EVERY_S


# ----------------------------------------------------------------------------------------- library noise


class _CountingFileHandler(logging.Handler):
    """Writes every record to the run log (``name LEVEL: message``) and counts them."""

    def __init__(self, noise: LibraryNoise) -> None:
        super().__init__(logging.DEBUG)
        self.noise = noise

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.noise.write(f"{record.name} {record.levelname}: {record.getMessage()}")
        except Exception:  # noqa: BLE001  a log line must never stop training
            self.handleError(record)


class LibraryNoise:
    """Route library log records and Python warnings to ``log_path`` for the duration of a ``with`` block.

    Library loggers (:data:`LIBRARY_LOGGERS`) keep their levels; their handlers are swapped for one that
    writes to the file (records at ERROR and above still reach stderr too). Every warning raised inside
    the block goes to the file, not the terminal (``must`` itself reports through exceptions and ``[must]``
    lines, never warnings). transformers' weight-loading bars are switched off, and W&B is kept silent
    (``WANDB_SILENT``): the runner prints the run's folder or URL itself. ``hidden`` counts what went to
    the file (``warnings`` of them warnings). On exit every setting is put back as it was.
    """

    def __init__(self, log_path: str | Path) -> None:
        self.log_path = Path(log_path)
        self.hidden = 0
        """Log records and warnings written to the file instead of the terminal."""
        self.warnings = 0
        """How many of ``hidden`` were Python warnings."""
        self._file: TextIO | None = None
        self._saved: list[tuple[logging.Logger, list, bool]] = []
        self._warnings_cm: Any = None
        self._bars_were_on: bool | None = None
        self._silent_env: str | None = None

    def write(self, text: str) -> None:
        """Append ``text`` to the run log and count it as hidden."""
        self.hidden += 1
        if self._file is not None:
            self._file.write(text.rstrip("\n") + "\n")

    def note(self, text: str) -> None:
        """Append ``text`` to the run log without counting it (the runner's own notes, e.g. a model summary)."""
        if self._file is not None:
            self._file.write(text.rstrip("\n") + "\n")

    def __enter__(self) -> Self:
        import lightning.pytorch  # noqa: F401  imported first: its import adds a terminal handler

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.log_path.open("a", encoding="utf-8", buffering=1)
        self.note(f"===== {datetime.now(UTC).isoformat(timespec='seconds')} pid {os.getpid()}: "
                  f"{' '.join(sys.argv) or 'run'}")
        handler = _CountingFileHandler(self)
        loud = logging.StreamHandler(sys.stderr)
        loud.setLevel(logging.ERROR)
        for name in LIBRARY_LOGGERS:
            lg = logging.getLogger(name)
            self._saved.append((lg, lg.handlers[:], lg.propagate))
            lg.handlers = [handler, loud]
            lg.propagate = False
        self._warnings_cm = warnings.catch_warnings()
        self._warnings_cm.__enter__()
        warnings.showwarning = self._show_warning
        self._bars_were_on = _transformers_bars(None)
        if self._bars_were_on:
            _transformers_bars(False)
        self._silent_env = os.environ.get("WANDB_SILENT")
        os.environ["WANDB_SILENT"] = "true"
        return self

    def _show_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        self.warnings += 1
        self.write(f"{filename}:{lineno}: {category.__name__}: {message}")

    def __exit__(self, *exc: object) -> None:
        for lg, handlers, propagate in self._saved:
            lg.handlers = handlers
            lg.propagate = propagate
        self._saved = []
        if self._warnings_cm is not None:
            self._warnings_cm.__exit__(*exc)
            self._warnings_cm = None
        if self._bars_were_on:
            _transformers_bars(True)
        if self._silent_env is None:
            os.environ.pop("WANDB_SILENT", None)
        else:
            os.environ["WANDB_SILENT"] = self._silent_env
        if self._file is not None:
            self._file.close()
            self._file = None

    def summary(self) -> str | None:
        """``"N library messages hidden (M warnings), see PATH"``, or None when nothing was hidden."""
        if not self.hidden:
            return None
        return (f"{self.hidden} library message{'s' if self.hidden != 1 else ''} hidden "
                f"({self.warnings} warning{'s' if self.warnings != 1 else ''}), see {self.log_path}")


def _transformers_bars(on: bool | None) -> bool | None:
    """Turn transformers' (and huggingface_hub's) tqdm bars on or off; None only reads the state."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    if on is True:
        hf_logging.enable_progress_bar()
    elif on is False:
        hf_logging.disable_progress_bar()
    return hf_logging.is_progress_bar_enabled()


@contextlib.contextmanager
def quiet_libraries(log_path: str | Path):
    """``with quiet_libraries(path) as noise:`` — :class:`LibraryNoise` as a function."""
    with LibraryNoise(log_path) as noise:
        yield noise


def model_summary(module: Any) -> str:
    """Lightning's plain-text model summary table (what the Trainer prints at fit start)."""
    from lightning.pytorch.utilities.model_summary import ModelSummary

    return str(ModelSummary(module, max_depth=1))


# ----------------------------------------------------------------------------------------- progress


def clock_text(seconds: float | None) -> str:
    """``75.0 -> "1:15"``, ``3725 -> "1:02:05"``; ``--`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "--"
    s = round(seconds)
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _metric_text(metrics: Mapping[str, Any], limit: int = 4) -> str:
    """The stage's progress-bar metrics, ``loss 1.234  reward 0.5`` (names without ``train/``)."""
    parts = []
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        name = key.removeprefix("train/").removesuffix("_step")
        parts.append(f"{name} {number:.4g}")
        if len(parts) == limit:
            break
    return "  ".join(parts)


class StageProgress(Callback):
    """A tqdm bar per stage on a terminal; otherwise one status line every ``every`` seconds::

        [must] sft  step 150/450  loss 1.234  elapsed 1:02  eta 2:04

    Steps are the Trainer's global steps (optimizer steps, so GRPO's manual optimisation counts too) out of
    ``max_steps``; the metrics are those the stage logs to the progress bar; the ETA is the time per step
    since this run started (a resumed stage counts from its checkpoint's step). Validation and the stage's
    own evaluation print nothing here: they report themselves. Global rank 0 only.

    ``bar``: None draws a bar when ``stream`` is a terminal. ``clock``: seconds, monotonic (tests pass a fake).
    """

    def __init__(self, stage: str, every: float | None = None, bar: bool | None = None,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stage = stage
        self.every = status_interval() if every is None else float(every)
        self.stream = stream
        self.bar = bar
        self.clock = clock
        self.lines: list[str] = []
        """The status lines printed so far (for tests and the caller)."""
        self._tqdm: Any = None
        self._t0 = 0.0
        self._step0 = 0
        self._last = 0.0

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stdout

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        self._t0 = self._last = self.clock()
        self._step0 = int(trainer.global_step)
        use_bar = self.bar if self.bar is not None else _isatty(self.stream if self.stream is not None else sys.stderr)
        if use_bar:
            from tqdm.auto import tqdm

            total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
            self._tqdm = tqdm(total=total, initial=self._step0, desc=self.stage, unit="step", dynamic_ncols=True,
                              file=self.stream, leave=True)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        step = int(trainer.global_step)
        if self._tqdm is not None:
            self._tqdm.update(step - self._tqdm.n)
            text = _metric_text(trainer.progress_bar_metrics)
            if text:
                self._tqdm.set_postfix_str(text, refresh=False)
            return
        now = self.clock()
        if now - self._last >= self.every:
            self._last = now
            self.print_status(step, trainer.max_steps, trainer.progress_bar_metrics, now - self._t0)

    def print_status(self, step: int, max_steps: int | None, metrics: Mapping[str, Any], elapsed: float) -> str:
        """Print (and return) one status line."""
        done = step - self._step0
        total = max_steps if max_steps and max_steps > 0 else None
        eta = elapsed / done * (total - step) if total and done > 0 else None
        parts = [f"[must] {self.stage}", f"step {step}/{total if total else '?'}"]
        text = _metric_text(metrics)
        if text:
            parts.append(text)
        parts += [f"elapsed {clock_text(elapsed)}", f"eta {clock_text(eta)}"]
        line = "  ".join(parts)
        self.lines.append(line)
        print(line, file=self._out(), flush=True)
        return line

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.close()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# ----------------------------------------------------------------------------------------- summary

#: Sub-metrics of a stage's evaluation summary, in the MusTBench table's order, with their column names.
SCORE_KEYS = (("TSG on/off", ("tsg_onset", "tsg_offset")), ("LTR", ("ltr",)), ("TAD", ("tad_meteor",)),
              ("GTO", ("gto",)), ("MTR IoU/F1", ("mtr_iou", "mtr_f1")))


def _number(value: Any) -> str:
    return "--" if value is None else f"{float(value):.1f}"


def score_lines(evaluation: Mapping[str, Any] | None) -> list[str]:
    """One line per evaluation a stage ran (``{"test": summary, "init": summary}``; a summary as
    :func:`must.eval.summary` returns): ``test: overall 36.1 (TSG on/off 40.0/30.0  LTR 50.0 …)``."""
    lines = []
    for name, scores in (evaluation or {}).items():
        if not isinstance(scores, Mapping) or "overall" not in scores:
            continue
        subs = "  ".join(f"{label} {'/'.join(_number(scores.get(k)) for k in keys)}"
                         for label, keys in SCORE_KEYS if any(k in scores for k in keys))
        lines.append(f"{name}: overall {_number(scores.get('overall'))}" + (f"  ({subs})" if subs else ""))
    return lines


def _train_metrics(metrics: Mapping[str, Any]) -> str:
    """The final loss (and GRPO's reward) of a stage without an evaluation."""
    shown = []
    for key in ("train/loss", "loss", "reward", "val/loss", "val/caption_loss"):
        if key in metrics and metrics[key] is not None:
            shown.append(f"{key} {float(metrics[key]):.4g}")
    return "  ".join(shown[:3])


def _rel(path: Any, root: Path) -> str:
    p = Path(str(path))
    try:
        return str(p.relative_to(root))
    except ValueError:
        return str(p)


def stage_outputs(stage_dir: Path, record: Mapping[str, Any]) -> list[tuple[str, Path]]:
    """What a stage left on disk, as (label, path): model, metrics CSV, evaluation reports, media files."""
    found: list[tuple[str, Path]] = []
    model = Path(str(record.get("model_dir") or stage_dir / "model"))
    if model.is_dir():
        found.append(("model", model))
    metrics = stage_dir / "logs" / "metrics.csv"
    if metrics.is_file():
        found.append(("metrics", metrics))
    for folder in sorted(stage_dir.glob("eval*")):
        report = folder / "report.md"
        scores = folder / "scores.json"
        if report.is_file():
            found.append(("report", report))
        elif scores.is_file():
            found.append(("scores", scores))
    if (stage_dir / "media").is_dir():
        found.append(("media", stage_dir / "media"))
    return found


def summary_lines(records: Mapping[str, Mapping[str, Any]], output_dir: str | Path, stages: Sequence[str],
                  skipped: Sequence[str] = (), hidden: str | None = None, total_seconds: float | None = None) -> list[str]:
    """The closing summary of ``must run``: per stage (in ``stages`` order) its status, steps, wall time and
    scores (each evaluation's overall and sub-metrics, else its final loss), then where its outputs are
    (paths relative to ``output_dir``), the W&B runs, and where the hidden library messages went.

    ``records``: stage name -> its ``record.json`` content; stages without one are listed as not run.
    """
    out = Path(output_dir)
    title = f"[must] summary of {out}" + (f" ({clock_text(total_seconds)})" if total_seconds is not None else "")
    lines = [title]
    width = max([len(s) for s in stages] + [5])
    wandb_runs = []
    for name in stages:
        record = records.get(name)
        if not record:
            lines.append(f"  {name:<{width}}  not run")
            continue
        status = "skipped" if name in skipped else str(record.get("status", "?"))
        step = record.get("global_step")
        max_steps = ((record.get("config") or {}).get("trainer") or {}).get("max_steps")
        steps = f"step {step}/{max_steps}" if max_steps else f"step {step}"
        took = "(earlier run)" if name in skipped else clock_text(record.get("seconds"))
        scores = score_lines(record.get("eval"))
        head = f"  {name:<{width}}  {status:<9} {steps:<14} {took:>8}"
        lines.append(head + ("  " + scores[0] if scores else "  " + _train_metrics(record.get("metrics") or {})))
        pad = " " * (len(head) + 2)
        lines += [pad + s for s in scores[1:]]
        if record.get("error") and status != "finished":
            lines.append(pad + str(record["error"]).splitlines()[0][:160])
        where = stage_outputs(out / name, record)
        if where:
            lines.append(" " * (width + 4) + "  ".join(f"{label} {_rel(p, out)}" for label, p in where))
        wb = record.get("wandb") or {}
        if wb.get("url") or wb.get("dir"):
            wandb_runs.append(wb)
    for wb in wandb_runs[:1]:  # one line: the runs of a recipe share a folder (offline) or a group (online)
        if wb.get("url"):
            lines.append(f"  W&B: {wb['url']} (group {wb.get('group', '?')})")
        else:
            folder = Path(wb["dir"]).parent
            lines.append(f"  W&B offline runs: {folder} (upload: wandb sync {folder}/offline-run-*)")
    if hidden:
        lines.append(f"  {hidden}")
    return lines

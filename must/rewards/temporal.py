"""Task rewards for GRPO, with TRL's signature ``f(prompts, completions, **columns) -> list[float | None]``.

Columns come from the dataset (TRL passes every column but ``prompt`` as a keyword list): ``task``,
``answer``, ``answers`` (optional), ``qa_type`` (TSG onset/offset, optional), ``duration`` (seconds,
optional: without it no range or whole-track check is made), ``answer_format`` (optional: with
``grounded`` only the text after a completion's last ``→`` is its answer, see
:mod:`must.data.traces`). Completions are strings or chat message
lists. A task reward returns None on rows of other tasks (TRL ignores None); the router
:func:`must_reward` returns the total for every row and, inside TRL, logs each component's mean through
TRL's ``log_metric`` hook. All times in seconds.

The total of one completion is ``accuracy + format_weight * format + penalties``:
accuracy in [0, 1] from the task's graded reward, format in [0, 1], penalties <= 0 for unparsable
output, times outside [0, duration], and degenerate answers (intervals covering most of the track).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from must.data.traces import final_answer
from must.metrics.temporal import interval_union, temporal_iou_f1, union_length
from must.metrics.text import meteor
from must.parsing import (
    OPTION_LETTERS,
    Parsed,
    completion_text,
    parse_answer,
    parse_intervals,
    parse_option,
    parse_time,
)


@dataclass
class RewardConfig:
    """Weights and scales of the temporal rewards."""

    time_scale: float = 5.0
    """Seconds over which the timestamp reward decays by 1/e (reward = exp(-max(err - tolerance, 0) / scale))."""
    time_tolerance: float = 0.0
    """Errors up to this many seconds get the full timestamp reward."""
    interval_proximity: float = 0.25
    """Share of the interval reward given by closeness (exp(-gap / time_scale)) so near misses still count."""
    format_weight: float = 0.2
    """Weight of the format reward in the total."""
    bad_format_penalty: float = -0.5
    """Added when the answer cannot be read at all."""
    out_of_range_penalty: float = -0.5
    """Added when a time lies outside [0, duration]."""
    degenerate_penalty: float = -0.5
    """Added when predicted intervals cover at least ``degenerate_fraction`` of the track."""
    degenerate_fraction: float = 0.9
    """Coverage of the track (union of intervals / duration) from which an MTR answer is degenerate."""
    max_description_words: int = 80
    """TAD descriptions longer than this get no format reward."""


DEFAULT = RewardConfig()
COMPONENTS = ("accuracy", "format", "bad_format", "out_of_range", "degenerate", "total")


def timestamp_score(pred: float, ref: float, cfg: RewardConfig = DEFAULT) -> float:
    """Graded closeness of two times (seconds): 1 at the reference, decaying exponentially with the error."""
    err = max(abs(pred - ref) - cfg.time_tolerance, 0.0)
    return math.exp(-err / cfg.time_scale)


def interval_score(pred: Sequence[Sequence[float]], ref: Sequence[Sequence[float]], cfg: RewardConfig = DEFAULT) -> float:
    """Graded overlap of two interval sets (seconds): mean of IoU and F1 of the unions, plus
    ``interval_proximity`` of the rest by closeness, so a near miss scores above a far one."""
    iou, f1 = temporal_iou_f1(pred, ref)
    overlap = (iou + f1) / 2
    p, g = interval_union(pred), interval_union(ref)
    if not p or not g:
        return 0.0
    gap = min(max(b0 - a1, a0 - b1, 0.0) for a0, a1 in p for b0, b1 in g)
    return overlap + (1 - overlap) * cfg.interval_proximity * math.exp(-gap / cfg.time_scale)


def _answers(answer: Any, answers: Any) -> list[str]:
    if answers is not None and not isinstance(answers, str) and len(answers) > 0:
        return [str(a) for a in answers]
    if isinstance(answers, str) and answers:
        return [answers]
    return [str(answer or "")]


def _duration(d: Any) -> float | None:
    try:
        d = float(d)
    except (TypeError, ValueError):
        return None
    return d if d > 0 and math.isfinite(d) else None


def score_completion(
    task: str,
    text: Any,
    answer: Any,
    answers: Any = None,
    duration: Any = None,
    cfg: RewardConfig = DEFAULT,
    answer_format: Any = None,
) -> dict[str, float]:
    """Every reward component of one completion (see :data:`COMPONENTS`); never raises on model text.
    ``answer_format="grounded"``: the completion is a trace and only its final answer is scored."""
    task = str(task).upper()
    text = completion_text(text)
    if answer_format == "grounded":
        text = final_answer(text)[0]  # no final answer: "" reads as bad format below
    refs = _answers(answer, answers)
    dur = _duration(duration)
    parsed: Parsed = parse_answer(task, text)
    out = dict.fromkeys(COMPONENTS, 0.0)
    if not parsed.ok:
        out["bad_format"] = cfg.bad_format_penalty
        out["total"] = cfg.bad_format_penalty
        return out
    if task == "TAD":
        n_words = len(parsed.value.split())
        out["format"] = 1.0 if n_words <= cfg.max_description_words else 0.0
        out["accuracy"] = meteor(parsed.value, refs)
    else:
        out["format"] = 1.0 if parsed.clean else 0.5
    if task == "TSG":
        ref_times = [p.value for p in map(parse_time, refs) if p.ok]
        out["accuracy"] = max((timestamp_score(parsed.value, r, cfg) for r in ref_times), default=0.0)
        if dur is not None and not 0.0 <= parsed.value <= dur:
            out["out_of_range"] = cfg.out_of_range_penalty
    elif task in OPTION_LETTERS:
        ref = parse_option(refs[0], OPTION_LETTERS[task])
        out["accuracy"] = float(ref.ok and ref.value == parsed.value)
    elif task == "MTR":
        ref_ivs = [iv for p in map(parse_intervals, refs) if p.ok for iv in p.value]
        out["accuracy"] = interval_score(parsed.value, ref_ivs, cfg) if ref_ivs else 0.0
        if dur is not None:
            if any(e > dur for _, e in parsed.value):
                out["out_of_range"] = cfg.out_of_range_penalty
            if union_length(parsed.value) >= cfg.degenerate_fraction * dur:
                out["degenerate"] = cfg.degenerate_penalty
    out["total"] = (
        out["accuracy"] + cfg.format_weight * out["format"] + out["out_of_range"] + out["degenerate"]
    )
    return out


def _column(columns: dict[str, Any], name: str, n: int) -> list[Any]:
    value = columns.get(name)
    if value is None:
        return [None] * n
    return list(value)


def reward_components(
    prompts: Sequence[Any], completions: Sequence[Any], cfg: RewardConfig = DEFAULT, **columns: Any
) -> dict[str, list[float]]:
    """Component name -> one value per completion (``accuracy``, ``format``, the penalties, ``total``)."""
    n = len(completions)
    tasks = _column(columns, "task", n)
    answer, answers, duration, fmt = (_column(columns, c, n) for c in ("answer", "answers", "duration",
                                                                        "answer_format"))
    rows = [
        score_completion(tasks[i], completions[i], answer[i], answers[i], duration[i], cfg, fmt[i])
        for i in range(n)
    ]
    return {name: [r[name] for r in rows] for name in COMPONENTS}


def _for_task(want: tuple[str, ...], key: str, prompts: Sequence[Any], completions: Sequence[Any],
              cfg: RewardConfig, columns: dict[str, Any]) -> list[float | None]:
    comps = reward_components(prompts, completions, cfg, **columns)[key]
    tasks = _column(columns, "task", len(completions))
    return [v if str(t).upper() in want else None for v, t in zip(comps, tasks, strict=True)]


# Each reward takes an optional keyword ``cfg`` (what :func:`with_config` binds); TRL never passes it.


def timestamp_reward(prompts: Sequence[Any], completions: Sequence[Any], *, cfg: RewardConfig = DEFAULT,
                     **columns: Any) -> list[float | None]:
    """TSG: exp(-|pred - ref| / time_scale), 0 when unreadable; None on other tasks."""
    return _for_task(("TSG",), "accuracy", prompts, completions, cfg, columns)


def interval_reward(prompts: Sequence[Any], completions: Sequence[Any], *, cfg: RewardConfig = DEFAULT,
                    **columns: Any) -> list[float | None]:
    """MTR: graded overlap of the predicted and reference interval unions; None on other tasks."""
    return _for_task(("MTR",), "accuracy", prompts, completions, cfg, columns)


def option_reward(prompts: Sequence[Any], completions: Sequence[Any], *, cfg: RewardConfig = DEFAULT,
                  **columns: Any) -> list[float | None]:
    """LTR and GTO: 1 for the right letter, else 0; None on other tasks."""
    return _for_task(("LTR", "GTO"), "accuracy", prompts, completions, cfg, columns)


def description_reward(prompts: Sequence[Any], completions: Sequence[Any], *, cfg: RewardConfig = DEFAULT,
                       **columns: Any) -> list[float | None]:
    """TAD: METEOR of the description against the reference(s); None on other tasks."""
    return _for_task(("TAD",), "accuracy", prompts, completions, cfg, columns)


def format_reward(prompts: Sequence[Any], completions: Sequence[Any], *, cfg: RewardConfig = DEFAULT,
                  **columns: Any) -> list[float]:
    """Every task: 1 for an answer alone in the expected form, 0.5 for one inside other text, 0 unreadable."""
    return reward_components(prompts, completions, cfg, **columns)["format"]


def make_must_reward(cfg: RewardConfig = DEFAULT, log_prefix: str = "must_reward"):
    """The router with a given :class:`RewardConfig` (its ``__name__`` is what TRL logs it under)."""
    default = cfg

    def must_reward(prompts: Sequence[Any], completions: Sequence[Any], *, cfg: RewardConfig = default,
                    **columns: Any) -> list[float]:
        """Total reward per completion, routed by the ``task`` column (see the module docstring)."""
        log_metric = columns.pop("log_metric", None)
        comps = reward_components(prompts, completions, cfg, **columns)
        if callable(log_metric) and completions:
            for name in COMPONENTS[:-1]:
                log_metric(f"{log_prefix}/{name}", sum(comps[name]) / len(completions))
        return comps["total"]

    return must_reward


#: The router with the default configuration, ready for ``GRPOTrainer(reward_funcs=[must_reward])``.
must_reward = make_must_reward()


def reward_config(values: dict[str, Any] | None, where: str = "reward_config") -> RewardConfig:
    """A :class:`RewardConfig` from a recipe's dict (missing keys keep their defaults); an unknown key is a
    :class:`~must.errors.ConfigError` naming ``where.<key>``."""
    from must.errors import ConfigError

    names = {f.name: f for f in fields(RewardConfig)}
    unknown = sorted(set(values or {}) - set(names))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: not a reward setting; choose from {sorted(names)}")
    # OmegaConf hands a Dict[str, float] option over as floats: give the int fields their type back
    cast = {k: int(v) if names[k].type in (int, "int") else float(v) for k, v in (values or {}).items()}
    return RewardConfig(**cast)


def with_config(func: Any, cfg: RewardConfig) -> Any:
    """``func`` with ``cfg`` bound, under the same ``__name__`` (what ``reward_weights`` and the logs use);
    a reward without a ``cfg`` keyword (the trace rewards) comes back unchanged."""
    if "cfg" not in inspect.signature(func).parameters:
        return func

    @functools.wraps(func)
    def bound(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list:
        return func(prompts, completions, cfg=cfg, **columns)

    return bound

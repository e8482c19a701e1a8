"""``must score`` (a predictions file against a MusTBench parquet) and ``must eval`` (run a saved model on
every row, then score, report and plot).

``scores.json`` is, in percent::

    {"TSG": {"onset", "offset", "score"}, "LTR": {"accuracy", "score"}, "TAD": {"meteor", "clap", "score"},
     "GTO": {"accuracy", "score"}, "MTR": {"iou", "f1", "score"}, "overall", "missing": [sub-metrics],
     "missing_predictions": [row ids], "unknown_predictions": [ids not among the rows], "baseline": {same shape, trivial answers}, "rows": [...]}

A task absent from the references is null; ``overall`` is the mean of the available sub-metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from must.errors import MustError

#: The paper's published leaderboard (percent, the leaderboard's keys), shipped as package data.
PUBLISHED_LEADERBOARD = "published_leaderboard.json"

_COLUMNS = (
    ("TSG on", "TSG", "onset", "tsg_onset"),
    ("TSG off", "TSG", "offset", "tsg_offset"),
    ("TSG", "TSG", "score", "tsg"),
    ("LTR", "LTR", "accuracy", "ltr"),
    ("METEOR", "TAD", "meteor", "tad_meteor"),
    ("CLAP", "TAD", "clap", "tad_clap"),
    ("TAD", "TAD", "score", "tad"),
    ("GTO", "GTO", "accuracy", "gto"),
    ("IoU", "MTR", "iou", "mtr_iou"),
    ("F1", "MTR", "f1", "mtr_f1"),
    ("MTR", "MTR", "score", "mtr"),
)

#: Chance level of the letter tasks (a uniformly random option), percent.
CHANCE = {"LTR": 100 / 4, "GTO": 100 / 6}


def summary(scores: Mapping[str, Any]) -> dict[str, Any]:
    """The sub-metrics of a scores dict and of its baseline, flat by the table's keys (``tsg_onset``, …,
    ``baseline/tsg_onset``), with ``overall`` and ``seconds``: what a stage's record keeps."""
    out: dict[str, Any] = {"overall": scores.get("overall"), "seconds": scores.get("seconds")}
    for _, task, sub, key in _COLUMNS:
        if sub != "score":  # the eight sub-metrics; task scores are their means
            out[key] = (scores.get(task) or {}).get(sub)
            out[f"baseline/{key}"] = ((scores.get("baseline") or {}).get(task) or {}).get(sub)
    return out


# ------------------------------------------------------------------------------------------ loading


def load_references(path: str | Path, audio_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Rows of a MusTBench parquet as dicts (``duration`` 0 when unknown); MustError naming the file.

    With ``audio_dir`` the tracks' lengths come from their audio headers where the parquet has no
    ``duration``, so every reference time is checked against its track (a track without audio is left to
    :func:`predict`, which reports it on its rows)."""
    from must.data.real import load_mustbench

    if audio_dir is None:
        return [qa.to_row() for qa in load_mustbench(path, check_audio=False)]
    return [qa.to_row() for qa in load_mustbench(path, audio_dir, check_audio=True, require_audio=False)]


def load_predictions(path: str | Path) -> dict[str, str | None]:
    """``{"id": ..., "prediction": ...}`` per line -> id -> prediction; MustError naming a bad line.

    Refused, by line number: bytes that are not UTF-8, a line that is not such a JSON object, and an id that
    appears twice (taking the last silently let one appended line change a score).
    """
    path = Path(path)
    if not path.is_file():
        raise MustError(f"predictions file not found: {path}")
    out: dict[str, str | None] = {}
    lines: dict[str, list[int]] = {}
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            line = _decode_line(raw, path, n)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MustError(f"{path}:{n}: not a JSON line ({exc.msg})") from exc
            if not isinstance(obj, dict) or "id" not in obj or "prediction" not in obj:
                raise MustError(f'{path}:{n}: expected {{"id": ..., "prediction": ...}}, got {line.strip()[:80]}')
            pred, key = obj["prediction"], str(obj["id"])
            out[key] = None if pred is None else str(pred)
            lines.setdefault(key, []).append(n)
    _refuse_duplicates(path, lines)
    return out


def _decode_line(raw: bytes, path: Path, n: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MustError(f"{path}:{n}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                        "write the file as UTF-8") from None


def _refuse_duplicates(path: Path, lines: dict[str, list[int]]) -> None:
    dups = {key: ns for key, ns in lines.items() if len(ns) > 1}
    if dups:
        shown = "; ".join(f"{key} (lines {', '.join(map(str, ns))})" for key, ns in list(dups.items())[:10])
        more = f" and {len(dups) - 10} more" if len(dups) > 10 else ""
        raise MustError(f"{path}: {len(dups)} id(s) predicted more than once: {shown}{more}; keep one line per id")


def select_rows(references: Sequence[dict[str, Any]], split: str = "auto", limit: int | None = None
                ) -> tuple[list[dict[str, Any]], str]:
    """The rows to score and a line saying which: ``split`` ``auto`` keeps the ``test`` rows when the parquet
    has any (a ``must synth`` parquet's train rows are not questions to answer), else every row; ``all`` keeps
    every row; any other name keeps that split (MustError when it has no rows). ``limit``: the first N after."""
    splits = sorted({str(r.get("split")) for r in references})
    if split == "auto":
        split = "test" if "test" in splits else "all"
    rows = list(references) if split == "all" else [r for r in references if str(r.get("split")) == split]
    if not rows:
        raise MustError(f"no rows in split {split!r}; the parquet's splits: {', '.join(splits)} (or --split all)")
    n_split = len(rows)
    rows = rows[:limit] if limit else rows
    what = "every row" if split == "all" else f"split {split!r}"
    cut = f", the first {len(rows)} (--limit)" if len(rows) < n_split else ""
    return rows, f"scoring {what}: {n_split} of {len(references)} row(s){cut}"


def _ids(ids: Sequence[str], n: int = 10) -> str:
    return ", ".join(ids[:n]) + (f" … ({len(ids) - n} more)" if len(ids) > n else "")


# ------------------------------------------------------------------------------------------ scoring


def _durations(references: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    return {str(r["track_id"]): float(r["duration"]) for r in references if float(r.get("duration") or 0) > 0}


def score_predictions(
    predictions: Mapping[str, str | None],
    references: Sequence[Mapping[str, Any]],
    k: float = 3.0,
    clap_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The full ``scores.json`` dict for id -> prediction text against reference rows."""
    from must.metrics.mustbench import MusTBenchMetric, score_rows, trivial_baseline_scores

    # One process scores the whole file: no sync (under DDP only rank 0 evaluates; syncing would hang).
    metric = MusTBenchMetric(k=k, clap_dir=clap_dir, sync_on_compute=False)
    preds = [predictions.get(str(r["id"])) for r in references]
    rows = score_rows(preds, references, k, metric.clap)
    metric.update(rows=rows)
    out = metric.compute()
    out["missing_predictions"] = [str(r["id"]) for r, p in zip(references, preds, strict=True) if p is None]
    known = {str(r["id"]) for r in references}
    out["unknown_predictions"] = [key for key in predictions if key not in known]
    out["baseline"] = trivial_baseline_scores(references, _durations(references), k)
    out["rows"] = [row.to_json() for row in rows]
    return out


def _cell(block: Any, key: str) -> str:
    value = None if block is None else block.get(key)
    return "--" if value is None else f"{value:.1f}"


def table_row(scores: Mapping[str, Any]) -> list[str]:
    """The 11 task cells and overall of one result in the published table's order."""
    cells = [_cell(scores.get(task), key) for _, task, key, _ in _COLUMNS]
    overall = scores.get("overall")
    return cells + ["--" if overall is None else f"{overall:.1f}"]


def leaderboard_row(entry: Mapping[str, Any]) -> list[str]:
    """One published entry's cells (its flat keys) in the same order."""
    return [("--" if entry.get(k) is None else f"{entry[k]:.1f}") for *_, k in _COLUMNS] + [f"{entry['overall']:.1f}"]


def format_table(rows: Sequence[tuple[str, Sequence[str]]], markdown: bool = False) -> str:
    """The published-style table: Model | TSG on/off/score | LTR | TAD METEOR/CLAP/score | GTO | MTR IoU/F1/score | Overall."""
    header = ["Model"] + [c[0] for c in _COLUMNS] + ["Overall"]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join([name, *cells]) + " |" for name, cells in rows]
        return "\n".join(lines)
    width = max(len(header[0]), *(len(name) for name, _ in rows))
    fmt = lambda name, cells: f"{name:<{width}}  " + " ".join(f"{c:>7}" for c in cells)
    return "\n".join([fmt(header[0], header[1:])] + [fmt(name, cells) for name, cells in rows])


def print_scores(scores: Mapping[str, Any], name: str = "this run", file: Any = None) -> None:
    """Print our row and the trivial baselines' row, then what is missing."""
    file = file or sys.stdout
    rows = [(name, table_row(scores))]
    if scores.get("baseline"):
        rows.append(("trivial baseline", table_row(scores["baseline"])))
    print(format_table(rows), file=file)
    if scores.get("missing"):
        print(f"not measured: {', '.join(scores['missing'])} (overall = mean of the rest)", file=file)
    if scores.get("missing_predictions"):
        ids = scores["missing_predictions"]
        shown = ", ".join(ids[:10]) + (" …" if len(ids) > 10 else "")
        print(f"{len(ids)} row(s) without a prediction, counted wrong: {shown}", file=file)
    if scores.get("unknown_predictions"):
        ids = scores["unknown_predictions"]
        print(f"{len(ids)} prediction id(s) not among the scored rows, ignored: {_ids(ids)}", file=file)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``must score``."""
    parser.add_argument("--predictions", required=True, help='JSONL, one {"id": ..., "prediction": "..."} a line')
    parser.add_argument("--references", required=True, help="MusTBench-format parquet")
    parser.add_argument("--out", help="write the scores JSON here")
    parser.add_argument("--tolerance", type=float, default=3.0, help="Hit@K tolerance for TSG, seconds")
    parser.add_argument("--clap-dir", help="local CLAP model folder for the TAD CLAP score (else reported missing)")
    _add_selection_arguments(parser)


def _add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default="auto",
                        help="rows to score: a split name (test, val, train), 'all', or 'auto' = the test rows "
                        "when the parquet has a test split, else all rows")
    parser.add_argument("--limit", type=int, help="score only the first N rows after the split filter")


def score_handler(args: argparse.Namespace) -> int:
    """``must score``: print the table, write the JSON."""
    references, what = select_rows(load_references(args.references), args.split, args.limit)
    print(what)
    scores = score_predictions(load_predictions(args.predictions), references, args.tolerance, args.clap_dir)
    print_scores(scores, Path(args.predictions).stem)
    if scores.get("TAD"):
        from must.metrics.text import meteor_mode

        print(f"METEOR matching: {meteor_mode()}")
    if args.out:
        write_json(args.out, scores)
        print(f"wrote {args.out}")
    return 0


# ------------------------------------------------------------------------------------------ eval


def _load_leaderboard(path: str | Path | None) -> list[dict[str, Any]]:
    """Published rows from ``path``, or the packaged ``must/data/published_leaderboard.json`` (importlib.resources,
    so an installed wheel has it too); a ``--leaderboard`` file that does not exist is a MustError."""
    if path is None:
        from importlib.resources import files

        return json.loads(files("must.data").joinpath(PUBLISHED_LEADERBOARD).read_text(encoding="utf-8"))
    path = Path(path)
    if not path.is_file():
        raise MustError(f"leaderboard file not found: {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def default_audio_dir(data: str | Path) -> Path:
    """Where a parquet's audio is by default: its sibling ``audio/`` folder when there is one (``must synth``'s
    layout: ``DIR/mustbench.parquet`` + ``DIR/audio/``), else the parquet's own folder (MusTBench's layout)."""
    folder = Path(data).parent
    return folder / "audio" if (folder / "audio").is_dir() else folder


def zero_rows(scores: Mapping[str, Any]) -> list[str]:
    """Ids of scored rows that got nothing on any metric (a wrong answer, an unparsable one or no answer)."""
    skip = {"id", "task", "qa_type", "prediction", "parsed", "reason"}
    return [r["id"] for r in scores.get("rows", [])
            if not any(isinstance(v, (int, float)) and v > 0 for k, v in r.items() if k not in skip)]


def write_report(
    out_dir: Path, scores: Mapping[str, Any], model_name: str, leaderboard: Sequence[Mapping[str, Any]], notes: Sequence[str] = ()
) -> Path:
    """``report.md``: our row and the trivial baselines beside the published results."""
    rows = [(f"**{model_name}** (this run)", table_row(scores))]
    if scores.get("baseline"):
        rows.append(("trivial baseline", table_row(scores["baseline"])))
    rows += [(f"{e['model']} {e.get('size', '') if e.get('size') != '--' else ''}".strip(), leaderboard_row(e))
             for e in leaderboard]
    n_rows = len(scores.get("rows", []))
    lines = [
        f"# MusTBench evaluation: {model_name}",
        "",
        (f"{n_rows} question(s) scored. Percent; TSG is Hit@3s; a task score is the mean of its sub-metrics, "
        "overall the mean of the available sub-metrics. Published rows are the paper's (full MusTBench); "
        "ours covers only the rows given, so compare with care."),
        "",
        format_table(rows, markdown=True),
        "",
    ]
    if scores.get("missing"):
        lines.append(f"Not measured: {', '.join(scores['missing'])}.")
    if scores.get("missing_predictions"):
        lines.append(f"Rows without a prediction (counted wrong): {', '.join(scores['missing_predictions'])}.")
    if scores.get("errors"):
        ids = [e["id"] for e in scores["errors"]]
        lines.append(f"{len(ids)} of {n_rows} row(s) could not be run (counted wrong): {_ids(ids)}.")
    zero = zero_rows(scores)
    if zero and n_rows:
        lines.append(f"{len(zero)} of {n_rows} row(s) scored zero on every metric: {_ids(zero)}.")
    lines += [f"- {n}" for n in notes]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _tracks(references: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    by_track: dict[str, list[Mapping[str, Any]]] = {}
    for r in references:
        by_track.setdefault(str(r["track_id"]), []).append(r)
    return by_track


def answer_clips(
    model: Any,
    clips: Iterable[tuple[Sequence[str], Callable[[], tuple[Any, int]]]],
    max_new_tokens: int = 32,
    batch_size: int = 32,
    record_errors: bool = False,
) -> Iterator[dict[str, Any]]:
    """Greedy answers to the questions of each clip, one result per clip in order: ``texts`` (the raw generated
    text per question), ``duration`` and ``covered_seconds`` (seconds, from the encoding), ``error`` (None).

    ``clips``: ``(questions, load)`` pairs, ``load()`` -> ``(waveform (samples,), sample_rate)``, called when the
    clip is reached (a whole benchmark is never in memory). The questions of consecutive clips share
    ``generate`` calls of up to ``batch_size`` rows and their audio one ``encode_audio`` call: on the CPU a
    decoding step costs about the same for 4 rows as for 32, and one call per track made evaluation of the
    tiny recipe's 384 test questions take minutes. With ``record_errors`` a clip whose audio fails to load,
    encode or answer gets ``error`` (``"Type: message"``, ``texts`` None) and the others go on.
    """
    slots: list[Any] = []  # per clip of the current group: its result dict, or (questions, wave, rate) to answer
    rows = 0

    def flush() -> Iterator[dict[str, Any]]:
        todo = [i for i, s in enumerate(slots) if isinstance(s, tuple)]
        if todo:
            for i, result in zip(todo, _answer_group(model, [slots[i] for i in todo], max_new_tokens, batch_size,
                                                     record_errors), strict=True):
                slots[i] = result
        yield from slots
        slots.clear()

    for questions, load in clips:
        try:
            wave, rate = load()
        except Exception as exc:  # one unreadable track must not stop the others: recorded, go on
            if not record_errors:
                raise
            slots.append(_failed(exc))
            continue
        pending = [s for s in slots if isinstance(s, tuple)]
        if pending and pending[0][2] != rate:  # one encode call per group: one sample rate
            yield from flush()
            rows = 0
        slots.append((list(questions), wave, rate))
        rows += len(questions)
        if rows >= batch_size:
            yield from flush()
            rows = 0
    yield from flush()


def _failed(exc: BaseException) -> dict[str, Any]:
    return {"texts": None, "duration": None, "covered_seconds": None, "error": f"{type(exc).__name__}: {exc}"}


def _answer_group(model: Any, group: list[tuple[list[str], Any, int]], max_new_tokens: int, batch_size: int,
                  record_errors: bool) -> list[dict[str, Any]]:
    """The results of ``group``'s clips (one sample rate), encoded in one call; when that fails and errors are
    recorded, each clip alone (so one bad track costs only its own rows)."""
    import torch

    try:
        with torch.no_grad():
            enc = model.encode_audio([wave for _, wave, _ in group], group[0][2], stochastic=False)
            asked = [(i, q) for i, (qs, _, _) in enumerate(group) for q in qs]
            texts: list[list[str]] = [[] for _ in group]
            for lo in range(0, len(asked), batch_size):
                chunk = asked[lo: lo + batch_size]
                answers = model.generate(enc.index_select([i for i, _ in chunk]), [q for _, q in chunk],
                                         max_new_tokens=max_new_tokens)
                for (i, _), ans in zip(chunk, answers, strict=True):
                    texts[i].append(ans[0])
    except Exception as exc:  # e.g. a track the tokens cannot cover: retried alone, so it fails alone
        if not record_errors:
            raise
        if len(group) == 1:
            return [_failed(exc)]
        return [r for clip in group for r in _answer_group(model, [clip], max_new_tokens, batch_size, True)]
    return [{"texts": texts[i], "duration": round(float(enc.durations[i]), 3),
             "covered_seconds": round(float(enc.covered_seconds[i]), 3), "error": None} for i in range(len(group))]


def audio_source(audio: str | Path | Callable[[str], tuple[Any, int]], sample_rate: int
                 ) -> Callable[[str], tuple[Any, int]]:
    """``track_id -> (waveform, sample_rate)``: ``audio`` itself when callable (e.g. rendered synthetic tracks),
    else ``<audio>/<track_id>.<ext>`` decoded at ``sample_rate`` Hz (MustError when there is none)."""
    if callable(audio):
        return audio
    from must.data.real import find_audio, load_audio

    def load(track_id: str) -> tuple[Any, int]:
        path = find_audio(audio, track_id)
        if path is None:
            raise MustError(f"no audio for track {track_id} in {audio}")
        return load_audio(path, sample_rate), sample_rate

    return load


def predict(
    model: Any,
    references: Sequence[Mapping[str, Any]],
    audio: str | Path | Callable[[str], tuple[Any, int]],
    batch_size: int = 8,
    max_new_tokens: int = 32,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run ``model`` (a :class:`~must.models.lalm.MusicLALM` or anything with its ``encode_audio``, ``generate``
    and ``split_answer``) on every row, whole tracks, through :func:`answer_clips` (each track encoded once, up to
    ``batch_size`` questions of consecutive tracks per ``generate`` call). ``audio``: a folder of
    ``<track_id>.<ext>`` or a function (:func:`audio_source`). Returns one record per row: ``id, task, qa_type,
    answer`` (the reference), ``prediction, parsed, reason, duration, covered_seconds, error``, and for a grounded
    model ``trace`` (its whole output; ``reference_trace`` beside it when the row has one); a track whose audio
    cannot be read gives ``error`` on its rows."""
    from functools import partial

    from tqdm.auto import tqdm

    from must.parsing import parse_answer

    load = audio_source(audio, int(model.cfg.encoder.sample_rate))
    by_track = _tracks(references)
    clips = (([str(r["question"]) for r in rows], partial(load, track_id)) for track_id, rows in by_track.items())
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(references), desc="must eval", unit="q", disable=not progress)
    for rows, result in zip(by_track.values(), answer_clips(model, clips, max_new_tokens, batch_size, True),
                            strict=True):
        for k, r in enumerate(rows):
            rec = {"id": str(r["id"]), "task": r["task"], "qa_type": r.get("qa_type"), "answer": r.get("answer"),
                   "prediction": None, "parsed": None, "reason": None,
                   "duration": result["duration"] or float(r.get("duration") or 0) or None,
                   "covered_seconds": result["covered_seconds"], "error": result["error"]}
            if result["texts"] is not None:
                answer, trace, missing = model.split_answer(result["texts"][k])
                parsed = parse_answer(str(r["task"]), answer)
                rec.update(prediction=answer, parsed=parsed.to_json(), reason=missing or parsed.reason)
                if trace is not None:  # the model's own trace beside the answer it ends with
                    rec["trace"] = trace
                    if r.get("trace"):
                        rec["reference_trace"] = r["trace"]
            records.append(rec)
        bar.update(len(rows))
    bar.close()
    return records


def evaluate_loaded(
    model: Any,
    references: Sequence[dict[str, Any]],
    audio: str | Path | Callable[[str], tuple[Any, int]],
    out_dir: str | Path,
    model_name: str = "model",
    batch_size: int = 8,
    max_new_tokens: int = 32,
    clap_dir: str | Path | None = None,
    n_plots: int = 4,
    leaderboard: str | Path | None = None,
    progress: bool = True,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Evaluate a model already in memory: answer every reference row (:func:`predict`; ``audio`` a folder or a
    ``track_id -> (waveform, rate)`` function), write ``predictions.jsonl``, ``scores.json`` (with ``seconds`` and
    the letter tasks' ``chance``), ``report.md`` and ``plots/`` under ``out_dir``; returns the scores. The one
    evaluation path: ``must eval`` and every stage's ``evaluate`` (synthetic split or parquet) come here."""
    from must.metrics.text import meteor_mode
    from must.viz import plot_rows

    out_dir = Path(out_dir)
    references = [dict(r) for r in references]
    was_training = getattr(model, "training", False)
    model.eval()
    t0 = time.perf_counter()
    try:
        records = predict(model, references, audio, batch_size, max_new_tokens, progress)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "predictions.jsonl").open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    # fill unknown durations from the audio so offsets and MTR get their trivial baselines
    by_id = {rec["id"]: rec for rec in records}
    for r in references:
        if not r.get("duration") and by_id[str(r["id"])]["duration"]:
            r["duration"] = by_id[str(r["id"])]["duration"]
    scores = score_predictions({k: v["prediction"] for k, v in by_id.items()}, references, clap_dir=clap_dir)
    errors = [rec for rec in records if rec["error"]]
    scores["errors"] = [{"id": rec["id"], "error": rec["error"]} for rec in errors]
    scores["seconds"] = round(seconds, 2)
    scores["chance"] = dict(CHANCE)
    write_json(out_dir / "scores.json", scores)
    plots = plot_rows(references, by_id, out_dir / "plots", n_per_task=n_plots)
    where = "rendered in memory" if callable(audio) else f"from {audio}"
    notes = [*notes, f"{len(references)} rows, audio {where}",
             f"generation: greedy, at most {max_new_tokens} new tokens; {seconds:.1f} s for all rows"]
    if any(str(r["task"]).upper() == "TAD" for r in references):
        notes.append(f"METEOR matching: {meteor_mode()} (exact+stem when no WordNet database is installed)")
    notes += [f"audio error on {rec['id']}: {rec['error']}" for rec in errors[:20]]
    report = write_report(out_dir, scores, model_name, _load_leaderboard(leaderboard), notes)
    if plots:  # the timelines, shown in the report (reference vs prediction on the track's time axis)
        with report.open("a", encoding="utf-8") as fh:
            fh.write("\n## Timelines\n\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in plots) + "\n")
    return scores


def evaluate_model(
    model_dir: str | Path,
    data: str | Path,
    audio_dir: str | Path | None,
    out_dir: str | Path,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    clap_dir: str | Path | None = None,
    n_plots: int = 4,
    leaderboard: str | Path | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
    split: str = "auto",
    limit: int | None = None,
) -> dict[str, Any]:
    """``must eval``: load a saved model folder and :func:`evaluate_loaded` it on a MusTBench parquet.

    ``trust_remote_code`` lets the folder run the modelling code shipped in it (only for a folder you trust)."""
    from must.eval_hf import load_for_eval
    from must.hub import resolve_folder

    model_dir = Path(model_dir)
    audio_dir = Path(audio_dir) if audio_dir else default_audio_dir(data)
    references, what = select_rows(load_references(data, audio_dir), split, limit)
    print(what)
    _refuse_no_audio(references, audio_dir, data)
    # a must model folder, or a stock HF audio LLM (a folder or a cached Hub id) through its own processor
    model = load_for_eval(resolve_folder(model_dir, "MODEL_DIR"), trust_remote_code=trust_remote_code)
    return evaluate_loaded(model, references, audio_dir, out_dir, model_dir.name, batch_size, max_new_tokens,
                           clap_dir, n_plots, leaderboard, progress,
                           notes=[f"model: {model_dir}", f"data: {data}", what])


def _refuse_no_audio(references: Sequence[Mapping[str, Any]], audio_dir: Path, data: str | Path) -> None:
    """Stop before the model loads when not one track has audio in ``audio_dir`` (a wrong folder, not a bad file)."""
    from must.data.real import AUDIO_EXTENSIONS, find_audio

    tracks = sorted(_tracks(references))
    if not any(find_audio(audio_dir, t) for t in tracks):
        raise MustError(f"{data}: no audio in {audio_dir} for any of its {len(tracks)} track(s) (looked for "
                        f"<track_id>{'|'.join(AUDIO_EXTENSIONS)}, e.g. {tracks[0]}); pass --audio-dir")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``must eval``."""
    parser.add_argument("model_dir", help="a saved MusicLALM folder (a stage's model/), or a stock Qwen2-Audio / "
                        "Qwen2.5-Omni folder or cached Hub id (e.g. Qwen/Qwen2-Audio-7B-Instruct)")
    parser.add_argument("--data", required=True, help="MusTBench-format parquet")
    parser.add_argument("--audio-dir", help="folder of <track_id>.<mp3|wav|flac|ogg> (default: the parquet's sibling audio/ folder, "
                        "as must synth writes it, when it exists, else the parquet's own folder)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--batch-size", type=int, default=8, help="questions per generate call (several tracks' questions share one; each track encoded once)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="longest answer generated, in tokens (greedy)")
    parser.add_argument("--clap-dir", help="local CLAP model folder for the TAD CLAP score (else reported missing)")
    parser.add_argument("--plots", type=int, default=4, help="timeline plots per task (TSG, MTR)")
    parser.add_argument("--leaderboard", help="published results JSON to compare with (default: the paper's table, shipped with must)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let the model folder run the modelling code shipped in it (only a folder you trust)")
    _add_selection_arguments(parser)


def eval_handler(args: argparse.Namespace) -> int:
    """``must eval``: predictions, scores, report and plots in ``--out``."""
    from must.files import ensure_dir
    from must.hub import resolve_folder

    if not resolve_folder(args.model_dir, "MODEL_DIR").is_dir():  # a Hub id: its cached snapshot, or a MustError
        raise MustError(f"model folder not found: {args.model_dir}")
    ensure_dir(args.out, "--out")  # before the model loads: a folder that cannot be made is said at once
    scores = evaluate_model(args.model_dir, args.data, args.audio_dir, args.out, args.batch_size, args.max_new_tokens,
                            args.clap_dir, args.plots, args.leaderboard, trust_remote_code=args.trust_remote_code,
                            split=args.split, limit=args.limit)
    print_scores(scores, Path(args.model_dir).name)
    errors, n_rows = scores.get("errors", []), len(scores.get("rows", []))
    first = "; ".join(f"{e['id']}: {e['error']}" for e in errors[:3])
    if errors and len(errors) == n_rows:
        raise MustError(f"all {n_rows} row(s) could not be run, nothing was scored (first: {first}); "
                        f"outputs in {args.out}")
    if errors:
        print(f"{len(errors)} of {n_rows} row(s) could not be run, counted wrong: {_ids([e['id'] for e in errors])} "
              f"(first: {first}; see {args.out}/predictions.jsonl)")
    zero = zero_rows(scores)
    if zero:
        print(f"{len(zero)} of {n_rows} row(s) scored zero on every metric: {_ids(zero)}")
    print(f"wrote {args.out}/predictions.jsonl, scores.json, report.md, plots/")
    return 0

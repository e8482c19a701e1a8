"""Real data: audio files (mp3, wav, flac, ogg) and MusTBench-format parquets, validated up front.

Every problem a user can cause (a missing column, an unknown task, audio missing for some ids, an
unreadable, empty or NaN file) is a :class:`~must.errors.MustError` naming the file, column or ids,
raised before training starts rather than mid-epoch.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from must.data.types import MUSTBENCH_COLUMNS, QA, TASKS
from must.errors import MustError

AUDIO_EXTENSIONS = (".mp3", ".wav", ".flac", ".ogg")


def _next_smooth(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (FFT lengths that numpy transforms fast)."""
    best, p5 = 2 * n, 1
    while p5 < 2 * n:
        p35 = p5
        while p35 < 2 * n:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling of a 1-D signal through its spectrum (an ideal low-pass), float32.

    Written here because neither scipy nor torchaudio is a dependency. The signal is zero-padded to
    ``orig/g * k`` samples (g the rates' gcd, k 5-smooth) so both FFTs are fast and the output length
    is whole; the output is cut back to ``round(len * target / orig)`` samples.
    """
    if orig_sr == target_sr or len(audio) == 0:
        return audio.astype(np.float32, copy=False)
    g = math.gcd(int(orig_sr), int(target_sr))
    up, down = target_sr // g, orig_sr // g
    k = _next_smooth(-(-len(audio) // down))
    n_in, n_out = down * k, up * k
    spec = np.fft.rfft(audio.astype(np.float32), n_in)
    n_bins = n_out // 2 + 1
    if n_bins <= len(spec):
        spec = spec[:n_bins]
    else:
        spec = np.concatenate([spec, np.zeros(n_bins - len(spec), dtype=spec.dtype)])
    out = np.fft.irfft(spec, n_out)[: round(len(audio) * target_sr / orig_sr)]
    return (out * (n_out / n_in)).astype(np.float32)


def load_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """The file at ``path`` as mono float32 at ``sample_rate`` Hz, shape (samples,); the whole track.

    Channels are averaged. Raises MustError naming the file if it is missing, unreadable, empty or
    holds NaN/inf samples.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise MustError(f"audio file not found: {path}")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        declared = sf.info(str(path)).frames
    except Exception as exc:  # soundfile raises several types for corrupt/unsupported files
        raise MustError(f"cannot read audio file {path}: {exc}") from exc
    if data.size == 0:
        raise MustError(f"audio file {path} is empty (0 samples)")
    # A cut-off file decodes without error but shorter than its header says: its labels (and the
    # duration taken from the header) would then describe audio the model never hears.
    if 0 < len(data) < 0.98 * declared:
        raise MustError(f"audio file {path} is truncated: its header says {declared / sr:.1f} s, "
                        f"only {len(data) / sr:.1f} s decode")
    mono = data.mean(axis=1)
    if not np.isfinite(mono).all():
        raise MustError(f"audio file {path} contains NaN or infinite samples")
    return resample(mono, int(sr), int(sample_rate))


def audio_duration(path: str | Path) -> float:
    """Length of an audio file in seconds from its header; MustError if unreadable or empty."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as exc:
        raise MustError(f"cannot read audio file {path}: {exc}") from exc
    if info.frames <= 0 or info.samplerate <= 0:
        raise MustError(f"audio file {path} is empty (0 samples)")
    return info.frames / info.samplerate


def find_audio(audio_dir: str | Path, track_id: str) -> Path | None:
    """``audio_dir/<track_id>.<mp3|wav|flac|ogg>`` if one exists; MustError for a track id that leads outside
    ``audio_dir`` (``../x``, an absolute path): a benchmark file must not make us read any file on the machine."""
    if not inside_folder(audio_dir, track_id):
        raise MustError(f"track_id {track_id!r} leads outside the audio folder {audio_dir}")
    for ext in AUDIO_EXTENSIONS:
        p = Path(audio_dir) / f"{track_id}{ext}"
        if p.is_file():
            return p
    return None


def inside_folder(folder: str | Path, name: str) -> bool:
    """Whether ``folder/name`` stays inside ``folder`` once ``..`` and absolute parts are resolved (lexically:
    a symlink the user put inside the folder is theirs to follow)."""
    root = os.path.normpath(os.path.abspath(folder))
    target = os.path.normpath(os.path.join(root, str(name)))
    return bool(str(name)) and target.startswith(root + os.sep)


def _as_list(value: Any, fallback: str) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return [fallback]
    if isinstance(value, str):
        return [value]
    return [str(v) for v in list(value)] or [fallback]


def _opt_str(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def load_mustbench(
    parquet_path: str | Path, audio_dir: str | Path | None = None, check_audio: bool = True,
    require_audio: bool = True,
) -> list[QA]:
    """The questions of a MusTBench-format parquet, validated up front.

    ``audio_dir`` defaults to the parquet's folder. Checks, each a MustError: the file exists and
    reads; all columns ``id, track_id, task, category, qa_type, question, answer, answers, split``;
    every task is one of the five; no track id leads outside ``audio_dir``; every reference answer reads
    as its task expects, each time in it possible and within its track; every track has a readable,
    non-empty audio file (missing ids listed; with ``require_audio=False`` a missing one is left to the
    caller). ``duration`` comes from the parquet's column when present, else from the audio header; audio
    shorter than its row's duration is warned about, naming the row.
    """
    import pandas as pd

    parquet_path = Path(parquet_path)
    audio_dir = Path(audio_dir) if audio_dir is not None else parquet_path.parent
    if not parquet_path.is_file():
        raise MustError(f"MusTBench parquet not found: {parquet_path}")
    try:
        df = pd.read_parquet(parquet_path)
    except Exception as exc:
        raise MustError(f"cannot read parquet {parquet_path}: {exc}") from exc
    missing_cols = [c for c in MUSTBENCH_COLUMNS if c not in df.columns]
    if missing_cols:
        raise MustError(
            f"{parquet_path}: missing column(s) {', '.join(missing_cols)}; "
            f"expected {', '.join(MUSTBENCH_COLUMNS)}"
        )
    bad = df[~df["task"].isin(TASKS)]
    if len(bad):
        rows = ", ".join(f"{r.id} ({r.task!r})" for r in bad.head(10).itertuples())
        raise MustError(
            f"{parquet_path}: unknown task in {len(bad)} row(s): {rows}; expected one of {', '.join(TASKS)}"
        )
    if df["id"].duplicated().any():
        dup = df.loc[df["id"].duplicated(), "id"].astype(str).head(10).tolist()
        raise MustError(f"{parquet_path}: duplicate id(s) {', '.join(dup)}")
    check_track_ids(df, parquet_path, audio_dir)
    has_duration = "duration" in df.columns
    durations: dict[str, float] = {}
    if check_audio:
        if not audio_dir.is_dir():
            raise MustError(f"audio folder not found: {audio_dir}")
        track_ids = sorted(df["track_id"].astype(str).unique())
        paths = {t: find_audio(audio_dir, t) for t in track_ids}
        missing = [t for t, p in paths.items() if p is None]
        if missing and require_audio:
            shown = ", ".join(missing[:20]) + (" …" if len(missing) > 20 else "")
            raise MustError(
                f"{parquet_path}: no audio in {audio_dir} for {len(missing)} track id(s): {shown} "
                f"(looked for <track_id>{'|'.join(AUDIO_EXTENSIONS)})"
            )
        durations = _audio_durations(paths, strict=require_audio)
        if has_duration:
            warn_short_audio(df, parquet_path, durations, paths)
    check_references(df, parquet_path, {**durations, **_column_durations(df)})
    qas = []
    for row in df.itertuples(index=False):
        tid = str(row.track_id)
        duration = (
            float(row.duration) if has_duration and row.duration == row.duration else durations.get(tid, 0.0)
        )
        qas.append(
            QA(
                id=str(row.id),
                track_id=tid,
                task=str(row.task),
                category=_opt_str(row.category),
                qa_type=_opt_str(row.qa_type),
                question=str(row.question),
                answer=str(row.answer),
                answers=_as_list(row.answers, str(row.answer)),
                split=str(row.split),
                duration=duration,
            )
        )
    return qas


#: Slack when a time is compared with a track's length: references are written in whole seconds (``0:56``
#: for the end of a 55.4 s track), and MP3 headers may be off by a frame.
_END_SLACK_SECONDS = 1.0


def check_references(df: Any, parquet_path: Path, durations: dict[str, float] | None = None) -> None:
    """Every reference answer must read as its task expects (a time, a letter, intervals, text), and for the
    timed tasks every time written in it must be possible (``23:76`` is not) and, where the track's length is
    known (``durations``: track id -> seconds), within the track. A reference the scorer cannot read, or one
    past the track's end, silently scores every prediction as a miss. MustError listing the rows."""
    durations = durations or {}
    bad = []
    for row in df.itertuples(index=False):
        for ref in _as_list(row.answers, str(row.answer)):
            problem = reference_problem(str(row.task), ref, durations.get(str(row.track_id)))
            if problem:
                bad.append(f"id {row.id} ({row.task} {ref!r}: {problem})")
                break
    if bad:
        shown = "; ".join(bad[:10]) + (" …" if len(bad) > 10 else "")
        raise MustError(f"{parquet_path}: unparsable or impossible reference answer in {len(bad)} row(s): {shown}")


def reference_problem(task: str, ref: str, duration: float | None = None) -> str | None:
    """Why one reference answer cannot be scored (None when it can): unparsable, an impossible time, or a time
    past ``duration`` seconds."""
    from must.parsing import parse_answer, time_tokens

    parsed = parse_answer(task, ref)
    if not parsed.ok:
        return parsed.reason
    if task.upper() not in ("TSG", "MTR"):
        return None
    tokens = time_tokens(ref)
    for _, token in tokens:  # parse_time reads only the first time: a later one may be impossible
        if not token.ok:
            return token.reason
    times = [(text, token.value) for text, token in tokens] + [(f"{v:g} s", v) for v in _seconds(parsed.value)]
    for text, seconds in times:
        if duration and seconds > duration + _END_SLACK_SECONDS:
            return f"{text} = {seconds:g} s is past the end of the {duration:.1f} s track"
    return None


def _seconds(value: Any) -> list[float]:
    """The times in a parsed TSG or MTR value: one float, or a list of (start, end) intervals."""
    if isinstance(value, list):
        return [t for interval in value for t in interval]
    return [float(value)]


def check_track_ids(df: Any, parquet_path: Path, audio_dir: Path) -> None:
    """Track ids name files inside the audio folder; one that leads outside (``../x``, ``/etc/x``) is refused."""
    outside = [(tid, rid) for tid, rid in zip(df["track_id"].astype(str), df["id"].astype(str))
               if not inside_folder(audio_dir, tid)]
    if outside:
        shown = ", ".join(f"{tid!r} (id {rid})" for tid, rid in outside[:10])
        raise MustError(f"{parquet_path}: track_id leads outside the audio folder {audio_dir} in {len(outside)} "
                        f"row(s): {shown}; a track_id names <track_id>.<ext> inside it")


def _audio_durations(paths: dict[str, Path | None], strict: bool) -> dict[str, float]:
    """Track id -> seconds from each audio header; not ``strict``, a missing or unreadable file is left out
    (``must eval`` reports it on that track's rows instead of stopping)."""
    out = {}
    for tid, path in paths.items():
        if path is None:
            continue
        try:
            out[tid] = audio_duration(path)
        except MustError:
            if strict:
                raise
    return out


def _column_durations(df: Any) -> dict[str, float]:
    """Track id -> the parquet's ``duration`` (the shortest its rows give), when the column is there."""
    if "duration" not in df.columns:
        return {}
    out: dict[str, float] = {}
    for tid, value in zip(df["track_id"].astype(str), df["duration"]):
        if value == value and float(value) > 0:  # NaN != NaN: a missing value
            out[tid] = min(out.get(tid, float("inf")), float(value))
    return out


def warn_short_audio(df: Any, parquet_path: Path, audio: dict[str, float], paths: dict[str, Path | None]) -> list[str]:
    """Warn (stderr) about each track whose audio is shorter than a row's ``duration`` says: its questions ask
    about music the model never hears (a cut-off download, a wrong file). Returns the warnings."""
    warnings, warned = [], set()
    for tid, rid, value in zip(df["track_id"].astype(str), df["id"].astype(str), df["duration"]):
        if tid not in audio or tid in warned or value != value:  # one warning per track; NaN: no duration
            continue
        if audio[tid] < float(value) - max(_END_SLACK_SECONDS, 0.02 * float(value)):
            warnings.append(f"warning: {parquet_path}: row id {rid} says track {tid} lasts {float(value):.1f} s, but "
                            f"its audio {paths[tid]} is {audio[tid]:.1f} s long")
            warned.add(tid)
    for line in warnings:
        print(line, file=sys.stderr)
    return warnings


class SkipBroken(Dataset):
    """Wraps a dataset of audio items: an item whose audio fails to load (a :class:`MustError`) is skipped,
    counted and replaced by the next readable one; more than ``max_fraction`` of the items failing stops
    training with the list of files.

    Training on thousands of real files should not die on one broken MP3, nor go on when a folder is
    mostly unreadable. ``failures`` maps a failed item index to its error message.
    """

    def __init__(self, dataset: Dataset, max_fraction: float = 0.01):
        self.dataset, self.max_fraction = dataset, max_fraction
        self.failures: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        n = len(self.dataset)
        for step in range(n):
            i = (index + step) % n
            if i in self.failures:
                continue
            try:
                return self.dataset[i]
            except MustError as exc:
                self.failures[i] = str(exc)
                self._check()
                print(f"[must] skipped a broken audio file ({len(self.failures)} so far): {exc}", flush=True)
        raise MustError(f"no readable audio file among {n} items: {'; '.join(list(self.failures.values())[:5])}")

    def _check(self) -> None:
        allowed = self.max_fraction * len(self.dataset)
        if len(self.failures) > allowed:
            shown = "; ".join(list(self.failures.values())[:5])
            raise MustError(
                f"{len(self.failures)} of {len(self.dataset)} audio files failed to load (more than "
                f"{self.max_fraction:.0%}): stopping. First errors: {shown}"
            )


class MustBenchDataset(Dataset):
    """Real tracks and their questions, one item per track: ``waveform`` (samples,), ``qas``, ``track_id``,
    ``duration``. Audio was validated when the parquet was loaded; it is decoded when an item is read."""

    def __init__(self, qas: list[QA], audio_dir: str | Path, sample_rate: int = 16000):
        self.audio_dir, self.sample_rate = Path(audio_dir), sample_rate
        self.by_track: dict[str, list[QA]] = {}
        for qa in qas:
            self.by_track.setdefault(qa.track_id, []).append(qa)
        self.track_ids = sorted(self.by_track)

    def __len__(self) -> int:
        return len(self.track_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        tid = self.track_ids[index]
        path = find_audio(self.audio_dir, tid)
        if path is None:
            raise MustError(f"no audio in {self.audio_dir} for track id {tid}")
        audio = load_audio(path, self.sample_rate)
        return {
            "waveform": torch.from_numpy(audio),
            "qas": self.by_track[tid],
            "track_id": tid,
            "duration": len(audio) / self.sample_rate,
        }

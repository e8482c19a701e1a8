"""Real data: audio files (mp3, wav, flac, ogg) and MusTBench-format parquets, validated up front.

Every problem a user can cause (a missing column, an unknown task, audio missing for some ids, an
unreadable, empty or NaN file) is a :class:`~must.errors.MustError` naming the file, column or ids,
raised before training starts rather than mid-epoch.
"""

from __future__ import annotations

import math
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
    """``audio_dir/<track_id>.<mp3|wav|flac|ogg>`` if one exists."""
    for ext in AUDIO_EXTENSIONS:
        p = Path(audio_dir) / f"{track_id}{ext}"
        if p.is_file():
            return p
    return None


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
    parquet_path: str | Path, audio_dir: str | Path | None = None, check_audio: bool = True
) -> list[QA]:
    """The questions of a MusTBench-format parquet, validated up front.

    ``audio_dir`` defaults to the parquet's folder. Checks, each a MustError: the file exists and
    reads; all columns ``id, track_id, task, category, qa_type, question, answer, answers, split``;
    every task is one of the five; every track has a readable, non-empty audio file (missing ids
    listed). ``duration`` comes from the parquet's column when present, else from the audio header.
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
    check_references(df, parquet_path)
    durations: dict[str, float] = {}
    if check_audio:
        if not audio_dir.is_dir():
            raise MustError(f"audio folder not found: {audio_dir}")
        track_ids = sorted(df["track_id"].astype(str).unique())
        paths = {t: find_audio(audio_dir, t) for t in track_ids}
        missing = [t for t, p in paths.items() if p is None]
        if missing:
            shown = ", ".join(missing[:20]) + (" …" if len(missing) > 20 else "")
            raise MustError(
                f"{parquet_path}: no audio in {audio_dir} for {len(missing)} track id(s): {shown} "
                f"(looked for <track_id>{'|'.join(AUDIO_EXTENSIONS)})"
            )
        durations = {t: audio_duration(p) for t, p in paths.items()}
    has_duration = "duration" in df.columns
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


def check_references(df: Any, parquet_path: Path) -> None:
    """Every reference answer must read as its task expects (a time, a letter, intervals, text): a reference
    the scorer cannot read would silently score every prediction as a miss. MustError listing the rows."""
    from must.parsing import parse_answer

    bad = []
    for row in df.itertuples(index=False):
        for ref in _as_list(row.answers, str(row.answer)):
            parsed = parse_answer(str(row.task), ref)
            if not parsed.ok:
                bad.append(f"id {row.id} ({row.task} {ref!r}: {parsed.reason})")
                break
    if bad:
        shown = "; ".join(bad[:10]) + (" …" if len(bad) > 10 else "")
        raise MustError(f"{parquet_path}: unparsable reference answer in {len(bad)} row(s): {shown}")


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

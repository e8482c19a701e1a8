"""Core data types shared by every part of ``must``.

Plain dataclasses. Every time is in **seconds** (float) from the start of the track; text forms
(``M:SS``) are made only at the edges by :mod:`must.timecode`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The five MusTBench tasks.
TASKS = ("TSG", "LTR", "TAD", "GTO", "MTR")

#: The columns of a MusTBench parquet, in the benchmark's order.
MUSTBENCH_COLUMNS = ("id", "track_id", "task", "category", "qa_type", "question", "answer", "answers", "split")


@dataclass
class Transition:
    """A change between two sections of a track."""

    time: float
    """When the change happens, seconds."""
    kind: str
    """Main kind of change: ``instrument_in``, ``instrument_out``, ``tempo``, ``key``, ``loudness``,
    ``brightness``, ``density`` (several may happen at once; ``change`` holds them all)."""
    change: dict[str, Any] = field(default_factory=dict)
    """Structured description, e.g. ``{"in": ["bass"], "out": [], "loudness": [0.4, 0.9]}``."""
    description: str = ""
    """Natural-language description of the change."""


@dataclass
class ArousalSegment:
    """A stretch of the track with a roughly constant arousal (energy) level."""

    start: float
    """Start, seconds."""
    end: float
    """End, seconds."""
    value: float
    """Arousal in [0, 1]: 0 calm, 1 intense."""


@dataclass
class Caption:
    """A timestamped caption: a segment description (``end`` set) or a boundary note (``end`` None)."""

    start: float
    """Start, seconds."""
    end: float | None
    """End, seconds; None for a point event such as a boundary."""
    text: str
    """The caption text."""


@dataclass
class Track:
    """One piece of music with its labels; synthetic tracks have every label, real ones may have none."""

    id: str
    """Track id; the audio file is ``<id>.<ext>``."""
    duration: float
    """Length, seconds."""
    sample_rate: int = 16000
    """Sample rate of ``audio`` in Hz."""
    audio: np.ndarray | None = None
    """Mono float32 waveform, shape (samples,), or None when only ``path`` is known."""
    path: str | None = None
    """Audio file on disk, if any."""
    sources: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """Source name -> list of (onset, offset) in seconds, sorted."""
    transitions: list[Transition] = field(default_factory=list)
    """Section changes, sorted by time."""
    arousal: list[ArousalSegment] = field(default_factory=list)
    """Arousal segments covering the track, sorted."""
    captions: list[Caption] = field(default_factory=list)
    """Timestamped captions, sorted by start."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Anything else (tempo, key, sections, generator seed)."""


@dataclass
class QA:
    """One MusTBench-style question about a track (one row of the benchmark parquet, plus duration)."""

    id: str
    """Row id, unique in the file."""
    track_id: str
    """Track the question is about."""
    task: str
    """One of ``TSG``, ``LTR``, ``TAD``, ``GTO``, ``MTR``."""
    category: str
    """Benchmark category (e.g. the source kind for TSG)."""
    qa_type: str
    """Sub-type; for TSG ``onset`` or ``offset``."""
    question: str
    """The question text, options included."""
    answer: str
    """The reference answer text."""
    answers: list[str] = field(default_factory=list)
    """All reference answers (MTR may have several intervals)."""
    split: str = "test"
    """``train``, ``val`` or ``test``."""
    duration: float = 0.0
    """Length of the track, seconds."""
    trace: str = ""
    """The grounded answer built from the strong labels (``must.data.traces``): each time right after
    the thing it belongs to, the MusTBench answer last after ``→``; empty for rows without labels."""

    def to_row(self) -> dict[str, Any]:
        """The benchmark parquet row (its columns, plus ``duration``)."""
        return {
            "id": self.id,
            "track_id": self.track_id,
            "task": self.task,
            "category": self.category,
            "qa_type": self.qa_type,
            "question": self.question,
            "answer": self.answer,
            "answers": list(self.answers),
            "split": self.split,
            "duration": float(self.duration),
        }

"""Typed configuration of the recipe's ``data`` block."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Optional

from must import literals  # noqa: F401  (omegaconf < 2.4 reads the Literal fields)


@dataclass
class DataConfig:
    """Where training and evaluation data come from: synthetic music rendered on the fly, or MusTBench files."""

    source: Literal["synthetic", "mustbench"] = "synthetic"
    """``synthetic`` (rendered on the fly), or ``mustbench`` (a parquet plus an audio folder)."""
    sample_rate: int = 16000
    """Sample rate every waveform is brought to, Hz."""

    # --- synthetic music -------------------------------------------------------------------------
    min_seconds: float = 20.0
    """Shortest synthetic track, seconds (20-60 s clips for tiny runs; 120-360 s is benchmark length)."""
    max_seconds: float = 60.0
    """Longest synthetic track, seconds."""
    seed: int = 0
    """Seed offset of the synthetic tracks: track i of a split is a pure function of (seed, split, i)."""
    train_tracks: int = 2000
    """Number of synthetic training tracks (an epoch's length; each is rendered when asked for)."""
    val_tracks: int = 16
    """Number of synthetic validation tracks."""
    test_tracks: int = 64
    """Number of synthetic held-out test tracks (the evaluation split)."""
    tasks: List[Literal["TSG", "LTR", "TAD", "GTO", "MTR"]] = field(default_factory=lambda: ["TSG", "LTR", "TAD", "GTO", "MTR"])
    """MusTBench tasks to build questions for."""
    questions_per_track: int = 8
    """Most questions asked of one track (tasks balanced); 0 keeps every question the builder makes."""
    test_questions_per_metric: int = 0
    """Test split: this many questions of each scored kind (TSG onset, TSG offset, LTR, TAD, GTO, MTR),
    taken over the split's tracks in order, so a rare kind (offsets) is not 10 questions; 0: every
    track's ``questions_per_track``."""
    transition_sigma_s: float = 1.0
    """Width (standard deviation, seconds) of each peak of the stage-1 transition-probability curve."""
    mood_window_s: float = 8.0
    """Length of a stage-1 mood-change clip centred on a boundary, seconds."""
    renderer: Literal["numpy", "gm"] = "numpy"
    """``numpy`` (built-in synthesis, fast, exact offsets) or ``gm`` (General MIDI through a SoundFont; needs
    the optional ``tinysoundfont`` package, see must/data/gm.py)."""
    soundfont: Optional[str] = None
    """SoundFont for ``renderer: gm``; None uses the GM SoundFont that ``pretty_midi`` ships."""
    track_cache_bytes: int = 2 * 1024**3
    """Rendered synthetic tracks kept in memory for the run, bytes of audio (default 2 GiB): the stages of a recipe
    run in one process, so tracks stage 1 renders serve stages 2-4 and every evaluation. A 20-60 s track at 16 kHz
    is ~2.6 MB, a 120-360 s one ~15 MB; past the budget the least recently used are dropped (rendered again if asked
    for). 0 renders every track each time it is read."""
    encoding_cache_bytes: int = 1024**3
    """Encoded audio a stage with a frozen encoder keeps (``options.reuse_encodings``), bytes of tensors on the CPU
    (default 1 GiB); past it the least recently used tracks are encoded again when met."""

    # --- real data (source: mustbench) -----------------------------------------------------------
    parquet: Optional[str] = None
    """MusTBench-format parquet (columns id, track_id, task, category, qa_type, question, answer, answers, split)."""
    audio_dir: Optional[str] = None
    """Folder holding ``<track_id>.<mp3|wav|flac|ogg>``; None means the parquet's folder."""
    train_split: str = "train"
    """Rows of the parquet whose ``split`` column has this value train (SFT on real data)."""
    eval_split: str = "test"
    """Rows with this ``split`` value are validated on and evaluated (never trained on)."""
    max_broken_fraction: float = 0.01
    """Training skips an audio file that fails to load and counts it; more than this fraction failing stops it."""

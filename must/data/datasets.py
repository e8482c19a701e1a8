"""Torch datasets that render synthetic tracks on the fly, and the collate function that pads them.

Item ``i`` of a split is a pure function of ``(cfg.seed, split, i)``: no state is shared between
dataloader workers, and DDP ranks read disjoint indices through Lightning's DistributedSampler,
so each rank trains on its own tracks and a rerun sees the same ones. Splits draw their track
seeds from disjoint streams, so no track is in two splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from must.data.config import DataConfig
from must.data.synth import caption_text, generate_track
from must.data.targets import mood_change_clips, source_activity, transition_curve
from must.data.tasks import build_qas, select_qas
from must.data.types import QA, Track
from must.parsing import tsg_kind

SPLITS = ("train", "val", "test")


def track_seed(seed: int, split: str, index: int) -> int:
    """The generator seed of track ``index`` of ``split``: distinct per (seed, split, index)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, SPLITS.index(split), int(index)]).generate_state(
        2
    )
    return int(state[0]) << 32 | int(state[1])


def track_id(seed: int, split: str, index: int) -> str:
    """Readable, unique id of a synthetic track."""
    return f"syn{seed}-{split}-{index:06d}"


def split_size(cfg: DataConfig, split: str) -> int:
    return {"train": cfg.train_tracks, "val": cfg.val_tracks, "test": cfg.test_tracks}[split]


def synthetic_track(cfg: DataConfig, split: str, index: int, render_audio: bool = True) -> Track:
    """Track ``index`` of ``split`` under ``cfg`` (rendered now; nothing touches disk)."""
    return generate_track(
        track_seed(cfg.seed, split, index), cfg, track_id(cfg.seed, split, index), render_audio
    )


def synthetic_qas(cfg: DataConfig, track: Track, split: str, index: int) -> list[QA]:
    """The questions asked of a track: built for ``cfg.tasks``, at most ``cfg.questions_per_track``."""
    seed = track_seed(cfg.seed, split, index)
    return select_qas(build_qas(track, seed, split, cfg.tasks), cfg.questions_per_track, seed)


def metric_group(qa: QA) -> str:
    """The scored kind of a question: ``TSG-onset``, ``TSG-offset``, or its task."""
    return f"TSG-{tsg_kind(qa.qa_type, qa.question)}" if qa.task == "TSG" else qa.task


def split_questions(cfg: DataConfig, tracks: list[Track], split: str) -> list[QA]:
    """The questions asked of ``tracks`` (track i of ``split``): per track as :func:`synthetic_qas`, or on
    the test split with ``cfg.test_questions_per_metric`` set, that many of each kind, spread over the
    tracks (every track's first question of a kind before any track's second), in track order."""
    per_metric = cfg.test_questions_per_metric
    if split != "test" or per_metric <= 0:
        return [qa for i, tr in enumerate(tracks) for qa in synthetic_qas(cfg, tr, split, i)]
    ranked = []  # (rank of the question among its track's questions of its kind, track, position)
    for i, tr in enumerate(tracks):
        seen: dict[str, int] = {}
        for j, qa in enumerate(build_qas(tr, track_seed(cfg.seed, split, i), split, cfg.tasks)):
            group = metric_group(qa)
            seen[group] = seen.get(group, 0) + 1
            ranked.append(((group, seen[group] - 1, i, j), qa))
    taken: dict[str, int] = {}
    chosen = []
    for (group, *_), qa in sorted(ranked, key=lambda r: r[0][1:]):
        if taken.get(group, 0) < per_metric:
            taken[group] = taken.get(group, 0) + 1
            chosen.append((qa.track_id, qa.id, qa))
    order = {tr.id: i for i, tr in enumerate(tracks)}
    return [qa for _, _, qa in sorted(chosen, key=lambda c: (order[c[0]], c[1]))]


def synthetic_split(
    cfg: DataConfig, split: str = "test", render_audio: bool = True
) -> tuple[list[Track], list[QA]]:
    """The fixed tracks and questions of a split (e.g. the held-out test set used for evaluation)."""
    tracks = [synthetic_track(cfg, split, i, render_audio) for i in range(split_size(cfg, split))]
    return tracks, split_questions(cfg, tracks, split)


class _SynthDataset(Dataset):
    def __init__(self, cfg: DataConfig, split: str = "train", length: int | None = None):
        check_config(cfg)
        self.cfg, self.split = cfg, split
        self.length = split_size(cfg, split) if length is None else length

    def __len__(self) -> int:
        return self.length

    def _track(self, index: int) -> Track:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return synthetic_track(self.cfg, self.split, index)

    @staticmethod
    def _base(track: Track) -> dict[str, Any]:
        return {"waveform": torch.from_numpy(track.audio), "track_id": track.id, "duration": track.duration}


class Stage1Dataset(_SynthDataset):
    """Waveform + stage-1 targets at ``frame_rate`` Hz.

    Item: ``waveform`` (samples,), ``transition`` (frames,), ``activity`` (frames, len(SOURCE_NAMES)),
    ``mood_clips`` (clips, 3) as (start_s, end_s, delta_arousal), ``track_id``, ``duration``.
    """

    def __init__(
        self, cfg: DataConfig, split: str = "train", frame_rate: float = 2.5, length: int | None = None
    ):
        super().__init__(cfg, split, length)
        self.frame_rate = frame_rate

    def __getitem__(self, index: int) -> dict[str, Any]:
        track = self._track(index)
        item = self._base(track)
        item["transition"] = torch.from_numpy(
            transition_curve(track, self.frame_rate, self.cfg.transition_sigma_s)
        )
        item["activity"] = torch.from_numpy(source_activity(track, self.frame_rate))
        clips = mood_change_clips(track, self.cfg.mood_window_s)
        item["mood_clips"] = torch.tensor(clips, dtype=torch.float32).reshape(-1, 3)
        return item


class CaptionDataset(_SynthDataset):
    """Waveform + its timestamped caption. Item: ``waveform`` (samples,), ``caption`` str, ``track_id``, ``duration``."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        track = self._track(index)
        return {**self._base(track), "caption": caption_text(track)}


class QADataset(_SynthDataset):
    """Waveform + its questions (several per track, tasks balanced).

    Item: ``waveform`` (samples,), ``qas`` list[QA], ``track_id``, ``duration``.
    """

    def __getitem__(self, index: int) -> dict[str, Any]:
        track = self._track(index)
        return {**self._base(track), "qas": synthetic_qas(self.cfg, track, self.split, index)}


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pad a list of items into a batch.

    ``waveform`` -> (B, max_samples) zero-padded, plus ``lengths`` (B,) in samples; frame targets
    (``transition``, ``activity``) -> padded to the longest with ``frame_lengths`` (B,); every other
    key becomes a list.
    """
    out: dict[str, Any] = {}
    waves = [b["waveform"] for b in batch]
    out["waveform"] = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    out["lengths"] = torch.tensor([len(w) for w in waves], dtype=torch.long)
    for key in ("transition", "activity"):
        if key in batch[0]:
            out[key] = torch.nn.utils.rnn.pad_sequence([b[key] for b in batch], batch_first=True)
            out["frame_lengths"] = torch.tensor([len(b[key]) for b in batch], dtype=torch.long)
    for key in batch[0]:
        if key not in out and key != "waveform":
            out[key] = [b[key] for b in batch]
    return out


def qa_to_dict(qa: QA) -> dict[str, Any]:
    """A QA as a plain dict (e.g. to log or to hand to TRL as dataset columns)."""
    return asdict(qa)


def check_config(cfg: DataConfig) -> None:
    """Raise ConfigError naming the ``data.*`` key for settings the generator cannot honour."""
    from must.errors import ConfigError
    from must.literals import check_choices

    check_choices(DataConfig, cfg, "data")  # source, tasks, renderer (a DataConfig built in Python is not checked)
    if not 5.0 <= cfg.min_seconds <= cfg.max_seconds:
        raise ConfigError(
            f"data.min_seconds/max_seconds: need 5 <= min_seconds <= max_seconds, got {cfg.min_seconds}, "
            f"{cfg.max_seconds}"
        )
    if cfg.source == "mustbench" and not cfg.parquet:
        raise ConfigError("data.parquet: required when data.source is mustbench")


def qa_dataset(cfg: DataConfig, split: str = "train") -> Dataset:
    """The QA dataset of a split for ``cfg.source``: synthetic (rendered on the fly) or MusTBench files.

    For ``mustbench`` the parquet's rows whose ``split`` column equals ``split`` are used.
    """
    check_config(cfg)
    if cfg.source == "synthetic":
        return QADataset(cfg, split)
    from pathlib import Path

    from must.data.real import MustBenchDataset, load_mustbench

    audio_dir = cfg.audio_dir or str(Path(cfg.parquet).parent)
    qas = [q for q in load_mustbench(cfg.parquet, audio_dir) if q.split == split]
    return MustBenchDataset(qas, audio_dir, cfg.sample_rate)


def eval_qas(cfg: DataConfig) -> list[QA]:
    """The held-out questions scored after training: the synthetic test split, or the parquet's test rows."""
    check_config(cfg)
    if cfg.source == "synthetic":
        return synthetic_split(cfg, "test", render_audio=False)[1]
    from must.data.real import load_mustbench

    return [q for q in load_mustbench(cfg.parquet, cfg.audio_dir) if q.split == "test"]

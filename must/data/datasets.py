"""The dataset layer of the stages: synthetic splits, the torch datasets stages 1-3 train and validate on,
and MusTBench parquet splits.

Item ``i`` of a synthetic split is a pure function of ``(cfg.seed, split, i)``: no state is shared between
dataloader workers, and the stages read indices through :class:`must.resume.StepSampler` (rank-sharded,
and a resumed run reads exactly the samples the interrupted one would have; a sample's own random draws,
such as SFT's questions or stage 2's prompt, are seeded by its position through :func:`must.resume.read_key`).
Splits draw their track seeds from disjoint streams, so no track is in two splits. Rendered tracks come
from the run's byte-bounded cache (:mod:`must.data.cache`), so stage 1's renders serve stages 2-4.

Items hold whole, unpadded waveforms (``collate`` keeps one list per key): the encoder windows each
track itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from must.data import traces
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


# ----------------------------------------------------------------------------------------- the stages' datasets


def cached_track(cfg: DataConfig, split: str, index: int) -> Track:
    """Track ``index`` of ``split`` (a pure function of the data config), from the run's byte-bounded cache
    (:func:`must.data.cache.tracks_for`): rendered once while it stays in the budget."""
    from must.data.cache import tracks_for

    return tracks_for(cfg).track(cfg, split, index)


def read_key(key: int | tuple[int, int], seed: int, rng: np.random.Generator):
    """:func:`must.resume.read_key`, imported when first read (``must.resume`` imports Lightning, which
    ``must synth`` and the parquet tools do not need)."""
    from must.resume import read_key as read

    return read(key, seed, rng)


def collate(items: Sequence[dict[str, Any]]) -> dict[str, list]:
    """A batch of items as one list per key (waveforms stay whole and unpadded: the encoder windows each track)."""
    return {k: [it[k] for it in items] for k in items[0]}


class Stage1Tracks(Dataset):
    """Stage 1: synthetic tracks and their targets at the encoder's ``frame_rate`` (Hz).

    Item: ``waveform`` (samples,) float32, ``sample_rate``, ``transition`` (frames,), ``activity``
    (frames, len(SOURCE_NAMES)), ``mood`` (clips, 3) as (start_s, end_s, delta_arousal), ``boundaries`` (seconds).
    """

    def __init__(self, data: DataConfig, split: str, frame_rate: float, length: int):
        check_config(data)
        self.data, self.split, self.frame_rate, self.length = data, split, frame_rate, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        track = cached_track(self.data, self.split, i)
        clips = mood_change_clips(track, self.data.mood_window_s)
        return {
            "waveform": track.audio,
            "sample_rate": track.sample_rate,
            "transition": torch.from_numpy(transition_curve(track, self.frame_rate, self.data.transition_sigma_s)),
            "activity": torch.from_numpy(source_activity(track, self.frame_rate)),
            "mood": torch.tensor(clips, dtype=torch.float32).reshape(-1, 3),
            "boundaries": [t.time for t in track.transitions],
        }


class CaptionTracks(Dataset):
    """Stage 2: synthetic tracks and their timestamped captions, each under one of ``prompts``.

    Item: ``id``, ``waveform`` (samples,), ``sample_rate``, ``prompt``, ``caption``.
    """

    def __init__(self, data: DataConfig, split: str, length: int, prompts: list[str], seed: int = 0,
                 answer_format: str = "plain"):
        check_config(data)
        self.data, self.split, self.length, self.prompts, self.seed = data, split, length, prompts, seed
        # Grounded models caption in their answers' language: every source's entries and exits, every
        # change and the arousal extremes, each sentence a thing next to its time (both directions).
        self.caption = traces.caption if answer_format == "grounded" else caption_text
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``key``: a track index, or ``(position, index)`` (prompt choice then seeded by the position)."""
        i, self.rng = read_key(key, self.seed, self.rng)
        track = cached_track(self.data, self.split, i)
        prompt = self.prompts[int(self.rng.integers(len(self.prompts)))]
        return {"id": track.id, "waveform": track.audio, "sample_rate": track.sample_rate,
                "prompt": prompt, "caption": self.caption(track)}


def pick_questions(qas: list[QA], k: int, rng: np.random.Generator,
                   type_weights: dict[str, float] | None = None) -> list[QA]:
    """Up to ``k`` questions drawn without replacement, question types (:func:`metric_group`) in proportion
    to their weights: each draw takes the type asked least so far relative to its weight, then a random
    question of that type. Ties go to the heavier type, then at random: so when ``k`` is below the number
    of types the heaviest are asked, and with equal weights the draw is a round-robin over the clip's types,
    so a rare type (a TSG offset) is asked whenever the clip has one."""
    pools: dict[str, list[QA]] = {}
    for i in rng.permutation(len(qas)):
        pools.setdefault(metric_group(qas[i]), []).append(qas[i])
    weights = {t: (type_weights or {}).get(t, 1.0) for t in pools}
    pools = {t: p for t, p in pools.items() if weights[t] > 0}
    asked = dict.fromkeys(pools, 0)
    out: list[QA] = []
    while len(out) < k and pools:
        # Least asked relative to weight; among equals (every type in the first round) the heavier, then
        # at random. Without the weight in the key, a first round with k below the number of types would
        # pick uniformly and ignore the weights. (asked/weight of equal ratios are equal floats.)
        r = dict(zip(pools, rng.random(len(pools))))
        t = min(pools, key=lambda u: (asked[u] / weights[u], -weights[u], -r[u]))
        out.append(pools[t].pop())
        asked[t] += 1
        if not pools[t]:
            del pools[t]
    return out


class QATracks(Dataset):
    """Stage 3 training clips: the waveform and a task-balanced draw of ``k`` of its questions (all built for
    ``tasks``, then :func:`pick_questions`).

    Item: ``id``, ``waveform`` (samples,), ``sample_rate``, ``qas`` (list[QA]).
    """

    def __init__(self, data: DataConfig, split: str, length: int, k: int, tasks: list[str],
                 type_weights: dict[str, float], seed: int = 0):
        check_config(data)
        self.data, self.split, self.length, self.k, self.tasks = data, split, length, k, tasks
        self.type_weights, self.seed = type_weights, seed
        self.rng = np.random.default_rng(seed)
        self._qas: dict[int, list[QA]] = {}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``key``: a track index, or ``(position, index)`` from :class:`must.resume.StepSampler`; with a
        position the question draw is seeded by it, so a resumed run asks exactly the same questions."""
        i, self.rng = read_key(key, self.seed, self.rng)
        # A clip with no question of the trained tasks (e.g. TSG only, a track where nothing enters
        # late) gives its place to the next one, so no step is ever empty.
        for j in range(i, i + self.length):
            track, qas = self._track_qas(j % self.length)
            if qas:
                break
        qas = pick_questions(qas, self.k, self.rng, self.type_weights)
        return {"id": track.id, "waveform": track.audio, "sample_rate": track.sample_rate, "qas": qas}

    def _track_qas(self, i: int) -> tuple:
        track = cached_track(self.data, self.split, i)
        if i not in self._qas:
            self._qas[i] = build_qas(track, track_seed(self.data.seed, self.split, i), self.split, self.tasks)
        return track, self._qas[i]


class EvalTracks(Dataset):
    """Validation clips with the split's fixed questions (:func:`synthetic_qas`).

    Item: ``id``, ``waveform`` (samples,), ``sample_rate``, ``qas`` (list[QA]), ``boundaries`` (seconds).
    """

    def __init__(self, data: DataConfig, split: str, length: int):
        check_config(data)
        self.data, self.split, self.length = data, split, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        track = cached_track(self.data, self.split, i)
        return {"id": track.id, "waveform": track.audio, "sample_rate": track.sample_rate,
                "qas": synthetic_qas(self.data, track, self.split, i),
                "boundaries": [t.time for t in track.transitions]}


def mustbench_tracks(cfg: DataConfig, split: str, tasks: Sequence[str] | None = None):
    """The tracks of one split of ``cfg.parquet`` (rows whose ``split`` column is ``split``, of ``tasks``).

    Returns ``(tracks, qas, audio_dir)``: ``tracks`` is a :class:`must.data.real.SkipBroken` over a
    :class:`must.data.real.MustBenchDataset` (items ``waveform``, ``qas``, ``track_id``, ``duration``), so
    a file that is missing or fails to load is skipped and counted, and more than
    ``cfg.max_broken_fraction`` failing stops training with the files named.
    """
    from must.data.real import MustBenchDataset, SkipBroken
    from must.errors import MustError

    check_config(cfg)
    parquet = Path(cfg.parquet)
    audio_dir = Path(cfg.audio_dir) if cfg.audio_dir else parquet.parent
    stamp = parquet.stat().st_mtime_ns if parquet.is_file() else 0
    rows = _parquet_rows(str(parquet), str(audio_dir), stamp)
    qas = [q for q in rows if q.split == split and (tasks is None or q.task in tasks)]
    if not qas:
        splits = sorted({q.split for q in rows})
        raise MustError(f"{parquet}: no rows with split '{split}' for tasks {list(tasks or cfg.tasks)} "
                        f"(splits present: {splits})")
    tracks = SkipBroken(MustBenchDataset(qas, audio_dir, cfg.sample_rate), cfg.max_broken_fraction)
    return tracks, qas, audio_dir


@lru_cache(maxsize=4)
def _parquet_rows(parquet: str, audio_dir: str, stamp: int) -> tuple[QA, ...]:
    """The parquet's rows, validated once (columns, tasks, every reference parsed) and shared by the train,
    validation and evaluation splits; ``stamp`` (the file's mtime) makes an edited file read again."""
    from must.data.real import load_mustbench

    return tuple(load_mustbench(parquet, audio_dir, check_audio=False))


class RealQATracks(Dataset):
    """MusTBench tracks of one split of ``data.parquet`` and their questions, items as :class:`QATracks`'s
    (plus ``boundaries``, empty).

    Audio is decoded when an item is read. A file that is missing or fails to load is skipped, counted
    and replaced by the next readable track (:class:`must.data.real.SkipBroken`); more than
    ``data.max_broken_fraction`` of the files failing stops training with the files named.
    ``k = 0`` keeps every question of a track (validation).
    """

    def __init__(self, data: DataConfig, split: str, k: int, tasks: list[str],
                 type_weights: dict[str, float] | None = None, seed: int = 0):
        self.tracks, self.qas, self.audio_dir = mustbench_tracks(data, split, tasks)
        self.sample_rate, self.k, self.type_weights, self.seed = data.sample_rate, k, type_weights or {}, seed
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.tracks)

    @property
    def broken(self) -> int:
        """Audio files skipped so far."""
        return len(self.tracks.failures)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        i, self.rng = read_key(key, self.seed, self.rng)
        item = self.tracks[i]
        qas = item["qas"] if self.k == 0 else pick_questions(item["qas"], self.k, self.rng, self.type_weights)
        return {"id": item["track_id"], "waveform": item["waveform"].numpy(), "sample_rate": self.sample_rate,
                "qas": qas, "boundaries": []}

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
    for key in ("track_cache_bytes", "encoding_cache_bytes"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"data.{key}: a number of bytes >= 0, got {getattr(cfg, key)}")

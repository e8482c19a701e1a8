"""Caches bounded by the bytes they hold: rendered synthetic tracks (one per run) and encoded audio (one per stage).

A count of items is no bound on memory: a 20-60 s tiny-recipe track is ~2.5 MB of float32 audio, a
must7b-length (120-360 s) one ~15 MB, so 4096 of them is 10-60 GB. Both caches here count the bytes of
their waveforms or tensors and drop the least recently used entries past ``max_bytes``.

The runner opens one track cache per run (:func:`run_tracks`, sized by ``data.track_cache_bytes``) and
closes it when the run ends: every stage of a recipe runs in one process, so the tracks stage 1
renders serve stages 2-4 and every evaluation (the tiny recipe renders each of its 400 training tracks
once, not once per stage). Outside a run (a stage built by hand, a notebook) a process-wide cache of
the same budget plays that part.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from must.data.config import DataConfig
from must.data.types import Track

V = TypeVar("V")


class ByteLRU(Generic[V]):
    """A least-recently-used map whose values together hold at most ``max_bytes`` (``size_of(value)`` each).

    A value larger than the whole budget is returned to the caller but not kept; ``max_bytes`` 0 keeps nothing.
    """

    def __init__(self, max_bytes: int, size_of: Callable[[V], int]):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes, self.size_of = int(max_bytes), size_of
        self.items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self.nbytes = 0
        """Bytes held now."""
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.items

    def get(self, key: Hashable) -> V | None:
        """The value under ``key`` (now the most recently used), or None."""
        held = self.items.get(key)
        if held is None:
            self.misses += 1
            return None
        self.hits += 1
        self.items.move_to_end(key)
        return held[0]

    def put(self, key: Hashable, value: V) -> V:
        """Keep ``value`` under ``key``, dropping the least recently used entries until the budget holds it."""
        size = int(self.size_of(value))
        if key in self.items:
            self.nbytes -= self.items.pop(key)[1]
        if size > self.max_bytes:
            return value
        self.items[key] = (value, size)
        self.nbytes += size
        self._evict()
        return value

    def resize(self, max_bytes: int) -> None:
        """A new budget (entries dropped, oldest first, until it holds)."""
        self.max_bytes = int(max_bytes)
        self._evict()

    def clear(self) -> None:
        self.items.clear()
        self.nbytes = 0

    def _evict(self) -> None:
        while self.nbytes > self.max_bytes and self.items:
            _, (_, size) = self.items.popitem(last=False)
            self.nbytes -= size
            self.evictions += 1


def track_bytes(track: Track) -> int:
    """Bytes a rendered track holds: its waveform (the labels are a few kB)."""
    audio = track.audio
    return int(getattr(audio, "nbytes", 0))


#: The fields of a data config that a synthetic track depends on (with the split and index).
RENDER_FIELDS = ("seed", "min_seconds", "max_seconds", "sample_rate", "renderer", "soundfont")


class TrackCache:
    """Rendered synthetic tracks by ``(rendering config, split, index)``, bounded by their waveforms' bytes."""

    def __init__(self, max_bytes: int):
        self.lru: ByteLRU[Track] = ByteLRU(max_bytes, track_bytes)

    def track(self, cfg: DataConfig, split: str, index: int) -> Track:
        """Track ``index`` of ``split`` under ``cfg`` (a pure function of them), rendered on its first request."""
        from must.data.datasets import synthetic_track

        key = (*(getattr(cfg, f) for f in RENDER_FIELDS), split, int(index))
        track = self.lru.get(key)
        if track is None:
            track = self.lru.put(key, synthetic_track(cfg, split, index))
        return track


_RUN: TrackCache | None = None
_PROCESS: TrackCache | None = None


def tracks_for(cfg: DataConfig) -> TrackCache:
    """The track cache to use now: the open run's (:func:`run_tracks`), else the process's, its budget
    ``cfg.track_cache_bytes``."""
    global _PROCESS
    if _RUN is not None:
        return _RUN
    if _PROCESS is None:
        _PROCESS = TrackCache(cfg.track_cache_bytes)
    elif _PROCESS.lru.max_bytes != cfg.track_cache_bytes:
        _PROCESS.lru.resize(cfg.track_cache_bytes)
    return _PROCESS


@contextmanager
def run_tracks(cfg: DataConfig) -> Iterator[TrackCache]:
    """One run's track cache (budget ``cfg.track_cache_bytes``), served by :func:`tracks_for` while open and
    freed when the run ends."""
    global _RUN
    outer, _RUN = _RUN, TrackCache(cfg.track_cache_bytes)
    try:
        yield _RUN
    finally:
        _RUN = outer


def encoding_bytes(enc: Any) -> int:
    """Bytes of the tensors of an :class:`~must.models.lalm.AudioEncoding`."""
    import torch

    return sum(v.numel() * v.element_size() for v in vars(enc).values() if isinstance(v, torch.Tensor))

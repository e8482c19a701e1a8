"""Stage-1 targets from a labelled track: transition curve, mood-change clips, source activity."""

from __future__ import annotations

import itertools
import math

import numpy as np

from must.data.synth import SOURCE_NAMES
from must.data.types import Track


def n_frames(duration: float, frame_rate: float) -> int:
    """Frames covering ``duration`` seconds at ``frame_rate`` Hz (frame i covers [i/fr, (i+1)/fr))."""
    return max(1, math.ceil(duration * frame_rate - 1e-9))


def frame_times(duration: float, frame_rate: float) -> np.ndarray:
    """Centre time (seconds) of each frame, shape (frames,)."""
    return (np.arange(n_frames(duration, frame_rate)) + 0.5) / frame_rate


def transition_curve(track: Track, frame_rate: float, sigma_s: float = 1.0) -> np.ndarray:
    """Transition probability per frame, shape (frames,), float32 in [0, 1]: a Gaussian peak of width
    ``sigma_s`` seconds at every boundary (max over boundaries), 0 far from them."""
    t = frame_times(track.duration, frame_rate)
    curve = np.zeros_like(t)
    for tr in track.transitions:
        curve = np.maximum(curve, np.exp(-0.5 * ((t - tr.time) / sigma_s) ** 2))
    return curve.astype(np.float32)


def arousal_at(track: Track, time: float) -> float:
    """Arousal of the segment holding ``time`` (seconds)."""
    for seg in track.arousal:
        if seg.start <= time < seg.end:
            return seg.value
    return track.arousal[-1].value if track.arousal else 0.0


def mood_change_clips(
    track: Track, window_s: float = 8.0, negatives: bool = False
) -> list[tuple[float, float, float]]:
    """Clips across each boundary and their arousal change: ``(start_s, end_s, after - before)``.

    A clip is ``window_s`` long, centred on the boundary and shifted to stay inside the track.
    ``negatives=True`` adds one clip inside each long enough section, with change 0.
    """
    clips = []
    half = window_s / 2
    for tr in track.transitions:
        start = min(max(tr.time - half, 0.0), max(track.duration - window_s, 0.0))
        delta = arousal_at(track, tr.time + 1e-6) - arousal_at(track, tr.time - 1e-6)
        clips.append((start, min(start + window_s, track.duration), float(delta)))
    if negatives:
        bounds = [0.0] + [t.time for t in track.transitions] + [track.duration]
        for a, b in itertools.pairwise(bounds):
            if b - a >= window_s + 2:
                mid = (a + b) / 2
                clips.append((mid - half, mid + half, 0.0))
        clips.sort()
    return clips


def source_activity(track: Track, frame_rate: float) -> np.ndarray:
    """1 where a source plays, per frame: shape (frames, len(SOURCE_NAMES)), float32.

    A frame counts as active when its centre lies inside one of the source's (onset, offset) runs.
    """
    t = frame_times(track.duration, frame_rate)
    out = np.zeros((len(t), len(SOURCE_NAMES)), dtype=np.float32)
    for j, name in enumerate(SOURCE_NAMES):
        for onset, offset in track.sources.get(name, []):
            out[(t >= onset) & (t < offset), j] = 1.0
    return out

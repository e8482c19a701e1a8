"""Audio-token selection (the paper's "dynamic sampling"): choose which encoder frames become audio tokens.

Not to be confused with :mod:`must.rl.decoding`, which decodes the language model's answers.

A per-track budget of ``K`` tokens (``tokens_per_second`` x duration, clamped to [min_tokens, max_tokens])
is split into a uniform floor (``uniform_floor`` x K frames evenly spaced, so the whole track is always
seen) and a dynamic part placed where the transition probability is high: deterministically at the
quantiles of the probability mass (evaluation), or by Gumbel top-k sampling without replacement
(training). ``uniform`` mode keeps K evenly spaced frames (the paper's ablation).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from must.models.config import SamplingConfig
from must.models.encoder import EncoderFrames


def token_budget(duration: float, cfg: SamplingConfig) -> int:
    """Tokens for a track of ``duration`` seconds: ceil(tokens_per_second x duration) in [min, max]."""
    return int(min(cfg.max_tokens, max(cfg.min_tokens, math.ceil(cfg.tokens_per_second * duration))))


def uniform_indices(n_frames: int, k: int) -> np.ndarray:
    """``k`` evenly spaced frame indices in ``[0, n_frames)``, each at the centre of its stretch."""
    return np.floor((np.arange(k) + 0.5) * n_frames / k).astype(np.int64)


def select_frames(
    probs: np.ndarray,
    budget: int,
    floor: float,
    mode: str = "dynamic",
    stochastic: bool = False,
    generator: np.random.Generator | None = None,
) -> np.ndarray:
    """Sorted indices of exactly ``min(budget, len(probs))`` distinct frames.

    ``probs``: (F,) transition probabilities in [0, 1] of the real frames of one track.
    """
    n = len(probs)
    k = min(budget, n)
    if mode == "uniform" or k == n:
        return uniform_indices(n, k)
    n_floor = int(round(floor * k))
    taken = np.zeros(n, dtype=bool)
    if n_floor:
        taken[uniform_indices(n, n_floor)] = True
    m = k - int(taken.sum())
    weights = np.asarray(probs, dtype=np.float64).clip(1e-6, None)
    if stochastic:
        rng = generator if generator is not None else np.random.default_rng()
        keys = np.log(weights) + rng.gumbel(size=n)  # Gumbel top-k = sampling without replacement
        keys[taken] = -np.inf
        taken[np.argsort(-keys, kind="stable")[:m]] = True
    else:
        # Place the m tokens at the quantiles of the probability mass: density follows the curve and
        # several peaks all get tokens (top-k would pile every token on the highest peak).
        cdf = np.cumsum(weights)
        targets = np.searchsorted(cdf, (np.arange(m) + 0.5) / m * cdf[-1])
        for t in np.minimum(targets, n - 1):
            free = np.flatnonzero(~taken)
            taken[free[np.argmin(np.abs(free - t))]] = True  # nearest free frame on a collision
    return np.flatnonzero(taken)


def pool_cells(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Mean of the frames nearest to each kept frame (its Voronoi cell along time).

    ``features``: (F, D) real frames of one track; ``idx``: (K,) sorted kept indices -> (K, D).
    Every frame belongs to exactly one cell, so tokens summarise the whole track.
    """
    n = features.shape[0]
    bounds = torch.cat([idx.new_zeros(1), (idx[:-1] + idx[1:]) // 2 + 1, idx.new_full((1,), n)])
    csum = torch.cat([features.new_zeros(1, features.shape[1]), features.cumsum(0)])
    counts = (bounds[1:] - bounds[:-1]).clamp_min(1).unsqueeze(1)
    return (csum[bounds[1:]] - csum[bounds[:-1]]) / counts


def frame_probs(frames: EncoderFrames) -> torch.Tensor:
    """(B, F) transition probabilities, 0 on padding frames."""
    return torch.sigmoid(frames.transition_logits.float()).masked_fill(~frames.mask, 0.0)


def sample_tokens(
    frames: EncoderFrames, cfg: SamplingConfig, stochastic: bool, generator: np.random.Generator | None = None
):
    """Audio tokens of a batch of tracks: features (B, T, D), times (B, T) s, mask (B, T), covered seconds.

    ``covered`` is what the kept tokens stand for: the span of the frames, shrunk when frames are
    missing inside it (a lost window), so the caller's guard can fail loudly.
    """
    probs = frame_probs(frames).detach().cpu().numpy()
    half = 0.5 / frames.frame_rate
    feats, times, covered = [], [], []
    for i in range(frames.features.shape[0]):
        n = int(frames.mask[i].sum())
        budget = token_budget(float(frames.durations[i]), cfg)
        idx = select_frames(probs[i, :n], budget, cfg.uniform_floor, cfg.mode, stochastic, generator)
        idx_t = torch.from_numpy(idx).to(frames.features.device)
        f = frames.features[i, :n]
        feats.append(pool_cells(f, idx_t) if cfg.pool == "cell" else f[idx_t])
        times.append(frames.times[i, idx_t])
        start = max(0.0, float(frames.times[i, 0]) - half)
        end = min(float(frames.durations[i]), float(frames.times[i, n - 1]) + half)
        covered.append(min(end - start, n / frames.frame_rate))
    t_max = max(len(f) for f in feats)
    b, d = len(feats), frames.features.shape[-1]
    out_f = frames.features.new_zeros(b, t_max, d)
    out_t = frames.times.new_zeros(b, t_max)
    mask = torch.zeros(b, t_max, dtype=torch.bool, device=out_f.device)
    for i, (f, t) in enumerate(zip(feats, times)):
        out_f[i, : len(f)], out_t[i, : len(t)], mask[i, : len(f)] = f, t, True
    return out_f, out_t, mask, covered

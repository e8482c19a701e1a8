"""must.models.audio_tokens (dynamic sampling): exact budget, density follows the transition curve, uniform floor, cell pooling."""

import numpy as np
import torch

from must.models.audio_tokens import pool_cells, select_frames, token_budget, uniform_indices
from must.models.config import SamplingConfig


def _curve(n=1000):
    p = np.full(n, 0.02)
    p[600:700] = 0.9  # a likely transition between frames 600 and 700
    return p


def test_budget_from_tokens_per_second_clamped():
    cfg = SamplingConfig(tokens_per_second=2.5, max_tokens=100, min_tokens=8)
    assert token_budget(10.0, cfg) == 25
    assert token_budget(1.0, cfg) == 8
    assert token_budget(300.0, cfg) == 100


def test_uniform_indices_hand_computed():
    assert uniform_indices(10, 5).tolist() == [1, 3, 5, 7, 9]
    assert uniform_indices(4, 4).tolist() == [0, 1, 2, 3]


def test_dynamic_keeps_exactly_the_budget_and_more_tokens_where_curve_is_high():
    p = _curve()
    for stochastic in (False, True):
        idx = select_frames(p, 100, floor=0.5, stochastic=stochastic, generator=np.random.default_rng(0))
        assert len(idx) == 100 and len(set(idx.tolist())) == 100
        assert np.all(np.diff(idx) > 0)
        in_peak = ((idx >= 600) & (idx < 700)).sum()
        # uniform would put 10 of 100 tokens in this tenth of the track
        assert in_peak >= 40, in_peak
        # the floor still spreads tokens over the whole track
        assert idx.min() < 20 and idx.max() > 980


def test_deterministic_in_eval_stochastic_in_training():
    p = _curve()
    a = select_frames(p, 100, 0.5, stochastic=False)
    b = select_frames(p, 100, 0.5, stochastic=False)
    assert np.array_equal(a, b)
    c = select_frames(p, 100, 0.5, stochastic=True, generator=np.random.default_rng(1))
    d = select_frames(p, 100, 0.5, stochastic=True, generator=np.random.default_rng(2))
    assert not np.array_equal(c, d)


def test_deterministic_dynamic_serves_every_peak():
    p = np.full(1000, 0.01)
    p[100:110] = 0.9
    p[800:810] = 0.9
    idx = select_frames(p, 40, floor=0.0)
    assert ((idx >= 90) & (idx < 120)).sum() >= 10
    assert ((idx >= 790) & (idx < 820)).sum() >= 10


def test_uniform_mode_ignores_the_curve():
    idx = select_frames(_curve(), 100, floor=0.5, mode="uniform")
    assert np.array_equal(idx, uniform_indices(1000, 100))


def test_budget_larger_than_frames_keeps_all_frames():
    assert select_frames(np.ones(7) * 0.5, 20, 0.5).tolist() == list(range(7))


def test_pool_cells_is_the_mean_of_the_nearest_frames():
    f = torch.arange(10, dtype=torch.float32)[:, None]
    out = pool_cells(f, torch.tensor([1, 5, 8]))
    # cells: [0..3], [4..6], [7..9]
    assert out.squeeze(1).tolist() == [1.5, 5.0, 8.0]

"""Stage 1's validation reads boundaries off the transition curve with the recipe's minimum peak gap."""

from types import SimpleNamespace

import pytest
import torch

from must.data.config import DataConfig
from must.errors import ConfigError
from must.models.lalm import MusicLALM
from must.stages.encoder_adapt import EncoderAdaptation
from tests._tiny import TINY_MODEL

DATA = DataConfig(min_seconds=8, max_seconds=12, train_tracks=1, val_tracks=1, test_tracks=1)


def _boundary_f1(gap: float) -> float:
    """F1 at ±3 s of a 10 s curve with peaks at 3.0 s (p 0.9) and 6.0 s (p 0.7); one true boundary at 3.2 s."""
    stage = EncoderAdaptation(MusicLALM.from_config(TINY_MODEL), DATA,
                              EncoderAdaptation.Options(peak_threshold=0.5, peak_min_gap_seconds=gap))
    times = torch.arange(100) * 0.1
    logits = torch.full((1, 100), -5.0)
    logits[0, 30], logits[0, 60] = 2.2, 0.85  # sigmoid: 0.90, 0.70
    frames = SimpleNamespace(transition_logits=logits, times=times[None], source_logits=None)
    raw = {"frames": frames, "mask": torch.ones(1, 100, dtype=torch.bool), "mood": (None, None), "activity": None}
    stage.losses = lambda batch: ({"transition": torch.tensor(0.0)}, raw)
    stage.log = lambda *a, **k: None
    stage.on_validation_epoch_start()
    stage.validation_step({"waveform": [None], "boundaries": [[3.2]], "transition": [torch.zeros(100)]}, 0)
    v = stage._val
    return 2 * v["tp3"] / (v["pred"] + v["true"])


def test_a_second_peak_within_the_gap_is_dropped():
    assert _boundary_f1(2.0) == pytest.approx(2 / 3)   # both peaks kept: 1 of 2 right
    assert _boundary_f1(4.0) == pytest.approx(1.0)     # 6.0 s is within 4 s of the higher 3.0 s peak


def test_a_negative_gap_is_named():
    with pytest.raises(ConfigError, match="peak_min_gap_seconds"):
        EncoderAdaptation(MusicLALM.from_config(TINY_MODEL), DATA, EncoderAdaptation.Options(peak_min_gap_seconds=-1))

"""Stage 1's source crops: many short crops of many tracks a step for the source-activity loss."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from must.data.config import DataConfig
from must.data.datasets import cached_track
from must.data.targets import source_activity
from must.errors import ConfigError
from must.models.lalm import MusicLALM
from must.stages.encoder_adapt import EncoderAdaptation
from tests._tiny import TINY_MODEL

MODEL = {**TINY_MODEL, "encoder": {**TINY_MODEL["encoder"], "num_sources": 8, "frame_stats": True}}
DATA = DataConfig(min_seconds=8, max_seconds=12, train_tracks=3, val_tracks=1, test_tracks=1)


def _stage(crops=6, model=MODEL):
    torch.manual_seed(0)
    return EncoderAdaptation(MusicLALM.from_config(model), DATA,
                             EncoderAdaptation.Options(source_crops=crops, source_crop_seconds=2.0))


def test_crop_loss_is_the_source_bce_of_its_crops_and_repeats_at_the_same_step(monkeypatch):
    stage = _stage()
    seen = []
    real = stage.model.encoder.encode_frames

    def spy(waves, sr):
        seen.append([len(w) for w in waves])
        return real(waves, sr)

    monkeypatch.setattr(stage.model.encoder, "encode_frames", spy)
    a, b, c = stage.crop_source_loss(3), stage.crop_source_loss(3), stage.crop_source_loss(4)
    assert seen[0] == [32000] * 6  # six crops of 2 s at 16 kHz
    assert torch.equal(a, b) and not torch.equal(a, c)  # drawn from (seed, step): a resume redraws them



def test_one_crop_by_hand():
    stage = _stage(crops=1)
    rng = np.random.default_rng([0, 7])  # the stage's seed (0 unless the runner sets it) and the step
    track = cached_track(DATA, "train", int(rng.integers(0, DATA.train_tracks, 1)[0]))
    activity = source_activity(track, 10.0)
    f0 = int(rng.integers(0, len(activity) - 20 + 1))
    frames = stage.model.encoder.encode_frames([track.audio[f0 * 1600:(f0 + 20) * 1600]], track.sample_rate)
    want = F.binary_cross_entropy_with_logits(frames.source_logits[0], torch.from_numpy(activity[f0:f0 + 20]))
    assert torch.allclose(stage.crop_source_loss(7), want)


def test_crop_loss_trains_the_source_head_and_the_shortcut():
    stage = _stage()
    stage.crop_source_loss(0).backward()
    enc = stage.model.encoder
    assert enc.source_head.weight.grad.abs().sum() > 0
    assert enc.backbone.stats[1].weight.grad.abs().sum() > 0
    assert enc.transition_head[0].weight.grad is None  # the crops feed the source loss only


def test_crop_loss_is_weighted_like_the_source_loss():
    stage = _stage()
    stage.options.source_weight = 0.5
    parts = {"source": torch.tensor(1.0), "source_crops": torch.tensor(2.0)}
    assert float(stage._total(parts)) == pytest.approx(0.5 * 1.0 + 0.5 * 2.0)


def test_source_crops_without_a_source_head_or_with_bad_values_are_named():
    no_head = {**MODEL, "encoder": {**MODEL["encoder"], "num_sources": 0}}
    with pytest.raises(ConfigError, match="model.encoder.num_sources"):
        _stage(model=no_head)
    with pytest.raises(ConfigError, match="source_crops"):
        _stage(crops=-1)

"""model.encoder.head_features: the heads' probabilities reach the projector beside the backbone's features."""

import math

import pytest
import torch

from must.errors import MustError
from must.models.encoder import EncoderFrames
from must.models.lalm import MusicLALM, with_head_features
from tests._tiny import TINY_MODEL

HEADS = {**TINY_MODEL, "encoder": {**TINY_MODEL["encoder"], "num_sources": 3, "head_features": True}}


def test_the_heads_probabilities_are_appended_to_each_frame():
    frames = EncoderFrames(features=torch.ones(1, 2, 4), times=torch.tensor([[0.05, 0.15]]),
                           mask=torch.ones(1, 2, dtype=torch.bool),
                           transition_logits=torch.tensor([[math.log(3.0), 0.0]]),
                           source_logits=torch.tensor([[[0.0, math.log(4.0), -math.log(4.0)]] * 2]),
                           durations=torch.tensor([0.2]), frame_rate=10.0, windows=1, encoder_calls=1)
    out = with_head_features(frames).features
    assert out.shape == (1, 2, 4 + 3 + 1)
    torch.testing.assert_close(out[0, 0], torch.tensor([1, 1, 1, 1, 0.5, 0.8, 0.2, 0.75]))
    torch.testing.assert_close(out[0, 1, -1], torch.tensor(0.5))
    assert frames.features.shape == (1, 2, 4)  # the encoder's own frames (stage 1's heads) are unchanged


def test_the_projector_reads_them_and_a_saved_model_answers_the_same(tmp_path):
    torch.manual_seed(0)
    model = MusicLALM.from_config(HEADS).eval()
    assert model.projector[0].in_features == 32 + 3 + 1
    wave = torch.randn(16000 * 5) * 0.1
    enc = model.encode_audio([wave], 16000, stochastic=False)
    assert enc.features.shape[-1] == 36
    # The appended columns are probabilities of the encoder's own heads at the sampled tokens' frames.
    assert ((enc.features[..., 32:] > 0) & (enc.features[..., 32:] < 1)).all()
    before = model(enc, ["When does the bass enter?"], ["0:02"]).logits
    model.save_pretrained(tmp_path / "m")
    again = MusicLALM.from_pretrained(tmp_path / "m").eval()
    after = again(again.encode_audio([wave], 16000, stochastic=False), ["When does the bass enter?"], ["0:02"]).logits
    torch.testing.assert_close(after, before)


def test_without_the_source_head_it_is_a_named_error():
    bad = {**TINY_MODEL, "encoder": {**TINY_MODEL["encoder"], "head_features": True}}
    with pytest.raises(MustError, match="model.encoder.head_features.*num_sources"):
        MusicLALM.from_config(bad)

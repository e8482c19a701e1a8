"""The MusT encoder: windows with true absolute times, the whole track seen, heads' shapes, HF backbones."""


import numpy as np
import pytest
import torch

from must.errors import MustError
from must.models.config import EncoderConfig, LoraConfig, ModelConfig
from must.models.encoder import MusTEncoder, plan_windows
from must.models.lalm import MusicLALM, _guard_coverage
from tests._fixtures import shared_fixture

SR = 16000


def _noise(seconds, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MusicLALM.from_config(ModelConfig()).eval()


def test_plan_windows_hand_computed():
    assert plan_windows(20.0, 30.0, 2.0) == [(0.0, 20.0, 0.0, float("inf"))]
    plan = plan_windows(70.0, 30.0, 2.0)
    assert [(s, e) for s, e, _, _ in plan] == [(0.0, 30.0), (28.0, 58.0), (56.0, 70.0)]
    # each frame comes from the window where it is central: cuts at the middle of each overlap
    assert [(a, b) for _, _, a, b in plan] == [(0.0, 29.0), (29.0, 57.0), (57.0, float("inf"))]


def test_five_minute_track_tokens_span_the_whole_track(model):
    with torch.no_grad():
        enc = model.encode_audio([_noise(300.0)], SR)
    times = enc.times[0][enc.mask[0]]
    assert len(times) == 750  # 2.5 tokens per second, the default budget
    assert times.min() < 1.0 and times.max() > 299.0
    assert torch.all(times[1:] > times[:-1])
    assert enc.covered_seconds[0].item() == pytest.approx(300.0, abs=0.01)
    # frames are stitched from 11 windows without gaps or repeats: exactly 10 frames per second
    ft = enc.frame_times[0][enc.frame_mask[0]]
    assert len(ft) == 3000
    assert torch.allclose(ft, (torch.arange(3000) + 0.5) / 10.0, atol=1e-3)


def test_windows_are_batched_into_one_backbone_call(model):
    with torch.no_grad():
        frames = model.encoder.encode_frames([_noise(70.0), _noise(5.0, 1)], SR)
    assert frames.windows == 4 and frames.encoder_calls == 1
    assert frames.mask.sum(1).tolist() == [700, 50]
    assert frames.transition_logits.shape == (2, 700)


def test_windowed_frames_match_a_single_window_inside_it(model):
    """A frame deep inside window 0 has the same features whether or not the track is longer."""
    wave = _noise(40.0)
    with torch.no_grad():
        long = model.encoder.encode_frames([wave], SR)
        short = model.encoder.encode_frames([wave[: 30 * SR]], SR)
    assert torch.allclose(long.features[0, :200], short.features[0, :200], atol=1e-5)


def test_coverage_guard_fails_loudly():
    with pytest.raises(MustError, match="cover only 30.00 s of a 300.00 s track"):
        _guard_coverage([30.0], [300.0], 10.0)


def test_real_fixture_mp3_goes_through_at_its_real_length(model):
    from must.models.audio import load_audio

    wave = load_audio(shared_fixture("mustbench_demo", "1023323.mp3"), SR)
    assert len(wave) / SR == pytest.approx(97.43, abs=0.01)
    with torch.no_grad():
        enc = model.encode_audio([wave], SR)
    times = enc.times[0][enc.mask[0]]
    assert len(times) == 244  # ceil(2.5 * 97.43)
    assert times.max() > 96.0
    assert enc.covered_seconds[0].item() == pytest.approx(97.43, abs=0.1)


def test_stage1_forward_heads_and_frame_times():
    enc = MusTEncoder(EncoderConfig(num_sources=6))
    out = enc(torch.randn(3, 10 * SR) * 0.1, torch.tensor([10 * SR, 8 * SR, 5 * SR]))
    assert out["features"].shape == (3, 100, 128)
    assert out["transition_logits"].shape == (3, 100)
    assert out["source_logits"].shape == (3, 100, 6)
    assert out["mask"].sum(1).tolist() == [100, 80, 50]
    assert out["times"][0, :2].tolist() == pytest.approx([0.05, 0.15])
    assert enc.frame_rate == 10.0
    mood = enc.mood_change(out["features"], out["mask"])
    assert mood.shape == (3,)
    mood.sum().backward()
    assert enc.mood_head.weight.grad.abs().sum() > 0


def test_mood_at_uses_the_window_around_a_time():
    torch.manual_seed(0)
    enc = MusTEncoder(EncoderConfig(mood_window_seconds=4.0)).eval()
    with torch.no_grad():
        frames = enc.encode_frames([_noise(20.0)], SR)
        a = enc.mood_at(frames, torch.tensor([10.0]))
        feats = frames.features[:, 80:120]  # frames whose centres lie within 2 s of 10 s
        b = enc.mood_change(feats)
    assert torch.allclose(a, b, atol=1e-6)


HF_BACKBONES = {
    "hubert": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=[32] * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    ),
    "whisper": dict(
        d_model=32,
        encoder_layers=1,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=1500,
    ),
}


@pytest.mark.parametrize("kind", sorted(HF_BACKBONES))
def test_hf_backbone_with_lora_covers_a_long_track(kind):
    cfg = EncoderConfig(
        backbone=kind,
        hf_config=HF_BACKBONES[kind],
        frame_pool=5,
        lora=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    enc = MusTEncoder(cfg)
    assert enc.frame_rate == 10.0
    with torch.no_grad():
        frames = enc.encode_frames([_noise(35.0)], SR)
    assert frames.windows == 2
    assert frames.mask.sum().item() == 350
    assert frames.times[0, 349].item() == pytest.approx(34.95, abs=1e-3)


def test_unknown_backbone_and_missing_folder_are_named():
    with pytest.raises(MustError, match="unknown encoder backbone 'nosuchmodel'"):
        MusTEncoder(EncoderConfig(backbone="nosuchmodel"))
    with pytest.raises(MustError, match="/no/such/encoder"):
        MusTEncoder(EncoderConfig(backbone="/no/such/encoder"))


def test_hf_backbone_from_a_local_folder_round_trips_through_the_model_folder(tmp_path):
    from transformers import AutoConfig, AutoModel

    AutoModel.from_config(AutoConfig.for_model("hubert", **HF_BACKBONES["hubert"])).save_pretrained(
        tmp_path / "hub"
    )
    cfg = ModelConfig()
    cfg.encoder.backbone, cfg.encoder.frame_pool = str(tmp_path / "hub"), 5
    cfg.encoder.lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    m = MusicLALM.from_config(cfg).eval()
    wave = [_noise(6.0)]
    with torch.no_grad():
        enc = m.encode_audio(wave, SR)
        a = m(enc, ["When?"], ["0:01"]).logits
    m.save_pretrained(tmp_path / "saved")
    # the HF backbone is saved as its own loadable folder
    saved = AutoConfig.from_pretrained(tmp_path / "saved" / "encoder_backbone")
    assert saved.model_type == "hubert" and saved.hidden_size == HF_BACKBONES["hubert"]["hidden_size"]
    m2 = MusicLALM.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        enc2 = m2.encode_audio(wave, SR)
        assert torch.equal(enc.features, enc2.features)
        assert torch.equal(a, m2(enc2, ["When?"], ["0:01"]).logits)


def test_a_lost_window_trips_the_guard(model, monkeypatch):
    orig = model.encoder.encode_frames

    def drop_middle(*a, **k):
        fr = orig(*a, **k)
        fr.mask[:, 300:600] = False  # frames 30-60 s vanish, as if a window were lost
        keep = fr.mask[0]
        fr.features, fr.times = fr.features[:, keep], fr.times[:, keep]
        fr.transition_logits, fr.mask = fr.transition_logits[:, keep], fr.mask[:, keep]
        return fr

    monkeypatch.setattr(model.encoder, "encode_frames", drop_middle)
    with pytest.raises(MustError, match="cover only 60.00 s of a 90.00 s track"):
        model.encode_audio([_noise(90.0)], SR)


def test_mel_statistics_hand_computed():
    from must.models.encoder import mel_statistics

    # one mel bin, 30 mel frames = 3 encoder frames of 10: values 0..9, then all 4, then all 10
    mel = torch.cat([torch.arange(10.0), torch.full((10,), 4.0), torch.full((10,), 10.0)])[None, None]
    out = mel_statistics(mel, stride=10, context=1, contrast=1)[0]  # (3 frames, 5 features)
    mean = torch.tensor([4.5, 4.0, 10.0])
    assert torch.allclose(out[:, 0], mean)
    assert torch.allclose(out[:, 1], torch.tensor([float(np.std(np.arange(10.0))), 0.0, 0.0]), atol=1e-5)
    assert torch.allclose(out[:, 2], torch.tensor([(4.5 + 4) / 2, (4.5 + 4 + 10) / 3, (4 + 10) / 2]))
    # after minus before, one frame each side, edges repeated: (4 - 4.5), (10 - 4.5), (10 - 4)
    change = torch.tensor([-0.5, 5.5, 6.0])
    assert torch.allclose(out[:, 3], change) and torch.allclose(out[:, 4], change.abs())


def test_frame_stats_shortcut_reaches_the_heads_and_trains():
    torch.manual_seed(0)
    enc = MusTEncoder(EncoderConfig(frame_stats=True, layers=0, num_sources=4))
    waves = torch.from_numpy(np.stack([_noise(4.0, 0), _noise(4.0, 1) * 3]))
    out = enc(waves)
    assert out["features"].shape == (2, 40, 128)
    out["source_logits"].sum().backward()
    grad = enc.backbone.stats[1].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    # the shortcut is what tells a loud track from a quiet one here: without it the features differ less
    with torch.no_grad():
        enc.backbone.stats[-1].weight.zero_()
        enc.backbone.stats[-1].bias.zero_()
        plain = enc(waves)["features"]
    assert not torch.allclose(plain, out["features"].detach())


def test_frame_stats_with_an_hf_backbone_is_refused_by_name():
    with pytest.raises(MustError, match="frame_stats needs the built-in backbone"):
        MusTEncoder(EncoderConfig(backbone="hubert", frame_stats=True))

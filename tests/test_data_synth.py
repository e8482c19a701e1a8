"""Synthetic music: labels agree with the audio, determinism, stage-1 targets, captions."""

import re

import numpy as np
import pytest

from must.data.config import DataConfig
from must.data.synth import (
    SOURCE_NAMES,
    Section,
    _make_template,
    caption_text,
    change_keys,
    generate_track,
    render_sources,
    section_arousal,
)
from must.data.targets import mood_change_clips, source_activity, transition_curve

CFG = DataConfig(min_seconds=25.0, max_seconds=45.0)


@pytest.fixture(scope="module")
def tracks():
    return [generate_track(seed, CFG) for seed in range(6)]


def test_same_seed_same_track_different_seed_different():
    a, b, c = generate_track(3, CFG), generate_track(3, CFG), generate_track(4, CFG)
    assert np.array_equal(a.audio, b.audio)
    assert a.sources == b.sources and a.transitions == b.transitions and a.captions == b.captions
    assert a.duration != c.duration or not np.array_equal(a.audio[:1000], c.audio[:1000])
    assert caption_text(a) != caption_text(c)


def test_audio_format(tracks):
    for t in tracks:
        assert t.audio.dtype == np.float32 and t.audio.ndim == 1
        assert len(t.audio) == round(t.duration * 16000)
        assert CFG.min_seconds <= t.duration <= CFG.max_seconds
        assert np.isfinite(t.audio).all() and 0.1 < np.abs(t.audio).max() <= 0.95 + 1e-6


def test_source_alone_is_silent_outside_its_labels(tracks):
    """Render each source alone: exactly silent before its onset, between its runs and after its offset,
    and sounding right after its onset."""
    sr = 16000
    checked = 0
    for t in tracks:
        for src, runs in t.sources.items():
            audio = render_sources(t.meta["seed"], CFG, (src,))
            active = np.zeros(len(audio), bool)
            for onset, offset in runs:
                a, b = round(onset * sr), round(offset * sr)
                active[a:b] = True
                assert np.abs(audio[a : a + int(0.05 * sr)]).max() > 1e-3, (src, onset)
            assert np.abs(audio[~active]).max(initial=0.0) == 0.0, src
            checked += 1
    assert checked >= 10


def test_energy_follows_a_loudness_transition():
    """Find loudness-only-ish transitions (no density/tempo change): a source playing on both sides
    gets louder or quieter by about the labelled gain ratio."""
    sr, found = 16000, 0
    for seed in range(60):
        t = generate_track(seed, CFG, render_audio=False)
        for tr in t.transitions:
            ch = tr.change
            if "loudness" not in ch or {"density", "tempo", "brightness"} & set(ch):
                continue
            both = [
                s
                for s, runs in t.sources.items()
                if any(a < tr.time - 3.5 and b > tr.time + 3.5 for a, b in runs)
            ]
            if not both:
                continue
            audio = render_sources(seed, CFG, (both[0],))
            i = round(tr.time * sr)
            before = np.sqrt(np.mean(audio[i - 3 * sr : i - sr // 4] ** 2))
            after = np.sqrt(np.mean(audio[i + sr // 4 : i + 3 * sr] ** 2))
            expected = ch["loudness"][1] / ch["loudness"][0]
            assert 0.6 < (after / before) / expected < 1.6, (seed, tr.time, after / before, expected)
            found += 1
        if found >= 3:
            break
    assert found >= 3


def test_timbres_are_distinct():
    """Every pair of sources differs in long-term spectrum (cosine of 32-band log spectra < 0.98)."""
    bands = []
    for src in SOURCE_NAMES:
        x = _make_template(src, 60 if src not in ("bass",) else 40, 0.6, 0, 16000)[:4000]
        spec = np.abs(np.fft.rfft(x, 8192)) ** 2
        b = np.log(np.array([s.sum() for s in np.array_split(spec, 32)]) + 1e-9)
        bands.append((b - b.mean()) / np.linalg.norm(b - b.mean()))
    sims = np.array(bands) @ np.array(bands).T
    off = sims[~np.eye(len(SOURCE_NAMES), dtype=bool)]
    assert off.max() < 0.98, off.max()


def test_arousal_follows_loudness_density_tempo():
    base = Section(0, 10, 100, 0, "major", 0.4, 0.5, 1, ("bass", "pad"))
    louder = Section(0, 10, 100, 0, "major", 0.9, 0.5, 1, ("bass", "pad"))
    busier = Section(0, 10, 100, 0, "major", 0.4, 0.5, 2, ("bass", "pad"))
    faster = Section(0, 10, 160, 0, "major", 0.4, 0.5, 1, ("bass", "pad"))
    a = section_arousal(base)
    assert section_arousal(louder) > a and section_arousal(busier) > a and section_arousal(faster) > a


def test_transitions_have_varied_descriptions_and_changes(tracks):
    descriptions = [tr.description for t in tracks for tr in t.transitions]
    assert len(descriptions) >= 8
    assert len(set(descriptions)) == len(descriptions)
    assert all(change_keys(tr.change) for t in tracks for tr in t.transitions)
    kinds = {tr.kind for t in tracks for tr in t.transitions}
    assert len(kinds) >= 3


def test_caption_text_format(tracks):
    t = tracks[0]
    text = caption_text(t)
    assert text.startswith("[0:00-")
    stamps = re.findall(r"\[(\d+:\d\d)(?:-(\d+:\d\d))?\]", text)
    segments = [s for s in stamps if s[1]]
    boundaries = [s[0] for s in stamps if not s[1]]
    assert len(segments) == len(t.transitions) + 1 and len(boundaries) == len(t.transitions)
    # each boundary stamp equals the next segment's start
    assert boundaries == [s[0] for s in segments[1:]]


def test_transition_curve_peaks_at_boundaries(tracks):
    t = tracks[1]
    fr = 4.0
    curve = transition_curve(t, fr, sigma_s=1.0)
    assert curve.shape == (int(np.ceil(t.duration * fr)),) and curve.dtype == np.float32
    for tr in t.transitions:
        assert curve[int(tr.time * fr)] > 0.85
    far = np.ones(len(curve), bool)
    for tr in t.transitions:
        far[max(0, int((tr.time - 5) * fr)) : int((tr.time + 5) * fr)] = False
    assert curve[far].max(initial=0) < 1e-3


def test_source_activity_and_mood_clips(tracks):
    t = tracks[2]
    act = source_activity(t, 2.0)
    assert act.shape == (int(np.ceil(t.duration * 2)), len(SOURCE_NAMES))
    for j, name in enumerate(SOURCE_NAMES):
        runs = t.sources.get(name, [])
        covered = sum(b - a for a, b in runs)
        assert abs(act[:, j].sum() / 2.0 - covered) <= 0.5 * (len(runs) * 2 + 1)
    clips = mood_change_clips(t, 8.0)
    assert len(clips) == len(t.transitions)
    segs = {(round(s.start, 3)): s.value for s in t.arousal}
    for (start, end, delta), tr in zip(clips, t.transitions):
        assert start <= tr.time <= end and end - start == pytest.approx(8.0)
        if round(tr.time, 3) in segs:  # arousal changed here
            before = next(s.value for s in t.arousal if s.end == pytest.approx(tr.time))
            assert delta == pytest.approx(segs[round(tr.time, 3)] - before)
        else:
            assert delta == 0.0


def test_optional_gm_renderer_keeps_the_labels():
    pytest.importorskip("tinysoundfont")
    pytest.importorskip("pretty_midi")
    cfg = DataConfig(min_seconds=12, max_seconds=15, renderer="gm")
    a, b = generate_track(4, cfg), generate_track(4, cfg)
    plain = generate_track(4, DataConfig(min_seconds=12, max_seconds=15))
    assert np.array_equal(a.audio, b.audio) and not np.array_equal(a.audio, plain.audio)
    assert a.sources == plain.sources and a.transitions == plain.transitions
    assert a.audio.dtype == np.float32 and len(a.audio) == len(plain.audio)
    assert 0.05 < np.abs(a.audio).max() <= 0.95 + 1e-6


def test_gm_renderer_missing_soundfont_is_a_named_error(tmp_path):
    pytest.importorskip("tinysoundfont")
    from must.errors import MustError

    cfg = DataConfig(min_seconds=8, max_seconds=9, renderer="gm", soundfont=str(tmp_path / "none.sf2"))
    with pytest.raises(MustError, match="SoundFont not found: .*none.sf2"):
        generate_track(0, cfg)

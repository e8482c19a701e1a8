"""Optional General MIDI rendering of a synthetic arrangement through a SoundFont (an extra, never required).

Same notes, same labels, real sampled instruments: ``DataConfig(renderer="gm")``. Needs the
``tinysoundfont`` synthesiser and a GM SoundFont; by default the one ``pretty_midi`` ships
(TimGM6mb.sf2). Install both without system libraries::

    pip install --no-deps tinysoundfont   # its pyaudio dependency is only for live playback
    pip install pretty_midi

Departures from the numpy renderer: a released note rings for its SoundFont release time (up to a
few hundred ms past the labelled offset), and brightness is sent as CC74, which many SoundFonts
ignore; loudness is the channel volume (CC7) per section.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from must.errors import MustError

#: Source -> (GM program, is_drums, drum key). Drums share channel 9.
GM_PROGRAMS = {
    "kick": (0, True, 36),
    "snare": (0, True, 38),
    "hihat": (0, True, 42),
    "bass": (33, False, 0),  # electric bass (finger)
    "pad": (48, False, 0),  # string ensemble 1
    "guitar": (25, False, 0),  # acoustic guitar (steel)
    "lead": (80, False, 0),  # lead 1 (square)
    "vocal": (52, False, 0),  # choir aahs
}


def default_soundfont() -> Path:
    """The GM SoundFont shipped by ``pretty_midi``; MustError if it is not installed."""
    try:
        import pretty_midi
    except ImportError as exc:
        raise MustError(
            "GM rendering needs a SoundFont: pip install pretty_midi, or set data.soundfont"
        ) from exc
    path = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
    if not path.is_file():
        raise MustError(f"SoundFont not found: {path}")
    return path


@functools.lru_cache(maxsize=4)
def _soundfont_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def render_gm(sections, notes, duration: float, sr: int, soundfont: str | None = None) -> np.ndarray:
    """Render ``notes`` (as made by the synthetic arranger) through a GM SoundFont: mono float32 (samples,)."""
    try:
        import tinysoundfont
    except ImportError as exc:
        raise MustError(
            "data.renderer=gm needs tinysoundfont: pip install --no-deps tinysoundfont (or use renderer=numpy)"
        ) from exc
    path = str(soundfont or default_soundfont())
    if not Path(path).is_file():
        raise MustError(f"SoundFont not found: {path}")
    synth = tinysoundfont.Synth(samplerate=sr)
    sfid = synth.sfload(_soundfont_bytes(path))
    channels = {}
    melodic = [s for s in GM_PROGRAMS if not GM_PROGRAMS[s][1]]
    for i, src in enumerate(melodic):
        channels[src] = i
        synth.program_select(i, sfid, 0, GM_PROGRAMS[src][0])
    synth.program_select(9, sfid, 0, 0, True)
    for src in ("kick", "snare", "hihat"):
        channels[src] = 9
    events = []  # (sample, order, kind, channel, key, value); offs sort before ons at the same sample
    for sec in sections:
        a = round(sec.start * sr)
        for ch in sorted(set(channels.values())):
            events.append((a, 0, "cc", ch, 7, int(np.clip(127 * sec.loudness**0.5, 1, 127))))
            events.append((a, 0, "cc", ch, 74, int(np.clip(127 * sec.brightness, 0, 127))))
    for src, src_notes in notes.items():
        _, drums, drum_key = GM_PROGRAMS[src]
        ch = channels[src]
        ends = [round(s.end * sr) for s in sections]
        starts = np.array([s.start for s in sections])
        for start, length, midi, vel, _ in src_notes:
            i = int(np.searchsorted(starts, start, side="right")) - 1
            a = round(start * sr)
            b = min(a + round((0.1 if drums else length) * sr), ends[i])
            key = drum_key if drums else int(midi)
            events.append((a, 1, "on", ch, key, int(np.clip(110 * vel, 1, 127))))
            events.append((b, -1, "off", ch, key, 0))
    events.sort(key=lambda e: (e[0], e[1]))
    n_total = round(duration * sr)
    out = np.zeros((n_total, 2), dtype=np.float32)
    pos = 0
    for sample, _, kind, ch, key, value in events:
        sample = min(sample, n_total)
        if sample > pos:
            out[pos:sample] = np.frombuffer(synth.generate(sample - pos), dtype=np.float32).reshape(-1, 2)
            pos = sample
        if kind == "cc":
            synth.control_change(ch, key, value)
        elif kind == "on":
            synth.noteon(ch, key, value)
        else:
            synth.noteoff(ch, key)
    if pos < n_total:
        out[pos:] = np.frombuffer(synth.generate(n_total - pos), dtype=np.float32).reshape(-1, 2)
    return out.mean(axis=1)

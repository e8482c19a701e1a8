"""Synthetic music with exact labels: an arrangement generator and a vectorised numpy renderer.

A track is a list of sections (each with its tempo, key, loudness, brightness, rhythmic density and
set of playing sources); a transition is the boundary between two sections and says what changed.
Notes sit on each section's beat grid and in its key. Every note is a slice of a cached per-pitch
template (wavetable oscillators, filtered noise), so rendering is a few numpy slice-adds per note and
the labels come from the very notes that were rendered: a source's onset is its first note's first
sample, its offset the last sample of its last note.

Everything is a pure function of the seed (``numpy.random.default_rng(seed)``), so a track can be
rebuilt anywhere (dataloader workers, DDP ranks) without touching disk.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from must.data.types import ArousalSegment, Caption, Track, Transition
from must.timecode import format_time

#: The synthetic sources, in a fixed order: the model's source-activity head has one output per name.
SOURCE_NAMES = ("kick", "snare", "hihat", "bass", "pad", "guitar", "lead", "vocal")

#: How a source is named in questions and descriptions.
SOURCE_LABELS = {
    "kick": "kick drum",
    "snare": "snare drum",
    "hihat": "hi-hat",
    "bass": "bass",
    "pad": "string pad",
    "guitar": "guitar",
    "lead": "lead synth",
    "vocal": "vocals",
}

#: The benchmark-style category of each source (the TSG ``category`` column).
SOURCE_CATEGORY = {
    "kick": "drums",
    "snare": "drums",
    "hihat": "drums",
    "bass": "bass",
    "pad": "strings",
    "guitar": "guitar",
    "lead": "synth",
    "vocal": "vocal",
}

NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# Chord progressions as scale degrees, one chord per bar.
PROGRESSIONS = ((0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 4, 0), (0, 3, 5, 4), (3, 4, 0, 0))
DENSITY_WORDS = ("sparse", "steady", "busy")
# Mix gain per source (templates are peak-normalised).
MIX_GAIN = {
    "kick": 0.8,
    "snare": 0.5,
    "hihat": 0.22,
    "bass": 0.5,
    "pad": 0.16,
    "guitar": 0.32,
    "lead": 0.26,
    "vocal": 0.38,
}
# Length of each source's cached note template, seconds; longer notes are cut to it.
TEMPLATE_SECONDS = {
    "kick": 0.45,
    "snare": 0.3,
    "hihat": 0.12,
    "bass": 2.0,
    "pad": 4.0,
    "guitar": 1.6,
    "lead": 1.6,
    "vocal": 2.0,
}
VOWELS = {
    "a": (800, 1150, 2900),
    "e": (450, 1800, 2600),
    "i": (300, 2300, 3000),
    "o": (450, 800, 2830),
    "u": (330, 700, 2500),
}


@dataclass
class Section:
    """One section of the arrangement; its parameters hold from ``start`` to ``end`` (seconds)."""

    start: float
    end: float
    tempo: int
    """Beats per minute."""
    key: int
    """Tonic, 0 = C."""
    mode: str
    """``major`` or ``minor``."""
    loudness: float
    """Linear gain in [0.25, 1]."""
    brightness: float
    """0 dark .. 1 bright (harmonic roll-off, noise colour)."""
    density: int
    """0 sparse, 1 steady, 2 busy (notes per beat)."""
    sources: tuple[str, ...]
    """Sources playing, in SOURCE_NAMES order."""
    progression: tuple[int, ...] = (0, 4, 5, 3)
    arousal: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def key_name(key: int, mode: str) -> str:
    """``A minor``-style name of a key."""
    return f"{NOTE_NAMES[key % 12]} {mode}"


def section_arousal(s: Section) -> float:
    """Arousal in [0, 1] from what is heard: loudness, rhythmic density, tempo and how many sources play.

    Rounded to 0.05 so that equal-energy sections tie (MTR may then have several answer intervals).
    """
    tempo = min(max((s.tempo - 70) / 100, 0.0), 1.0)
    drums = sum(x in s.sources for x in ("kick", "snare", "hihat")) / 3
    a = 0.42 * (s.loudness - 0.25) / 0.75 + 0.25 * s.density / 2 + 0.18 * tempo + 0.08 * drums
    a += 0.07 * len(s.sources) / len(SOURCE_NAMES)
    return round(round(min(max(a, 0.0), 1.0) / 0.05) * 0.05, 2)


# ------------------------------------------------------------------------------------------------
# Arrangement


def _section_lengths(rng: np.random.Generator, duration: float) -> list[float]:
    """Split ``duration`` into 2..14 sections (7-14 s each on short clips, 14-30 s on full-length tracks)."""
    lo, hi = (7, 14) if duration < 90 else (14, 30)  # short clips still get several transitions
    n = int(np.clip(round(duration / rng.uniform(lo, hi)), 2, 14))
    min_len = min(8.0, duration / (n * 1.5))
    lengths = min_len + (duration - n * min_len) * rng.dirichlet(np.full(n, 3.0))
    return [float(x) for x in lengths]


def _mutate(rng: np.random.Generator, prev: Section, start: float, end: float) -> tuple[Section, dict]:
    """The next section: ``prev`` with one to three audible changes; returns it and the change dict."""
    kinds_p = {
        "in": 0.55,
        "out": 0.35,
        "loudness": 0.45,
        "brightness": 0.3,
        "density": 0.3,
        "tempo": 0.15,
        "key": 0.15,
    }
    kinds = [k for k, p in kinds_p.items() if rng.random() < p]
    if not kinds:
        kinds = [str(rng.choice(["in", "loudness", "density", "out"]))]
    active = list(prev.sources)
    change: dict[str, Any] = {}
    if "in" in kinds:
        idle = [x for x in SOURCE_NAMES if x not in active]
        if idle:
            k = min(len(idle), 1 + int(rng.random() < 0.3))
            change["in"] = sorted(rng.choice(idle, k, replace=False).tolist(), key=SOURCE_NAMES.index)
            active += change["in"]
    if "out" in kinds and len(active) > 2:
        pool = [x for x in active if x not in change.get("in", [])]
        k = min(len(pool) - 1, 1 + int(rng.random() < 0.25))
        if k > 0:
            change["out"] = sorted(rng.choice(pool, k, replace=False).tolist(), key=SOURCE_NAMES.index)
            active = [x for x in active if x not in change["out"]]
    loud, bright, dens, tempo = prev.loudness, prev.brightness, prev.density, prev.tempo
    key, mode = prev.key, prev.mode
    if "loudness" in kinds:
        step = rng.uniform(0.3, 0.5) * (1 if (loud < 0.6 or (loud < 0.75 and rng.random() < 0.5)) else -1)
        loud = round(float(np.clip(loud + step, 0.25, 1.0)), 2)
        change["loudness"] = [prev.loudness, loud]
    if "brightness" in kinds:
        step = rng.uniform(0.4, 0.6) * (1 if bright < 0.5 else -1)
        bright = round(float(np.clip(bright + step, 0.1, 1.0)), 1)
        change["brightness"] = [prev.brightness, bright]
    if "density" in kinds:
        dens = int(rng.choice([d for d in (0, 1, 2) if d != dens]))
        change["density"] = [prev.density, dens]
    if "tempo" in kinds:
        factor = rng.uniform(1.12, 1.3) if (tempo < 120 or rng.random() < 0.3) else rng.uniform(0.75, 0.88)
        tempo = int(np.clip(round(tempo * factor), 70, 170))
        if tempo != prev.tempo:
            change["tempo"] = [prev.tempo, tempo]
    if "key" in kinds:
        key = (key + int(rng.choice([2, 5, 7, -2, -3, 3]))) % 12
        if rng.random() < 0.3:
            mode = "minor" if mode == "major" else "major"
        change["key"] = [key_name(prev.key, prev.mode), key_name(key, mode)]
    if not change:  # every requested change was impossible: fall back to a loudness change
        loud = 0.95 if prev.loudness < 0.6 else 0.4
        change["loudness"] = [prev.loudness, loud]
    prog = (
        PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
        if ("key" in change or rng.random() < 0.4)
        else prev.progression
    )
    nxt = Section(
        start, end, tempo, key, mode, loud, bright, dens, tuple(x for x in SOURCE_NAMES if x in active), prog
    )
    return nxt, change


def arrange(seed: int, min_seconds: float, max_seconds: float) -> list[Section]:
    """The sections of track ``seed``: its length drawn from [min_seconds, max_seconds].

    Every boundary falls on a bar line of the section it ends (sections are whole bars at their own
    tempo), so no section ends in a half-empty bar; only the last section is cut at the track's end.
    """
    rng = np.random.default_rng(seed)
    duration = round(float(rng.uniform(min_seconds, max_seconds)), 2)
    lengths = _section_lengths(rng, duration)
    # The intro holds few sources so that most sources enter later (their onsets are worth asking about).
    intro_pool = ["pad", "guitar", "bass", "hihat", "kick"]
    n_intro = int(rng.integers(1, 3))
    intro = set(rng.choice(intro_pool, n_intro, replace=False).tolist())
    first = Section(
        0.0,
        0.0,
        int(rng.integers(76, 141)),
        int(rng.integers(12)),
        str(rng.choice(["major", "minor"])),
        round(float(rng.uniform(0.3, 0.6)), 2),
        round(float(rng.uniform(0.2, 0.8)), 1),
        int(rng.integers(0, 2)),
        tuple(x for x in SOURCE_NAMES if x in intro),
        PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))],
    )
    sections = [first]
    t = 0.0
    for i, length in enumerate(lengths):
        if i:
            nxt, change = _mutate(rng, sections[-1], t, t)
            nxt.extra["change"] = change
            sections.append(nxt)
        sec = sections[-1]
        bar = 240.0 / sec.tempo
        sec.start, sec.end = t, t + max(1, round(length / bar)) * bar
        t = sec.end
        if duration - t < min(4.0, duration / 4):  # too little left for another section
            break
    sections[-1].end = duration
    for s in sections:
        s.arousal = section_arousal(s)
    return sections


# ------------------------------------------------------------------------------------------------
# Notes: (start seconds, length seconds, midi pitch, velocity, variant) per source


def _midi(key: int, mode: str, degree: int, octave: int) -> int:
    scale = SCALES[mode]
    return 12 * (octave + 1) + key + scale[degree % 7] + 12 * (degree // 7)


def _section_notes(
    rng: np.random.Generator, s: Section, src: str
) -> list[tuple[float, float, int, float, int]]:
    """Notes of ``src`` in section ``s`` on its beat grid, in its key; the first note is on the downbeat."""
    beat = 60.0 / s.tempo
    n_beats = int((s.end - s.start) / beat + 1e-6)
    if n_beats < 1:
        return []
    d = s.density
    notes: list[tuple[float, float, int, float, int]] = []

    def chord(b: int) -> int:
        return s.progression[(b // 4) % len(s.progression)]

    if src in ("kick", "snare", "hihat"):
        step = {"kick": (2.0, 1.0, 1.0), "snare": (4.0, 2.0, 2.0), "hihat": (1.0, 0.5, 0.25)}[src][d]
        offset = 1.0 if src == "snare" else 0.0
        times = np.arange(offset, n_beats, step)
        if src == "kick" and d == 2:
            times = np.union1d(times, np.arange(2.75, n_beats, 4.0))
        if src == "snare" and d == 2:
            times = np.union1d(times, np.arange(3.5, n_beats, 4.0))
        vel = 0.8 + 0.2 * (np.mod(times, 1.0) == 0) if src == "hihat" else np.ones_like(times)
        return [(s.start + t * beat, 1.0, 0, float(v), 0) for t, v in zip(times, vel)]
    if src == "bass":
        step = (2.0, 1.0, 0.5)[d]
        for b in np.arange(0, n_beats, step):
            deg = chord(int(b)) + (4 if (d == 2 and b % 1) else 0)
            notes.append((s.start + b * beat, step * beat * 0.9, _midi(s.key, s.mode, deg, 2), 0.9, 0))
        return notes
    if src == "pad":
        # One chord per bar; the section's last partial bar (if a beat or longer) gets a chord too.
        starts = list(range(0, n_beats, 4))
        for b in starts:
            length = min(4 * beat, (s.end - s.start) - b * beat)
            for j, deg_off in enumerate((0, 2, 4)):
                m = _midi(s.key, s.mode, chord(b) + deg_off, 4 if j else 3)
                notes.append((s.start + b * beat, length, m, 0.8, 0))
        return notes
    if src == "guitar":
        step = (1.0, 0.5, 0.25)[d]
        arp = (0, 2, 4, 7, 4, 2)
        for i, b in enumerate(np.arange(0, n_beats, step)):
            deg = chord(int(b)) + arp[i % len(arp)]
            notes.append(
                (s.start + b * beat, 0.9, _midi(s.key, s.mode, deg, 3), 0.75 + 0.25 * (i % 2 == 0), 0)
            )
        return notes
    if src == "lead":
        step = (1.0, 0.5, 0.5)[d]
        deg = int(rng.integers(0, 5))
        for i, b in enumerate(np.arange(0, n_beats, step)):
            if i and rng.random() < (0.35 if d < 2 else 0.15):
                continue  # a rest
            deg = int(np.clip(deg + rng.integers(-2, 3), -2, 9))
            notes.append((s.start + b * beat, step * beat * 0.85, _midi(s.key, s.mode, deg, 4), 0.85, 0))
        return notes
    if src == "vocal":
        step = (2.0, 1.0, 1.0)[d]
        deg = int(rng.integers(0, 5))
        for i, b in enumerate(np.arange(0, n_beats, step)):
            if i and (int(b) % 8 >= 6 or rng.random() < 0.15):
                continue  # breathe at the end of each two-bar phrase
            deg = int(np.clip(deg + rng.integers(-2, 3), 0, 7))
            notes.append(
                (
                    s.start + b * beat,
                    step * beat * 0.95,
                    _midi(s.key, s.mode, deg, 4),
                    0.9,
                    int(rng.integers(len(VOWELS))),
                )
            )
        return notes
    raise KeyError(src)


# ------------------------------------------------------------------------------------------------
# Note templates (pure functions of their key, cached per process)

N_TABLE = 4096


class _TemplateCache:
    """Least-recently-used cache of note templates, bounded in bytes (each dataloader worker has its own)."""

    def __init__(self, max_bytes: int = 160 << 20):
        self.max_bytes = max_bytes
        self.items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.bytes = 0

    def get(self, key: tuple) -> np.ndarray:
        hit = self.items.get(key)
        if hit is not None:
            self.items.move_to_end(key)
            return hit
        value = _make_template(*key)
        self.items[key] = value
        self.bytes += value.nbytes
        while self.bytes > self.max_bytes and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.bytes -= old.nbytes
        return value


_CACHE = _TemplateCache()


def _table(amps: np.ndarray) -> np.ndarray:
    """One period of a waveform with harmonic amplitudes ``amps`` (harmonic k = amps[k-1]), peak 1."""
    spec = np.zeros(N_TABLE // 2 + 1, dtype=np.complex128)
    spec[1 : len(amps) + 1] = -0.5j * N_TABLE * np.asarray(amps)  # sine phase; an inverse FFT is the sum
    wave = np.fft.irfft(spec, N_TABLE)
    return (wave / np.abs(wave).max()).astype(np.float32)


def _osc(
    table: np.ndarray, f0: float, n: int, sr: int, vib_hz: float = 0.0, vib_depth: float = 0.0
) -> np.ndarray:
    """Wavetable oscillator at ``f0`` Hz for ``n`` samples, with optional vibrato (depth as a frequency ratio)."""
    t = np.arange(n, dtype=np.float64)
    if vib_depth:
        phase = np.cumsum(f0 / sr * (1 + vib_depth * np.sin(2 * np.pi * vib_hz / sr * t)))
    else:
        phase = t * (f0 / sr)
    return table[(phase * N_TABLE).astype(np.int64) & (N_TABLE - 1)]


def _harmonics(f0: float, sr: int, cap: int) -> np.ndarray:
    """Harmonic numbers 1..H below Nyquist (band-limited tables, no aliasing)."""
    return np.arange(1, max(1, min(cap, int(0.45 * sr / f0))) + 1, dtype=np.float64)


def _make_template(src: str, midi: int, bright: float, variant: int, sr: int) -> np.ndarray:
    """The full-length note of ``src`` at ``midi`` (drums ignore it), peak-normalised, float32."""
    n = int(TEMPLATE_SECONDS[src] * sr)
    t = np.arange(n, dtype=np.float64) / sr
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    if src in ("kick", "snare", "hihat"):
        noise = np.random.default_rng(1000 + SOURCE_NAMES.index(src)).standard_normal(n)
    if src == "kick":
        freq = 48 + 120 * np.exp(-t / 0.03)
        body = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / 0.16)
        wave = body + (0.15 + 0.35 * bright) * noise * np.exp(-t / 0.004)
    elif src == "snare":
        hp = np.diff(noise, prepend=0.0)
        tone = np.sin(2 * np.pi * 185 * t) * np.exp(-t / 0.05)
        wave = 0.6 * tone + (0.4 * noise + (0.3 + 0.6 * bright) * hp) * np.exp(-t / 0.09)
    elif src == "hihat":
        hp = np.diff(noise, n=2, prepend=[0.0, 0.0])
        wave = ((1 - bright) * np.diff(noise, prepend=0.0) + (0.3 + bright) * hp) * np.exp(-t / 0.03)
    elif src == "bass":
        k = _harmonics(f0, sr, 12)
        amps = k ** -(2.4 - 1.2 * bright)
        wave = _osc(_table(amps), f0, n, sr) * (0.55 + 0.45 * np.exp(-t / 0.25)) * np.minimum(t / 0.005, 1)
    elif src == "pad":
        k = _harmonics(f0, sr, 30)
        table = _table(k ** -(1.9 - 0.9 * bright))
        wave = _osc(table, f0 * 1.003, n, sr, 5.0, 0.002) + _osc(table, f0 / 1.003, n, sr, 4.3, 0.002)
        wave *= np.minimum(t / 0.25, 1)
    elif src == "guitar":
        k = _harmonics(f0, sr, 24)
        pluck = np.abs(np.sin(np.pi * k * 0.18))  # plucked near the bridge: a comb in the spectrum
        bright_t = _table(pluck * k ** -(1.2 - 0.5 * bright))
        dull_t = _table(k**-3.0)
        wave = _osc(bright_t, f0, n, sr) * np.exp(-t / 0.09) + 0.8 * _osc(dull_t, f0, n, sr) * np.exp(
            -t / 0.7
        )
        wave *= np.minimum(t / 0.002, 1)
    elif src == "lead":
        k = _harmonics(f0, sr, 30)
        amps = k ** -(1.5 - 0.6 * bright) * np.where(k % 2 == 1, 1.0, 0.35)  # square-ish, hollow
        wave = _osc(_table(amps), f0, n, sr, 5.5, 0.006 * np.minimum(1, 1)) * np.minimum(t / 0.01, 1)
    elif src == "vocal":
        k = _harmonics(f0, sr, 40)
        fk = k * f0
        formants = VOWELS[tuple(VOWELS)[variant]]
        env = sum(
            g * np.exp(-0.5 * ((fk - f) / bw) ** 2)
            for f, g, bw in zip(formants, (1.0, 0.6, 0.25), (110, 140, 200))
        )
        amps = (env + 0.02) * k**-0.6
        vib = np.minimum(t / 0.3, 1)  # vibrato grows in, as a singer's does
        wave = _osc(_table(amps), f0, n, sr, 5.6, 0.015) * 0.8 + 0.2 * _osc(_table(amps), f0, n, sr)
        wave = wave * (0.6 + 0.4 * vib) * np.minimum(t / 0.06, 1)
    else:
        raise KeyError(src)
    wave = wave / max(np.abs(wave).max(), 1e-9)
    return wave.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Rendering


@functools.lru_cache(maxsize=512)
def _ramp(r: int) -> np.ndarray:
    """A linear fade from 1 to 0 over ``r`` samples (read-only, shared)."""
    ramp = np.linspace(1.0, 0.0, r, dtype=np.float32)
    ramp.flags.writeable = False
    return ramp


def _fade(n: int, sr: int, src: str) -> int:
    """Samples of release fade when a note is cut shorter than its template."""
    seconds = {"pad": 0.25, "vocal": 0.08}.get(src, 0.02)
    return max(1, min(n // 3, int(seconds * sr)))


def _notes(seed: int, sections: list[Section]) -> dict[str, list[tuple[float, float, int, float, int]]]:
    """Every source's notes over the whole track."""
    rng = np.random.default_rng([seed, 1])
    notes: dict[str, list] = {src: [] for src in SOURCE_NAMES}
    for s in sections:
        for src in s.sources:
            notes[src].extend(_section_notes(rng, s, src))
    return notes


def render(
    sections: list[Section],
    notes: dict[str, list],
    duration: float,
    sr: int,
    only: tuple[str, ...] | None = None,
) -> tuple[np.ndarray, dict[str, list[tuple[int, int]]]]:
    """Mix the notes into a mono float32 waveform; also return each source's rendered (first, end) samples.

    A note never sounds past the end of its section (it is cut there with a short fade), so a label's
    offset is exact. ``only`` renders a subset of sources (the others silent), for checking labels.
    """
    n_total = round(duration * sr)
    out = np.zeros(n_total, dtype=np.float32)
    spans: dict[str, list[tuple[int, int]]] = {src: [] for src in SOURCE_NAMES}
    ends = np.array([round(s.end * sr) for s in sections])
    starts_s = np.array([s.start for s in sections])
    for src in SOURCE_NAMES:
        if not notes[src]:
            continue
        tlen = int(TEMPLATE_SECONDS[src] * sr)
        for start, length, midi, vel, variant in notes[src]:
            i = int(np.searchsorted(starts_s, start, side="right")) - 1
            sec = sections[i]
            a = round(start * sr)
            want = tlen if src in ("kick", "snare", "hihat") else min(tlen, int(length * sr))
            b = min(a + want, int(ends[i]), n_total)
            if b <= a:
                continue
            spans[src].append((a, b))
            if only is not None and src not in only:
                continue
            # Templates on a 0.2 brightness grid: a fifth of the distinct templates, same audible steps.
            tmpl = _CACHE.get((src, midi, round(sec.brightness * 5) / 5, variant, sr))
            seg = tmpl[: b - a] * np.float32(vel * sec.loudness * MIX_GAIN[src])
            if b - a < tlen:  # cut short: fade out so the cut does not click
                r = _fade(b - a, sr, src)
                seg[-r:] *= _ramp(r)
            out[a:b] += seg
    return out, spans


def _runs(
    sections: list[Section], spans: list[tuple[int, int]], src: str, sr: int
) -> list[tuple[float, float]]:
    """(onset, offset) seconds of each run of consecutive sections where ``src`` plays, from its rendered notes."""
    runs: list[tuple[float, float]] = []
    spans_arr = np.array(spans) if spans else np.zeros((0, 2), int)
    i = 0
    while i < len(sections):
        if src not in sections[i].sources:
            i += 1
            continue
        j = i
        while j + 1 < len(sections) and src in sections[j + 1].sources:
            j += 1
        lo, hi = round(sections[i].start * sr), round(sections[j].end * sr)
        inside = spans_arr[(spans_arr[:, 0] >= lo) & (spans_arr[:, 0] < hi)]
        if len(inside):
            runs.append((float(inside[:, 0].min() / sr), float(inside[:, 1].max() / sr)))
        i = j + 1
    return runs


# ------------------------------------------------------------------------------------------------
# Descriptions: several templates per phrase, so no label is one fixed sentence

_PHRASES = {
    "loudness+": (
        "the music gets louder",
        "the volume rises",
        "the mix swells in volume",
        "the dynamics climb to a louder level",
        "everything becomes louder",
    ),
    "loudness-": (
        "the music gets quieter",
        "the volume drops",
        "the mix softens",
        "the dynamics fall to a quieter level",
        "everything becomes softer",
    ),
    "brightness+": (
        "the sound becomes brighter",
        "the timbre opens up and brightens",
        "the tone gets crisper",
        "more high end comes through",
    ),
    "brightness-": (
        "the sound turns darker",
        "the tone becomes mellower",
        "the timbre darkens",
        "the high end is rolled off",
    ),
    "density+": (
        "the rhythm gets busier",
        "the parts play denser patterns",
        "the groove becomes more active",
        "the rhythmic activity increases",
    ),
    "density-": (
        "the rhythm thins out",
        "the playing becomes sparser",
        "the groove relaxes into fewer notes",
        "the rhythmic activity decreases",
    ),
    "tempo+": (
        "the tempo speeds up to about {b} BPM",
        "the pace quickens to roughly {b} BPM",
        "the beat accelerates (about {b} BPM)",
    ),
    "tempo-": (
        "the tempo slows to about {b} BPM",
        "the pace relaxes to roughly {b} BPM",
        "the beat slows down (about {b} BPM)",
    ),
    "key": ("the music modulates to {b}", "there is a key change to {b}", "the harmony shifts into {b}"),
}


def _join_names(names: list[str]) -> str:
    labels = [SOURCE_LABELS[x] for x in names]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def change_keys(change: dict) -> list[str]:
    """The phrase keys of a structured change, in a fixed order (``in``, ``out``, ``loudness+``…)."""
    keys = []
    for name in ("in", "out"):
        if change.get(name):
            keys.append(name)
    for name in ("tempo", "key", "loudness", "brightness", "density"):
        if name in change:
            if name == "key":
                keys.append("key")
            else:
                a, b = change[name]
                keys.append(name + ("+" if b > a else "-"))
    return keys


def change_signature(change: dict) -> tuple:
    """A hashable summary of what changed (two changes with equal signatures read the same)."""
    return tuple(sorted(change_keys(change))) + tuple(change.get("in", [])) + tuple(change.get("out", []))


def _phrase(rng: np.random.Generator, key: str, change: dict) -> str:
    if key in ("in", "out"):
        names = change[key]
        x = _join_names(names)
        plural = len(names) > 1 or names[0] == "vocal"
        if key == "in":
            forms = (
                f"the {x} {'enter' if plural else 'enters'}",
                f"the {x} {'come' if plural else 'comes'} in",
                f"the {x} {'set' if plural else 'sets'} in",
                f"the {x} {'join' if plural else 'joins'}",
                f"the {x} {'start' if plural else 'starts'} playing",
            )
        else:
            forms = (
                f"the {x} {'drop' if plural else 'drops'} out",
                f"the {x} {'fade' if plural else 'fades'} out",
                f"the {x} {'stop' if plural else 'stops'} playing",
                f"the {x} {'fall' if plural else 'falls'} silent",
                f"the {x} {'leave' if plural else 'leaves'}",
            )
        return str(forms[int(rng.integers(len(forms)))])
    forms = _PHRASES[key]
    text = str(forms[int(rng.integers(len(forms)))])
    base = key.rstrip("+-")
    if base in change:
        text = text.format(b=change[base][1])
    return text


def describe_change(change: dict, rng: np.random.Generator) -> str:
    """A natural-language sentence for a structured change, wording drawn from several templates."""
    parts = [_phrase(rng, k, change) for k in change_keys(change)]
    if not parts:
        return "Nothing noticeable changes."
    order = rng.permutation(len(parts)) if rng.random() < 0.3 else np.arange(len(parts))
    parts = [parts[i] for i in order]
    if len(parts) == 1:
        body = parts[0]
    elif rng.random() < 0.5:
        body = ", ".join(parts[:-1]) + " and " + parts[-1]
    else:
        rest = parts[1] if len(parts) == 2 else ", ".join(parts[1:-1]) + " and " + parts[-1]
        body = parts[0] + (" while " if rng.random() < 0.5 else ", as ") + rest
    prefix = ("", "", "Here ", "At this point ", "Suddenly ")[int(rng.integers(5))]
    text = prefix + body
    return text[0].upper() + text[1:] + "."


NO_CHANGE_TEXTS = (
    "No noticeable change happens.",
    "Nothing changes; the music continues as before.",
    "The music carries on without a change.",
)

_MOOD = {
    0: ("calm", "gentle", "relaxed", "quiet"),
    1: ("steady", "warm", "moderate", "flowing"),
    2: ("energetic", "driving", "intense", "powerful"),
}


def describe_section(s: Section, rng: np.random.Generator, first: bool, last: bool) -> str:
    """A caption for a section: mood, role, key, tempo, instruments, density, loudness and brightness."""
    mood_level = 0 if s.arousal < 0.35 else (1 if s.arousal < 0.6 else 2)
    mood = _MOOD[mood_level][int(rng.integers(4))]
    role = "intro" if first else ("outro" if last else ("section", "passage", "part")[int(rng.integers(3))])
    names = _join_names(list(s.sources))
    play = "play" if len(s.sources) > 1 or s.sources == ("vocal",) else "plays"
    article = "An" if mood[0] in "aeiou" else "A"
    loud = "soft" if s.loudness < 0.45 else ("moderately loud" if s.loudness < 0.75 else "loud")
    bright = "dark" if s.brightness < 0.4 else ("balanced" if s.brightness < 0.7 else "bright")
    forms = (
        (
            f"{article} {mood} {role} in {key_name(s.key, s.mode)} at {s.tempo} BPM with {names}; "
            f"{DENSITY_WORDS[s.density]} rhythm, {loud} and {bright}."
        ),
        (
            f"{mood.capitalize()} {role}: {names} {play} a {DENSITY_WORDS[s.density]} pattern in "
            f"{key_name(s.key, s.mode)}, {s.tempo} BPM, {loud} with a {bright} tone."
        ),
        (
            f"The {role} is {mood} and {loud}, {names} in {key_name(s.key, s.mode)} around {s.tempo} BPM, "
            f"with a {bright} sound and a {DENSITY_WORDS[s.density]} groove."
        ),
    )
    return forms[int(rng.integers(len(forms)))]


# ------------------------------------------------------------------------------------------------
# The public entry point


def _cfg_get(cfg: Any, name: str, default: Any) -> Any:
    return getattr(cfg, name, default) if cfg is not None else default


def generate_track(
    seed: int, cfg: Any = None, track_id: str | None = None, render_audio: bool = True
) -> Track:
    """Track ``seed``: mono float32 audio at ``cfg.sample_rate`` plus every label; a pure function of the seed.

    ``cfg`` is a :class:`~must.data.config.DataConfig` (or anything with ``sample_rate``, ``min_seconds``,
    ``max_seconds``); None uses the defaults. ``render_audio=False`` skips the waveform (labels only).
    """
    sr = int(_cfg_get(cfg, "sample_rate", 16000))
    sections = arrange(
        seed, float(_cfg_get(cfg, "min_seconds", 20.0)), float(_cfg_get(cfg, "max_seconds", 60.0))
    )
    duration = sections[-1].end
    notes = _notes(seed, sections)
    gm = render_audio and _cfg_get(cfg, "renderer", "numpy") == "gm"
    audio, spans = render(sections, notes, duration, sr, only=None if render_audio and not gm else ())
    if gm:
        from must.data.gm import render_gm

        audio = render_gm(sections, notes, duration, sr, _cfg_get(cfg, "soundfont", None))
    peak = float(np.abs(audio).max()) if render_audio else 0.0
    if peak > 0.95:  # scale the whole track, so loudness changes between sections are kept
        audio *= np.float32(0.95 / peak)
    rng = np.random.default_rng([seed, 2])
    sources = {src: _runs(sections, spans[src], src, sr) for src in SOURCE_NAMES}
    sources = {k: v for k, v in sources.items() if v}
    transitions = []
    for s in sections[1:]:
        change = s.extra["change"]
        keys = change_keys(change)
        kind = {"in": "instrument_in", "out": "instrument_out"}.get(keys[0], keys[0].rstrip("+-"))
        transitions.append(Transition(s.start, kind, change, describe_change(change, rng)))
    arousal = _arousal_segments(sections)
    captions = []
    for i, s in enumerate(sections):
        if i:
            captions.append(Caption(s.start, None, transitions[i - 1].description))
        captions.append(Caption(s.start, s.end, describe_section(s, rng, i == 0, i == len(sections) - 1)))
    meta = {
        "seed": int(seed),
        "generator": "must.synth/1",
        "sections": [
            {
                "start": s.start,
                "end": s.end,
                "tempo": s.tempo,
                "key": key_name(s.key, s.mode),
                "loudness": s.loudness,
                "brightness": s.brightness,
                "density": s.density,
                "sources": list(s.sources),
                "arousal": s.arousal,
            }
            for s in sections
        ],
    }
    return Track(
        id=track_id or f"synth-{seed}",
        duration=duration,
        sample_rate=sr,
        audio=audio if render_audio else None,
        sources=sources,
        transitions=transitions,
        arousal=arousal,
        captions=captions,
        meta=meta,
    )


def _arousal_segments(sections: list[Section]) -> list[ArousalSegment]:
    """Arousal per section, neighbours of equal value merged."""
    segs: list[ArousalSegment] = []
    for s in sections:
        if segs and math.isclose(segs[-1].value, s.arousal):
            segs[-1].end = s.end
        else:
            segs.append(ArousalSegment(s.start, s.end, s.arousal))
    return segs


def caption_text(track: Track) -> str:
    """The timestamped caption of a track: ``[0:00-0:25] description … [0:25] boundary …``."""
    parts = []
    for c in sorted(track.captions, key=lambda c: (c.start, c.end is not None)):
        if c.end is None:
            parts.append(f"[{format_time(c.start)}] {c.text}")
        else:
            parts.append(f"[{format_time(c.start)}-{format_time(c.end)}] {c.text}")
    return " ".join(parts)


def render_sources(seed: int, cfg: Any, sources: tuple[str, ...]) -> np.ndarray:
    """Track ``seed`` with only ``sources`` audible (unscaled mix), shape (samples,): to check labels against audio."""
    sr = int(_cfg_get(cfg, "sample_rate", 16000))
    sections = arrange(
        seed, float(_cfg_get(cfg, "min_seconds", 20.0)), float(_cfg_get(cfg, "max_seconds", 60.0))
    )
    audio, _ = render(sections, _notes(seed, sections), sections[-1].end, sr, only=tuple(sources))
    return audio

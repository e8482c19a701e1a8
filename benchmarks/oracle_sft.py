"""Diagnostic: SFT with *oracle* encoder features. Is the encoder or the LLM what holds the tiny recipe back?

The encoder's frame features are replaced by the synthetic track's ground truth: 3 x source activity
(8 dims, one per source in ``SOURCE_NAMES``) and 3 x the transition curve (1 dim), zeros elsewhere; its
transition logits become the true curve's, so dynamic sampling puts tokens at the true boundaries.
Everything else (sampling, time embedding, projector, LLM, packing, loss, evaluation) is the shipped
code. If the LLM cannot answer TSG from *perfect* features, a better encoder will not help it.

    python benchmarks/oracle_sft.py                                  # SFT of recipes/tiny.yaml, all tasks
    python benchmarks/oracle_sft.py 'stages.0.options.tasks=[TSG]'   # TSG only
    python benchmarks/oracle_sft.py stages.0.trainer.max_steps=1500 --out /tmp/oracle_long
    python benchmarks/oracle_sft.py --part transitions stages.0.init_from=runs/tiny/captions/model  # true token placement only

Runs the tiny recipe's ``sft`` stage alone, from the model as built (no ``init_from``); extra
arguments are recipe overrides (``key=value``) applied to that one-stage recipe. Results and the
conclusion: ``benchmarks/results/tiny_recipe.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from must.data import cache as cache_mod
from must.data.targets import source_activity, transition_curve
from must.models import encoder as enc_mod

ROOT = Path(__file__).resolve().parents[1]
_TRACKS: dict[tuple, object] = {}


def _key(wave) -> tuple:
    """A waveform's identity: its length and a hash of its first 4000 samples."""
    w = np.asarray(wave.detach().cpu().numpy() if torch.is_tensor(wave) else wave, dtype=np.float32)
    return len(w), hashlib.md5(w[:4000].tobytes()).hexdigest()


def install_oracle(part: str = "all") -> None:
    """Patch the track cache (to remember each rendered track) and the encoder (to return its labels):
    ``part`` ``all`` (features and transition logits), ``activity`` (the features only: the encoder's own
    transition logits place the tokens), ``transitions`` (the transition logits only: the encoder's
    features, tokens placed at the true boundaries) or ``heads`` (no truth at all: the features laid out as
    the oracle's, from the encoder's own heads — source activity thresholded at 0.5 — so the question is
    whether its predictions, made as clean, serve as well as the truth)."""
    cached, encode = cache_mod.TrackCache.track, enc_mod.MusTEncoder.encode_frames

    def cached_track(self, cfg, split, index):
        track = cached(self, cfg, split, index)
        _TRACKS[_key(track.audio)] = track
        return track

    def encode_frames(self, waveforms, sample_rate):
        frames = encode(self, waveforms, sample_rate)  # shapes, times and masks as the real encoder's
        feats = torch.zeros_like(frames.features)
        logits = torch.full_like(frames.transition_logits, -8.0)
        for i, wave in enumerate(waveforms):
            track = _TRACKS[_key(wave)]
            act = torch.from_numpy(source_activity(track, frames.frame_rate))
            curve = torch.from_numpy(transition_curve(track, frames.frame_rate))
            n = min(len(act), int(frames.mask[i].sum()))
            feats[i, :n, : act.shape[1]] = 3 * act[:n]
            feats[i, :n, act.shape[1]] = 3 * curve[:n]
            logits[i, :n] = torch.logit(curve[:n].clamp(1e-4, 1 - 1e-4))
        if part == "heads":  # the oracle's layout, the encoder's own predictions in it
            act = (frames.source_logits > 0).float()
            feats[..., : act.shape[-1]] = 3 * act
            feats[..., act.shape[-1]] = 3 * torch.sigmoid(frames.transition_logits)
            frames.features = feats * frames.mask[..., None]
        if part in ("all", "activity"):
            frames.features = feats
        if part in ("all", "transitions"):
            frames.transition_logits = logits
        return frames

    cache_mod.TrackCache.track = cached_track
    enc_mod.MusTEncoder.encode_frames = encode_frames


def sft_recipe(out: Path) -> Path:
    """The tiny recipe with its SFT stage alone, starting from the model as built."""
    recipe = yaml.safe_load((ROOT / "recipes" / "tiny.yaml").read_text())
    sft = next(s for s in recipe["stages"] if s["kind"] == "sft")
    sft.pop("init_from", None)
    recipe["stages"], recipe["output_dir"] = [sft], str(out)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default: a fresh temporary one)")
    parser.add_argument("--part", choices=("all", "activity", "transitions", "heads"), default="all",
                        help="what the truth replaces: features and transition logits, or one of them; "
                             "heads: no truth, the encoder's own head predictions in the oracle's layout")
    args, overrides = parser.parse_known_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="oracle_sft_")) / "run"
    out.parent.mkdir(parents=True, exist_ok=True)
    install_oracle(args.part)
    from must.cli import main as must_main

    return must_main(["run", str(sft_recipe(out)), *overrides])


if __name__ == "__main__":
    sys.exit(main())

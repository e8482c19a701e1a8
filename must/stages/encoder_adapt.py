"""Stage 1: encoder adaptation — make the music encoder transition-aware.

Trains the encoder's LoRA (or the whole built-in backbone when it has none), the 1-D conv transition
head, the mood head and, beyond the paper, an optional frame-level source-activity head (which
sources sound at each frame, from the synthetic tracks' exact onsets/offsets: timbre is what TSG
needs). Losses on whole tracks (windowed and stitched as in inference):

- transition curve: BCE or focal on the Gaussian-peaked target, optional soft Dice;
- mood change: the arousal change across each boundary from a window of frames around it, MSE or CCC;
- source activity: frame-level BCE.

Validation: boundary F1 at ±1 s and ±3 s (peaks of the transition curve matched to true boundaries),
mood MAE, frame-level source-activity F1.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from must.data.config import DataConfig
from must.data.datasets import Stage1Tracks, cached_track, collate
from must.data.targets import source_activity
from must.errors import ConfigError
from must.models.lalm import MusicLALM
from must.resume import step_sampler
from must.stages import common
from must.stages.options.encoder_adapt import Options
from must.tracking import TransitionCurve, log_transition_plot

# ----------------------------------------------------------------------------------------- losses


def focal_bce(logits: torch.Tensor, target: torch.Tensor, gamma: float, pos_weight: float = 1.0) -> torch.Tensor:
    """Element-wise focal BCE (soft targets allowed): ``(1 - p_t)^gamma * BCE``; gamma 0 is weighted BCE."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none",
                                             pos_weight=torch.tensor(pos_weight, device=logits.device))
    if gamma == 0:
        return bce
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    return (1 - p_t).pow(gamma) * bce


def soft_dice(probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice over the real frames of each row, averaged over rows. (B, F) each."""
    m = mask.float()
    inter = (probs * target * m).sum(1)
    denom = (probs * m).sum(1) + (target * m).sum(1)
    return (1 - (2 * inter + 1) / (denom + 1)).mean()


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - Lin's concordance correlation coefficient of two (N,) vectors."""
    mp, mt = pred.mean(), target.mean()
    vp, vt = pred.var(unbiased=False), target.var(unbiased=False)
    cov = ((pred - mp) * (target - mt)).mean()
    return 1 - 2 * cov / (vp + vt + (mp - mt) ** 2 + 1e-8)


# ----------------------------------------------------------------------------------------- metrics


def pick_peaks(probs: np.ndarray, times: np.ndarray, threshold: float, min_gap_s: float = 2.0) -> list[float]:
    """Times (seconds) of local maxima of ``probs`` (F,) above ``threshold``, at least ``min_gap_s`` apart
    (the higher peak wins)."""
    if len(probs) == 0:
        return []
    padded = np.concatenate([[-np.inf], probs, [-np.inf]])
    is_peak = (probs >= padded[:-2]) & (probs > padded[2:]) & (probs >= threshold)
    order = np.argsort(-probs[is_peak])
    cand = times[is_peak][order]
    kept: list[float] = []
    for t in cand:
        if all(abs(t - k) >= min_gap_s for k in kept):
            kept.append(float(t))
    return sorted(kept)


def boundary_hits(pred: list[float], true: list[float], tol: float) -> tuple[int, int, int]:
    """(true positives, predicted, true): greedy one-to-one matching of the closest pairs within ``tol`` seconds."""
    pairs = sorted((abs(p - t), i, j) for i, p in enumerate(pred) for j, t in enumerate(true) if abs(p - t) <= tol)
    used_p, used_t, tp = set(), set(), 0
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            tp += 1
    return tp, len(pred), len(true)


def f1(tp: float, n_pred: float, n_true: float) -> float:
    """F1 from counts (1 when there is nothing to find and nothing was found)."""
    if n_pred == 0 and n_true == 0:
        return 1.0
    return 2 * tp / max(n_pred + n_true, 1e-9)


# ----------------------------------------------------------------------------------------- the stage


def train_globs(model: MusicLALM, options: Options) -> tuple[list[str], list[str]]:
    """What stage 1 trains, as (train, freeze) parameter globs: ``options.train``, or by default the backbone's
    LoRA if it has one (else the whole backbone) plus the heads. Pure; the stage and ``must plan`` call it."""
    if options.train is not None:
        return list(options.train), list(options.freeze)
    backbone = ["encoder.backbone.*lora_*"] if model.cfg.encoder.lora.r > 0 else ["encoder.backbone.*"]
    heads = ["encoder.transition_head.*", "encoder.mood_head.*"]
    return backbone + heads + (["encoder.source_head.*"] if model.encoder.source_head is not None else []), list(options.freeze)


class EncoderAdaptation(L.LightningModule):
    """Stage 1 (see the module docstring). Holds the whole MusicLALM so the next stage loads one folder."""

    Options = Options

    def __init__(self, model: MusicLALM, data: DataConfig, options: Options | None = None, seed: int = 0,
                 stage_dir: Path | None = None):
        super().__init__()
        self.model, self.data, self.seed, self.stage_dir = model, data, seed, stage_dir
        self.options = o = options or Options()
        if o.transition_loss not in ("bce", "focal"):
            raise ConfigError(f"options.transition_loss: bce or focal, got {o.transition_loss!r}")
        if o.mood_loss not in ("mse", "ccc"):
            raise ConfigError(f"options.mood_loss: mse or ccc, got {o.mood_loss!r}")
        if o.source_crops < 0 or o.source_crop_seconds <= 0:
            raise ConfigError(f"options.source_crops must be >= 0 and options.source_crop_seconds > 0, got "
                              f"{o.source_crops} and {o.source_crop_seconds}")
        if o.peak_min_gap_seconds < 0:
            raise ConfigError(f"options.peak_min_gap_seconds must be >= 0, got {o.peak_min_gap_seconds}")
        if o.source_crops and model.encoder.source_head is None:
            raise ConfigError("options.source_crops needs the source-activity head: set model.encoder.num_sources")
        common.set_trainable(model, *train_globs(model, o))
        self.use_source = model.encoder.source_head is not None and o.source_weight > 0

    train_globs = staticmethod(train_globs)

    @classmethod
    def from_context(cls, ctx) -> EncoderAdaptation:
        common.check_synthetic(ctx.recipe.data, ctx.stage.name)
        return cls(common.build_model(ctx), ctx.recipe.data, ctx.options, ctx.seed, ctx.stage_dir)

    # -- data ---------------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        ds = Stage1Tracks(self.data, "train", self.model.encoder.frame_rate, self.data.train_tracks)
        # Rank-sharded and resumable order (see must.resume.StepSampler).
        sampler = step_sampler(self, len(ds), self.options.batch_size, getattr(self, "seed", 0))
        return DataLoader(ds, batch_size=self.options.batch_size, sampler=sampler, collate_fn=collate, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        ds = Stage1Tracks(self.data, "val", self.model.encoder.frame_rate, self.data.val_tracks)
        return DataLoader(ds, batch_size=self.options.batch_size, collate_fn=collate)

    # -- steps --------------------------------------------------------------------------------

    def _outputs(self, batch: dict):
        """Frames of the whole tracks, and the targets cut to the frames both sides have."""
        frames = self.model.encoder.encode_frames(batch["waveform"], batch["sample_rate"][0])
        n = frames.mask.shape[1]
        dev = frames.features.device

        def pad(seq, width):
            out = torch.zeros(len(seq), width, *seq[0].shape[1:], device=dev)
            for i, s in enumerate(seq):
                k = min(len(s), width)
                out[i, :k] = s[:k]
            return out

        target = pad(batch["transition"], n)
        lengths = torch.tensor([len(s) for s in batch["transition"]], device=dev)
        mask = frames.mask & (torch.arange(n, device=dev)[None] < lengths[:, None])
        return frames, target, pad(batch["activity"], n) if self.use_source else None, mask

    def losses(self, batch: dict) -> tuple[dict[str, torch.Tensor], dict]:
        """Loss components (and the raw outputs for validation metrics)."""
        o = self.options
        frames, target, activity, mask = self._outputs(batch)
        logits = frames.transition_logits
        gamma = o.focal_gamma if o.transition_loss == "focal" else 0.0
        m = mask.float()
        trans = (focal_bce(logits, target, gamma, o.pos_weight) * m).sum() / m.sum().clamp_min(1)
        if o.dice_weight > 0:
            trans = trans + o.dice_weight * soft_dice(torch.sigmoid(logits), target, mask)
        out = {"transition": trans}
        centres, deltas, rows = [], [], []
        for i, clips in enumerate(batch["mood"]):
            for start, end, delta in clips.tolist():
                rows.append(i)
                centres.append((start + end) / 2)
                deltas.append(delta)
        pred_mood = target_mood = None
        if rows:
            sub = _select_frames(frames, rows)
            pred_mood = self.model.encoder.mood_at(sub, torch.tensor(centres, device=logits.device))
            target_mood = torch.tensor(deltas, device=logits.device)
            if o.mood_loss == "ccc" and len(rows) > 1:
                out["mood"] = ccc_loss(pred_mood, target_mood)
            else:
                out["mood"] = F.mse_loss(pred_mood, target_mood)
        if activity is not None:
            src = F.binary_cross_entropy_with_logits(frames.source_logits, activity, reduction="none")
            out["source"] = (src.mean(-1) * m).sum() / m.sum().clamp_min(1)
        raw = {"frames": frames, "mask": mask, "activity": activity, "mood": (pred_mood, target_mood)}
        return out, raw

    def crop_source_loss(self, step: int) -> torch.Tensor:
        """Source-activity BCE on ``source_crops`` random crops of random training tracks.

        The crops are drawn from ``(seed, step)`` alone, so a resumed run draws the same ones at the same step.
        """
        o, enc = self.options, self.model.encoder
        rng = np.random.default_rng([getattr(self, "seed", 0), step])
        rate = enc.frame_rate
        width = max(1, round(o.source_crop_seconds * rate))
        waves, targets = [], []
        for i in rng.integers(0, self.data.train_tracks, o.source_crops):
            track = cached_track(self.data, "train", int(i))
            activity = source_activity(track, rate)
            f0 = int(rng.integers(0, max(1, len(activity) - width + 1)))
            per_frame = track.sample_rate / rate
            waves.append(track.audio[round(f0 * per_frame):round((f0 + width) * per_frame)])
            targets.append(torch.from_numpy(activity[f0:f0 + width]))
        frames = enc.encode_frames(waves, track.sample_rate)
        n = min(frames.mask.shape[1], min(len(t) for t in targets))
        target = torch.stack([t[:n] for t in targets]).to(frames.features.device)
        return F.binary_cross_entropy_with_logits(frames.source_logits[:, :n], target)

    def _total(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        o = self.options
        w = {"transition": o.transition_weight, "mood": o.mood_weight, "source": o.source_weight,
             "source_crops": o.source_weight}
        return sum(w[k] * v for k, v in parts.items())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        parts, _ = self.losses(batch)
        if self.options.source_crops and self.use_source:
            parts["source_crops"] = self.crop_source_loss(int(self.global_step))
        loss = self._total(parts)
        bs = len(batch["waveform"])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for k, v in parts.items():
            self.log(f"train/{k}_loss", v, batch_size=bs)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = {"tp1": 0, "tp3": 0, "pred": 0, "true": 0, "mood_err": [], "src": [0, 0, 0]}
        self._curves: list = []  # a few predicted transition curves vs truth, for the logger

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        parts, raw = self.losses(batch)
        bs = len(batch["waveform"])
        self.log("val/loss", self._total(parts), batch_size=bs)
        v, frames, o = self._val, raw["frames"], self.options
        probs = torch.sigmoid(frames.transition_logits.detach()).masked_fill(~raw["mask"], 0).cpu().numpy()
        times = frames.times.cpu().numpy()
        for i, true in enumerate(batch["boundaries"]):
            n = int(raw["mask"][i].sum())
            peaks = pick_peaks(probs[i, :n], times[i, :n], o.peak_threshold, o.peak_min_gap_seconds)
            if len(self._curves) < 4:
                self._curves.append(TransitionCurve(
                    times[i, :n], probs[i, :n], list(true), f"val-{len(self._curves)}",
                    target=batch["transition"][i][:n], peaks=peaks, threshold=o.peak_threshold))
            for tol, key in ((1.0, "tp1"), (3.0, "tp3")):
                v[key] += boundary_hits(peaks, true, tol)[0]
            v["pred"] += len(peaks)
            v["true"] += len(true)
        pred, target = raw["mood"]
        if pred is not None:
            v["mood_err"] += (pred - target).abs().tolist()
        if raw["activity"] is not None:
            on = (frames.source_logits > 0) & raw["mask"][..., None]
            act = (raw["activity"] > 0.5) & raw["mask"][..., None]
            v["src"][0] += int((on & act).sum())
            v["src"][1] += int(on.sum())
            v["src"][2] += int(act.sum())

    def on_validation_epoch_end(self) -> None:
        v = self._val
        metrics = {"val/boundary_f1_1s": f1(v["tp1"], v["pred"], v["true"]),
                   "val/boundary_f1_3s": f1(v["tp3"], v["pred"], v["true"])}
        if v["mood_err"]:
            metrics["val/mood_mae"] = float(np.mean(v["mood_err"]))
        if self.use_source:
            metrics["val/source_f1"] = f1(*v["src"])
        self.log_dict(metrics, prog_bar=True)
        if self.stage_dir is not None:  # W&B image, or PNGs under <stage>/media/ with the csv logger
            log_transition_plot(self.logger, self._curves, self.global_step, self.stage_dir)

    def configure_optimizers(self):
        return common.optimizer_config(self.model, self.options, common.total_steps(self.trainer))

    # -- hand-off -----------------------------------------------------------------------------

    def save_model(self, path: Path) -> None:
        """The whole MusicLALM folder (the next stage starts from it)."""
        self.model.save_pretrained(path)

    def evaluate(self, out_dir: Path, name: str) -> dict:
        """The model's MusTBench scores on the synthetic test split, into ``out_dir`` (stage 1 trains no answers:
        the recipe runs this only before training, ``eval_init``, for the untrained model's table)."""
        return common.evaluate(self.model, self.data, Path(out_dir), name, self.options.eval_max_new_tokens,
                               self.options.eval_max_tracks)


def _select_frames(frames, rows: list[int]):
    """The frames of batch rows ``rows`` (repeats allowed) as a new EncoderFrames."""
    from dataclasses import replace

    idx = torch.tensor(rows, device=frames.features.device)
    return replace(frames, features=frames.features[idx], times=frames.times[idx], mask=frames.mask[idx],
                   transition_logits=frames.transition_logits[idx],
                   source_logits=None if frames.source_logits is None else frames.source_logits[idx],
                   durations=frames.durations[idx])

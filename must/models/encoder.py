"""The MusT music encoder: a backbone, a transition head, a mood head, an optional source-activity head.

Long audio is cut into windows (``window_seconds``, ``overlap_seconds``), all windows of a batch go
through the backbone together, and the frames are stitched back on one absolute time axis: every
frame of the track is kept from the window where it is most central. Nothing is ever cut at 30 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from must.errors import MustError
from must.models.audio import log_mel, resample, to_mono_float
from must.models.config import EncoderConfig

MEL_HOP = 160  # samples at 16 kHz: 100 mel frames per second


# ----------------------------------------------------------------------------------------------
# Backbones: (N, S) waveforms at the encoder sample rate + lengths -> (N, F, D) frames + frame counts


class _Block(nn.Module):
    """Pre-norm transformer block with named q/k/v/o projections (so peft LoRA can target them)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(width, width) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = (
            p(h).view(b, t, self.heads, d // self.heads).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        x = x + self.o_proj(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class BuiltinBackbone(nn.Module):
    """Log-mel (100 Hz) -> strided convs -> transformer; ``frame_rate = 100 / prod(conv_strides)`` Hz."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        convs, ch = [], cfg.n_mels
        for s in cfg.conv_strides:
            k = 3 if s == 1 else 2 * s - 1  # kernel/padding chosen so that out = ceil(in / s) exactly
            convs.append(nn.Conv1d(ch, cfg.width, k, stride=s, padding=(k - 1) // 2))
            ch = cfg.width
        self.convs = nn.ModuleList(convs)
        self.blocks = nn.ModuleList(_Block(cfg.width, cfg.heads) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.hidden_size = cfg.width
        self.samples_per_frame = MEL_HOP * math.prod(cfg.conv_strides) * cfg.sample_rate // 16000
        if cfg.frame_stats:
            k = 5 * cfg.n_mels
            self.stats = nn.Sequential(nn.LayerNorm(k), nn.Linear(k, cfg.width), nn.GELU(), nn.Linear(cfg.width, cfg.width))

    @property
    def frame_rate(self) -> float:
        return self.cfg.sample_rate / self.samples_per_frame

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad = (-waves.shape[1]) % self.samples_per_frame
        waves = F.pad(waves, (0, pad))
        hop = MEL_HOP * self.cfg.sample_rate // 16000
        mel = x = log_mel(waves, self.cfg.sample_rate, self.cfg.n_mels, hop=hop, n_fft=hop * 5 // 2)
        for conv in self.convs:
            x = F.gelu(conv(x))
        x = x.transpose(1, 2)  # (N, F, D)
        n_frames = torch.div(
            lengths + self.samples_per_frame - 1, self.samples_per_frame, rounding_mode="floor"
        )
        keep = torch.arange(x.shape[1], device=x.device)[None] < n_frames[:, None]
        x = x + _sinusoid(torch.arange(x.shape[1], device=x.device).float(), x.shape[-1], 10000.0)[None]
        for block in self.blocks:
            x = block(x, keep)
        x = self.norm(x)
        if self.cfg.frame_stats:
            # A shortcut past the transformer: from scratch it learns frame-level timbre slowly, an MLP on
            # these statistics learns it in a few hundred steps (benchmarks/results/encoder_probe.md).
            stride = math.prod(self.cfg.conv_strides)
            rate = 100.0 / stride
            stats = mel_statistics(mel, stride, round(self.cfg.stats_context_seconds * rate),
                                   max(1, round(self.cfg.stats_contrast_seconds * rate)))
            x = x + self.stats(stats[:, : x.shape[1]])
        return x, n_frames


def mel_statistics(mel: torch.Tensor, stride: int, context: int, contrast: int) -> torch.Tensor:
    """Per-frame statistics of a log-mel, (N, M, T) at 100 Hz -> (N, ceil(T / stride), 5 M).

    For each frame of ``stride`` mel frames: the mean and the standard deviation of each mel bin, the mean
    over ``context`` frames either side, and the difference (signed and absolute) between the mean of the
    ``contrast`` frames after it and of those before it (edges repeat the first or last frame). Padding
    frames at the end of a shorter track in a batch enter only its last frames' context.
    """
    mu = F.avg_pool1d(mel, stride, stride, ceil_mode=True)  # (N, M, F)
    sd = (F.avg_pool1d(mel.square(), stride, stride, ceil_mode=True) - mu.square()).clamp_min(0).sqrt()
    ctx = F.avg_pool1d(mu, 2 * context + 1, 1, padding=context, count_include_pad=False)
    csum = F.pad(F.pad(mu, (contrast, contrast), mode="replicate").cumsum(-1), (1, 0))  # csum[j] = sum of [:j]
    i = torch.arange(mu.shape[-1], device=mu.device) + contrast
    before = (csum[..., i] - csum[..., i - contrast]) / contrast
    after = (csum[..., i + contrast + 1] - csum[..., i + 1]) / contrast
    change = after - before
    return torch.cat([mu, sd, ctx, change, change.abs()], 1).transpose(1, 2)


class HFBackbone(nn.Module):
    """Any Hugging Face audio encoder (HuBERT/MERT-style, Wav2Vec2, Whisper encoder) with the same interface."""

    def __init__(self, model: nn.Module, cfg: EncoderConfig):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.model_type = model.config.model_type
        self.hidden_size = (
            model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.d_model
        )
        if self.model_type == "whisper":
            from transformers import WhisperFeatureExtractor

            self.extractor = WhisperFeatureExtractor(
                feature_size=model.config.num_mel_bins, sampling_rate=cfg.sample_rate
            )
            self.n_mel_frames = model.config.max_source_positions * 2  # the length Whisper insists on
            self.samples_per_frame = 2 * self.extractor.hop_length
        else:
            self.samples_per_frame = int(math.prod(model.config.conv_stride))
        self.samples_per_frame *= cfg.frame_pool

    @property
    def frame_rate(self) -> float:
        return self.cfg.sample_rate / self.samples_per_frame

    @property
    def max_window_seconds(self) -> float:
        if self.model_type == "whisper":
            return self.n_mel_frames * self.extractor.hop_length / self.cfg.sample_rate
        return math.inf

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.model_type == "whisper":
            feats = self.extractor(
                [w[: int(n)].cpu().numpy() for w, n in zip(waves, lengths)],
                sampling_rate=self.cfg.sample_rate,
                return_tensors="pt",
                padding="max_length",
                max_length=self.n_mel_frames * self.extractor.hop_length,
            )
            x = self.model(feats.input_features.to(waves.device, self.model.dtype)).last_hidden_state
        else:
            keep = (torch.arange(waves.shape[1], device=waves.device)[None] < lengths[:, None]).float()
            mean = (waves * keep).sum(1, keepdim=True) / lengths[:, None].clamp_min(1)
            std = (((waves - mean) * keep).pow(2).sum(1, keepdim=True) / lengths[:, None].clamp_min(1)).sqrt()
            normed = (waves - mean) / (std + 1e-7) * keep
            x = self.model(normed.to(self.model.dtype), attention_mask=keep.long()).last_hidden_state
        if self.cfg.frame_pool > 1:
            x = F.avg_pool1d(x.transpose(1, 2), self.cfg.frame_pool, ceil_mode=True).transpose(1, 2)
        n_frames = torch.div(
            lengths + self.samples_per_frame - 1, self.samples_per_frame, rounding_mode="floor"
        )
        return x.float(), n_frames.clamp(max=x.shape[1])


def build_backbone(cfg: EncoderConfig) -> nn.Module:
    """The backbone named by ``cfg.backbone``: built-in, an HF model type built from config, or a local folder."""
    if cfg.backbone == "builtin":
        return BuiltinBackbone(cfg)
    if cfg.frame_stats:  # the shortcut lives in the built-in backbone; an HF one would silently ignore it
        raise MustError(f"model.encoder.frame_stats needs the built-in backbone, not {cfg.backbone!r}")
    from transformers import AutoConfig, AutoModel

    path = Path(cfg.backbone)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise MustError(
                f"encoder backbone folder {path} has no config.json (not a Hugging Face model folder)"
            )
        model = AutoModel.from_pretrained(str(path), trust_remote_code=cfg.trust_remote_code)
    elif "/" in cfg.backbone or cfg.backbone.startswith("."):
        raise MustError(f"encoder backbone folder not found: {cfg.backbone}")
    else:
        try:
            hf_cfg = AutoConfig.for_model(cfg.backbone, **dict(cfg.hf_config))
        except ValueError as exc:
            raise MustError(
                f"unknown encoder backbone {cfg.backbone!r}: use 'builtin', an HF audio model type "
                "(hubert, wav2vec2, whisper) or a local folder"
            ) from exc
        model = AutoModel.from_config(hf_cfg)
    return wrap_hf_backbone(model, cfg)


def wrap_hf_backbone(model: nn.Module, cfg: EncoderConfig) -> HFBackbone:
    """An HF audio model as a backbone (a Whisper model contributes its encoder only)."""
    if model.config.model_type == "whisper" and hasattr(model, "get_encoder"):
        model = model.get_encoder()
    return HFBackbone(model, cfg)


def _sinusoid(positions: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    """(...,) positions -> (..., dim) sin/cos features."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device).float() / half)
    angles = positions[..., None].float() * freqs
    out = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return F.pad(out, (0, dim - 2 * half))


# ----------------------------------------------------------------------------------------------
# Windows


def plan_windows(duration: float, window: float, overlap: float) -> list[tuple[float, float, float, float]]:
    """Windows covering ``[0, duration]``: a list of (start, end, keep_from, keep_to), seconds.

    Window ``j`` starts at ``j * (window - overlap)``; a frame is kept from the window where it is most
    central, i.e. between the midpoints of the overlaps with its neighbours.
    """
    if duration <= window:
        return [(0.0, duration, 0.0, math.inf)]
    hop = window - overlap
    if hop <= 0:
        raise MustError(f"encoder window_seconds ({window}) must exceed overlap_seconds ({overlap})")
    n = math.ceil((duration - window) / hop) + 1
    starts = [j * hop for j in range(n)]
    out = []
    for j, s in enumerate(starts):
        keep_from = 0.0 if j == 0 else s + overlap / 2
        keep_to = math.inf if j == n - 1 else starts[j + 1] + overlap / 2
        out.append((s, min(s + window, duration), keep_from, keep_to))
    return out


@dataclass
class EncoderFrames:
    """Frame-level output of the encoder on whole tracks (padded to the longest in the batch)."""

    features: torch.Tensor
    """(B, F, D) backbone features."""
    times: torch.Tensor
    """(B, F) frame centre times, seconds from the track start."""
    mask: torch.Tensor
    """(B, F) bool, True for real frames."""
    transition_logits: torch.Tensor
    """(B, F) transition logits (sigmoid -> probability of a transition in that frame)."""
    source_logits: torch.Tensor | None
    """(B, F, num_sources) source-activity logits, or None without the head."""
    durations: torch.Tensor
    """(B,) track lengths, seconds."""
    frame_rate: float
    """Frames per second."""
    windows: int
    """Backbone windows encoded."""
    encoder_calls: int
    """Backbone forward calls (windows are batched)."""


class MusTEncoder(nn.Module):
    """Backbone + transition head + mood head (+ source head); usable alone in stage 1."""

    def __init__(self, cfg: EncoderConfig, backbone: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone if backbone is not None else build_backbone(cfg)
        d = self.backbone.hidden_size
        self.hidden_size = d
        k = cfg.transition_kernel
        self.transition_head = nn.Sequential(
            nn.Conv1d(d, d // 2, k, padding=k // 2), nn.GELU(), nn.Conv1d(d // 2, 1, 1)
        )
        self.mood_head = nn.Linear(2 * d, 1)
        self.source_head = nn.Linear(d, cfg.num_sources) if cfg.num_sources > 0 else None
        window = min(cfg.window_seconds, getattr(self.backbone, "max_window_seconds", math.inf))
        self.window_seconds = window

    @property
    def frame_rate(self) -> float:
        """Frames per second of the encoder output."""
        return self.backbone.frame_rate

    # --- heads -------------------------------------------------------------------------------

    def transition_logits(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, F, D) features, (B, F) mask -> (B, F) transition logits (1-D conv over time)."""
        x = (features * mask[..., None]).transpose(1, 2)
        return self.transition_head(x).squeeze(1)

    def source_logits(self, features: torch.Tensor) -> torch.Tensor | None:
        """(B, F, D) -> (B, F, num_sources) source-activity logits, or None without the head."""
        return None if self.source_head is None else self.source_head(features)

    def mood_change(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """A window of frames (B, W, D) centred on a time -> (B,) predicted arousal change (after - before)."""
        if mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        n = mask.sum(1, keepdim=True)
        idx = torch.arange(features.shape[1], device=features.device)[None]
        first = (idx < n / 2) & mask
        second = (idx >= n / 2) & mask

        def mean(sel):
            return (features * sel[..., None]).sum(1) / sel.sum(1, keepdim=True).clamp_min(1)

        return self.mood_head(torch.cat([mean(first), mean(second)], dim=-1)).squeeze(-1)

    def mood_at(self, frames: EncoderFrames, centres: torch.Tensor) -> torch.Tensor:
        """Arousal change at ``centres`` (B,) seconds, from the ``mood_window_seconds`` of frames around it."""
        half = self.cfg.mood_window_seconds / 2
        sel = frames.mask & ((frames.times - centres[:, None]).abs() <= half)
        w = int(sel.sum(1).max().clamp_min(1))
        order = torch.argsort((~sel).float(), dim=1, stable=True)[:, :w]  # the selected frames, in time order
        feats = torch.gather(frames.features, 1, order[..., None].expand(-1, -1, frames.features.shape[-1]))
        return self.mood_change(feats, torch.gather(sel, 1, order))

    # --- encoding ----------------------------------------------------------------------------

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Clips already at the encoder rate, (B, S) + lengths (B,) samples -> frame outputs of one window each.

        Returns ``features`` (B, F, D), ``mask`` (B, F), ``times`` (B, F) seconds, ``transition_logits`` (B, F)
        and ``source_logits`` (B, F, K) when the head exists. For stage 1 on clips up to a window long.
        """
        if lengths is None:
            lengths = torch.full((waves.shape[0],), waves.shape[1], device=waves.device)
        feats, n_frames = self.backbone(waves, lengths)
        mask = torch.arange(feats.shape[1], device=feats.device)[None] < n_frames[:, None]
        times = (torch.arange(feats.shape[1], device=feats.device).float()[None] + 0.5) / self.frame_rate
        out = {
            "features": feats,
            "mask": mask,
            "times": times.expand_as(mask),
            "transition_logits": self.transition_logits(feats, mask),
        }
        if self.source_head is not None:
            out["source_logits"] = self.source_head(feats)
        return out

    def encode_frames(self, waveforms, sample_rate: int) -> EncoderFrames:
        """Whole tracks of any length -> frames on one absolute time axis (windowed, stitched).

        ``waveforms``: list of 1-D float tensors/arrays (samples,) at ``sample_rate`` Hz.
        """
        device = next(self.parameters()).device
        sr = self.cfg.sample_rate
        waves = [resample(to_mono_float(w), sample_rate, sr) for w in waveforms]
        durations = [len(w) / sr for w in waves]
        if any(d <= 0 for d in durations):
            raise MustError("cannot encode an empty waveform (0 samples)")
        plans = [plan_windows(d, self.window_seconds, self.cfg.overlap_seconds) for d in durations]
        chunks, owners = [], []
        for i, (w, plan) in enumerate(zip(waves, plans)):
            for start, end, keep_from, keep_to in plan:
                chunks.append(w[int(round(start * sr)) : int(round(end * sr))])
                owners.append((i, start, keep_from, keep_to))
        width = max(len(c) for c in chunks)
        per_item: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in waves]
        calls = 0
        for lo in range(0, len(chunks), self.cfg.max_windows_per_call):
            batch = chunks[lo : lo + self.cfg.max_windows_per_call]
            x = torch.zeros(len(batch), width, device=device)
            for j, c in enumerate(batch):
                x[j, : len(c)] = torch.from_numpy(np.ascontiguousarray(c)).to(device)
            lengths = torch.tensor([len(c) for c in batch], device=device)
            feats, n_frames = self.backbone(x, lengths)
            calls += 1
            for j in range(len(batch)):
                item, start, keep_from, keep_to = owners[lo + j]
                t = start + (torch.arange(int(n_frames[j]), device=device).float() + 0.5) / self.frame_rate
                sel = (t >= keep_from) & (t < keep_to) & (t < durations[item] + 0.5 / self.frame_rate)
                per_item[item].append((feats[j, : int(n_frames[j])][sel], t[sel]))
        feats_list = [torch.cat([f for f, _ in parts]) for parts in per_item]
        times_list = [torch.cat([t for _, t in parts]) for parts in per_item]
        n_max = max(len(f) for f in feats_list)
        d = feats_list[0].shape[-1]
        features = torch.zeros(len(waves), n_max, d, device=device)
        times = torch.zeros(len(waves), n_max, device=device)
        mask = torch.zeros(len(waves), n_max, dtype=torch.bool, device=device)
        for i, (f, t) in enumerate(zip(feats_list, times_list)):
            features[i, : len(f)], times[i, : len(t)], mask[i, : len(f)] = f, t, True
        return EncoderFrames(
            features=features,
            times=times,
            mask=mask,
            transition_logits=self.transition_logits(features, mask),
            source_logits=self.source_logits(features),
            durations=torch.tensor(durations, device=device),
            frame_rate=self.frame_rate,
            windows=len(chunks),
            encoder_calls=calls,
        )

"""Waveform helpers for the model: mono, resampling, log-mel, loading a file (soundfile)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from must.errors import MustError


def to_mono_float(wave) -> np.ndarray:
    """A 1-D float32 array from a tensor/array of shape (samples,) or (samples, channels)."""
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu().float().numpy()
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        # soundfile gives (samples, channels); a (channels, samples) array has few rows.
        wave = wave.mean(axis=1) if wave.shape[1] <= 8 else wave.mean(axis=0)
    if wave.ndim != 1:
        raise MustError(f"expected a 1-D waveform (samples,), got shape {wave.shape}")
    return wave


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling by FFT (whole signal at once: exact, no scipy/torchaudio needed)."""
    if orig_sr == target_sr or len(wave) == 0:
        return wave.astype(np.float32, copy=False)
    n_out = int(round(len(wave) * target_sr / orig_sr))
    spec = np.fft.rfft(wave.astype(np.float64))
    n_keep = min(len(spec), n_out // 2 + 1)
    out_spec = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    out_spec[:n_keep] = spec[:n_keep]
    out = np.fft.irfft(out_spec, n=n_out) * (n_out / len(wave))
    return out.astype(np.float32)


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read an audio file (wav, flac, ogg, mp3 via soundfile) as mono float32 at ``sample_rate``."""
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise MustError(f"audio file not found: {path}")
    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises its own error types per format
        raise MustError(f"cannot read audio file {path}: {exc}") from exc
    return resample(wave.mean(axis=1), sr, sample_rate)


@lru_cache(maxsize=8)
def _mel_filters(n_fft: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=sample_rate / 2,
        sampling_rate=sample_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(fb).float()  # (freq, mels)


def log_mel(
    waves: torch.Tensor, sample_rate: int, n_mels: int, hop: int = 160, n_fft: int = 400
) -> torch.Tensor:
    """Log-mel spectrogram, (B, S) samples -> (B, n_mels, S // hop) frames (hop 10 ms at 16 kHz).

    ``S`` must be a multiple of ``hop``; the frame count is exactly ``S // hop`` so frame times are known.
    """
    window = torch.hann_window(n_fft, device=waves.device)
    spec = torch.stft(waves.float(), n_fft, hop, window=window, center=True, return_complex=True)
    power = spec.abs().pow(2)[..., : waves.shape[-1] // hop]  # (B, freq, frames)
    mel = torch.einsum("bft,fm->bmt", power, _mel_filters(n_fft, n_mels, sample_rate).to(waves.device))
    # Whisper-style compression: log10, clamp 8 decades below the max, scale to about [-1, 1].
    logmel = torch.log10(mel.clamp_min(1e-10))
    logmel = torch.maximum(logmel, logmel.amax(dim=(1, 2), keepdim=True) - 8.0)
    return (logmel + 4.0) / 4.0

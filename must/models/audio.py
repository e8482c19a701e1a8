"""Waveform helpers for the model: mono, log-mel. Loading and resampling are the data module's
(:func:`must.data.real.load_audio`, :func:`must.data.real.resample`), re-exported here."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from must.data.real import load_audio, resample  # noqa: F401 - one implementation, re-exported
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
    spec = spec[..., : waves.shape[-1] // hop]
    # |z|^2 as re^2 + im^2: a third of the time of abs().pow(2) (no square root), equal to 1-2 ulp.
    power = spec.real.square() + spec.imag.square()  # (B, freq, frames)
    mel = torch.einsum("bft,fm->bmt", power, _mel_filters(n_fft, n_mels, sample_rate).to(waves.device))
    # Whisper-style compression: log10, clamp 8 decades below the max, scale to about [-1, 1].
    logmel = torch.log10(mel.clamp_min(1e-10))
    logmel = torch.maximum(logmel, logmel.amax(dim=(1, 2), keepdim=True) - 8.0)
    return (logmel + 4.0) / 4.0

"""Typed configuration of the recipe's ``data`` block."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    """Where training and evaluation data come from. Filled in by the data module."""

    source: str = "synthetic"
    """``synthetic`` (rendered on the fly), or ``mustbench`` (a parquet plus an audio folder)."""
    sample_rate: int = 16000
    """Sample rate every waveform is brought to, Hz."""

"""Typed configuration of the recipe's ``model`` block."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    """The audio-language model. Filled in by the models module."""

    llm: str = "tiny"
    """LLM preset (``tiny``, ``smollm2-135m``) or a local Hugging Face folder."""

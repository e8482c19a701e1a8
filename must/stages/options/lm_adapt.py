"""The ``options:`` of an ``lm_adapt`` stage, in a module free of torch and lightning so that checking a
recipe (``must validate``) does not import the stage; ``must.stages.lm_adapt.Options`` is this class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

CAPTION_PROMPTS = [
    "Describe this music with timestamps.",
    "Caption the track section by section, with times.",
    "What happens in this music, and when?",
]


@dataclass
class Options:
    """The ``options:`` block of an ``lm_adapt`` stage."""

    batch_size: int = 4
    """Tracks (captions) per step."""
    lr: float = 1e-3
    """AdamW learning rate (default for parameters no ``lrs`` glob matches)."""
    lrs: Dict[str, float] = field(default_factory=dict)
    """Learning rate per parameter-name glob, first match wins (e.g. ``{"llm.*": 3e-4}``)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 10
    """Linear learning-rate warm-up, steps (then cosine decay to 10 %)."""
    train: Optional[List[str]] = None
    """Parameter globs to train; None: projector, time embedding and the whole LLM (its LoRA adapters,
    if any, stay untouched for stage 3)."""
    freeze: List[str] = field(default_factory=list)
    """Parameter globs kept frozen even if ``train`` matches them."""
    prompts: List[str] = field(default_factory=lambda: list(CAPTION_PROMPTS))
    """Caption prompts; each track gets one at random."""
    reuse_encodings: bool = True
    """Encode each track once and reuse it (only while no encoder parameter trains)."""
    max_caption_tokens: int = 1024
    """Cut captions to this many tokens (a 60 s synthetic track's caption is up to ~600)."""

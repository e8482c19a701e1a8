"""The ``options:`` of an ``lm_adapt`` stage, in a module free of torch and lightning so that checking a
recipe (``must validate``) does not import the stage; ``must.stages.lm_adapt.Options`` is this class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from must.stages.options.groups import Evaluation, Optimisation, Parameters

CAPTION_PROMPTS = [
    "Describe this music with timestamps.",
    "Caption the track section by section, with times.",
    "What happens in this music, and when?",
]


@dataclass
class Options(Optimisation, Parameters, Evaluation):
    """The ``options:`` block of an ``lm_adapt`` stage."""

    batch_size: int = 4
    """Tracks (captions) per step."""
    train: Optional[List[str]] = None
    """Parameter globs to train; None: projector, time embedding and the whole LLM (its LoRA adapters,
    if any, stay untouched for stage 3)."""
    eval_final: bool = False
    """After training, score the model into ``<stage>/eval/`` (off: captions teach no answer format)."""
    prompts: List[str] = field(default_factory=lambda: list(CAPTION_PROMPTS))
    """Caption prompts; each track gets one at random."""
    reuse_encodings: bool = True
    """Encode each track once and reuse it (only while no encoder parameter trains)."""
    max_caption_tokens: int = 1024
    """Cut captions to this many tokens (a 60 s synthetic track's caption is up to ~600)."""

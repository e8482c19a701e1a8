"""The ``options:`` of an ``sft`` stage, in a module free of torch and lightning so that checking a
recipe (``must validate``) does not import the stage; ``must.stages.sft.Options`` is this class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class Options:
    """The ``options:`` block of an ``sft`` stage."""

    batch_size: int = 2
    """Clips per step."""
    questions_per_clip: int = 8
    """Questions asked of each clip in one packed sequence (fewer when the clip has fewer)."""
    tasks: Optional[List[str]] = None
    """Tasks to train (None: ``data.tasks``)."""
    task_weights: Dict[str, float] = field(default_factory=dict)
    """Loss weight per task in the balanced mean (missing tasks weigh 1)."""
    type_weights: Dict[str, float] = field(default_factory=dict)
    """How often each question type is drawn for a clip, relative (types: ``TSG-onset``, ``TSG-offset``,
    ``LTR``, ``TAD``, ``GTO``, ``MTR``; missing weigh 1)."""
    lr: float = 1e-3
    """AdamW learning rate (default for parameters no ``lrs`` glob matches)."""
    lrs: Dict[str, float] = field(default_factory=dict)
    """Learning rate per parameter-name glob, first match wins (e.g. ``{"projector.*": 2e-3}``)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 10
    """Linear learning-rate warm-up, steps (then cosine decay to 10 %)."""
    train: List[str] = field(default_factory=lambda: ["projector.*", "time_embedding.*", "*lora_*"])
    """Parameter globs to train (as in the paper: projector and LLM LoRA; add ``encoder.*`` parts if wanted)."""
    freeze: List[str] = field(default_factory=list)
    """Parameter globs kept frozen even if ``train`` matches them."""
    reuse_encodings: bool = True
    """Encode each track once and reuse it (only while no encoder parameter trains)."""
    val_max_new_tokens: int = 40
    """Generated tokens per answer in validation and evaluation."""
    eval_init: bool = False
    """Before training, evaluate the starting model on the test split into ``<stage>/eval_init/``."""
    eval_max_tracks: Optional[int] = None
    """Evaluate on the first N test tracks only (None: ``data.test_tracks``)."""

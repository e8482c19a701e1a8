"""Option groups every stage's ``Options`` is made of, so that one name means one thing in all four
stages (``lr``, ``train``, ``eval_init`` ...). Plain dataclasses holding fields only; a stage's ``Options``
lists them as bases and adds its own fields, redeclaring a shared field only to change its default.

Names that were renamed are refused with the new one (``must.config.RENAMED_OPTIONS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional

SCHEDULES = ("cosine", "constant")


@dataclass
class Optimisation:
    """AdamW over the trainable parameters, the same in every stage."""

    lr: float = 1e-3
    """AdamW learning rate (default for parameters no ``lrs`` glob matches)."""
    lrs: Dict[str, float] = field(default_factory=dict)
    """Learning rate per parameter-name glob, first match wins (e.g. ``{"projector.*": 2e-3}``)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 10
    """Linear learning-rate warm-up, steps."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """After warm-up: ``cosine`` decay to 10 % at ``trainer.max_steps``, or ``constant``."""


@dataclass
class Parameters:
    """What a stage trains: parameter-name globs (``encoder.backbone.*``, ``projector.*``, ``llm.*``;
    LoRA weights contain ``lora_``). The stage's ``select_trainable`` applies them; ``must plan`` calls the same."""

    train: Optional[List[str]] = None
    """Parameter globs to train (None: the stage's default, in its docs)."""
    freeze: List[str] = field(default_factory=list)
    """Parameter globs kept frozen even if ``train`` matches them."""


@dataclass
class Evaluation:
    """When and how a stage scores its model on the evaluation split (``<stage>/eval_init/``, ``<stage>/eval/``)."""

    eval_init: bool = False
    """Before training, score the starting model into ``<stage>/eval_init/``."""
    eval_final: bool = True
    """After training, score the trained model into ``<stage>/eval/``."""
    eval_max_new_tokens: int = 40
    """Generated tokens per answer when evaluating (and validating)."""
    eval_max_tracks: Optional[int] = None
    """Evaluate on the first N test tracks only (None: ``data.test_tracks``)."""

"""The ``options:`` of an ``encoder_adapt`` stage, in a module free of torch and lightning so that checking a
recipe (``must validate``) does not import the stage; ``must.stages.encoder_adapt.Options`` is this class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Optional

from must.stages.options.groups import Evaluation, Optimisation, Parameters


@dataclass
class Options(Optimisation, Parameters, Evaluation):
    """The ``options:`` block of an ``encoder_adapt`` stage."""

    batch_size: int = 4
    """Whole tracks per step."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    train: Optional[List[str]] = None
    """Parameter globs to train; None: the backbone's LoRA if it has one, else the whole encoder, plus the heads."""
    eval_final: bool = False
    """After training, score the model into ``<stage>/eval/`` (off: after stage 1 the LLM is still untrained)."""
    transition_loss: Literal["bce", "focal"] = "bce"
    """``bce`` or ``focal`` on the transition curve."""
    focal_gamma: float = 2.0
    """Focal loss exponent."""
    dice_weight: float = 0.0
    """Weight of the soft Dice loss added to the transition loss (0 = off)."""
    pos_weight: float = 4.0
    """BCE weight of the positive side of the transition target (boundaries are rare)."""
    mood_loss: Literal["mse", "ccc"] = "mse"
    """``mse`` or ``ccc`` (1 - concordance correlation) on the arousal change."""
    transition_weight: float = 1.0
    """Weight of the transition loss."""
    mood_weight: float = 1.0
    """Weight of the mood loss."""
    source_weight: float = 1.0
    """Weight of the source-activity loss (needs ``model.encoder.num_sources`` > 0; 0 = off)."""
    source_crops: int = 0
    """Extra crops a step, each from a random training track, for the source-activity loss only (0 = off):
    source activity needs many tracks a step, which whole tracks cannot give (benchmarks/results/encoder_probe.md:
    64 crops of 2 s reach source F1 0.86 where 4 whole tracks stay at 0.75)."""
    source_crop_seconds: float = 2.0
    """Length of each ``source_crops`` crop, seconds."""
    peak_threshold: float = 0.3
    """Validation: a transition-curve peak above this probability is a predicted boundary."""
    peak_min_gap_seconds: float = 2.0
    """Validation: predicted boundaries are at least this far apart, seconds (the higher peak wins); sections
    of the synthetic tracks last 7 s or more, so up to ~6 s only removes doubled peaks."""

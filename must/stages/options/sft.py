"""The ``options:`` of an ``sft`` stage, in a module free of torch and lightning so that checking a
recipe (``must validate``) does not import the stage; ``must.stages.sft.Options`` is this class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from must.stages.options.groups import Evaluation, Optimisation, Parameters


@dataclass
class Options(Optimisation, Parameters, Evaluation):
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
    train: Optional[List[str]] = field(default_factory=lambda: ["projector.*", "time_embedding.*", "*lora_*"])
    """Parameter globs to train (as in the paper: projector and LLM LoRA; add ``encoder.*`` parts if wanted)."""
    reuse_encodings: bool = True
    """Encode each track once and reuse it (only while no encoder parameter trains)."""

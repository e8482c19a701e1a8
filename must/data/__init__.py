"""Data: the core types, synthetic music with exact labels, task builders and real-data loading.

Torch datasets live in :mod:`must.data.datasets`, real files in :mod:`must.data.real` (both import torch).
"""

from must.data.synth import SOURCE_NAMES, caption_text, generate_track
from must.data.targets import mood_change_clips, source_activity, transition_curve
from must.data.tasks import build_qas, most_frequent_letter, trivial_answer
from must.data.types import QA, TASKS, ArousalSegment, Caption, Track, Transition

__all__ = [
    "QA",
    "SOURCE_NAMES",
    "TASKS",
    "ArousalSegment",
    "Caption",
    "Track",
    "Transition",
    "build_qas",
    "caption_text",
    "generate_track",
    "mood_change_clips",
    "most_frequent_letter",
    "source_activity",
    "transition_curve",
    "trivial_answer",
]

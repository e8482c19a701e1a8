"""Data: the core types, synthetic music with exact labels, task builders and real-data loading."""

from must.data.types import QA, ArousalSegment, Caption, Track, Transition

__all__ = ["QA", "ArousalSegment", "Caption", "Track", "Transition"]

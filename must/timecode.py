"""Writing times the way MusTBench does: ``M:SS`` (``H:MM:SS`` past an hour), intervals with an en dash.

Parsing lives in :mod:`must.parsing`; this module only formats, so that data builders, prompts and
reports all agree on one spelling.
"""

from __future__ import annotations

EN_DASH = "\u2013"


def format_time(seconds: float) -> str:
    """Format ``seconds`` (>= 0) as ``M:SS``, or ``H:MM:SS`` from one hour on; rounds to the second."""
    if seconds < 0:
        raise ValueError(f"time must be >= 0 seconds, got {seconds}")
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def format_interval(start: float, end: float, dash: str = EN_DASH) -> str:
    """Format an interval in seconds as ``M:SS–M:SS`` (en dash, as the benchmark's references)."""
    if end < start:
        raise ValueError(f"interval ends before it starts: {start} > {end}")
    return f"{format_time(start)}{dash}{format_time(end)}"

"""Where a GRPO run's time goes, for benchmarks: give a :class:`Timings` to ``GRPOStage(timings=...)`` and read
it after the fit. Without one the stage measures nothing (its parts run under a no-op context)."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator


class Timings:
    """Cumulative seconds and counts per part of a GRPO step, over a whole fit.

    Parts: ``encode`` (the policy's prompt encoding), ``sample`` (prompt embedding + decoding; split into
    ``prefill`` and ``decode`` by :func:`must.rl.decoding.sample`), ``reward`` (decoding to text + the reward
    functions), ``reference`` (the adapters-off log-prob pass), ``update`` (one optimisation pass: forward,
    backward, step). ``counts["rollouts"]`` is the number of completions sampled.
    """

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        """Part -> seconds spent in it."""
        self.counts: defaultdict[str, int] = defaultdict(int)
        """Part -> times it ran; ``rollouts`` -> completions sampled."""

    @contextlib.contextmanager
    def timed(self, part: str) -> Iterator[None]:
        """Add the seconds the block takes to ``seconds[part]`` and one to ``counts[part]``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - t0
            self.counts[part] += 1


def timed(timings: Timings | None, part: str) -> contextlib.AbstractContextManager:
    """``timings.timed(part)``, or a no-op when there is no :class:`Timings`."""
    return contextlib.nullcontext() if timings is None else timings.timed(part)

"""The real fixtures, read from ``../shared/fixtures`` relative to the repository root (CI lays ``shared/``
beside the clone). A test that needs one skips, naming the path, where a clone has no ``../shared``."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
"""The repository root."""
FIXTURES = ROOT / ".." / "shared" / "fixtures"
"""The shared fixtures folder (``../shared/fixtures`` from the repository root)."""
DEMO = FIXTURES / "mustbench_demo"
"""One real MusTBench row (``mustbench_demo.parquet``), its real track (``1023323.mp3``, 97.4 s), the published table."""


def _reason(path: Path) -> str:
    return f"needs the shared fixture ../shared/fixtures/{path.relative_to(FIXTURES)} (not found at {path})"


def shared_fixture(*parts: str) -> Path:
    """The path of a shared fixture file, e.g. ``shared_fixture("mustbench_demo", "1023323.mp3")``; skips
    the calling test (naming the path) when it is absent."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(_reason(path))
    return path


def needs_fixture(*parts: str) -> pytest.MarkDecorator:
    """A ``skipif`` mark for tests (or helpers' callers) that read ``../shared/fixtures/<parts>``."""
    path = FIXTURES.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=_reason(path))

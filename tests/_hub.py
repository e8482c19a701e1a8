"""A Hugging Face cache laid out as ``hf download`` leaves it, built offline in a test's tmp folder."""

from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cached_snapshot(cache: Path, repo_id: str) -> Path:
    """``cache/models--org--name/snapshots/<commit>/`` (created, empty) with ``refs/main`` naming it;
    the caller saves the model's files into the returned folder."""
    org, name = repo_id.split("/")
    repo = cache / f"models--{org}--{name}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot

"""Writing files so that a failure (a full disk, a read-only mount) leaves the previous file whole, no temp
file behind, and a message naming the path instead of a traceback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from must.errors import MustError

TMP_SUFFIX = ".tmp"


def ensure_dir(path: str | Path, what: str) -> Path:
    """Create folder ``path`` (and its parents); MustError naming ``what`` (e.g. ``key 'output_dir'``) when it
    cannot be: under ``/proc``, below a file, on a read-only mount, without permission."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        file = _first_file(path)
        reason = f"{file} is a file, not a folder" if file is not None else (exc.strerror or str(exc))
        raise MustError(f"{what} {path}: cannot create it ({reason})") from None
    return path


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and a rename: a reader sees the old or the new file, never
    half of one. On failure the temp file is removed and the OSError raised (the old file stays as it was)."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def write_or_name(path: str | Path, text: str) -> None:
    """:func:`write_atomic`, its OSError as a MustError naming the file."""
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise MustError(f"cannot write {path}: {exc.strerror or exc}") from None


def remove_quietly(path: str | Path) -> None:
    """Remove a file or folder if it is there; never raises (used on paths that are already failing)."""
    path = Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def _first_file(path: Path) -> Path | None:
    """The first ancestor of ``path`` (or itself) that exists and is not a folder."""
    for p in [*reversed(path.parents), path]:
        if p.exists() and not p.is_dir():
            return p
    return None

"""One run per output folder: ``OUTPUT_DIR/.must.lock``, held with ``flock`` for the whole ``must run``.

The kernel drops a ``flock`` when its process ends, however it ends (``kill -9`` included), so a lock file
left behind by a dead run is told from a live one by trying the lock, never by guessing from a PID. The
file carries the holder's PID, host, start time and command only so that a refusal can name the holder.
POSIX only (``fcntl``); on Linux ``flock`` also works across NFS clients (the kernel maps it to a POSIX lock).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from must.errors import MustError

LOCK_NAME = ".must.lock"


@dataclass
class LockHolder:
    """Who holds (or last held) an output folder's lock, as written in the lock file."""

    pid: int | None = None
    """Process id of the ``must run`` holding it."""
    host: str | None = None
    """Machine it runs on (a PID means nothing on another host)."""
    started_at: str | None = None
    """When it took the lock (UTC, ISO 8601)."""
    command: str | None = None
    """Its command line."""

    def describe(self) -> str:
        """``PID 123 on host h since T (must run r.yaml)`` with whatever is known."""
        parts = [f"PID {self.pid if self.pid is not None else 'unknown'}"]
        if self.host:
            parts.append(f"on host {self.host}")
        if self.started_at:
            parts.append(f"since {self.started_at}")
        text = " ".join(parts)
        return f"{text} ({self.command})" if self.command else text


class OutputLock:
    """The lock of one output folder: ``with OutputLock(out):`` runs the body as the folder's only run.

    A second ``must run`` (with ``--resume`` or not) on a held folder gets a :class:`MustError` naming the
    holder's PID; a lock file whose process is gone is taken over and reported in :attr:`stale`.
    """

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_NAME
        self.fd: int | None = None
        self.stale: LockHolder | None = None
        """The previous holder when its lock file was left behind by a run that ended without releasing it."""

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock or raise MustError naming who holds it."""
        import fcntl

        # Three tries: a holder releasing it unlinks the file, so one we opened just before may be an orphan.
        for _ in range(3):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise MustError(
                    f"output_dir {self.path.parent} is in use by another must run ({holder.describe()}); wait for "
                    "it to finish or stop it: two runs in one folder would train the same stages into the same "
                    f"files (its lock: {self.path})"
                ) from None
            if not _same_file(fd, self.path):
                os.close(fd)
                continue
            previous = _read(fd)
            self.stale = previous if previous.pid is not None else None
            self._write(fd, LockHolder(os.getpid(), socket.gethostname(), _now(), " ".join(_command())))
            self.fd = fd
            return
        raise MustError(f"output_dir {self.path.parent}: could not take its lock {self.path} (it keeps changing)")

    def release(self) -> None:
        """Remove the lock file and drop the lock (closing the descriptor releases the flock)."""
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
        except OSError:
            pass  # a lock file that cannot be removed is stale for the next run, which takes it over
        finally:
            os.close(self.fd)
            self.fd = None

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise MustError(f"output_dir {self.path.parent}: cannot write in it ({exc.strerror})") from None

    def _write(self, fd: int, holder: LockHolder) -> None:
        data = json.dumps(asdict(holder)).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError as exc:
            os.close(fd)
            raise MustError(f"output_dir {self.path.parent}: cannot write its lock file ({exc.strerror})") from None


def describe_stale(stale: LockHolder) -> str:
    """Why a lock file was taken over: its process is gone (or the PID now belongs to another process)."""
    gone = stale.pid is not None and not _alive(stale.pid)
    why = "that process is gone" if gone else "that process no longer holds it"
    return f"took over a stale lock left by {stale.describe()}: {why} (a run killed before it could release it)"


def _read(fd: int) -> LockHolder:
    try:
        raw = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return LockHolder(**{k: raw.get(k) for k in ("pid", "host", "started_at", "command")})
    except (OSError, ValueError, TypeError):
        return LockHolder()


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not one a releasing holder unlinked meanwhile)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _command() -> list[str]:
    argv = list(sys.argv)
    if argv and argv[0].endswith(("cli.py", "__main__.py")):
        argv[0] = "must"
    return [Path(argv[0]).name, *argv[1:]] if argv else []


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

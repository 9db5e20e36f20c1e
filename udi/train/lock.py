"""One training process per run directory: the lock file ``RUN_DIR/.lock``.

The lock is created with ``O_CREAT | O_EXCL`` (exactly one process succeeds) and holds the
holder's pid, host and start time as JSON. A lock whose pid is no longer alive on this host
(a process killed with SIGKILL, a crashed node restarted) is stale and taken over; a lock
from another host is never judged stale (its pid means nothing here): the error says to
remove the file if that process is gone. Under DDP only the main process holds it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

LOCK = ".lock"
# A lock file without a complete record (its holder is between creating and writing it, or
# died there) is judged stale once it is this old, in seconds.
UNWRITTEN_GRACE_S = 10.0

_HELD: set[str] = set()  # lock files this process holds (another Trainer here must not take them over)


class RunLockedError(OSError):
    """Another live process trains into the same run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    except OSError:
        return False
    return True


def _read(path: Path) -> dict | None:
    """The lock's record, or None when it has none (being written, damaged, gone)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def holder(folder: str | Path) -> dict | None:
    """The record of a live process other than a stale one that holds ``folder``'s lock, else None."""
    path = Path(folder) / LOCK
    if not path.exists():
        return None
    if str(path) in _HELD:
        return {"pid": os.getpid(), "host": socket.gethostname(), "this_process": True}
    record = _read(path)
    if record is None:
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:  # removed meanwhile
            return None
        return None if age > UNWRITTEN_GRACE_S else {"pid": None, "host": None}
    if record.get("host") != socket.gethostname():
        return record
    if record["pid"] == os.getpid():  # not held here (see _HELD): our pid was reused from a dead holder
        return None
    return record if _alive(record["pid"]) else None


def _refusal(path: Path, record: dict) -> RunLockedError:
    folder = path.parent
    if record.get("this_process"):
        who = "this process (another Trainer on the same directory)"
    elif record.get("pid") is None:
        who = "a process that is creating the lock just now"
    else:
        who = f"process {record['pid']} on {record.get('host')}"
        if record.get("started"):
            who += f" (since {record['started']})"
    return RunLockedError(
        f"{folder} is in use by {who}: another `udi pretrain` is training into it (lock file {path}). "
        f"Wait for it to end, stop it, or use another --out; if that process is gone (e.g. on another "
        f"host), delete {path}")


def check_free(folder: str | Path) -> None:
    """Raise ``RunLockedError`` when a live process holds ``folder``'s lock (before reading its files)."""
    live = holder(folder)
    if live is not None:
        raise _refusal(Path(folder) / LOCK, live)


class RunLock:
    """``with RunLock(folder):`` holds ``folder/.lock`` (created with the folder) or raises
    ``RunLockedError`` naming the live holder; a stale lock is taken over. Released on exit."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                live = holder(self.path.parent)
                if live is not None:
                    raise _refusal(self.path, live) from None
                self._remove_stale()
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(record) + "\n")
            self.held = True
            _HELD.add(str(self.path))
            return
        raise RunLockedError(f"could not take the lock {self.path}: other processes keep creating it")

    def _remove_stale(self) -> None:
        """Remove the stale lock, unless it changed since it was judged (another process took it over)."""
        try:
            before = self.path.read_text()
            if holder(self.path.parent) is None and self.path.read_text() == before:
                self.path.unlink(missing_ok=True)
        except FileNotFoundError:  # removed meanwhile: try to create it again
            pass

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        _HELD.discard(str(self.path))
        record = _read(self.path)
        if record is not None and record.get("pid") == os.getpid():  # ours: not taken over meanwhile
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

"""One writer per folder: an OS file lock that a killed process cannot leave behind.

``with folder_lock(RUN):`` holds an exclusive ``fcntl.flock`` on ``RUN/.lock`` for the block::

    RUN/
      .lock     {"pid": 4121, "command": "nightact train ...", "started": "2026-11-26T12:00:00Z"}
      ...       whatever the command writes

A second process that asks for the same folder is refused at once with
:class:`FolderLockedError`, whose one-line message names the holder (its pid, command and start
time, read from the lock file). The kernel drops a flock when the process holding it dies, however
it dies, so a SIGKILLed holder leaves nothing stale: the lock file stays (removing it would let two
processes lock two different files) but nobody holds it, and the next command takes it.

Within one process the lock is re-entrant: a command that locks a folder and then calls a function
that locks the same folder again (``demo`` calling ``train``) goes on. Locks are not shared with
forked children that outlive their parent in any useful way: keep them to the process that writes.

Keras-free: the data commands take it too.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "LOCK_NAME",
    "folder_lock",
    "FolderLockedError",
    "lock_holder",
]

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class FolderLockedError(RuntimeError):
    """Another process holds the folder's lock."""


# Folders this process holds: resolved path -> (open lock file, how many nested holders).
_held: dict[Path, list] = {}
_held_guard = threading.Lock()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold ``FOLDER/.lock`` for the block; refuse at once if another process holds it.

    Args:
        folder: the folder to guard; created (with its parents) if missing.
        command: what to name this holder in a refusal; default: this process's command line.

    Yields:
        The lock file's path.

    Raises:
        FolderLockedError: another process holds the lock; the message names it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    path = key / LOCK_NAME
    with _held_guard:
        if key in _held:
            _held[key][1] += 1
        else:
            _held[key] = [_acquire(path, command), 1]
    try:
        yield path
    finally:
        with _held_guard:
            _held[key][1] -= 1
            if _held[key][1] == 0:
                handle = _held.pop(key)[0]
                # Unlock before closing: the lock file stays, but nobody holds it.
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
                handle.close()


def lock_holder(folder: str | os.PathLike) -> dict | None:
    """Who holds ``FOLDER/.lock`` now, as written in it; None if nobody does."""
    path = Path(folder) / LOCK_NAME
    if not path.exists():
        return None
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            return _read_holder(path)
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return None


def _acquire(path: Path, command: str | None):
    # Opened without truncating: the file may name the current holder, which a refusal reads.
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (kept open while held)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.close()
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        raise FolderLockedError(
            f"{path.parent} is in use by {_describe(_read_holder(path))}; "
            "wait for it to finish or stop it, then run again"
        ) from None
    holder = {
        "pid": os.getpid(),
        "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(holder) + "\n")
    handle.flush()
    log.debug("locked %s for pid %d", path, holder["pid"])
    return handle


def _read_holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        # The holder has the lock but has not written its name yet (a few microseconds).
        return None


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process"
    return (
        f"process {holder.get('pid', '?')} ({holder.get('command', '?')}, "
        f"started {holder.get('started', '?')})"
    )

"""One writer per folder: an OS file lock that a killed process cannot leave behind.

``with folder_lock(RUN):`` holds an exclusive ``fcntl.flock`` on ``RUN/.lock`` for the block::

    RUN/
      .lock     {"pid": 4121, "command": "nightact train ...", "started": "2026-11-26T12:00:00Z"}
      ...       whatever the command writes

A second process that asks for the same folder is refused at once with
:class:`FolderLockedError`, whose one-line message names the holder (its pid, command and start
time, read from the lock file). The kernel drops a flock when the process holding it dies, however
it dies, so a SIGKILLed holder leaves nothing stale: its lock file stays, but nobody holds it, and
the next command takes it.

A holder that ends normally (or with an exception) removes the lock file, so folders do not keep a
``.lock`` after the command. Removing a lock file is safe only with the usual protocol, followed
here: the holder unlinks the file while it still holds the flock, and an acquirer, once it has
the flock, checks that ``FOLDER/.lock`` still names the file it locked (same inode); if not (the
holder unlinked it in between, and perhaps a third process made a new one) it lets go and tries
again. So two processes never hold locks on two different files of one folder.

A folder the lock created (it did not exist before) is removed again at release when the lock was
all it held: a command that fails before it writes anything leaves no empty folder behind.

Within one process the lock is re-entrant: a command that locks a folder and then calls a function
that locks the same folder again (``demo`` calling ``train``) goes on. Locks are not shared with
forked children that outlive their parent in any useful way: keep them to the process that writes.

Keras-free: the data commands take it too.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from nightact.core import files

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


@dataclasses.dataclass
class _Hold:
    """A folder this process holds: its open lock file, nested holders, folders it created."""

    handle: object
    depth: int = 1
    created: list[Path] = dataclasses.field(default_factory=list)  # deepest first


# Folders this process holds, by resolved path.
_held: dict[Path, _Hold] = {}
_held_guard = threading.Lock()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold ``FOLDER/.lock`` for the block; refuse at once if another process holds it.

    Args:
        folder: the folder to guard; created (with its parents) if missing, and removed again
            at release if the lock file was all it held (with the parents it created).
        command: what to name this holder in a refusal; default: this process's command line.

    Yields:
        The lock file's path.

    Raises:
        FolderLockedError: another process holds the lock; the message names it.
    """
    folder = Path(folder)
    with _held_guard:
        key = folder.resolve()
        if key in _held:
            _held[key].depth += 1
        else:
            created = files.make_folders(folder)
            try:
                handle = _acquire(key / LOCK_NAME, command, created)
            except BaseException:
                files.remove_empty_folders(created)
                raise
            _held[key] = _Hold(handle, created=created)
    try:
        yield key / LOCK_NAME
    finally:
        with _held_guard:
            hold = _held[key]
            hold.depth -= 1
            if hold.depth == 0:
                del _held[key]
                _release(key / LOCK_NAME, hold)


def lock_holder(folder: str | os.PathLike) -> dict | None:
    """Who holds ``FOLDER/.lock`` now, as written in it; None if nobody does."""
    path = Path(folder) / LOCK_NAME
    try:
        # Read-only, never created: asking must not leave a lock file behind.
        handle = open(path, encoding="utf-8")  # noqa: SIM115 (closed by the with below)
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            return _read_holder(path)
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return None


def _acquire(path: Path, command: str | None, created: list[Path]):
    """Lock ``path``, retrying while a releasing holder unlinks the file we opened."""
    while True:
        handle = _open_lock_file(path, created)
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
        if _still_named(path, handle):
            break
        # The holder we waited on unlinked this file as it let go: lock the current one.
        handle.close()
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


def _open_lock_file(path: Path, created: list[Path]):
    # Opened without truncating: the file may name the current holder, which a refusal reads.
    try:
        return open(path, "a+", encoding="utf-8")  # noqa: SIM115 (kept open while held)
    except FileNotFoundError:
        # A holder that created the folder removed it as it let go: make it again, as ours.
        for folder in files.make_folders(path.parent):
            if folder not in created:
                created.append(folder)
        return open(path, "a+", encoding="utf-8")  # noqa: SIM115


def _still_named(path: Path, handle) -> bool:
    """Whether ``path`` still names the file ``handle`` has open."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(handle.fileno())
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _release(path: Path, hold: _Hold) -> None:
    """Unlink the lock file while still holding it, then let go; remove folders made for it."""
    with contextlib.suppress(OSError):  # gone already, or not ours to remove: still unlock
        path.unlink()
    fcntl.flock(hold.handle.fileno(), fcntl.LOCK_UN)
    hold.handle.close()
    log.debug("released %s", path)
    files.remove_empty_folders(hold.created)


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

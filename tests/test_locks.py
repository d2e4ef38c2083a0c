"""Folder locks between real processes: a second writer is refused, a killed one leaves nothing,
and a holder that lets go removes its lock file without ever letting two processes in."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nightact.core.locks import FolderLockedError, folder_lock, lock_holder

SRC = Path(__file__).resolve().parents[1] / "src"

# Takes the lock, says so, then holds it until killed.
HOLDER = """
import sys, time
from nightact.core.locks import folder_lock
with folder_lock(sys.argv[1], command="holder for the test"):
    print("locked", flush=True)
    time.sleep(120)
"""

# Tries the lock once and prints the outcome.
TRIER = """
import sys
from nightact.core.locks import FolderLockedError, folder_lock
try:
    with folder_lock(sys.argv[1]):
        print("got it")
except FolderLockedError as error:
    print("refused:", error)
"""


def python(script: str, *args: str, **kwargs):
    environment = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
        **kwargs,
    )


def start_holder(folder: Path) -> subprocess.Popen:
    holder = python(HOLDER, str(folder))
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_the_lock_names_its_holder_and_is_reentrant_in_one_process(tmp_path):
    folder = tmp_path / "run" / "deep"
    assert lock_holder(folder) is None
    with folder_lock(folder, command="nightact train --out run") as path:
        assert path == folder.resolve() / ".lock"  # the folder was created for it
        written = json.loads(path.read_text())
        assert written["pid"] == os.getpid()
        assert written["command"] == "nightact train --out run"
        assert written["started"].endswith("Z")
        assert lock_holder(folder)["pid"] == os.getpid()
        # The same process may take it again (demo calling train); released at the outer end.
        with folder_lock(folder):
            pass
        assert lock_holder(folder)["pid"] == os.getpid()
        # Another process may not.
        trier = python(TRIER, str(folder))
        output = trier.communicate(timeout=60)[0].strip()
        assert output.startswith("refused:"), output
        assert f"process {os.getpid()} (nightact train --out run" in output
        assert len(output.splitlines()) == 1
    assert lock_holder(folder) is None
    # Released: the lock file is gone, and so are the folders made for it, which held nothing else.
    assert list(tmp_path.iterdir()) == []
    trier = python(TRIER, str(folder))
    assert trier.communicate(timeout=60)[0].strip() == "got it"
    assert list(tmp_path.iterdir()) == []


def test_a_second_holder_is_refused_at_once_and_a_killed_holder_leaves_nothing(tmp_path):
    folder = tmp_path / "store"
    holder = start_holder(folder)
    try:
        started = time.monotonic()
        with pytest.raises(FolderLockedError) as refusal:
            with folder_lock(folder):
                pytest.fail("two holders at once")
        assert time.monotonic() - started < 1.0  # refused at once, not after a wait
        message = str(refusal.value)
        assert f"process {holder.pid} (holder for the test, started " in message
        assert str(folder) in message and "\n" not in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()
    # The kernel dropped the flock with the process: the lock file is there, nobody holds it.
    assert (folder / ".lock").exists()
    assert lock_holder(folder) is None
    with folder_lock(folder):
        assert lock_holder(folder)["pid"] == os.getpid()
    # The next holder took the stale file and removed it; the folder was there before it.
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_release_removes_the_lock_file_and_only_the_empty_folders_it_made(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    with folder_lock(existing):
        pass
    assert existing.is_dir() and list(existing.iterdir()) == []

    with pytest.raises(ValueError):
        with folder_lock(tmp_path / "failed" / "deep"):
            raise ValueError("the command failed before writing anything")
    assert not (tmp_path / "failed").exists()

    with folder_lock(tmp_path / "written" / "deep"):
        (tmp_path / "written" / "deep" / "metrics.json").write_text("{}")
    assert [path.name for path in (tmp_path / "written" / "deep").iterdir()] == ["metrics.json"]

    # Nested holders: the lock file stays until the outer one lets go.
    with folder_lock(tmp_path / "nested") as path:
        with folder_lock(tmp_path / "nested"):
            pass
        assert path.exists() and lock_holder(tmp_path / "nested")["pid"] == os.getpid()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["existing", "written"]


# Takes and lets go of the lock as fast as it can; while holding it, claims a marker file that
# only one process may hold (O_EXCL), so two holders at once would make one of them fail.
RACER = """
import os, sys, time
from nightact.core.locks import FolderLockedError, folder_lock
folder, marker, until = sys.argv[1], sys.argv[2], float(sys.argv[3])
held = overlaps = 0
while time.time() < until:
    try:
        with folder_lock(folder, command="racer"):
            try:
                descriptor = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                overlaps += 1
                continue
            os.close(descriptor)
            held += 1
            os.unlink(marker)
    except FolderLockedError:
        pass
print(held, overlaps)
"""


def test_racing_processes_never_hold_the_lock_at_once(tmp_path):
    # The folder does not exist: each holder creates it and removes it as it lets go, the
    # hardest case (the file, and even the folder, vanish under the other racers' feet).
    folder, marker = tmp_path / "contested", tmp_path / "marker"
    until = time.time() + 4.0
    racers = [python(RACER, str(folder), str(marker), str(until)) for _ in range(4)]
    counts = [racer.communicate(timeout=120)[0].split() for racer in racers]
    assert all(racer.returncode == 0 for racer in racers)
    held = [int(count[0]) for count in counts]
    assert sum(int(count[1]) for count in counts) == 0
    assert sum(held) > 100 and sum(1 for count in held if count) >= 2
    # No lock file is left. (The folder may stay, empty: when the racer that made it let go, the
    # next one's lock file was in it, and that one did not make it.)
    assert not folder.exists() or list(folder.iterdir()) == []

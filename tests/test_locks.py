"""Folder locks between real processes: a second writer is refused, a killed one leaves nothing."""

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
    trier = python(TRIER, str(folder))
    assert trier.communicate(timeout=60)[0].strip() == "got it"


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

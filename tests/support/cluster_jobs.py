"""Jobs for Ray tasks in the tests: module-level, so Ray's workers import them by name."""

from __future__ import annotations

import os
import signal
from pathlib import Path

__all__ = ["Flaky", "die_once", "fail_on_three", "flaky_once", "node_name", "square"]


def square(number: int) -> int:
    return number * number


def fail_on_three(number: int) -> int:
    if number == 3:
        raise ValueError(f"job {number} is broken")
    return number * number


class Flaky(RuntimeError):
    """An error worth another try."""


def die_once(marker: str) -> int:
    """Kill this worker process the first time (no marker yet); the second time, return its pid."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def flaky_once(marker: str) -> str:
    """Raise Flaky the first time (no marker yet), then succeed."""
    path = Path(marker)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("attempt\n")
    if path.read_text(encoding="utf-8").count("attempt") == 1:
        raise Flaky("first attempt fails")
    return "second attempt"


def node_name(_) -> str:
    """The NIGHTACT_TEST_NODE of the raylet this task ran under (a worker inherits its env)."""
    import time

    time.sleep(0.3)  # long enough that one node cannot take every task
    return os.environ.get("NIGHTACT_TEST_NODE", "")

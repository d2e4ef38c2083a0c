"""One way to spread independent jobs over worker processes: ``spawn``, on every platform.

Spawned workers start from a clean interpreter. Forking would copy whatever the caller has
loaded, and a process that has imported a deep-learning backend (``nightact demo`` trains in the
same process that writes videos) holds threads and locks that a forked child inherits in an
unknown state. The cost: each worker imports its module afresh (a fraction of a second), and a
script that calls these functions at its top level needs the usual
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator

__all__ = [
    "decoder_threads",
    "map_unordered",
    "worker_count",
]


def worker_count(requested: int | None, jobs: int) -> int:
    """Processes to use: ``requested`` (None: the CPU count), never more than the jobs."""
    return max(1, min(requested or os.cpu_count() or 1, jobs))


def decoder_threads(workers: int) -> int | None:
    """Threads for each video decoder when ``workers`` processes decode side by side.

    Their share of the CPUs, at least one; None (FFmpeg's own count, one per CPU) for a process
    alone. Left to FFmpeg, every worker would start a thread per CPU: 16 workers on 16 cores ran
    256 decoding threads, and prepare reached only 2.4x its one-worker rate.
    """
    if workers <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // workers)


def map_unordered(function: Callable, jobs: Iterable, workers: int | None = None) -> Iterator:
    """Yield ``function(job)`` for every job, in the order they finish.

    With one worker (or one job) the jobs run here, in order, with no process started.
    ``function`` must be a module-level function and the jobs picklable. An exception in a job
    is raised here, and the pool is terminated when the caller stops iterating. The workers
    ignore Ctrl-C: the caller gets the KeyboardInterrupt, and stopping it ends the pool.
    """
    jobs = list(jobs)
    count = worker_count(workers, len(jobs))
    if count <= 1:
        for job in jobs:
            yield function(job)
        return
    with _ignoring_sigint():
        pool = multiprocessing.get_context("spawn").Pool(count, initializer=_ignore_sigint)
    with pool:
        yield from pool.imap_unordered(function, jobs)


def _ignore_sigint() -> None:
    """In each worker: Ctrl-C is the parent's to handle (it stops the pool), not the workers'.

    A terminal sends SIGINT to the whole process group, so without this every worker would
    print its own KeyboardInterrupt traceback.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _ignoring_sigint() -> Iterator[None]:
    """Ignore SIGINT here while the workers start, so they inherit it ignored from the start.

    A worker sets it ignored itself (:func:`_ignore_sigint`) only once its interpreter has
    started; a Ctrl-C before that would print a traceback from its start-up. A Ctrl-C in these
    few milliseconds of starting processes is lost (press it again). Only the main thread may
    change a signal's handler: elsewhere the workers rely on their initializer alone.
    """
    previous = signal.getsignal(signal.SIGINT)
    # None: a handler set outside Python, which could not be put back.
    if previous is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)

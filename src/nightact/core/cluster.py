"""Ray, nightact's one door to a cluster: connect, then spread independent jobs over its nodes.

``nightact study --ray`` and ``nightact prepare --ray`` use it; nothing else in nightact imports
Ray (a contract in ``pyproject.toml`` checks it), and without the ``ray`` extra everything but
``--ray`` works. The address a user gives is Ray's own::

    None / "local"      start a new Ray instance on this machine, stopped again at the end
    "auto"              the cluster a `ray start` on this machine belongs to (or RAY_ADDRESS)
    "HOST:PORT"         that cluster's head node

Jobs are module-level functions of picklable jobs, as for :mod:`nightact.core.workers`, run by
plain Ray tasks: each asks for the CPUs and GPUs it needs, and Ray runs it where they are free.
Every node must import nightact (install it there, as on the head node) and see the paths a job
names (the videos, the study folder): shared storage, as a cluster's home or data volume is.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from nightact.core import extras

__all__ = [
    "LOCAL",
    "ClusterUnreachable",
    "Finished",
    "cluster_cpus",
    "cluster_gpus",
    "connect",
    "map_unordered",
    "require_ray",
]

log = logging.getLogger(__name__)

# The address that starts a new instance here: Ray's own spelling.
LOCAL = "local"


class ClusterUnreachable(ConnectionError):
    """No Ray cluster at the address given (none running, a wrong address, no token)."""


def require_ray():
    """The ``ray`` module; without the ray extra, MissingPackageError saying what to install."""
    extras.require("ray", "--ray", extra="ray")
    import ray  # present now; imported here so that nightact imports without it

    return ray


@contextlib.contextmanager
def connect(address: str | None = LOCAL, cpus: int | None = None) -> Iterator[None]:
    """Connect to the cluster at ``address`` for the ``with`` block, then let go of it.

    A new local instance (``address`` None or ``"local"``) gets ``cpus`` CPUs (None: all of this
    machine's) and is stopped at the end; a running cluster is only disconnected from, its jobs
    of this driver cancelled by Ray. Inside a ``with`` that is already connected, nothing is done.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield
        return
    local = address in (None, LOCAL)
    if not local:
        _check_reachable(address)
    try:
        with _quiet_start():
            ray.init(
                address=LOCAL if local else address,
                num_cpus=cpus if local else None,
                include_dashboard=False,
                # The tasks' own output stays in the cluster's logs (`ray logs`); nightact
                # reports what each job returns, and a study keeps each run's log in its folder.
                log_to_driver=False,
                configure_logging=False,
            )
    except (ConnectionError, RuntimeError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ClusterUnreachable(f"--ray {address or LOCAL}: {first_line}") from error
    log.info("Ray: %s, %d CPUs, %d GPUs", address or LOCAL, cluster_cpus(), cluster_gpus())
    try:
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str, seconds: float = 10) -> None:
    """Refuse a HOST:PORT that nothing answers on, at once: Ray would retry it for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form Ray itself will judge
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ClusterUnreachable(f"--ray {address}: nothing answers there ({reason})") from error


@contextlib.contextmanager
def _quiet_start() -> Iterator[None]:
    """Ray's start-up warnings (token authentication on by default, ...) off the terminal.

    As the backends' start-up lines are (nightact.core.quiet): ``--verbose``, which puts
    nightact's loggers at DEBUG, shows them. A failed start still raises.
    """
    ray_logger = logging.getLogger("ray")
    if logging.getLogger("nightact").isEnabledFor(logging.DEBUG):
        yield
        return
    level = ray_logger.level
    ray_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ray_logger.setLevel(level)


def cluster_cpus() -> int:
    """The CPUs of every node of the connected cluster together."""
    return int(require_ray().cluster_resources().get("CPU", 0))


def cluster_gpus() -> int:
    """The GPUs of every node of the connected cluster together."""
    return int(require_ray().cluster_resources().get("GPU", 0))


class Finished(NamedTuple):
    """One job done: what ``function(job)`` returned, or the error that ended it for good."""

    job: Any
    value: Any = None
    error: BaseException | None = None


def map_unordered(
    function: Callable,
    jobs: Iterable,
    *,
    cpus: float = 1,
    gpus: float = 0,
    in_flight: int | None = None,
    retries: int = 3,
    retry_on: tuple[type[BaseException], ...] = (),
) -> Iterator[Finished]:
    """Run ``function(job)`` as a Ray task per job; yield each :class:`Finished` as it ends.

    At most ``in_flight`` tasks are out at a time (None: twice what the cluster's CPUs or GPUs
    can run at once), so the results waiting here, and the driver's memory, stay bounded however
    many jobs there are. A task whose worker or node dies is run again, up to ``retries`` times
    (Ray's own retry); so is one that raises one of ``retry_on``. Any other exception ends that
    job only: it comes back as ``Finished.error``. When the caller stops iterating (Ctrl-C
    included), the tasks still out are cancelled.
    """
    ray = require_ray()
    remote = ray.remote(function).options(
        num_cpus=cpus,
        num_gpus=gpus,
        max_retries=retries,
        retry_exceptions=list(retry_on) or False,
    )
    if in_flight is None:
        slots = cluster_gpus() / gpus if gpus else cluster_cpus() / cpus
        in_flight = max(1, int(2 * slots))
    pending: dict = {}
    jobs = iter(jobs)
    try:
        while True:
            while len(pending) < in_flight:
                job = next(jobs, _END)
                if job is _END:
                    break
                pending[remote.remote(job)] = job
            if not pending:
                return
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                yield Finished(job, ray.get(ready[0]))
            except ray.exceptions.RayError as error:
                yield Finished(job, error=_cause(error))
    finally:
        for reference in pending:
            # A task that ended meanwhile cannot be cancelled, and needs not be.
            with contextlib.suppress(Exception):
                ray.cancel(reference, force=True)


_END = object()


def _cause(error: BaseException) -> BaseException:
    """The job's own exception out of Ray's wrapper, where it has one."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error

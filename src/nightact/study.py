"""A grid of training runs (models x seeds) on one store, resumable, ending in compare's report.

``study(StudyConfig(data=STORE, out=STUDY, models=..., seeds=...))`` writes::

    STUDY/
      study.json            the StudyConfig
      runs/MODEL-seedS/     one `nightact train` run folder per cell of the grid
      logs/MODEL-seedS.log  what each run printed
      report/               nightact compare's report over every finished run

Each run is its own ``nightact train --resume`` process: a fresh backend each time (the device setup
of :mod:`nightact.training.devices` is once per process), and running the study again continues
where it stopped: finished runs are kept as they are, interrupted ones resume from their last
finished epoch. A run that fails is reported with the end of its log, and the others go on.

Where the runs go:

- on this machine (default): ``parallel`` runs side by side; with ``gpus`` given, each gets its
  own ``devices`` of them through ``CUDA_VISIBLE_DEVICES``;
- on a Ray cluster (``ray``, the address of :mod:`nightact.core.cluster`): each run is a Ray task
  asking for ``cpus_per_run`` CPUs and, where the cluster has GPUs, ``devices`` GPUs, which Ray
  assigns. ``STUDY`` and the store must be on storage every node sees. A run whose process or
  node dies is started again by Ray, and resumes from its last finished epoch.

Keras-free: the runs import it in their own processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from nightact.core import cluster, files
from nightact.core.names import MODEL_NAMES
from nightact.scoring.compare import compare

__all__ = [
    "TRAIN_SETTINGS",
    "RunJob",
    "RunKilled",
    "study",
    "StudyConfig",
    "train_command",
    "train_flag",
    "train_run",
]

log = logging.getLogger(__name__)

# The TrainConfig fields a study may set for all its runs (the others are the grid's own: data,
# model, out, seed; or decided by train itself: resume, backend, the store's shape).
TRAIN_SETTINGS = (
    "epochs",
    "batch_size",
    "learning_rate",
    "loss",
    "mixed_precision",
    "mixed_dtype",
    "lstm_kernel",
    "early_stopping",
    "workers",
    "devices",
    "data_on_device",
    "units",
    "dropout",
    "conv_filters",
    "conv_kernel",
    "conv_stride",
    "unroll",
    "augment",
    "xla",
    "fine_tune",
    "fine_tune_epochs",
    "fine_tune_learning_rate",
)


@dataclass
class StudyConfig:
    """A grid of runs; saved as STUDY/study.json."""

    data: str  # a prepared store
    out: str  # the study folder
    models: tuple[str, ...] = MODEL_NAMES
    seeds: tuple[int, ...] = (0,)
    preset: str | None = None  # a train preset, e.g. "original"
    epochs: int | None = None  # None: the preset's or train's default
    batch_size: int | None = None
    devices: int | None = None  # devices per run; None: train's default (every GPU, or 1 CPU)
    # Runs at the same time. None: one on this machine; on Ray, as many as its resources allow.
    parallel: int | None = None
    gpus: tuple[int, ...] = ()  # GPU ids to share out between the parallel runs; (): no pinning
    # A Ray cluster's address to run on ("local": a new one here; nightact.core.cluster), None:
    # this machine; and the CPUs each run asks Ray for (its GPUs are `devices`, where it has any).
    ray: str | None = None
    cpus_per_run: float = 1
    # Any other `nightact train` setting, the same for every run: TrainConfig field -> value,
    # e.g. {"learning_rate": 3e-3, "units": (64, 32, 16)}. Passed on as train's own flags.
    train: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data, self.out = str(self.data), str(self.out)
        self.models = tuple(self.models)
        self.seeds = tuple(int(seed) for seed in self.seeds)
        self.gpus = tuple(int(gpu) for gpu in self.gpus)
        unknown = [model for model in self.models if model not in MODEL_NAMES]
        if unknown or not self.models:
            raise ValueError(
                f"unknown model(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(MODEL_NAMES)}"
            )
        if not self.seeds:
            raise ValueError("a study needs at least one seed")
        self.train = dict(self.train)
        unknown = sorted(set(self.train) - set(TRAIN_SETTINGS))
        if unknown:
            raise ValueError(
                f"train settings {', '.join(unknown)} cannot be set for a study; "
                f"choose from {', '.join(TRAIN_SETTINGS)}"
            )
        if self.parallel is not None and self.parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {self.parallel}")
        if self.cpus_per_run <= 0:
            raise ValueError(f"cpus_per_run must be positive, got {self.cpus_per_run}")
        if self.gpus and self.ray is not None:
            raise ValueError(
                "gpus pins GPU ids on one machine; on Ray each run asks for `devices` GPUs "
                "and Ray assigns them"
            )
        runs_at_once = self.parallel or 1
        if self.gpus and len(self.gpus) < runs_at_once * (self.devices or 1):
            raise ValueError(
                f"{runs_at_once} parallel runs of {self.devices or 1} device(s) need "
                f"{runs_at_once * (self.devices or 1)} GPUs; {len(self.gpus)} given"
            )

    def run_names(self) -> list[str]:
        return [f"{model}-seed{seed}" for model in self.models for seed in self.seeds]


def train_command(config: StudyConfig, model: str, seed: int) -> list[str]:
    """The `nightact train` command line of one cell of the grid."""
    command = [sys.executable, "-m", "nightact.cli", "train", "--quiet", "--resume"]
    command += ["--data", config.data, "--model", model, "--seed", str(seed)]
    command += ["--out", str(Path(config.out) / "runs" / f"{model}-seed{seed}")]
    if config.preset is not None:
        command += ["--preset", config.preset]
    settings = {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "devices": config.devices,
        **config.train,
    }
    for name, value in settings.items():
        if value is not None:
            command += train_flag(name, value)
    return command


def train_flag(name: str, value) -> list[str]:
    """``nightact train``'s flag (and value) that sets TrainConfig field ``name`` to ``value``.

    The flag is the field's name in kebab case (``learning_rate`` is ``--lr``); switches are given
    only when on (``xla`` is the one that is on by default: ``--no-xla``), ``augment`` either way.
    """
    if name == "augment":
        return ["--augment" if value else "--no-augment"]
    if name == "xla":
        return [] if value else ["--no-xla"]
    flag = "--lr" if name == "learning_rate" else "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else []
    if isinstance(value, (tuple, list)):
        return [flag, ",".join(str(part) for part in value)]
    return [flag, str(value)]


def study(config: StudyConfig) -> Path:
    """Train every run of the grid that is not finished, then write the report.

    Returns the report's ``report.html``. Raises ValueError naming the runs that failed (the
    report is then not written; run the study again to retry them).
    """
    out = Path(config.out)
    # On Ray, connected (or told why not) before anything is written.
    on_ray = config.ray is not None
    with cluster.connect(config.ray) if on_ray else contextlib.nullcontext():
        saved = out / "study.json"
        if saved.exists():
            before = json.loads(saved.read_text(encoding="utf-8"))
            if Path(before["data"]).resolve() != Path(config.data).resolve():
                raise ValueError(
                    f"{out}: the study was started on {before['data']}, not {config.data}"
                )
        (out / "logs").mkdir(parents=True, exist_ok=True)
        files.write_text_atomic(saved, json.dumps(dataclasses.asdict(config), indent=2))
        cells = [(model, seed) for model in config.models for seed in config.seeds]
        failures = _train_on_ray(config, cells) if on_ray else _train_here(config, cells)
    if failures:
        raise ValueError(
            f"{out}: {len(failures)} run(s) failed: {', '.join(sorted(failures))} "
            f"(see {out / 'logs'}); run the study again to resume them"
        )
    return compare([out / "runs"], out / "report", evaluate_missing=True)


def _train_here(config: StudyConfig, cells: list[tuple[str, int]]) -> list[str]:
    """Train the cells on this machine, ``parallel`` at a time; return the names that failed."""
    out = Path(config.out)
    parallel = config.parallel or 1
    failures = []

    def run_cell(job: tuple[int, tuple[str, int]]) -> None:
        index, (model, seed) = job
        slot = index % parallel
        environment = dict(os.environ)
        if config.gpus:
            per_run = config.devices or 1
            mine = config.gpus[slot * per_run : (slot + 1) * per_run]
            environment["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, mine))
        name = f"{model}-seed{seed}"
        started = time.perf_counter()
        log.info("%s: training (log in %s)", name, out / "logs" / f"{name}.log")
        with open(out / "logs" / f"{name}.log", "a", encoding="utf-8") as handle:
            finished = subprocess.run(
                train_command(config, model, seed),
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=environment,
            )
        seconds = time.perf_counter() - started
        if finished.returncode != 0:
            failures.append(name)
            _report_failure(out, name, f"exit {finished.returncode} after {seconds:.0f} s")
        else:
            log.info("%s: done in %.0f s", name, seconds)

    # Jobs go out in waves of `parallel`, so job i always runs in slot i % parallel and two
    # runs never share a slot's GPUs.
    with ThreadPoolExecutor(parallel) as pool:
        for wave in range(0, len(cells), parallel):
            jobs = list(enumerate(cells))[wave : wave + parallel]
            list(pool.map(run_cell, jobs))
    return failures


class RunJob(NamedTuple):
    """One run of a study, as a Ray task gets it."""

    name: str
    command: list[str]  # train_command's, started with the node's own Python
    log: str  # the run's log file, appended to


class RunKilled(RuntimeError):
    """A run's process was ended by a signal (a kill, the OOM killer): Ray starts it again."""


def train_run(job: RunJob) -> float:
    """A Ray task: train one run, its output appended to its log; return its seconds.

    Raises :class:`RunKilled` when the process dies of a signal (Ray then runs the task again,
    and the run resumes), RuntimeError when it exits with an error.
    """
    started = time.perf_counter()
    with open(job.log, "a", encoding="utf-8") as handle:
        finished = subprocess.run(
            [sys.executable, *job.command[1:]],
            stdout=handle,
            stderr=subprocess.STDOUT,
            preexec_fn=_end_with_parent(),
        )
    if finished.returncode < 0:
        raise RunKilled(f"{job.name}: killed by signal {-finished.returncode}")
    if finished.returncode != 0:
        raise RuntimeError(f"exit {finished.returncode}")
    return time.perf_counter() - started


def _end_with_parent():
    """A call for the run's process to make before it runs: die with the Ray worker that
    started it (Linux; elsewhere None: no call).

    A worker that Ray kills (its task cancelled, its driver gone) would otherwise leave the run
    training on, and a study started again would find that run's folder taken. The C function is
    looked up here, before the fork: the child, a copy of a process with many threads, only calls
    it (a lookup there could wait forever on a lock some other thread held at the fork).
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import functools
    import signal

    set_parent_death_signal = 1  # prctl's PR_SET_PDEATHSIG
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return functools.partial(prctl, set_parent_death_signal, signal.SIGKILL)


def _train_on_ray(config: StudyConfig, cells: list[tuple[str, int]]) -> list[str]:
    """Train the cells as Ray tasks on the cluster :func:`study` connected to; return the names
    that failed. Every node must see the study folder and the store by the same paths."""
    out = Path(config.out).resolve()
    absolute = dataclasses.replace(config, data=str(Path(config.data).resolve()), out=str(out))
    jobs = [
        RunJob(
            f"{model}-seed{seed}",
            train_command(absolute, model, seed),
            str(out / "logs" / f"{model}-seed{seed}.log"),
        )
        for model, seed in cells
    ]
    failures = []
    gpus = (config.devices or 1) if cluster.cluster_gpus() else 0
    log.info(
        "%d runs on Ray, %g CPU(s) and %d GPU(s) each (logs in %s)",
        len(jobs),
        config.cpus_per_run,
        gpus,
        out / "logs",
    )
    for finished in cluster.map_unordered(
        train_run,
        jobs,
        cpus=config.cpus_per_run,
        gpus=gpus,
        in_flight=config.parallel,
        retry_on=(RunKilled,),
    ):
        name = finished.job.name
        if finished.error is None:
            log.info("%s: done in %.0f s", name, finished.value)
        else:
            failures.append(name)
            _report_failure(out, name, str(finished.error))
    return failures


def _report_failure(out: Path, name: str, why: str, lines: int = 15) -> None:
    """Log that run ``name`` failed, with the last ``lines`` of its log."""
    log_path = out / "logs" / f"{name}.log"
    try:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        tail = []
    shown = "".join(f"\n    {line}" for line in tail)
    log.error("%s failed (%s); the end of %s:%s", name, why, log_path, shown)

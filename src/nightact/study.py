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
finished epoch. ``parallel`` runs go side by side; with ``gpus`` given, each gets its own
``devices`` of them through ``CUDA_VISIBLE_DEVICES``.

Keras-free: the runs import it in their own processes.
"""

from __future__ import annotations

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

from nightact.core import files
from nightact.core.names import MODEL_NAMES
from nightact.scoring.compare import compare

__all__ = [
    "TRAIN_SETTINGS",
    "study",
    "StudyConfig",
    "train_command",
    "train_flag",
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
    parallel: int = 1  # runs at the same time
    gpus: tuple[int, ...] = ()  # GPU ids to share out between the parallel runs; (): no pinning
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
        if self.parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {self.parallel}")
        if self.gpus and len(self.gpus) < self.parallel * (self.devices or 1):
            raise ValueError(
                f"{self.parallel} parallel runs of {self.devices or 1} device(s) need "
                f"{self.parallel * (self.devices or 1)} GPUs; {len(self.gpus)} given"
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
    saved = out / "study.json"
    if saved.exists():
        before = json.loads(saved.read_text(encoding="utf-8"))
        if Path(before["data"]).resolve() != Path(config.data).resolve():
            raise ValueError(f"{out}: the study was started on {before['data']}, not {config.data}")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    files.write_text_atomic(saved, json.dumps(dataclasses.asdict(config), indent=2))

    cells = [(model, seed) for model in config.models for seed in config.seeds]
    slots = list(range(config.parallel))
    failures = []

    def run_cell(job: tuple[int, tuple[str, int]]) -> None:
        index, (model, seed) = job
        slot = slots[index % config.parallel]
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
            log.error("%s failed (exit %d) after %.0f s", name, finished.returncode, seconds)
        else:
            log.info("%s: done in %.0f s", name, seconds)

    # Jobs go out in waves of `parallel`, so job i always runs in slot i % parallel and two
    # runs never share a slot's GPUs.
    with ThreadPoolExecutor(config.parallel) as pool:
        for wave in range(0, len(cells), config.parallel):
            jobs = list(enumerate(cells))[wave : wave + config.parallel]
            list(pool.map(run_cell, jobs))
    if failures:
        raise ValueError(
            f"{out}: {len(failures)} run(s) failed: {', '.join(failures)} (see {out / 'logs'}); "
            "run the study again to resume them"
        )
    return compare([out / "runs"], out / "report", evaluate_missing=True)

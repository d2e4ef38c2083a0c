"""The run folder: the one place that knows its file names and formats. Keras-free.

A training run (:func:`nightact.training.train.train`) and its evaluation
(:func:`nightact.scoring.evaluate.evaluate`) write::

    RUN/
      config.json               the TrainConfig                       write_config / read_config
      classes.json              {"class_names": [...]}                write_classes / read_classes
      model.keras               the best checkpoint                   model_path
      head.keras                on embeddings, once trained: the      head_path
                                best head; model.keras is then backbone + head, reading clips
      history.csv               one row per finished epoch            write_history / read_history
      result.json               the RunResult; present = finished     write_result / read_result
      evaluation/metrics.json   test-split metrics                    metrics_path / read_metrics
      evaluation-val/ ...       other splits (evaluation_folder)

Readers of a run (evaluate, inference, report, demo, the CLI) go through these functions, so a
format changes in one place. Every write is atomic (:mod:`nightact.core.files`).

It also holds the one rule for "resume only with the same settings" (:func:`require_same_settings`),
used by the synthetic dataset, the clip store, training runs and the demo folder.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from nightact.core import files
from nightact.core.store import STORE_FILE, is_embedding_store, source_store

__all__ = [
    "BACKUP",
    "CLASSES",
    "CONFIG",
    "HEAD",
    "HISTORY",
    "METRICS",
    "MODEL",
    "RESULT",
    "TENSORBOARD",
    "evaluation_folder",
    "head_path",
    "history_path",
    "is_evaluated",
    "is_run",
    "metrics_path",
    "model_path",
    "read_classes",
    "read_config",
    "read_history",
    "read_json",
    "read_metrics",
    "read_result",
    "remove_run",
    "require_same_settings",
    "run_of",
    "training_store",
    "write_classes",
    "write_config",
    "write_history",
    "write_result",
]

log = logging.getLogger(__name__)

CONFIG = "config.json"
CLASSES = "classes.json"
MODEL = "model.keras"
HEAD = "head.keras"
HISTORY = "history.csv"
RESULT = "result.json"
BACKUP = "backup"
TENSORBOARD = "tensorboard"
METRICS = "metrics.json"


def read_json(path: str | os.PathLike, what: str = "file"):
    """Parse a JSON file; a broken one raises ValueError naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: unreadable {what} ({error})") from None


# --- config.json and classes.json ---------------------------------------------------------------


def is_run(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a training run (it has a config.json)."""
    return (Path(folder) / CONFIG).is_file()


def read_config(run: str | os.PathLike) -> dict:
    """The saved TrainConfig of a run folder, as a dict."""
    path = Path(run) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run}: not a training run (no {CONFIG})")
    return read_json(path, "training config")


def run_of(path: str | os.PathLike) -> Path | None:
    """The run folder ``path`` is, or holds a file of (RUN/model.keras); None when neither."""
    path = Path(path)
    run = path if path.is_dir() else path.parent
    return run if is_run(run) else None


def training_store(run: str | os.PathLike, required: bool = False) -> Path | None:
    """The clip store a run trained on: the one place that works it out.

    A head trained on an embedding store (``--backbone``) maps back to the clip store the
    embeddings were computed from, since the run's model.keras (backbone + head) reads clips.
    When the store is gone: None, or with ``required`` a FileNotFoundError saying what to do.
    """
    data = read_config(run).get("data")
    store = Path(data) if data else None
    if store is None or not (store / STORE_FILE).is_file():
        if required:
            raise FileNotFoundError(
                f"{run}: the store it trained on ({data}) is gone; "
                "pass --data STORE where it is now"
            )
        return None
    if not is_embedding_store(store):
        return store
    try:
        return source_store(store)
    except FileNotFoundError:
        if required:
            raise
        return None


def write_config(run: str | os.PathLike, config: dict) -> Path:
    return files.write_json_atomic(Path(run) / CONFIG, config)


def read_classes(folder: str | os.PathLike) -> list[str] | None:
    """The class names in FOLDER/classes.json (a run or a store); None when there is none.

    Accepts ``{"class_names": [...]}`` and, from older runs, a bare list.
    """
    path = Path(folder) / CLASSES
    if not path.is_file():
        return None
    content = read_json(path, "class list")
    names = content["class_names"] if isinstance(content, dict) else content
    return [str(name) for name in names]


def write_classes(folder: str | os.PathLike, class_names: Iterable[str]) -> Path:
    return files.write_json_atomic(Path(folder) / CLASSES, {"class_names": list(class_names)})


def model_path(run: str | os.PathLike) -> Path:
    return Path(run) / MODEL


def head_path(run: str | os.PathLike) -> Path:
    """A run on embeddings: the checkpoint of the recurrent head alone (reads embeddings)."""
    return Path(run) / HEAD


# --- history.csv ----------------------------------------------------------------------------------


def read_history(run: str | os.PathLike) -> list[dict]:
    """The rows of RUN/history.csv as dicts of floats, ``epoch`` an int from 0; [] when absent.

    Reading stops, with a warning, at the first row that is not whole (a half line left by an
    appending writer that was killed; nightact's own writer rewrites the file atomically).
    """
    path = Path(run) / HISTORY
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            try:
                if None in row or any(value in ("", None) for value in row.values()):
                    raise ValueError("missing values")
                parsed = {key: float(value) for key, value in row.items()}
                parsed["epoch"] = int(parsed["epoch"])
            except (TypeError, ValueError):
                log.warning("%s: line %d is incomplete; reading stops before it", path, number)
                break
            rows.append(parsed)
    return rows


def write_history(run: str | os.PathLike, rows: list[dict]) -> None:
    """Rewrite RUN/history.csv atomically with ``rows`` only; remove it when there are none."""
    path = Path(run) / HISTORY
    if not rows:
        path.unlink(missing_ok=True)
        return
    columns = ["epoch", *sorted({key for row in rows for key in row} - {"epoch"})]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files.write_text_atomic(path, buffer.getvalue())


def history_path(run: str | os.PathLike) -> Path:
    return Path(run) / HISTORY


def remove_run(run: str | os.PathLike) -> None:
    """Delete what a training run writes in RUN (for ``train --overwrite``), nothing else."""
    run = Path(run)
    for name in (CONFIG, CLASSES, MODEL, HEAD, HISTORY, RESULT):
        (run / name).unlink(missing_ok=True)
    for folder in (BACKUP, TENSORBOARD):
        shutil.rmtree(run / folder, ignore_errors=True)
    for evaluation in run.glob("evaluation*"):
        shutil.rmtree(evaluation, ignore_errors=True)


# --- result.json ----------------------------------------------------------------------------------


def read_result(run: str | os.PathLike) -> dict | None:
    """RUN/result.json as a dict, None while the run is unfinished."""
    path = Path(run) / RESULT
    if not path.is_file():
        return None
    return read_json(path, "run result")


def write_result(run: str | os.PathLike, result: dict) -> Path:
    return files.write_json_atomic(Path(run) / RESULT, result)


# --- evaluation/ ----------------------------------------------------------------------------------


def evaluation_folder(
    run: str | os.PathLike, split: str = "test", store: str | None = None, views: int = 1
) -> Path:
    """Where an evaluation goes: RUN/evaluation for the run's own test split with one view.

    Anything else gets its own folder beside it, never over it: ``evaluation-SPLIT`` for
    another split, ``evaluation-STORE`` for another store's test split (``store`` is its folder
    name), ``...-3views`` for the softmax averaged over 3 views, combined in that order.
    """
    name = "evaluation"
    if split != "test":
        name += f"-{split}"
    if store:
        name += f"-{store}"
    if views > 1:
        name += f"-{views}views"
    return Path(run) / name


def metrics_path(run: str | os.PathLike, split: str = "test") -> Path:
    return evaluation_folder(run, split) / METRICS


def read_metrics(run: str | os.PathLike, split: str = "test") -> dict:
    path = metrics_path(run, split)
    if not path.is_file():
        raise FileNotFoundError(
            f"{run}: not evaluated yet (no {path.relative_to(run).as_posix()}); "
            f"run `nightact evaluate {run}`"
        )
    return read_json(path, "metrics")


def is_evaluated(run: str | os.PathLike, split: str = "test") -> bool:
    """Whether the run's metrics exist and are no older than its checkpoint.

    A checkpoint saved after the evaluation (a resumed run that went on) makes it stale.
    """
    metrics, checkpoint = metrics_path(run, split), model_path(run)
    if not metrics.is_file():
        return False
    return not checkpoint.exists() or metrics.stat().st_mtime >= checkpoint.stat().st_mtime


# --- same settings or refuse ----------------------------------------------------------------------


def require_same_settings(
    saved: dict, current: dict, where: str | os.PathLike, what: str, remedy: str, keys=None
) -> None:
    """Raise ValueError unless ``saved`` and ``current`` agree on ``keys`` (default: current's).

    The message names the folder, every setting that differs (its value there and now) and what
    the user can do::

        OUT holds a synthetic dataset made with other settings (seed=1 there, 2 now); REMEDY
    """
    keys = list(current) if keys is None else list(keys)
    different = [key for key in keys if saved.get(key) != current.get(key)]
    if different:
        details = ", ".join(
            f"{key}={saved.get(key)!r} there, {current.get(key)!r} now" for key in different
        )
        raise ValueError(f"{where} holds {what} made with other settings ({details}); {remedy}")

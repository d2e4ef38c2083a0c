"""Training state that survives a kill at any instant, and the resume that checks what it reads.

Three Keras callbacks write a run folder so that each file is, at every instant, either its old
complete version or its new complete version: each is written under a temporary name in its own
folder, flushed to disk (fsync) and renamed over the old one, which POSIX makes atomic::

    RUN/
      model.keras            best checkpoint so far             (AtomicModelCheckpoint)
      history.csv            one row per finished epoch          (HistoryLogger)
      backup/                                                    (EpochBackup)
        epoch-000007/        the newest complete backup: 7 epochs finished
          weights.weights.h5   model and optimizer variables
          best.keras           model.keras as it was when epoch 7 ended (a hard link: no space)
          state.json           {"epoch": 7, "history": [7 rows], "sha256": {file: digest}}
        epoch-000006/        the previous one, kept until a newer one is complete
        .incoming-4121/      a backup being written by process 4121; never read
        damaged-epoch-000008/  a backup resume found damaged and set aside (not deleted)

A backup is written into ``.incoming-PID/`` and renamed to ``epoch-NNNNNN/`` only once all its
files are on disk, so the rename is the instant the epoch counts as finished. The backup carries
the history up to its epoch and the best checkpoint of that moment, so a resume puts all three
back in step, whatever order the kill interrupted them in.

:func:`restore_training` picks the newest complete state and loads it into a compiled model,
checking what it reads (digests, then a real load):

1. the newest backup, then the previous one;
2. else the best checkpoint plus the history up to its epoch (the epochs after it are redone);
3. else, if there is nothing at all (killed during the first epoch), a fresh start;
4. else :class:`ResumeError`: "cannot resume ..., start again with --overwrite", nothing deleted.

Each damaged file is reported in one warning line with its path. A kill therefore costs at most
the epoch in progress; a damaged newest backup costs one more.

History is rewritten whole (to a temporary file, then renamed) at the end of every epoch rather
than appended: the file is small (one line per epoch), and a rewrite can never leave a half line
or a row of an epoch that the backup does not know about for longer than one epoch.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from nightact.core import files, runs
from nightact.nets.models import settle_loaded_lstms

__all__ = [
    "BEST_NAME",
    "STATE_NAME",
    "WEIGHTS_NAME",
    "AtomicModelCheckpoint",
    "check_model_file",
    "checkpoint_bytes",
    "complete_backups",
    "EpochBackup",
    "history_row",
    "HistoryLogger",
    "load_checkpoint",
    "remove_backups",
    "restore_training",
    "ResumeError",
    "ResumePoint",
    "run_bytes_needed",
    "run_bytes_present",
    "save_model_atomic",
]

log = logging.getLogger(__name__)

WEIGHTS_NAME = "weights.weights.h5"
BEST_NAME = "best.keras"
STATE_NAME = "state.json"
_SLOT_PATTERN = re.compile(r"^epoch-(\d{6})$")


class ResumeError(ValueError):
    """A run folder holds training state, but none of it is complete enough to resume from."""


@dataclass
class ResumePoint:
    """Where a restored run stands.

    ``epoch`` epochs are finished (the next to run is ``epoch``, counted from 0); ``history``
    holds their rows; ``source`` names what was loaded: a backup folder, the checkpoint, or
    ``"start"`` for a run with nothing to resume.
    """

    epoch: int
    history: list[dict] = field(default_factory=list)
    source: str = "start"
    damaged: list[str] = field(default_factory=list)  # one line per damaged file met


# ---------------------------------------------------------------------------------------------
# Atomic writes


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _partial_path(final: Path) -> Path:
    """A temporary name beside ``final``, keeping its extension(s) (Keras checks them)."""
    suffix = "".join(final.suffixes[-2:]) if final.name.endswith(".weights.h5") else final.suffix
    stem = final.name[: len(final.name) - len(suffix)] if suffix else final.name
    return final.with_name(f".{stem}.partial-{os.getpid()}{suffix}")


def _publish(partial: Path, final: Path) -> None:
    """Flush ``partial`` to disk and rename it over ``final``."""
    _fsync_file(partial)
    files.replace_atomic(partial, final)


def save_model_atomic(model: keras.Model, path: Path, weights_only: bool = False) -> None:
    """Save a model (or its weights) under a temporary name, flush it, and rename it into place."""
    partial = _partial_path(path)
    try:
        if weights_only:
            model.save_weights(str(partial), overwrite=True)
        else:
            model.save(str(partial), overwrite=True)
        _publish(partial, path)
    except BaseException as error:
        written = files.remove_partial(partial)
        if files.is_disk_full(error):
            raise files.DiskFullError(path, written) from error
        raise


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` becomes the same bytes as ``source``: a hard link where the filesystem allows."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


# ---------------------------------------------------------------------------------------------
# Callbacks


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``keras.callbacks.ModelCheckpoint`` that never leaves a half-written file under its name.

    Same arguments and choices (``save_best_only``, ``initial_value_threshold``, ``monitor``,
    ``mode``, ``save_freq``); only the writing differs: the model goes to a temporary name in the
    same folder, is flushed to disk and renamed over the old file. A kill or a full disk during
    the save leaves the previous checkpoint in place and removes the partial file.
    """

    def _save_model(self, epoch, batch, logs):
        filepath = Path(self._get_file_path(epoch, batch, logs))
        if not self._should_save_model(epoch, batch, logs, str(filepath)):
            return
        filepath.parent.mkdir(parents=True, exist_ok=True)
        save_model_atomic(self.model, filepath, weights_only=self.save_weights_only)


class HistoryLogger(keras.callbacks.Callback):
    """Writes RUN/history.csv, one row per finished epoch, rewritten whole every epoch.

    Columns: ``epoch`` (from 0, as Keras counts) and every value in the epoch's logs, sorted, as
    Keras' ``CSVLogger`` writes them (:func:`nightact.core.runs.write_history`). ``history`` holds
    the rows of the epochs finished before a resume; they are written again with every new row.
    """

    def __init__(self, run: str | os.PathLike, history: list[dict] | None = None):
        super().__init__()
        self.run = Path(run)
        self.history = [dict(row) for row in history or []]

    def on_epoch_end(self, epoch, logs=None):
        self.history = [row for row in self.history if row["epoch"] < epoch]
        self.history.append(history_row(epoch, logs))
        runs.write_history(self.run, self.history)


class EpochBackup(keras.callbacks.Callback):
    """A replacement for ``keras.callbacks.BackupAndRestore`` that always keeps a whole backup.

    At the end of every epoch it writes ``FOLDER/.incoming-PID/`` (weights with the optimizer's
    state, the history so far, and a hard link to the best checkpoint ``checkpoint`` if there is
    one), flushes it, and renames it to ``FOLDER/epoch-NNNNNN/``; only then does it remove the
    backups older than the previous one. At every instant the folder holds at least one complete
    backup once the first epoch has ended.

    It restores nothing by itself: call :func:`restore_training` before ``fit`` (and pass its
    ``epoch`` as ``initial_epoch``), so that a damaged backup can be reported and skipped.

    Must come after the callbacks that write the checkpoint and add to the epoch's logs.

    Args:
        folder: the backup folder (``RUN/backup``), used for nothing else.
        checkpoint: the best checkpoint to keep a link to in each backup, or None.
        history: the rows of the epochs finished before a resume.
        keep: complete backups to keep (at least 2, so that one survives a damaged newest).
        delete_at_end: remove the whole folder when ``fit`` ends without an error. Leave it
            False when something still has to be written after ``fit`` (the run's result), and
            call :func:`remove_backups` once that is on disk.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        checkpoint: str | os.PathLike | None = None,
        history: list[dict] | None = None,
        keep: int = 2,
        delete_at_end: bool = False,
    ):
        super().__init__()
        if keep < 2:
            raise ValueError(f"keep at least 2 backups, got {keep}")
        self.folder = Path(folder)
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.history = [dict(row) for row in history or []]
        self.keep = keep
        self.delete_at_end = delete_at_end

    def on_epoch_end(self, epoch, logs=None):
        self.history = [row for row in self.history if row["epoch"] < epoch]
        self.history.append(history_row(epoch, logs))
        self.save(epoch + 1)

    def save(self, epochs_finished: int) -> Path:
        """Write the backup of ``epochs_finished`` epochs; returns its folder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        incoming = self.folder / f".incoming-{os.getpid()}"
        if incoming.exists():
            shutil.rmtree(incoming)
        incoming.mkdir()
        try:
            if not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            digests = {}
            self.model.save_weights(str(incoming / WEIGHTS_NAME))
            _fsync_file(incoming / WEIGHTS_NAME)
            digests[WEIGHTS_NAME] = files.sha256_of(incoming / WEIGHTS_NAME)
            if self.checkpoint is not None and self.checkpoint.exists():
                _link_or_copy(self.checkpoint, incoming / BEST_NAME)
                _fsync_file(incoming / BEST_NAME)
                digests[BEST_NAME] = self._best_digest(incoming / BEST_NAME)
            state = {"epoch": epochs_finished, "history": self.history, "sha256": digests}
            # Written last: a backup folder without it was never finished.
            (incoming / STATE_NAME).write_text(json.dumps(state, indent=1), encoding="utf-8")
            _fsync_file(incoming / STATE_NAME)
            files.fsync_folder(incoming)
            final = self.folder / f"epoch-{epochs_finished:06d}"
            if final.exists():
                # A backup of the same epoch from before a fallback, damaged or not.
                shutil.rmtree(final)
            os.replace(incoming, final)
            files.fsync_folder(self.folder)
        except BaseException as error:
            written = sum(files.file_size(path) for path in incoming.glob("*"))
            shutil.rmtree(incoming, ignore_errors=True)
            if files.is_disk_full(error):
                raise files.DiskFullError(incoming, written) from error
            raise
        for old in complete_backups(self.folder)[self.keep :]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _best_digest(self, path: Path) -> str:
        # The best checkpoint changes only when an epoch improves: hash it only then.
        status = path.stat()
        key = (status.st_ino, status.st_mtime_ns, status.st_size)
        if getattr(self, "_best_key", None) != key:
            self._best_key, self._best_sha256 = key, files.sha256_of(path)
        return self._best_sha256

    def on_train_end(self, logs=None):
        if self.delete_at_end:
            remove_backups(self.folder)


def checkpoint_bytes(model: keras.Model) -> int:
    """About what one checkpoint of ``model`` takes on disk: its variables and the optimizer's.

    A ``.keras`` file and a backup's weights file both hold the model's variables and the
    optimizer's (Adam: two moments per weight), plus a little structure.
    """
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    variables = list(model.weights) + list(model.optimizer.variables if model.optimizer else [])
    payload = sum(
        int(np.prod(variable.shape)) * np.dtype(variable.dtype).itemsize for variable in variables
    )
    return payload + _STRUCTURE_BYTES


# HDF5 and zip structure, config.json, metadata: measured at 30-60 kB for nightact's models.
_STRUCTURE_BYTES = 128 * 1024

# The most checkpoint-sized files a run holds at once: model.keras and the partial that replaces
# it, two older best checkpoints kept alive by the backups' links, two backups' weights and the
# incoming one.
_CHECKPOINTS_AT_ONCE = 7


def run_bytes_needed(model: keras.Model) -> int:
    """The most disk space a training run of ``model`` takes at any moment (without logs)."""
    return _CHECKPOINTS_AT_ONCE * checkpoint_bytes(model)


def run_bytes_present(run: str | os.PathLike) -> int:
    """The checkpoint and backup bytes a run folder already holds (a resume reuses that space)."""
    run = Path(run)
    present = files.file_size(runs.model_path(run))
    backup = run / runs.BACKUP
    if backup.is_dir():
        present += sum(path.stat().st_size for path in backup.rglob("*") if path.is_file())
    return present


def remove_backups(folder: str | os.PathLike) -> None:
    """Remove a finished run's backup folder."""
    shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# History rows


def history_row(epoch: int, logs: dict | None) -> dict:
    """The history row of ``epoch`` from Keras' epoch logs (plain floats)."""
    row = {"epoch": int(epoch)}
    for key, value in (logs or {}).items():
        try:
            row[key] = float(np.asarray(value))
        except (TypeError, ValueError):
            continue
    return row


# ---------------------------------------------------------------------------------------------
# Resume


def complete_backups(folder: str | os.PathLike) -> list[Path]:
    """The complete-looking backup folders in ``folder``, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    slots = [
        path
        for path in folder.iterdir()
        if _SLOT_PATTERN.match(path.name) and (path / STATE_NAME).exists()
    ]
    return sorted(slots, key=lambda path: path.name, reverse=True)


def restore_training(
    run: str | os.PathLike,
    model: keras.Model,
    monitor: str = "val_accuracy",
    mode: str = "max",
) -> ResumePoint:
    """Load the newest complete training state of ``run`` into the compiled ``model``.

    Tries the newest backup, the previous one, then the best checkpoint plus the history up to
    its epoch (``monitor``/``mode`` tell which row that is); reports each damaged file in one
    warning line; then puts the run folder in step with what it loaded: ``history.csv`` holds
    exactly the finished epochs' rows, ``model.keras`` the best checkpoint of that moment, and
    backups newer than it (damaged) are renamed ``damaged-epoch-NNNNNN`` so that new ones can take
    their names. A run with no state at all restores to epoch 0.

    Raises:
        ResumeError: there is state, but none of it loads; nothing is deleted.
    """
    run = Path(run)
    backup = run / runs.BACKUP
    checkpoint = runs.model_path(run)
    damaged: list[str] = []
    _remove_leftovers(run, backup)
    for slot in complete_backups(backup):
        problem = _load_backup(slot, model)
        if problem:
            damaged.append(problem)
            log.warning("%s", problem)
            continue
        state = json.loads((slot / STATE_NAME).read_text(encoding="utf-8"))
        _set_aside_newer(backup, state["epoch"])
        if (slot / BEST_NAME).exists():
            problem = _restore_checkpoint(slot / BEST_NAME, checkpoint)
            if problem:
                damaged.append(problem)
        runs.write_history(run, state["history"])
        log.info("resuming %s from %s (%d epochs finished)", run, slot, state["epoch"])
        return ResumePoint(state["epoch"], state["history"], str(slot), damaged)

    history = runs.read_history(run)
    if checkpoint.exists():
        problem = _check_checkpoint(checkpoint, model)
        if problem is None and not history:
            problem = f"{runs.history_path(run)}: no history tells which epoch {checkpoint} is"
        if problem:
            damaged.append(problem)
            log.warning("%s", problem)
        else:
            values = [row.get(monitor, np.nan) for row in history]
            if np.all(np.isnan(values)):
                best = len(history) - 1
            else:
                best = int(np.nanargmax(values) if mode == "max" else np.nanargmin(values))
            history = history[: best + 1]
            _set_aside_newer(backup, best + 1)
            runs.write_history(run, history)
            log.warning(
                "resuming %s from its best checkpoint %s (epoch %d); later epochs are redone",
                run,
                checkpoint,
                best + 1,
            )
            return ResumePoint(best + 1, history, str(checkpoint), damaged)

    if damaged or complete_backups(backup):
        raise ResumeError(
            f"{run}: cannot resume: no complete backup or checkpoint loads "
            f"({len(damaged)} damaged, see above); start again with --overwrite "
            "(nothing was deleted)"
        )
    # Killed before the first epoch ended: nothing was finished, nothing is lost.
    if history:
        log.warning(
            "%s: %d history rows but no checkpoint or backup; starting again", run, len(history)
        )
    runs.write_history(run, [])
    return ResumePoint(0, [], "start", damaged)


def check_model_file(path: str | os.PathLike) -> str | None:
    """None if ``path`` is a whole ``.keras`` archive, else one line naming it and the problem.

    Checks the zip structure and every member's CRC, which catches truncation and flipped bytes
    without building the model; ``evaluate``/``predict`` call it before loading.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = set(archive.namelist())
    except FileNotFoundError:
        return f"{path}: no such checkpoint"
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as error:
        return f"{path}: damaged checkpoint ({_reason(error)})"
    if bad is not None:
        return f"{path}: damaged checkpoint (member {bad} fails its checksum)"
    missing = {"config.json", "model.weights.h5"} - names
    if missing:
        return f"{path}: damaged checkpoint (missing {', '.join(sorted(missing))})"
    return None


def load_checkpoint(path: str | os.PathLike, **load_arguments) -> keras.Model:
    """``keras.saving.load_model(path)``, with a damaged file reported in one line.

    LSTM layers that compute in 16 bits are kept off cuDNN where the backend's cuDNN cannot take
    them (:func:`nightact.nets.models.settle_loaded_lstms`).

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: the file is damaged or cannot be loaded; the message names it and why.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    problem = check_model_file(path)
    if problem:
        raise ValueError(problem)
    try:
        model = keras.saving.load_model(path, **load_arguments)
    except Exception as error:  # Keras raises many kinds for a file it cannot rebuild
        raise ValueError(f"{path}: cannot be loaded as a Keras model ({_reason(error)})") from None
    # Keras does not save `use_cudnn`: a mixed-precision LSTM would ask JAX's float32-only cuDNN.
    settle_loaded_lstms(model)
    return model


def _load_backup(slot: Path, model: keras.Model) -> str | None:
    """Load ``slot`` into ``model``; None if it loaded, else one line about the damaged file."""
    state_path = slot / STATE_NAME
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        epoch = int(state["epoch"])
        history = state["history"]
        digests = state["sha256"]
        if [row["epoch"] for row in history] != list(range(epoch)):
            raise ValueError(f"its history does not hold epochs 0..{epoch - 1}")
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{state_path}: damaged backup state, skipped ({_reason(error)})"
    for name, digest in digests.items():
        path = slot / name
        if not path.exists():
            return f"{path}: missing from the backup, skipped"
        if files.sha256_of(path) != digest:
            return f"{path}: damaged backup (its content changed since it was written), skipped"
    weights = slot / WEIGHTS_NAME
    try:
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(str(weights))
    except Exception as error:  # h5py and Keras raise many kinds for a bad file
        return f"{weights}: damaged backup, skipped ({_reason(error)})"
    if (slot / BEST_NAME).exists():
        problem = check_model_file(slot / BEST_NAME)
        if problem:
            return problem + ", skipped"
    return None


def _check_checkpoint(path: Path, model: keras.Model) -> str | None:
    problem = check_model_file(path)
    if problem:
        return problem
    try:
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(str(path))
    except Exception as error:  # a checkpoint of another model, or unreadable weights
        return f"{path}: cannot be loaded into this run's model ({_reason(error)})"
    return None


def _restore_checkpoint(source: Path, checkpoint: Path) -> str | None:
    """Make ``checkpoint`` the backup's copy of it, atomically, unless it already is.

    Returns the one-line problem if the checkpoint in place was damaged, else None.
    """
    problem = None
    if checkpoint.exists():
        if os.path.samefile(source, checkpoint):
            return None
        if files.sha256_of(source) == files.sha256_of(checkpoint):
            return None
        problem = check_model_file(checkpoint)
        if problem:
            problem += f"; put back from {source}"
            log.warning("%s", problem)
        else:
            # Saved by an epoch that ended after the backup's; that epoch is redone.
            log.info("%s: put back as it was at %s", checkpoint, source.parent.name)
    partial = _partial_path(checkpoint)
    partial.unlink(missing_ok=True)
    try:
        _link_or_copy(source, partial)
        _publish(partial, checkpoint)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return problem


def _remove_leftovers(run: Path, backup: Path) -> None:
    """Remove what killed writers left half-written (only under the run's lock: no writer runs)."""
    for partial in [*run.glob(".*.partial-*"), *run.glob(f"*{files.TEMPORARY_SUFFIX}")]:
        partial.unlink(missing_ok=True)
    for incoming in backup.glob(".incoming-*") if backup.is_dir() else []:
        shutil.rmtree(incoming, ignore_errors=True)


def _set_aside_newer(backup: Path, epoch: int) -> None:
    """Rename backups newer than ``epoch`` (skipped as damaged) out of the way; keep them."""
    for slot in complete_backups(backup):
        if int(_SLOT_PATTERN.match(slot.name).group(1)) > epoch:
            target = slot.with_name(f"damaged-{slot.name}")
            if target.exists():
                shutil.rmtree(target)
            os.replace(slot, target)
            log.info("%s set aside as %s", slot, target.name)


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__

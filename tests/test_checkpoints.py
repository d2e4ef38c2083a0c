"""Run files that survive a kill: atomic saves, two backups, a resume that checks what it reads.

The hard test kills real training processes with SIGKILL, inside saves and between them, and
resumes each time. Those processes are forked from one server that has imported Keras (JAX
backend) once, so that each start costs a fork instead of ten seconds of imports.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import killable_training
from nightact.core import files, runs
from nightact.training.checkpoints import (
    AtomicModelCheckpoint,
    EpochBackup,
    HistoryLogger,
    ResumeError,
    check_model_file,
    complete_backups,
    restore_training,
)


def fit(run: Path, epochs: int, model=None, callbacks=()) -> tuple[keras.Model, object]:
    """Train the tiny model in this process with the run-folder callbacks, resuming ``run``."""
    model = model or killable_training.build_model()
    point = restore_training(run, model)
    (train_x, train_y), validation = killable_training.synthetic_data()
    best = max((row["val_accuracy"] for row in point.history), default=None)
    model.fit(
        train_x,
        train_y,
        batch_size=50,
        epochs=epochs,
        initial_epoch=point.epoch,
        validation_data=validation,
        verbose=0,
        callbacks=[
            HistoryLogger(run, point.history),
            AtomicModelCheckpoint(
                run / "model.keras",
                monitor="val_accuracy",
                mode="max",
                save_best_only=True,
                initial_value_threshold=best,
            ),
            EpochBackup(run / "backup", checkpoint=run / "model.keras", history=point.history),
            *callbacks,
        ],
    )
    return model, point


def validation_accuracy(model) -> float:
    _, (inputs, labels) = killable_training.synthetic_data()
    predicted = np.asarray(model.predict(inputs, verbose=0)).argmax(axis=1)
    return float(np.mean(predicted == labels.argmax(axis=1)))


def damage(path: Path) -> None:
    """Overwrite the middle of a file with junk, keeping its size (a bad sector, a bad copy)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = b"\xff" * 64
    data[:8] = b"garbage!"
    path.write_bytes(bytes(data))


def leftovers(run: Path) -> list[str]:
    return sorted(
        str(path.relative_to(run))
        for path in run.rglob("*")
        if ".partial-" in path.name
        or path.name.startswith(".incoming-")
        or path.name.endswith(files.TEMPORARY_SUFFIX)
    )


class _Stop(keras.callbacks.Callback):
    def __init__(self, after_epoch: int):
        super().__init__()
        self.after_epoch = after_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after_epoch:
            raise KeyboardInterrupt


def test_a_run_keeps_two_whole_backups_each_with_its_history_and_best_checkpoint(tmp_path):
    run = tmp_path / "run"
    model, point = fit(run, epochs=4)
    assert point.epoch == 0 and point.source == "start"

    history = runs.read_history(run)
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]
    assert set(history[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"}
    slots = complete_backups(run / "backup")
    assert [slot.name for slot in slots] == ["epoch-000004", "epoch-000003"]
    state = json.loads((slots[0] / "state.json").read_text())
    assert state["epoch"] == 4 and state["history"] == history
    # The backup's best checkpoint is model.keras itself (a hard link costs no space).
    assert os.path.samefile(slots[0] / "best.keras", run / "model.keras")
    assert leftovers(run) == []

    # The checkpoint is the best epoch's model, and it loads with stock Keras.
    best = max(row["val_accuracy"] for row in history)
    assert validation_accuracy(keras.saving.load_model(run / "model.keras")) == pytest.approx(best)

    # The newest backup holds the last epoch's weights, optimizer included.
    restored = killable_training.build_model()
    point = restore_training(run, restored)
    assert (point.epoch, point.source) == (4, str(slots[0]))
    for ours, theirs in zip(model.weights, restored.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    assert int(restored.optimizer.iterations) == int(model.optimizer.iterations) > 0


def test_the_checkpoint_save_is_atomic_and_keeps_the_initial_threshold(tmp_path, monkeypatch):
    model = killable_training.build_model()
    (train_x, train_y), validation = killable_training.synthetic_data()
    path = tmp_path / "model.keras"
    arguments = dict(x=train_x, y=train_y, validation_data=validation, verbose=0, epochs=1)

    # A threshold nobody can beat: nothing is saved.
    model.fit(
        **arguments,
        callbacks=[AtomicModelCheckpoint(path, "val_accuracy", save_best_only=True, mode="max",
                                         initial_value_threshold=1.01)],
    )  # fmt: skip
    assert not path.exists()
    model.fit(**arguments, callbacks=[AtomicModelCheckpoint(path, "val_accuracy", mode="max")])
    good = path.read_bytes()
    assert check_model_file(path) is None

    # A save that dies half-way (a full disk) leaves the old checkpoint and no partial file.
    def write_half_then_fail(filepath, *args, **kwargs):
        Path(filepath).write_bytes(good[: len(good) // 2])
        raise OSError(28, "No space left on device", str(filepath))

    monkeypatch.setattr(model, "save", write_half_then_fail)
    with pytest.raises(
        files.DiskFullError, match=r"model.keras: disk full while writing it \(\d+ kB"
    ):
        model.fit(**arguments, callbacks=[AtomicModelCheckpoint(path, "val_accuracy", mode="max")])
    assert path.read_bytes() == good
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.keras"]


def test_a_damaged_newest_backup_is_reported_in_one_line_and_the_previous_one_used(
    tmp_path, caplog
):
    run = tmp_path / "run"
    fit(run, epochs=3)
    history = runs.read_history(run)
    damage(run / "backup" / "epoch-000003" / "weights.weights.h5")

    caplog.set_level(logging.WARNING, logger="nightact.training.checkpoints")
    model = killable_training.build_model()
    point = restore_training(run, model)
    assert point.epoch == 2 and point.source.endswith("epoch-000002")
    damaged = [record.getMessage() for record in caplog.records if "damaged" in record.message]
    assert len(damaged) == 1 and "\n" not in damaged[0]
    assert str(run / "backup" / "epoch-000003" / "weights.weights.h5") in damaged[0]
    # The folder is back in step with epoch 2; the damaged backup is set aside, not deleted.
    assert runs.read_history(run) == history[:2]
    assert (run / "backup" / "damaged-epoch-000003" / "weights.weights.h5").exists()

    # Training goes on from there and ends with one row per epoch.
    fit(run, epochs=4, model=model)
    assert [row["epoch"] for row in runs.read_history(run)] == [0, 1, 2, 3]
    assert [slot.name for slot in complete_backups(run / "backup")] == [
        "epoch-000004",
        "epoch-000003",
    ]


def test_a_damaged_checkpoint_is_reported_and_put_back_from_the_backup(tmp_path, caplog):
    run = tmp_path / "run"
    fit(run, epochs=2)
    good = (run / "backup" / "epoch-000002" / "best.keras").read_bytes()
    # Break the link first, as a copy or a restore from elsewhere would, then damage it.
    damaged_bytes = bytearray(good)
    (run / "model.keras").unlink()
    (run / "model.keras").write_bytes(bytes(damaged_bytes))
    damage(run / "model.keras")
    problem = check_model_file(run / "model.keras")
    assert problem.startswith(f"{run / 'model.keras'}: damaged checkpoint (")

    caplog.set_level(logging.WARNING, logger="nightact.training.checkpoints")
    point = restore_training(run, killable_training.build_model())
    assert point.epoch == 2
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(problem) and "put back from" in lines[0]
    assert (run / "model.keras").read_bytes() == good


def test_without_backups_the_best_checkpoint_and_its_history_are_the_fallback(tmp_path, caplog):
    run = tmp_path / "run"
    fit(run, epochs=4)
    history = runs.read_history(run)
    for slot in complete_backups(run / "backup"):
        damage(slot / "state.json")

    caplog.set_level(logging.WARNING, logger="nightact.training.checkpoints")
    model = killable_training.build_model()
    point = restore_training(run, model)
    best = int(np.argmax([row["val_accuracy"] for row in history]))
    assert point.epoch == best + 1 and point.source == str(run / "model.keras")
    assert runs.read_history(run) == history[: best + 1]
    state_lines = [line for line in caplog.messages if "state.json: damaged backup state" in line]
    assert len(state_lines) == 2
    # The model holds the checkpoint's weights.
    assert validation_accuracy(model) == pytest.approx(history[best]["val_accuracy"])


def test_nothing_whole_left_means_a_clear_refusal_and_nothing_deleted(tmp_path):
    run = tmp_path / "run"
    fit(run, epochs=2)
    for slot in complete_backups(run / "backup"):
        damage(slot / "weights.weights.h5")
    (run / "model.keras").unlink()  # unlink the hard link first: the backups keep their copy
    (run / "model.keras").write_bytes(b"PK\x03\x04 not a zip any more")
    before = sorted(str(path) for path in run.rglob("*"))

    with pytest.raises(ResumeError, match="cannot resume.*start again with --overwrite") as error:
        restore_training(run, killable_training.build_model())
    assert "\n" not in str(error.value)
    assert sorted(str(path) for path in run.rglob("*")) == before


def test_a_run_killed_in_its_first_epoch_starts_again(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(run, epochs=3, callbacks=[_Stop(after_epoch=0)])
    # _Stop ran after the backup: remove it and the checkpoint, as if the kill came first.
    for path in [*complete_backups(run / "backup"), run / "model.keras"]:
        if path.is_dir():
            for child in path.iterdir():
                child.unlink()
            path.rmdir()
        else:
            path.unlink()
    (run / ".model.partial-99999.keras").write_bytes(b"half")
    point = restore_training(run, killable_training.build_model())
    assert (point.epoch, point.history) == (0, [])
    assert not (run / "history.csv").exists() and leftovers(run) == []


# ---------------------------------------------------------------------------------------------
# Real processes, really killed


@pytest.fixture(scope="module")
def trainers(tmp_path_factory):
    """Start training processes forked from a server that imported Keras (JAX) once."""
    saved = {name: os.environ.get(name) for name in ("KERAS_BACKEND", "JAX_COMPILATION_CACHE_DIR")}
    os.environ["KERAS_BACKEND"] = "jax"
    # Compiled training steps are shared between the processes through JAX's disk cache.
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax-cache"))
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    context = multiprocessing.get_context("forkserver")
    # TensorFlow too: Keras reads and writes files through it when it is installed.
    context.set_forkserver_preload(["killable_training", "tensorflow"])

    def start(*arguments: str):
        process = context.Process(target=killable_training.main, args=(list(arguments),))
        process.start()
        return process

    yield start
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    for name in (
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
    ):
        os.environ.pop(name, None)
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)  # the server would outlive the tests
    if stop is not None:
        stop()


def assert_every_file_whole(run: Path) -> int:
    """What a kill may leave: whole files under real names. Returns the epochs backed up."""
    if (run / "model.keras").exists():
        assert check_model_file(run / "model.keras") is None
    rows = runs.read_history(run)
    if (run / "history.csv").exists():
        lines = (run / "history.csv").read_text().splitlines()
        assert len(lines) == len(rows) + 1  # no half line
    assert [row["epoch"] for row in rows] == list(range(len(rows)))
    slots = complete_backups(run / "backup")
    for slot in slots:
        state = json.loads((slot / "state.json").read_text())
        assert [row["epoch"] for row in state["history"]] == list(range(state["epoch"]))
        for name, digest in state["sha256"].items():
            assert files.sha256_of(slot / name) == digest
    return int(slots[0].name.split("-")[1]) if slots else 0


def assert_finished(run: Path, epochs: int) -> None:
    history = runs.read_history(run)
    assert [row["epoch"] for row in history] == list(range(epochs))
    lines = (run / "history.csv").read_text().splitlines()
    assert len(lines) == epochs + 1
    assert leftovers(run) == []
    model = keras.saving.load_model(run / "model.keras")
    best = max(row["val_accuracy"] for row in history)
    # The checkpoint is the best epoch of the history, not an epoch a kill made it forget.
    assert validation_accuracy(model) == pytest.approx(best, abs=1e-6)


def kill_and_resume(trainers, run: Path, epochs: int, kills: list[dict]) -> None:
    backed_up = 0
    for kill in kills:
        arguments = [str(run), "--epochs", str(epochs), "--slow-saves", str(kill.get("slow", 0))]
        if "fsync" in kill:
            arguments += ["--kill-at-fsync", str(kill["fsync"])]
        process = trainers(*arguments)
        if "after" in kill:
            process.join(kill["after"])
            if process.exitcode is None:
                os.kill(process.pid, signal.SIGKILL)
        process.join(120)
        finished = len(runs.read_history(run)) == epochs
        if "fsync" in kill and not finished:
            assert process.exitcode == -signal.SIGKILL, kill  # it died inside a save
        else:
            assert process.exitcode in (-signal.SIGKILL, 0), kill
        now = assert_every_file_whole(run)
        assert now >= backed_up  # a kill never takes back a finished epoch
        backed_up = now
    process = trainers(str(run), "--epochs", str(epochs))
    process.join(300)
    assert process.exitcode == 0
    assert_finished(run, epochs)


def test_training_killed_inside_saves_resumes_to_a_complete_run(trainers, tmp_path):
    # An epoch flushes: history (1), its folder after the rename (2), the checkpoint when better
    # (3, 4), the backup's weights (5), best link (6) and state (7), its folder (8), the backup
    # folder after the rename that commits the epoch (9). A resumed process first rewrites the
    # history of its backup, so its first flushes are inside the resume itself.
    kills = [{"fsync": 1}, {"fsync": 3}, {"fsync": 2}, {"fsync": 9}, {"fsync": 5}]
    started = time.monotonic()
    kill_and_resume(trainers, tmp_path / "run", epochs=5, kills=kills)
    logging.getLogger(__name__).info("killed and resumed in %.0f s", time.monotonic() - started)


@pytest.mark.slow
def test_training_killed_at_many_random_moments_resumes_to_a_complete_run(trainers, tmp_path):
    rng = random.Random(14)
    kills = [{"after": rng.uniform(0.5, 5.0), "slow": 0.05} for _ in range(20)]
    kills += [{"fsync": rng.randint(1, 12), "slow": 0.02} for _ in range(15)]
    rng.shuffle(kills)
    kill_and_resume(trainers, tmp_path / "run", epochs=40, kills=kills)

"""The commands under a full disk, a damaged checkpoint and a folder another process holds.

Full disks are real: small tmpfs filesystems mounted for the test (skipped where mounting is not
allowed, as for a user without root).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from conftest import make_synthetic_store
from nightact.cli import main
from nightact.core import files, runs
from nightact.data.prepare import PrepareConfig, prepare
from nightact.training.checkpoints import check_model_file, checkpoint_bytes
from nightact.training.train import TrainConfig, train

SRC = Path(__file__).resolve().parents[1] / "src"
# XLA off: compiling costs more than these few steps gain from it.
TINY = dict(model="gru", batch_size=8, units=(8,), learning_rate=3e-3, xla=False)

HOLDER = """
import sys, time
from nightact.core.locks import folder_lock
with folder_lock(sys.argv[1], command="nightact train --out elsewhere"):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small prepared store (6 frames of 24x32, 3 videos per class) and its videos."""
    return make_synthetic_store(
        tmp_path_factory.mktemp("robust"), videos_per_class=3, frames=6, workers=2
    )


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of the given size (``"600k"``, ``"30m"``) under tmp_path."""
    mounted = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk-{size}"
        folder.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command here")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def left_over(folder: Path) -> list[str]:
    """Half-written files of any writer: temporary names, partial saves, incoming backups."""
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.name.endswith(".tmp") or ".partial-" in path.name or ".incoming-" in path.name
    )


def test_an_atomic_write_on_a_full_disk_names_the_file_and_leaves_the_old_one(small_disk):
    disk = small_disk("600k")
    target = disk / "data.bin"
    files.write_bytes_atomic(target, b"old")
    with pytest.raises(files.DiskFullError) as error:
        files.write_bytes_atomic(target, bytes(2_000_000))
    message = str(error.value)
    assert message.startswith(f"{target}: disk full while writing it (")
    assert " kB written), " in message and " kB free;" in message and "\n" not in message
    assert target.read_bytes() == b"old"
    assert left_over(disk) == []


def test_prepare_and_train_refuse_a_disk_too_small_up_front(store, small_disk):
    disk = small_disk("600k")
    config = PrepareConfig(store.parent / "videos", disk / "store", frames=6, height=24, width=32)
    with pytest.raises(
        files.DiskSpaceError, match=r"store of 36 clips: needs [\d.]+ [kM]B, [\d.]+ [kM]B free"
    ):
        prepare(config)
    assert not (disk / "store" / ".partial").exists()

    run = disk / "run"
    with pytest.raises(
        files.DiskSpaceError, match=r"training gru .*: needs [\d.]+ [kM]B, [\d.]+ [kM]B free"
    ):
        train(TrainConfig(data=store, out=run, epochs=1, **TINY), verbose=0)
    assert not runs.is_run(run)  # refused before anything was written


class _FillTheDisk(keras.callbacks.Callback):
    """After the first epoch's files are saved, another program fills the disk."""

    def __init__(self, filler: Path):
        super().__init__()
        self.filler = filler

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            with open(self.filler, "wb") as handle:
                try:
                    while True:
                        handle.write(bytes(1 << 16))
                        handle.flush()
                except OSError:
                    pass


def test_a_disk_that_fills_during_training_keeps_the_finished_epoch_and_resumes(store, small_disk):
    disk = small_disk("24m")
    run = disk / "run"
    config = TrainConfig(data=store, out=run, epochs=2, **TINY)
    with pytest.raises(files.DiskFullError) as error:
        train(config, callbacks=[_FillTheDisk(disk / "filler")], verbose=0)
    message = str(error.value)
    assert message.startswith(str(run)) and "disk full while writing it" in message
    assert "\n" not in message
    # Nothing half-written under a real name or a temporary one; the first epoch is kept.
    assert left_over(run) == []
    assert check_model_file(run / "model.keras") is None
    assert [row["epoch"] for row in runs.read_history(run)] == [0]

    # Once space is freed, the same run resumes and finishes.
    (disk / "filler").unlink()
    result = train(TrainConfig(**{**vars(config), "resume": True}), verbose=0)
    assert result.epochs_completed == 2
    assert [row["epoch"] for row in runs.read_history(run)] == [0, 1]
    assert not (run / "backup").exists() and left_over(run) == []


@pytest.fixture(scope="module")
def finished_run(store, tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    train(TrainConfig(data=store, out=run, epochs=1, **TINY), verbose=0)
    return run


def test_commands_given_a_damaged_checkpoint_say_so_in_one_line(
    finished_run, store, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    checkpoint = run / "model.keras"
    data = bytearray(checkpoint.read_bytes())
    checkpoint.write_bytes(bytes(data[: len(data) // 2]))  # a copy cut short
    video = next((store.parent / "videos").rglob("*.mp4"))
    capsys.readouterr()

    for command in (
        ["evaluate", str(run)],
        ["compare", str(run), "--out", str(tmp_path / "report")],
        ["predict", str(run), str(video)],
    ):
        assert main(command) == 2, command
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1, errors
        assert f"{checkpoint}: damaged checkpoint (" in errors[0], errors


def test_a_folder_in_use_is_refused_by_every_command_in_one_line(
    finished_run, store, tmp_path, capsys
):
    videos = store.parent / "videos"
    commands = {
        "train": (finished_run, ["train", "--out", str(finished_run), "--resume", "--quiet"]),
        "prepare": (tmp_path / "store", ["prepare", str(videos), str(tmp_path / "store")]),
        "compare": (
            tmp_path / "report",
            ["compare", str(finished_run), "--out", str(tmp_path / "report")],
        ),
    }
    for name, (folder, command) in commands.items():
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(folder)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(SRC)},
        )
        try:
            assert holder.stdout.readline().strip() == "locked"
            capsys.readouterr()
            assert main(command) == 2, name
            error = capsys.readouterr().err.strip()
            assert error.startswith(
                f"nightact {name}: error: {folder} is in use by process {holder.pid} "
                "(nightact train --out elsewhere, started "
            ), error
            assert "\n" not in error
        finally:
            holder.kill()
            holder.wait(timeout=30)
            holder.stdout.close()
    # Killed, the holder leaves nothing in the way.
    assert main(["train", "--out", str(finished_run), "--resume", "--quiet"]) == 0


class _Interrupt(keras.callbacks.Callback):
    """Stands in for a kill after the second epoch was backed up."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


@pytest.mark.slow  # restore_training's fallbacks are tested in test_checkpoints; this is the wiring
def test_train_resumes_past_a_damaged_backup_from_the_previous_one(store, tmp_path, caplog):
    run = tmp_path / "run"
    config = TrainConfig(data=store, out=run, epochs=2, **TINY)
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[_Interrupt()], verbose=0)
    assert sorted(path.name for path in (run / "backup").iterdir()) == [
        "epoch-000001",
        "epoch-000002",
    ]
    weights = run / "backup" / "epoch-000002" / "weights.weights.h5"
    weights.write_bytes(weights.read_bytes()[:1000])  # a save cut short

    caplog.set_level(logging.WARNING)
    result = train(TrainConfig(**{**vars(config), "resume": True}), verbose=0)
    damaged = [line for line in caplog.messages if "damaged" in line]
    assert damaged == [
        f"{weights}: damaged backup (its content changed since it was written), skipped"
    ]
    assert result.epochs_completed == 2
    assert [row["epoch"] for row in runs.read_history(run)] == [0, 1]
    assert not (run / "backup").exists()


def test_the_checkpoint_estimate_covers_the_real_file(finished_run):
    # The estimate the up-front check multiplies: variables, the optimizer's, and structure.
    model = keras.saving.load_model(finished_run / "model.keras")
    estimate = checkpoint_bytes(model)
    actual = (finished_run / "model.keras").stat().st_size
    assert actual <= estimate <= actual + 200_000, (estimate, actual)

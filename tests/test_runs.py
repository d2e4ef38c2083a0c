"""The run folder's files, read and written in one place, and the one "same settings" rule."""

from __future__ import annotations

import os

import pytest

from conftest import write_run_folder
from nightact.core import runs


def test_history_round_trips_with_integer_epochs(tmp_path):
    rows = [
        {"epoch": 0, "loss": 2.0, "accuracy": 0.25, "val_accuracy": 0.2, "seconds": 1.5},
        {"epoch": 1, "loss": 1.0, "accuracy": 0.5, "val_accuracy": 0.4, "seconds": 1.25},
    ]
    runs.write_history(tmp_path, rows)
    assert runs.read_history(tmp_path) == rows
    assert all(type(row["epoch"]) is int for row in runs.read_history(tmp_path))
    assert (tmp_path / "history.csv").read_text().splitlines()[0].startswith("epoch,")
    runs.write_history(tmp_path, [])
    assert not (tmp_path / "history.csv").exists() and runs.read_history(tmp_path) == []


def test_reading_a_history_stops_before_a_half_line(tmp_path, caplog):
    (tmp_path / "history.csv").write_text("epoch,loss,val_accuracy\n0,1.5,0.25\n1,1.2,0.5\n2,1.")
    assert [row["epoch"] for row in runs.read_history(tmp_path)] == [0, 1]
    assert "line 4 is incomplete" in caplog.text


def test_a_hand_written_run_reads_back(tmp_path):
    history = [{"epoch": 0, "loss": 1.0, "val_accuracy": 0.5}]
    run = write_run_folder(
        tmp_path / "run", {"model": "gru"}, class_names=["a", "b"], history=history
    )
    assert runs.is_run(run) and not runs.is_run(tmp_path)
    assert runs.read_config(run) == {"model": "gru"}
    assert runs.read_classes(run) == ["a", "b"]
    assert runs.read_history(run) == history
    assert runs.read_result(run) is None
    with pytest.raises(FileNotFoundError, match="not evaluated yet"):
        runs.read_metrics(run)
    with pytest.raises(FileNotFoundError, match="not a training run"):
        runs.read_config(tmp_path)
    (run / "classes.json").write_text('["x", "y"]')  # the bare list of older runs
    assert runs.read_classes(run) == ["x", "y"]
    (run / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="config.json: unreadable"):
        runs.read_config(run)


def test_an_evaluation_older_than_the_checkpoint_is_stale(tmp_path):
    run = write_run_folder(tmp_path / "run", {"model": "gru"}, metrics={"accuracy": 0.5})
    assert runs.is_evaluated(run)  # no checkpoint to compare with
    checkpoint = run / "model.keras"
    checkpoint.write_bytes(b"weights")
    metrics = runs.metrics_path(run)
    os.utime(checkpoint, (metrics.stat().st_mtime + 10,) * 2)
    assert not runs.is_evaluated(run)
    os.utime(metrics, (metrics.stat().st_mtime + 20,) * 2)
    assert runs.is_evaluated(run) and runs.read_metrics(run) == {"accuracy": 0.5}
    assert runs.evaluation_folder(run, "val") == run / "evaluation-val"


def test_same_settings_or_refuse_names_every_difference(tmp_path):
    saved = {"seed": 1, "frames": 8, "size": [48, 64]}
    runs.require_same_settings(saved, dict(saved), tmp_path, "a thing", "do X")
    with pytest.raises(ValueError) as caught:
        runs.require_same_settings(
            saved, {"seed": 2, "frames": 8, "size": [24, 32]}, tmp_path, "a thing", "do X"
        )
    message = str(caught.value)
    assert message.startswith(f"{tmp_path} holds a thing made with other settings (")
    assert "seed=1 there, 2 now" in message and "size=[48, 64] there, [24, 32] now" in message
    assert "frames" not in message and message.endswith("; do X")
    # Only the keys asked about count.
    runs.require_same_settings(saved, {"seed": 1, "frames": 9}, tmp_path, "t", "r", keys=["seed"])

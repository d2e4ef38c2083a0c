"""nightact study: a grid of real training runs, resumable, ending in compare's report."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nightact.cli import build_parser, main, study_config, train_config
from nightact.study import (
    TRAIN_SETTINGS,
    RunJob,
    RunKilled,
    StudyConfig,
    study,
    train_command,
    train_run,
)
from nightact.training.train import TrainConfig


def test_the_grid_and_its_train_commands(tmp_path):
    config = StudyConfig(
        data="store", out=tmp_path, models=("gru", "lstm"), seeds=(0, 1), devices=2, epochs=3
    )
    assert config.run_names() == ["gru-seed0", "gru-seed1", "lstm-seed0", "lstm-seed1"]
    command = train_command(config, "lstm", 1)
    assert command[:4] == [sys.executable, "-m", "nightact.cli", "train"]
    assert "--resume" in command
    assert command[command.index("--out") + 1] == str(tmp_path / "runs" / "lstm-seed1")
    assert command[command.index("--devices") + 1] == "2"
    assert command[command.index("--epochs") + 1] == "3"
    assert "--preset" not in command and "--batch-size" not in command


# A value other than TrainConfig's default for every setting a study can pass on.
TRAIN_VALUES = {
    "epochs": 7,
    "batch_size": 12,
    "learning_rate": 3e-3,
    "loss": "msle",
    "mixed_precision": True,
    "mixed_dtype": "bfloat16",
    "lstm_kernel": "scan",
    "early_stopping": 4,
    "workers": 3,
    "devices": 2,
    "data_on_device": "no",
    "units": (64, 32, 16),
    "dropout": 0.1,
    "conv_filters": 32,
    "conv_kernel": 4,
    "conv_stride": 4,
    "unroll": True,
    "augment": False,
    "xla": False,
    "fine_tune": 2,
    "fine_tune_epochs": 3,
    "fine_tune_learning_rate": 2e-5,
}


def test_every_train_setting_reaches_the_runs_through_train_s_own_flags(tmp_path):
    assert set(TRAIN_VALUES) == set(TRAIN_SETTINGS)
    defaults = TrainConfig(data="s", model="gru", out="o")
    assert all(getattr(defaults, name) != value for name, value in TRAIN_VALUES.items())
    config = StudyConfig(data="store", out=tmp_path, models=("gru",), train=TRAIN_VALUES)
    # The run's command line, read back by the real `nightact train` parser.
    command = train_command(config, "gru", 5)
    trained = train_config(build_parser().parse_args(command[3:]))
    for name, value in TRAIN_VALUES.items():
        assert getattr(trained, name) == value, name
    assert (trained.model, trained.seed, trained.data) == ("gru", 5, "store")


def test_the_study_command_passes_train_flags_on(tmp_path):
    arguments = ["study", "--data", "store", "--out", str(tmp_path), "--seeds", "0,1"]
    arguments += ["--lr", "0.003", "--units", "64,32,16", "--conv-kernel", "4", "--no-augment"]
    arguments += ["--lstm-kernel", "cudnn-float32"]
    config = study_config(build_parser().parse_args([*arguments, "--epochs", "12"]))
    assert config.epochs == 12 and config.seeds == (0, 1)
    assert config.train == {
        "learning_rate": 0.003,
        "units": (64, 32, 16),
        "conv_kernel": 4,
        "augment": False,
        "lstm_kernel": "cudnn-float32",
    }
    assert study_config(build_parser().parse_args(arguments[:5])).train == {}


def test_bad_grids_are_refused():
    with pytest.raises(ValueError, match="unknown model"):
        StudyConfig(data="s", out="o", models=("gru", "transformer"))
    with pytest.raises(ValueError, match="at least one seed"):
        StudyConfig(data="s", out="o", seeds=())
    with pytest.raises(ValueError, match="need 4 GPUs; 2 given"):
        StudyConfig(data="s", out="o", parallel=2, devices=2, gpus=(0, 1))
    with pytest.raises(ValueError, match="train settings seed cannot be set"):
        StudyConfig(data="s", out="o", train={"seed": 3})
    with pytest.raises(ValueError, match="on Ray each run asks for `devices` GPUs"):
        StudyConfig(data="s", out="o", ray="auto", gpus=(0, 1))
    with pytest.raises(ValueError, match="cpus_per_run must be positive"):
        StudyConfig(data="s", out="o", ray="auto", cpus_per_run=0)


def test_a_run_task_logs_and_tells_an_error_from_a_kill(tmp_path):
    log_path = tmp_path / "run.log"
    failing = [sys.executable, "-c", "print('training...'); raise SystemExit(3)"]
    with pytest.raises(RuntimeError, match="exit 3"):
        train_run(RunJob("gru-seed0", failing, str(log_path)))
    killed = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    # Killed (by the OOM killer, say): an error Ray is asked to try again, unlike an exit.
    with pytest.raises(RunKilled, match="killed by signal 9"):
        train_run(RunJob("gru-seed0", killed, str(log_path)))
    finishing = [sys.executable, "-c", "print('done')"]
    assert train_run(RunJob("gru-seed0", finishing, str(log_path))) > 0
    assert log_path.read_text().splitlines() == ["training...", "done"]


# Starts a run task whose run sleeps, then waits to be killed.
RUN_TASK = """
import sys
from nightact.study import RunJob, train_run
sleeper = [sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"]
train_run(RunJob("gru-seed0", sleeper, sys.argv[1]))
"""


def test_a_run_ends_with_the_task_that_started_it(tmp_path):
    # Ray kills a task's worker when the task is cancelled or its driver is gone; a run left
    # training would hold its folder against the study started again.
    log_path = tmp_path / "run.log"
    task = subprocess.Popen([sys.executable, "-c", RUN_TASK, str(log_path)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _text(log_path).strip():
        time.sleep(0.05)
    run = int(_text(log_path))
    task.send_signal(signal.SIGKILL)
    task.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(run):
        time.sleep(0.05)
    assert not _alive(run)


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead, waiting for its (new) parent to read its status.
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def test_a_study_on_a_cluster_nobody_runs_is_refused_in_one_line_before_writing(tmp_path, capsys):
    pytest.importorskip("ray")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    out = tmp_path / "study"
    assert main(["study", "--data", str(tmp_path), "--out", str(out), "--ray", address]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"nightact study: error: --ray {address}: nothing answers there (Connection refused)"
    ]
    assert not out.exists()


def test_a_study_on_ray_reports_each_failed_run_with_its_log(tmp_path, caplog):
    # Every run fails at once (no store there), on a real local Ray instance: each is tried,
    # each reported with the end of its log, and no report is written.
    pytest.importorskip("ray")
    config = StudyConfig(
        data=tmp_path / "absent", out=tmp_path / "study", models=("gru", "lstm"), ray="local"
    )
    with caplog.at_level(logging.ERROR, logger="nightact.study"):
        with pytest.raises(ValueError, match=r"2 run\(s\) failed: gru-seed0, lstm-seed0"):
            study(config)
    messages = sorted(record.getMessage() for record in caplog.records)
    assert len(messages) == 2
    for name, message in zip(("gru-seed0", "lstm-seed0"), messages, strict=True):
        assert message.startswith(f"{name} failed (exit 2); the end of ")
        assert "not a prepared store (no store.json)" in message
        log_text = (tmp_path / "study" / "logs" / f"{name}.log").read_text()
        assert "not a prepared store (no store.json)" in log_text
    assert not (tmp_path / "study" / "report").exists()


@pytest.mark.slow
def test_a_study_trains_every_run_resumes_and_reports(tmp_path, synthetic_store, capsys):
    out = tmp_path / "study"
    arguments = ["study", "--data", str(synthetic_store), "--out", str(out)]
    arguments += ["--models", "gru,cnn_gru", "--seeds", "0", "--epochs", "1", "--batch-size", "8"]
    assert main([*arguments, "--parallel", "2"]) == 0
    assert "report.html" in capsys.readouterr().out
    for name in ("gru-seed0", "cnn_gru-seed0"):
        result = json.loads((out / "runs" / name / "result.json").read_text())
        assert result["epochs_completed"] == 1
        assert (out / "runs" / name / "evaluation").is_dir()
    assert (out / "report" / "report.html").exists()
    assert json.loads((out / "study.json").read_text())["models"] == ["gru", "cnn_gru"]

    # Again: the finished runs are kept, not retrained.
    before = (out / "runs" / "gru-seed0" / "result.json").stat().st_mtime_ns
    assert main(arguments) == 0
    assert (out / "runs" / "gru-seed0" / "result.json").stat().st_mtime_ns == before
    assert "already finished" in (out / "logs" / "gru-seed0.log").read_text()


def _trained(study_folder: Path) -> dict:
    """What a study's runs learned and its report says, less timings, paths and host names."""
    runs = {}
    for run in sorted((study_folder / "runs").iterdir()):
        with open(run / "history.csv", newline="") as handle:
            history = [
                {key: value for key, value in row.items() if key != "seconds"}
                for row in csv.DictReader(handle)
            ]
        # TensorBoard's event files are named after the host and process.
        listing = sorted(
            str(path.relative_to(run)) for path in run.rglob("*") if "tensorboard" not in path.parts
        )
        runs[run.name] = (history, listing)
    report = json.loads((study_folder / "report" / "report.json").read_text())
    learned = {
        entry["model"]: {
            name: entry["values"][name] for name in ("accuracy", "macro_f1", "parameters")
        }
        for entry in report["models"]
    }
    files = sorted(path.name for path in (study_folder / "report").iterdir())
    return {"runs": runs, "report": learned, "report_files": files}


@pytest.mark.slow
def test_a_study_on_ray_trains_the_same_runs_and_report_as_one_without(tmp_path, synthetic_store):
    arguments = ["study", "--data", str(synthetic_store), "--models", "gru,simple_rnn"]
    arguments += ["--seeds", "0,1", "--epochs", "1", "--batch-size", "8"]
    assert main([*arguments, "--out", str(tmp_path / "here")]) == 0
    assert main([*arguments, "--out", str(tmp_path / "ray"), "--ray"]) == 0
    here, on_ray = _trained(tmp_path / "here"), _trained(tmp_path / "ray")
    assert sorted(on_ray["runs"]) == [
        "gru-seed0",
        "gru-seed1",
        "simple_rnn-seed0",
        "simple_rnn-seed1",
    ]
    assert on_ray == here


@pytest.mark.slow
def test_a_study_on_ray_survives_a_worker_killed_mid_run(tmp_path, synthetic_store):
    # The Ray worker running a run is killed while the run trains (as when its node is lost):
    # Ray runs the task again, the run resumes from its last finished epoch, the study ends
    # with every run finished and its report, and the killed run's process is gone too.
    out = tmp_path / "study"
    command = [sys.executable, "-m", "nightact.cli", "study", "--data", str(synthetic_store)]
    command += ["--out", str(out), "--models", "gru", "--seeds", "0,1", "--epochs", "4"]
    command += ["--batch-size", "8", "--ray", "--workers", "1"]
    study_process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    backups = out / "runs" / "gru-seed0" / "backup"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(backups.glob("epoch-*")):
        time.sleep(0.1)
    assert list(backups.glob("epoch-*")), "the run never finished an epoch"
    run = _training_process(out / "runs" / "gru-seed0")
    worker = int(Path(f"/proc/{run}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(worker, signal.SIGKILL)
    output, _ = study_process.communicate(timeout=600)
    assert study_process.returncode == 0, output.decode()
    assert not _alive(run)
    for seed in (0, 1):
        result = json.loads((out / "runs" / f"gru-seed{seed}" / "result.json").read_text())
        assert result["epochs_completed"] == 4
    log_text = (out / "logs" / "gru-seed0.log").read_text()
    assert "resuming" in log_text and "epochs finished)" in log_text, log_text
    assert (out / "report" / "report.html").exists()


def _training_process(run: Path) -> int:
    """The pid of the `nightact train` process writing into ``run``."""
    for status in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            arguments = status.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"train" in arguments and str(run).encode() in arguments:
            return int(status.parent.name)
    raise AssertionError(f"no training process for {run}")

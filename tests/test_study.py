"""nightact study: a grid of real training runs, resumable, ending in compare's report."""

from __future__ import annotations

import json
import sys

import pytest

from nightact.cli import build_parser, main, study_config, train_config
from nightact.study import TRAIN_SETTINGS, StudyConfig, train_command
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

"""nightact study: a grid of real training runs, resumable, ending in compare's report."""

from __future__ import annotations

import json
import sys

import pytest

from nightact.cli import main
from nightact.study import StudyConfig, train_command


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


def test_bad_grids_are_refused():
    with pytest.raises(ValueError, match="unknown model"):
        StudyConfig(data="s", out="o", models=("gru", "transformer"))
    with pytest.raises(ValueError, match="at least one seed"):
        StudyConfig(data="s", out="o", seeds=())
    with pytest.raises(ValueError, match="need 4 GPUs; 2 given"):
        StudyConfig(data="s", out="o", parallel=2, devices=2, gpus=(0, 1))


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

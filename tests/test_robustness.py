"""A run trained with augmentation on a K=2 store: multi-view evaluation, another store,
the robustness sweep and its section in the comparison report."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from conftest import make_synthetic_store
from nightact.cli import main

# Four stores and a training run: about a minute on a quiet 2-core machine, several under load.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def augmented_run(tmp_path_factory):
    """Stores (K=2 with all splits; test-only; other class names) and a 1-epoch run."""
    from nightact.data.prepare import PrepareConfig, prepare
    from nightact.training.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("augmented")
    store = make_synthetic_store(
        folder, videos_per_class=3, frames=4, seconds=(0.8, 1.0), workers=2
    )
    # The same videos again, K=2, all splits.
    candidates = folder / "candidates"
    prepare(
        PrepareConfig(
            folder / "videos",
            candidates,
            frames=4,
            height=24,
            width=32,
            split=(0.34, 0.33, 0.33),
            frames_per_segment=2,
            workers=2,
        )
    )
    test_only = folder / "camera2"
    prepare(
        PrepareConfig(
            folder / "videos",
            test_only,
            frames=4,
            height=24,
            width=32,
            split=(0.0, 0.0, 1.0),
            workers=2,
        )
    )
    fewer = folder / "fewer-videos"
    for name in sorted(p.name for p in (folder / "videos").iterdir() if p.is_dir())[:3]:
        shutil.copytree(folder / "videos" / name, fewer / name)
    fewer_store = folder / "fewer"
    prepare(PrepareConfig(fewer, fewer_store, frames=4, height=24, width=32, workers=1))
    run = folder / "run"
    train(
        TrainConfig(
            data=candidates,
            model="cnn_gru",
            out=run,
            epochs=1,
            batch_size=4,
            units=(8, 8),
            conv_filters=4,
            conv_kernel=3,
            conv_stride=2,
            augment=True,
        ),
        verbose=0,
    )
    return {"run": run, "store": store, "test_only": test_only, "fewer": fewer_store}


def test_the_config_records_augmentation_and_candidates(augmented_run):
    config = json.loads((augmented_run["run"] / "config.json").read_text())
    assert config["augment"] is True and config["frames_per_segment"] == 2
    assert config["frames"] == 4


def test_views_average_the_softmax_and_are_written_apart(augmented_run):
    from nightact.scoring.evaluate import evaluate

    run = augmented_run["run"]
    one = evaluate(run)
    assert one["views"] == 1 and one["output"] == str(run / "evaluation")
    two = evaluate(run, views=2)
    assert two["output"] == str(run / "evaluation-2views")
    # Flips were trained: the second view is candidate 1, mirrored.
    assert two["view_plan"] == [
        {"candidate": 0, "mirrored": False},
        {"candidate": 1, "mirrored": True},
    ]
    saved = json.loads((run / "evaluation-2views" / "metrics.json").read_text())
    assert saved["views"] == 2
    # Deterministic: the same numbers again.
    assert evaluate(run, views=2)["confusion"] == two["confusion"]
    with pytest.raises(ValueError, match="distinct view"):
        evaluate(run, views=5)


def test_another_store_is_scored_beside_the_runs_own(augmented_run, capsys):
    run = augmented_run["run"]
    assert main(["evaluate", str(run), "--data", str(augmented_run["test_only"])]) == 0
    metrics = json.loads((run / "evaluation-camera2" / "metrics.json").read_text())
    assert metrics["data"] == str(augmented_run["test_only"]) and metrics["clips"] == 36
    assert main(["evaluate", str(run), "--data", str(augmented_run["fewer"])]) != 0
    error = capsys.readouterr().err
    assert "class names differ" in error and "missing" in error and "walking" in error


def test_robustness_writes_a_csv_a_png_and_a_report_section(augmented_run, tmp_path):
    from nightact.scoring.compare import compare
    from nightact.scoring.darkness import SWEEPS

    run = augmented_run["run"]
    assert main(["robustness", str(run)]) == 0
    with open(run / "robustness" / "robustness.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(len(levels) for levels in SWEEPS.values())
    assert {row["sweep"] for row in rows} == set(SWEEPS)
    assert all(0.0 <= float(row["accuracy"]) <= 1.0 for row in rows)
    # Level 0 is the clean test split: the same accuracy as evaluate's one view.
    clean = [float(row["accuracy"]) for row in rows if row["level"] == "0"]
    evaluated = json.loads((run / "evaluation" / "metrics.json").read_text())["accuracy"]
    assert clean == pytest.approx([evaluated, evaluated])
    assert (run / "robustness" / "robustness.png").stat().st_size > 1000
    # The settings beside the sweep, with the batch size that was used: the run's.
    run_batch_size = json.loads((run / "config.json").read_text())["batch_size"]
    assert json.loads((run / "robustness" / "robustness_config.json").read_text()) == {
        "run": str(run),
        "data": None,
        "batch_size": run_batch_size,
    }
    report = compare([run], tmp_path / "report")
    assert "darker and noisier" in report.read_text()
    assert (tmp_path / "report" / "robustness.png").exists()
    assert "robustness.png" in (tmp_path / "report" / "report.md").read_text()


def test_predict_averages_views_of_a_video(augmented_run):
    from nightact.serve.predict import predict_videos

    videos = sorted((augmented_run["store"].parent / "videos").rglob("*.mp4"))[:2]
    one = predict_videos(augmented_run["run"], videos, progress=False)
    two = predict_videos(augmented_run["run"], videos, progress=False, views=2)
    for single, double in zip(one, two, strict=True):
        assert double.ok and np.isclose(double.probabilities.sum(), 1.0, atol=1e-5)
        assert not np.allclose(single.probabilities, double.probabilities)

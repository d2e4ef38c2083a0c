"""The demo: synth -> prepare -> train -> evaluate -> compare in one folder, and resumable."""

from __future__ import annotations

import json

import pytest

from nightact.demo import DemoConfig, _check_or_save_config, format_demo_result, run_demo


def test_a_demo_folder_refuses_other_settings(tmp_path):
    _check_or_save_config(DemoConfig(out=tmp_path), tmp_path)
    saved = json.loads((tmp_path / "demo_config.json").read_text())
    assert saved["epochs"] == DemoConfig.epochs and len(saved["models"]) == 6

    with pytest.raises(ValueError, match="epochs=.* there"):
        run_demo(DemoConfig(out=tmp_path, epochs=DemoConfig.epochs + 1))
    # Nothing was started, and the folder's lock file went with the lock.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo_config.json"]


@pytest.mark.slow
def test_tiny_demo_runs_end_to_end_and_resumes(tmp_path):
    config = DemoConfig(
        out=tmp_path / "demo",
        models=("gru", "cnn_gru"),
        videos_per_class=4,
        video_size=(48, 64),
        frames=4,
        height=24,
        width=32,
        epochs=2,
        units=(8, 8),
        conv_filters=8,
        conv_kernel=3,
        conv_stride=2,
        workers=1,
    )
    result = run_demo(config)

    out = tmp_path / "demo"
    assert result.report == out / "report" / "report.html" and result.report.exists()
    assert set(result.test_accuracy) == {"gru", "cnn_gru"}
    assert len(list((out / "videos").rglob("*.mp4"))) == 48
    assert (out / "store" / "store.json").exists()
    for model in ("gru", "cnn_gru"):
        run = out / "runs" / model
        assert json.loads((run / "result.json").read_text())["epochs_completed"] == 2
        metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
        assert metrics["accuracy"] == result.test_accuracy[model]
    assert "| CNN + GRU |" in (out / "report" / "report.md").read_text()
    assert str(result.report.resolve()) in format_demo_result(result)

    # A second run finds every step done: no model is trained or evaluated again.
    stamps = {
        path: path.stat().st_mtime_ns
        for model in ("gru", "cnn_gru")
        for path in (
            out / "runs" / model / "model.keras",
            out / "runs" / model / "evaluation" / "metrics.json",
        )
    }
    again = run_demo(config)
    assert again.test_accuracy == result.test_accuracy
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps


def test_demo_settings_name_augmentation_only_when_on():
    # A demo folder made before the setting existed still matches a demo without it.
    assert "augment" not in DemoConfig().content()
    assert DemoConfig(augment=True).content()["augment"] is True

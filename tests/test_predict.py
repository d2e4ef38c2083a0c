"""Tests of `nightact predict` / `nightact.predict` with a tiny real model and real video files."""

from __future__ import annotations

import json
import logging
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import decodable_frames, write_run_folder, write_truncated_mp4
from nightact import cli
from nightact.core.videos import read_clip, write_video
from nightact.data.prepare import PrepareConfig, prepare
from nightact.serve.predict import (
    PredictConfig,
    Prediction,
    format_predictions,
    load_predictor,
    predict_videos,
    run_predict,
)
from nightact.sources.synthetic import CLASS_NAMES

FRAMES, HEIGHT, WIDTH = 4, 24, 32


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder as nightact.training.train writes it: model.keras, classes.json, config.json."""
    import keras

    from nightact.nets.models import build_model

    keras.utils.set_random_seed(7)
    model = build_model(
        "cnn_gru",
        frames=FRAMES,
        height=HEIGHT,
        width=WIDTH,
        num_classes=len(CLASS_NAMES),
        units=(8, 8, 8),
        conv_filters=4,
        conv_kernel=3,
        conv_stride=3,
    )
    # Larger output weights spread the probabilities so the top-k order means something.
    kernel, bias = model.get_layer("probabilities").get_weights()
    model.get_layer("probabilities").set_weights([kernel * 20, bias])
    folder = tmp_path_factory.mktemp("run")
    model.save(folder / "model.keras")
    config = {"model": "cnn_gru", "data": str(folder / "absent-store"), "frames": FRAMES}
    return write_run_folder(folder, config, class_names=CLASS_NAMES)


@pytest.fixture(scope="module")
def loaded_model(run):
    import keras

    return keras.saving.load_model(run / "model.keras", compile=False)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Synthetic mp4s of different shapes and lengths, including a 2-frame one."""
    folder = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(3)
    for name, count, height, width in [
        ("wide.mp4", 12, 36, 64),
        ("square.mp4", 9, 40, 40),
        ("tall.mp4", 7, 64, 36),
        ("nested/deeper.mp4", 10, 24, 32),
        ("short.mp4", 2, 24, 32),
    ]:
        frames = rng.integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)
        write_video(folder / name, frames, fps=10)
    (folder / "notes.txt").write_text("not a video, and not picked up from a folder")
    return folder


def direct_probabilities(model, path: Path) -> np.ndarray:
    """The independent computation: the prepared clip fed straight to the model."""
    frames = read_clip(path, FRAMES, HEIGHT, WIDTH).frames
    return np.asarray(model.predict(frames[None], verbose=0))[0]


def assert_valid(prediction: Prediction, top_k: int):
    assert prediction.error is None, prediction.error
    assert prediction.probabilities.shape == (len(CLASS_NAMES),)
    assert prediction.probabilities.dtype == np.float32
    assert prediction.probabilities.min() >= 0
    assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    expected = np.sort(prediction.probabilities)[::-1][:top_k]
    assert [probability for _, probability in prediction.top_k] == pytest.approx(expected)
    for name, probability in prediction.top_k:
        assert prediction.probabilities[CLASS_NAMES.index(name)] == probability


def test_predictions_equal_feeding_the_prepared_clip(run, loaded_model, videos):
    paths = sorted(videos.rglob("*.mp4"))
    predictions = predict_videos(run, paths, top_k=3, batch_size=2, progress=False)

    assert [prediction.path for prediction in predictions] == [str(path) for path in paths]
    for path, prediction in zip(paths, predictions, strict=True):
        assert_valid(prediction, 3)
        np.testing.assert_allclose(
            prediction.probabilities, direct_probabilities(loaded_model, path), atol=1e-6
        )
    # The clips differ, and so do their predictions.
    assert not np.allclose(predictions[0].probabilities, predictions[1].probabilities)


def test_folder_expands_to_its_videos_and_errors_do_not_stop_the_others(run, videos, tmp_path):
    not_a_video = tmp_path / "fake.mp4"
    not_a_video.write_text("hello")
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    missing = tmp_path / "missing.mp4"

    predictions = predict_videos(
        run, [missing, videos, not_a_video, empty_folder], top_k=5, progress=False
    )

    by_path = {prediction.path: prediction for prediction in predictions}
    assert list(by_path) == [
        str(missing),
        *(str(path) for path in sorted(videos.rglob("*.mp4"))),
        str(not_a_video),
        str(empty_folder),
    ]
    assert by_path[str(missing)].error == "file not found"
    assert "not a readable video" in by_path[str(not_a_video)].error
    assert "no video files" in by_path[str(empty_folder)].error
    for path in videos.rglob("*.mp4"):
        assert_valid(by_path[str(path)], 5)
    table = format_predictions(predictions)
    assert "error: file not found" in table
    assert f"5 of {len(predictions)} videos predicted" in table


def test_real_clips(run, loaded_model, shared_videos):
    predictions = predict_videos(run, [shared_videos], top_k=2, batch_size=4, progress=False)

    names = sorted(Path(prediction.path).name for prediction in predictions)
    assert "pedestrians_cctv_768x576.avi" in names
    assert "quirk_no_duration.webm" in names
    assert "README.md" not in names
    for prediction in predictions:
        assert_valid(prediction, 2)
        assert prediction.warning is None, prediction.path
    # Small clips keep the direct check quick; the decoding path is the same for every file.
    for prediction in predictions:
        if Path(prediction.path).name in (
            "carphone_gesturing_176x144.mp4",
            "quirk_no_duration.webm",
        ):
            direct = direct_probabilities(loaded_model, Path(prediction.path))
            np.testing.assert_allclose(prediction.probabilities, direct, atol=1e-6)


def test_a_truncated_or_short_video_is_predicted_with_one_warning(
    run, loaded_model, videos, tmp_path, caplog, capsys
):
    cut = write_truncated_mp4(tmp_path / "cut.mp4", count=49)
    decoded = decodable_frames(cut)
    note = f"truncated: only {decoded} of the 49 frames its index promises decode"
    short = f"only 2 decodable frames; repeated the last to make {FRAMES}"
    paths = [cut, videos / "wide.mp4", videos / "short.mp4"]
    with caplog.at_level(logging.WARNING, logger="nightact.serve.predict"):
        predictions = predict_videos(run, paths, progress=False)
    assert [record.getMessage() for record in caplog.records] == [
        f"{cut}: {note}",
        f"{videos / 'short.mp4'}: {short}",
    ]
    assert [prediction.warning for prediction in predictions] == [note, None, short]
    # Predicted all the same, from the frames that decode.
    assert_valid(predictions[0], 3)
    direct = direct_probabilities(loaded_model, cut)
    np.testing.assert_allclose(predictions[0].probabilities, direct, atol=1e-6)

    assert cli.main(["predict", str(run), str(cut), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["warning"], row["error"]) == (note, None)


def test_short_clip_policy_follows_the_runs_store(run, videos, tmp_path):
    # A real store prepared with short_clips="skip": predict refuses clips that prepare skipped.
    source = tmp_path / "source"
    originals = ["wide.mp4", "square.mp4", "tall.mp4", "nested/deeper.mp4"]
    for index, original in enumerate(originals):
        target = source / ("a" if index % 2 else "b") / f"{index}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(videos / original, target)
    store = tmp_path / "store"
    prepare(
        PrepareConfig(
            src=str(source),
            out=str(store),
            frames=FRAMES,
            height=HEIGHT,
            width=WIDTH,
            split=(0.5, 0.25, 0.25),
            workers=1,
            short_clips="skip",
        )
    )
    strict_run = tmp_path / "strict-run"
    shutil.copytree(run, strict_run)
    (strict_run / "config.json").write_text(json.dumps({"model": "cnn_gru", "data": str(store)}))

    strict = predict_videos(strict_run, [videos / "short.mp4", videos / "wide.mp4"], progress=False)
    assert "only 2 decodable frames" in strict[0].error
    assert strict[1].error is None

    lenient = predict_videos(run, [videos / "short.mp4"], progress=False)
    assert lenient[0].error is None  # the run's store is unknown: repeat the last frame
    assert not load_predictor(strict_run).allow_short
    assert load_predictor(strict_run, allow_short=True).allow_short


def test_bare_keras_file_and_loaded_model(run, loaded_model, videos, tmp_path):
    bare = tmp_path / "elsewhere" / "model.keras"
    bare.parent.mkdir()
    shutil.copy(run / "model.keras", bare)
    video = videos / "square.mp4"

    generic = predict_videos(bare, video, top_k=12, progress=False)[0]
    assert sorted(name for name, _ in generic.top_k) == sorted(f"class_{i}" for i in range(12))

    named = predict_videos(run / "model.keras", video, progress=False)[0]
    in_memory = predict_videos(loaded_model, video, class_names=CLASS_NAMES, progress=False)[0]
    assert named.top_k == in_memory.top_k
    np.testing.assert_allclose(generic.probabilities, named.probabilities, atol=1e-6)

    with pytest.raises(ValueError, match="12 outputs but 2 class names"):
        predict_videos(loaded_model, video, class_names=["a", "b"])
    with pytest.raises(FileNotFoundError, match="no model.keras"):
        predict_videos(tmp_path, video)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"top_k": 0}, "top_k must be at least 1, got 0"),
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"views": 0}, "views must be at least 1, got 0"),
        ({"engine": "tpu"}, "engine must be one of keras, onnx, got 'tpu'"),
        ({"engine": "onnx"}, "engine 'onnx' needs an .onnx file"),
    ],
)
def test_predict_config_refuses_a_bad_value_naming_it(settings, message):
    with pytest.raises(ValueError, match=message):
        PredictConfig("run", ["a.mp4"], **settings)
    with pytest.raises(ValueError, match=message):
        predict_videos("run", ["a.mp4"], **settings)


def test_predict_config_takes_one_video_or_many_and_reads_the_engine_off_the_model(tmp_path):
    config = PredictConfig(tmp_path / "model.onnx", tmp_path / "a.mp4")
    assert (config.model, config.videos) == (
        str(tmp_path / "model.onnx"),
        (str(tmp_path / "a.mp4"),),
    )
    assert config.engine == "onnx"
    config = PredictConfig("run", (path for path in [tmp_path / "a.mp4", "folder"]))
    assert (config.videos, config.engine) == ((str(tmp_path / "a.mp4"), "folder"), "keras")
    # A loaded model is kept as it is; load_predictor decides what runs it.
    loaded = object()
    assert PredictConfig(loaded, "a.mp4").model is loaded


def test_run_predict_is_predict_videos(run, videos):
    video = videos / "wide.mp4"
    config = PredictConfig(run, [video], top_k=2)
    (from_config,) = run_predict(config, progress=False)
    (from_keywords,) = predict_videos(run, video, top_k=2, progress=False)
    assert len(from_config.top_k) == 2 and from_config.top_k == from_keywords.top_k
    np.testing.assert_array_equal(from_config.probabilities, from_keywords.probabilities)


def test_package_level_predict_survives_importing_the_module(run, videos):
    # The call imports the implementing submodule, which binds it on the package: that must
    # never replace the function, so a second call works too.
    import nightact.serve.predict

    first = nightact.predict(run, [videos / "wide.mp4"], progress=False)
    second = nightact.predict(run, [videos / "wide.mp4"], progress=False)
    assert isinstance(nightact.serve.predict.predict_videos, types.FunctionType)
    assert isinstance(nightact.predict, types.FunctionType)
    assert_valid(first[0], 3)
    np.testing.assert_array_equal(first[0].probabilities, second[0].probabilities)


def test_cli_predict_json_and_table(run, videos, tmp_path, capsys):
    missing = tmp_path / "missing.mp4"
    arguments = ["predict", str(run), str(videos / "wide.mp4"), str(missing), "--top-k", "2"]

    assert cli.main([*arguments, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["path"] for row in rows] == [str(videos / "wide.mp4"), str(missing)]
    assert len(rows[0]["top_k"]) == 2
    assert list(rows[0]["probabilities"]) == list(CLASS_NAMES)
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert rows[0]["error"] is None
    assert rows[1]["error"] == "file not found" and rows[1]["probabilities"] is None

    assert cli.main(arguments) == 0
    table = capsys.readouterr().out
    best = rows[0]["top_k"][0]
    assert f"1. {best['class']}" in table and "error: file not found" in table

    assert cli.main(["predict", str(run), str(missing)]) == 1

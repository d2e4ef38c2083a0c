"""Tests of nightact.serve.export and the light ONNX engine: each export is run beside Keras."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from nightact.core.backend import choose_backend  # noqa: E402

# Exports run under TensorFlow (nightact.serve.export says why); make test runs this file again in
# its TensorFlow leg. tests/test_backend.py checks the export command from the default backend.
pytestmark = pytest.mark.skipif(
    choose_backend() != "tensorflow", reason="exports run in-process under TensorFlow only"
)

from nightact.core.videos import read_clip  # noqa: E402
from nightact.serve.export import (  # noqa: E402
    FORMATS,
    SAVED_MODEL_METADATA,
    ExportError,
    compare,
    export_model,
    portable_copy,
    read_metadata,
)
from trained_run import CLASSES, FRAMES, HEIGHT, WIDTH, tiny_run, trained_run  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A trained run with its store (test clips, training durations): for the slow tests."""
    return trained_run(tmp_path_factory.getbasetemp() / "trained-run")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """An untrained model as a run folder, made in seconds."""
    return tiny_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    from trained_run import write_long_video

    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_long_video(path, [(CLASSES[2], 1)])
    return path


def small_model(name: str, seed: int = 1):
    """An untrained model of each family at a tiny shape, with spread-out probabilities."""
    import keras

    from nightact.nets.models import build_model

    keras.utils.set_random_seed(seed)
    model = build_model(
        name, 4, 24, 32, 5, units=(8, 8), dropout=0.1, conv_filters=4, conv_kernel=3,
        conv_stride=3,
    )  # fmt: skip
    kernel, bias = model.get_layer("probabilities").get_weights()
    model.get_layer("probabilities").set_weights([kernel * 20, bias])
    return model


def exported_probabilities(format: str, path: Path, clips: np.ndarray) -> np.ndarray:
    """Run an export in its own runtime, independently of nightact.serve.export's runners."""
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: clips})[0]
    import tensorflow as tf

    if format == "saved_model":
        loaded = tf.saved_model.load(str(path))  # kept alive: serve needs its variables
        return loaded.serve(tf.constant(clips)).numpy()
    interpreter = tf.lite.Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, clips.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, clips)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.mark.parametrize("format", FORMATS)
def test_a_run_exports_to_every_format_within_tolerance(run, tmp_path, format):
    import keras

    out = tmp_path / {"onnx": "model.onnx", "saved_model": "saved", "litert": "m.tflite"}[format]
    result = export_model(run, format, out)
    assert result.max_difference <= 1e-4 and result.top1_agreement == 1.0
    assert result.clips == 8  # no store: 8 seeded random clips
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [out.name] + ([out.name + ".json"] if format == "litert" else [])
    )
    metadata = read_metadata(out)
    assert metadata["class_names"] == list(CLASSES) and metadata["window_seconds"] is None
    assert (metadata["frames"], metadata["height"], metadata["width"]) == (FRAMES, HEIGHT, WIDTH)

    # Independent check: the file, run by its runtime here, against Keras on fresh clips.
    model = keras.saving.load_model(run / "model.keras")
    clips = np.random.default_rng(11).integers(0, 256, (3, FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    expected = np.asarray(model.predict_on_batch(clips))
    got = exported_probabilities(format, out, clips)
    assert np.max(np.abs(got - expected)) <= 1e-4
    assert np.array_equal(got.argmax(1), expected.argmax(1))


@pytest.mark.slow
@pytest.mark.parametrize("format", FORMATS)
def test_a_trained_run_exports_to_every_format_within_tolerance(trained, tmp_path, format):
    import keras

    run = trained

    out = tmp_path / {"onnx": "model.onnx", "saved_model": "saved", "litert": "m.tflite"}[format]
    result = export_model(run, format, out)

    assert out.exists()
    assert result.max_difference <= 1e-4 and result.top1_agreement == 1.0
    # 8 test-split clips (the store has fewer: all of them) and 4 random ones.
    assert result.clips >= 4 + 1
    # Nothing left beside it: the staging folder is gone.
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [out.name] + ([out.name + ".json"] if format == "litert" else [])
    )

    metadata = read_metadata(out)
    assert metadata["class_names"] == list(CLASSES)
    assert (metadata["frames"], metadata["height"], metadata["width"]) == (FRAMES, HEIGHT, WIDTH)
    assert metadata["short_clips"] == "repeat-last"
    assert metadata["window_seconds"] == pytest.approx(_median_train_seconds(run))
    assert metadata["validation"]["passed"] is True

    # Independent check: the file, run by its runtime here, against Keras on fresh clips.
    model = keras.saving.load_model(run / "model.keras")
    clips = np.random.default_rng(11).integers(0, 256, (3, FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    expected = np.asarray(model.predict_on_batch(clips))
    got = exported_probabilities(format, out, clips)
    assert np.max(np.abs(got - expected)) <= 1e-4
    assert np.array_equal(got.argmax(1), expected.argmax(1))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["simple_rnn", "lstm", "gru", "cnn_simple_rnn", "cnn_lstm"])
@pytest.mark.parametrize("format", FORMATS)
def test_every_model_family_round_trips(tmp_path, name, format):
    model = small_model(name)
    clips = np.random.default_rng(2).integers(0, 256, (6, 4, 24, 32, 3), np.uint8)
    out = tmp_path / ("model" + {"onnx": ".onnx", "saved_model": "", "litert": ".tflite"}[format])
    result = export_model(model, format, out, clips=clips, class_names=list("abcde"))
    assert result.max_difference <= 1e-4
    got = exported_probabilities(format, out, clips)
    assert np.max(np.abs(got - np.asarray(model.predict_on_batch(clips)))) <= 1e-4


@pytest.mark.parametrize("kernel", ["scan", "cudnn-float32"])
def test_a_mixed_precision_lstm_exports_whatever_its_kernel(tmp_path, kernel):
    import keras

    from nightact.nets.models import build_model

    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_model("cnn_lstm", 4, 24, 32, 5, units=(8, 8), dropout=0.1, conv_filters=4,
                            conv_kernel=3, conv_stride=3, lstm_kernel=kernel)  # fmt: skip
    finally:
        keras.config.set_dtype_policy("float32")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # as `nightact export` reads a run
    clips = np.random.default_rng(3).integers(0, 256, (4, 4, 24, 32, 3), np.uint8)
    out = tmp_path / "model.onnx"
    result = export_model(loaded, "onnx", out, clips=clips, class_names=list("abcde"))
    assert result.max_difference <= 1e-4
    got = exported_probabilities("onnx", out, clips)
    assert np.max(np.abs(got - np.asarray(model.predict_on_batch(clips)))) <= 1e-4


def test_an_export_outside_the_tolerance_is_refused_and_nothing_is_left(tmp_path):
    # ONNX Runtime sums in another order than TensorFlow: ~1e-7 apart, never 1e-12.
    model = small_model("cnn_gru")
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match=r"onnx export refused: probabilities differ"):
        export_model(model, "onnx", out, tolerance=1e-12, class_names=list("abcde"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_an_existing_export_is_kept_unless_overwrite(tmp_path):
    model = small_model("cnn_gru")
    out = tmp_path / "saved"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists"):
        export_model(model, "saved_model", out, class_names=list("abcde"))
    export_model(model, "saved_model", out, class_names=list("abcde"), overwrite=True)
    assert not (out / "old.txt").exists() and (out / "saved_model.pb").is_file()
    assert (out / SAVED_MODEL_METADATA).is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["saved"]


@pytest.mark.slow
def test_keras_default_litert_export_needs_flex_ops_and_is_refused(tmp_path):
    """The trap: Keras' own LiteRT export of an RNN loop needs TF ops the interpreter lacks."""
    from nightact.serve.export import _run_litert

    model = small_model("gru")
    model(np.zeros((1, 4, 24, 32, 3), np.uint8))
    path = tmp_path / "default.tflite"
    model.export(str(path), format="litert", verbose=False)
    with pytest.raises(ExportError, match=r"lacks \(Flex"):
        _run_litert(path, model, "gru")
    # The unrolled copy nightact exports instead needs builtin ops only.
    result = export_model(model, "litert", tmp_path / "ok.tflite", class_names=list("abcde"))
    assert result.max_difference <= 1e-4


def test_the_portable_copy_turns_cudnn_off_and_unrolls_what_is_asked():
    import keras

    model = small_model("cnn_lstm")
    copy = portable_copy(model, unroll=True)
    recurrent = [layer for layer in copy.layers if isinstance(layer, keras.layers.RNN)]
    assert len(recurrent) == 2
    assert all(layer.use_cudnn is False and layer.unroll for layer in recurrent)
    assert all(
        np.array_equal(a, b) for a, b in zip(copy.get_weights(), model.get_weights(), strict=True)
    )
    # ONNX's choice: GRU unrolled, LSTM left to become a fused ONNX LSTM node.
    kept = portable_copy(model, unroll=("SimpleRNN", "GRU"))
    assert not any(layer.unroll for layer in kept.layers if isinstance(layer, keras.layers.RNN))
    gru = portable_copy(small_model("gru"), unroll=("SimpleRNN", "GRU"))
    assert all(layer.unroll for layer in gru.layers if isinstance(layer, keras.layers.GRU))


def test_a_gru_node_without_linear_before_reset_is_refused():
    import onnx
    from onnx import helper

    from nightact.serve.export import _check_onnx_gru

    node = helper.make_node("GRU", ["x", "w", "r"], ["y"], hidden_size=8, linear_before_reset=0)
    graph = helper.make_graph([node], "g", [], [])
    with pytest.raises(ExportError, match="linear_before_reset=0"):
        _check_onnx_gru(graph, small_model("gru"), "gru")
    fixed = helper.make_node("GRU", ["x", "w", "r"], ["y"], hidden_size=8, linear_before_reset=1)
    _check_onnx_gru(helper.make_graph([fixed], "g", [], []), small_model("gru"), "gru")
    assert isinstance(graph, onnx.GraphProto)


def test_compare_counts_near_ties_as_agreeing():
    reference = np.array([[0.5, 0.49999, 0.00001], [0.9, 0.05, 0.05]], np.float32)
    swapped = np.array([[0.49999, 0.5, 0.00001], [0.9, 0.05, 0.05]], np.float32)
    assert compare(reference, swapped, 1e-4)["passed"]
    far = np.array([[0.2, 0.7, 0.1], [0.9, 0.05, 0.05]], np.float32)
    verdict = compare(reference, far, 1e-4)
    assert not verdict["passed"] and "differ from Keras by up to 0.3" in verdict["reason"]


BLOCKER = """
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "jax", "torch"):
            raise ImportError(f"blocked import of {name}")
        return None
sys.meta_path.insert(0, Blocker())
"""


def test_onnx_prediction_runs_without_tensorflow_keras_or_jax(run, video, tmp_path):
    import keras

    model_path = tmp_path / "model.onnx"
    export_model(run, "onnx", model_path)
    script = BLOCKER + textwrap.dedent(
        f"""
        import json, sys
        import nightact
        [prediction] = nightact.predict({str(model_path)!r}, [{str(video)!r}], progress=False)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "jax"))
        print(json.dumps({{"prediction": prediction.to_dict(), "loaded": loaded}}))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout.strip().splitlines()[-1])
    assert answer["loaded"] == []
    probabilities = answer["prediction"]["probabilities"]
    assert list(probabilities) == list(CLASSES)

    model = keras.saving.load_model(run / "model.keras")
    clip = read_clip(video, FRAMES, HEIGHT, WIDTH).frames
    expected = np.asarray(model.predict_on_batch(clip[None]))[0]
    got = np.array([probabilities[name] for name in CLASSES])
    assert np.max(np.abs(got - expected)) <= 1e-4


def test_videos_module_imports_no_backend():
    script = (
        BLOCKER
        + "import nightact.core.videos, nightact.serve.predict, nightact.serve.onnx_engine\n"
    )
    script += "import nightact.serve.timeline\n"
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr


def _median_train_seconds(run: Path) -> float:
    from nightact.core.store import read_manifest

    config = json.loads((run / "config.json").read_text())
    durations = [
        int(row["decoded_frames"]) / float(row["fps"])
        for row in read_manifest(config["data"])
        if row["split"] == "train" and row["status"] == "ok"
    ]
    return float(np.median(durations))


def test_export_and_onnx_predict_from_the_command_line(run, video, tmp_path, capsys):
    import keras

    from nightact import cli

    model_path = tmp_path / "model.onnx"
    assert cli.main(["export", str(run), "--format", "onnx", "--out", str(model_path)]) == 0
    assert "onnx export matches Keras within" in capsys.readouterr().out

    assert cli.main(["predict", "--engine", "onnx", str(model_path), str(video), "--json"]) == 0
    [answer] = json.loads(capsys.readouterr().out)
    model = keras.saving.load_model(run / "model.keras")
    expected = np.asarray(
        model.predict_on_batch(read_clip(video, FRAMES, HEIGHT, WIDTH).frames[None])
    )
    got = np.array([answer["probabilities"][name] for name in CLASSES])
    assert np.max(np.abs(got - expected[0])) <= 1e-4

    # The engine must fit the model; a second export to the same name is refused.
    assert cli.main(["predict", "--engine", "onnx", str(run), str(video)]) == 2
    assert "engine 'onnx' needs an .onnx file" in capsys.readouterr().err
    assert cli.main(["export", str(run), "--format", "onnx", "--out", str(model_path)]) == 2
    assert "already exists" in capsys.readouterr().err

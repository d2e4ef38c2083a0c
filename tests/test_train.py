"""Training on a real (tiny) synthetic store: it learns, writes its run folder, and resumes."""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest

from nightact.cli import main
from nightact.training.train import TrainConfig, read_history, train

# Small enough to train in seconds on a CPU, big enough to see every class learned.
TINY_MODEL = dict(units=(32, 16), dropout=0.1, conv_filters=16, conv_kernel=3, conv_stride=2)


@pytest.fixture
def store(synthetic_store):
    """The shared store of the synthetic videos: 6 frames of 24x32, 10 videos per class."""
    return synthetic_store


def test_config_checks_its_values():
    with pytest.raises(ValueError, match="unknown model"):
        TrainConfig(data="s", model="transformer", out="r")
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(data="s", model="gru", out="r", loss="mse")
    with pytest.raises(ValueError, match="preset"):
        TrainConfig.from_preset("newest", data="s", model="gru", out="r")
    with pytest.raises(ValueError, match="workers"):
        TrainConfig(data="s", model="gru", out="r", workers=0)
    # Reading threads default to one per CPU, at most 4, and the number is what gets saved.
    import os

    assert TrainConfig(data="s", model="gru", out="r").workers == min(4, os.cpu_count())
    assert TrainConfig(data="s", model="gru", out="r", workers=7).workers == 7
    with pytest.raises(ValueError, match="mixed_dtype must be one of float16, bfloat16"):
        TrainConfig(data="s", model="gru", out="r", mixed_dtype="float8")
    with pytest.raises(ValueError, match="lstm_kernel must be one of auto, cudnn, scan"):
        TrainConfig(data="s", model="lstm", out="r", lstm_kernel="cudnn-float16")
    # The 16-bit float shapes the result; the LSTM kernel does not (same weights, same maths).
    settings = TrainConfig(data="s", model="lstm", out="r").resume_settings()
    assert settings["mixed_dtype"] == "float16" and "lstm_kernel" not in settings


def test_original_preset(store, tmp_path):
    config = TrainConfig.from_preset("original", data=store, model="cnn_gru", out=tmp_path / "r")
    assert (config.frames, config.height, config.width) == (10, 240, 320)
    assert (config.batch_size, config.epochs, config.learning_rate) == (64, 50, 1e-4)
    assert config.loss == "msle" and config.preset == "original"
    assert config.mixed_precision is False  # no GPU here; float16 would only slow a CPU down
    overridden = TrainConfig.from_preset("original", data=store, model="gru", out="r", epochs=2)
    assert overridden.epochs == 2 and overridden.loss == "msle"
    # The store holds 6 frames of 24x32, not the original's 10 of 240x320.
    with pytest.raises(ValueError, match="240x320|frames=10"):
        train(config)
    assert not (tmp_path / "r").exists()


def test_mixed_precision_builds_float16_layers_and_scales_the_loss():
    from nightact.training.train import build_and_compile

    config = TrainConfig(
        data="s", model="cnn_lstm", out="r", mixed_precision=True, frames=2, height=8, width=8
    )
    config.units, config.conv_filters, config.conv_kernel, config.conv_stride = (4,), 2, 2, 2
    before = keras.config.dtype_policy().name
    model = build_and_compile(config, num_classes=3)
    # The global policy is back as it was; the model keeps float16 compute, float32 output.
    assert keras.config.dtype_policy().name == before
    assert model.get_layer("rnn_1").dtype_policy.name == "mixed_float16"
    assert model.output.dtype == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_bfloat16_mixed_precision_builds_bfloat16_layers_without_loss_scaling():
    from nightact.training.train import build_and_compile

    config = TrainConfig(
        data="s", model="gru", out="r", mixed_precision=True, mixed_dtype="bfloat16", units=(4,)
    )
    config.frames, config.height, config.width = 2, 8, 8
    model = build_and_compile(config, num_classes=3)
    assert model.get_layer("rnn_1").dtype_policy.name == "mixed_bfloat16"
    assert model.output.dtype == "float32"
    # bfloat16 has float32's range: nothing underflows, so there is no loss to scale.
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


@pytest.mark.parametrize(
    "model, mixed_dtype, kernel, recorded, cudnn_calls",
    [
        # "auto" on a GPU under mixed precision: the generic loop; cuDNN is never asked.
        ("lstm", "float16", "auto", "scan", set()),
        # A float32 LSTM inside the bfloat16 model: cuDNN, fed float32.
        ("cnn_lstm", "bfloat16", "cudnn-float32", "cudnn-float32", {"float32"}),
    ],
)
def test_mixed_precision_trains_the_lstms_on_a_jax_gpu_and_records_the_kernel(
    store, tmp_path, monkeypatch, simulated_jax_gpu, model, mixed_dtype, kernel, recorded,
    cudnn_calls,
):  # fmt: skip
    from nightact.training import train as training
    from nightact.training.checkpoints import load_checkpoint

    monkeypatch.setattr(training, "gpu_available", lambda: True)
    run = tmp_path / "run"
    settings = dict(data=store, model=model, epochs=1, batch_size=16, mixed_precision=True,
                    mixed_dtype=mixed_dtype, augment=False, units=(8,), conv_filters=4,
                    conv_kernel=3, conv_stride=2)  # fmt: skip
    result = train(TrainConfig(out=run, lstm_kernel=kernel, **settings), verbose=0)
    assert result.epochs_completed == 1 and np.isfinite(result.history[0]["loss"])
    saved = json.loads((run / "config.json").read_text())
    assert saved["lstm_kernel"] == recorded and saved["mixed_dtype"] == mixed_dtype
    assert saved["mixed_precision"] is True
    assert set(simulated_jax_gpu) == cudnn_calls

    # Loaded for evaluation (Keras forgets use_cudnn), the 16-bit LSTMs stay off cuDNN.
    simulated_jax_gpu.clear()
    loaded = load_checkpoint(run / "model.keras")
    clips = np.zeros((2, *loaded.input.shape[1:]), np.uint8)
    probabilities = np.asarray(loaded.predict(clips, verbose=0))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert set(simulated_jax_gpu) == cudnn_calls

    # Keras' default kernel under mixed precision would fail there: refused before training.
    with pytest.raises(ValueError, match="lstm_kernel 'cudnn' cannot train under mixed"):
        train(TrainConfig(out=tmp_path / "cudnn", lstm_kernel="cudnn", **settings), verbose=0)
    assert not (tmp_path / "cudnn" / "config.json").exists()


def test_a_short_run_learns_and_writes_its_run_folder(store, tmp_path):
    run = tmp_path / "run"
    config = TrainConfig(
        data=store,
        model="cnn_gru",
        out=run,
        epochs=12,
        batch_size=8,
        learning_rate=3e-3,
        seed=1,
        # The numbers below are those of plain training; augmentation needs more epochs
        # (docs/augmentation.md), and is measured by benchmarks/augment.py.
        augment=False,
        **TINY_MODEL,
    )
    result = train(config, verbose=0)

    # Learning: 12 classes, so chance is 1/12 = 0.083.
    history = read_history(run)
    assert [row["epoch"] for row in history] == list(range(12))
    # Seen here: training accuracy 0.6-0.7 over the last epochs, best validation accuracy 0.54.
    assert max(row["accuracy"] for row in history[-3:]) > 0.5, history
    assert result.best_val_accuracy > 0.3, history
    assert history[-1]["loss"] < history[0]["loss"]

    # The run folder.
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"] == "cnn_gru" and saved["data"] == str(store)
    assert (saved["frames"], saved["height"], saved["width"]) == (6, 24, 32)
    assert saved["seed"] == 1 and saved["units"] == [32, 16] and saved["augment"] is False
    import keras

    assert saved["backend"] == keras.config.backend() and saved["workers"] >= 1
    assert saved["lstm_kernel"] is None  # no LSTM layer to choose a kernel for
    classes = json.loads((run / "classes.json").read_text())["class_names"]
    assert len(classes) == 12 and "walking with flashlight" in classes
    with open(run / "history.csv", newline="") as handle:
        columns = next(csv.reader(handle))
    assert set(columns) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
    assert all(row["seconds"] > 0 for row in history)
    assert any((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert not (run / "backup").exists()  # removed once training finished

    # The checkpoint is the best validation epoch, and it loads with stock Keras.
    best = max(row["val_accuracy"] for row in history)
    assert result.best_val_accuracy == pytest.approx(best)
    model = keras.saving.load_model(run / "model.keras")
    from nightact.core.store import open_split

    val = open_split(store, "val")
    predicted = np.asarray(model.predict(np.asarray(val.frames), verbose=0)).argmax(axis=1)
    assert np.mean(predicted == val.labels) == pytest.approx(best, abs=1e-6)
    assert json.loads((run / "result.json").read_text())["epochs_completed"] == 12


class _Interrupt(keras.callbacks.Callback):
    """Stands in for a crash or Ctrl-C after the first epoch."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt


def test_resume_continues_from_the_last_finished_epoch(store, tmp_path, capsys):
    run = tmp_path / "run"
    config = TrainConfig(data=store, model="gru", out=run, epochs=3, batch_size=16, units=(8,))
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[_Interrupt()], verbose=0)
    assert [row["epoch"] for row in read_history(run)] == [0]
    assert (run / "backup").is_dir() and (run / "model.keras").exists()
    assert not (run / "result.json").exists()

    # Without --resume the unfinished run is not overwritten.
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, verbose=0)
    # A resume must keep the settings that shape the run.
    with pytest.raises(ValueError, match="batch_size"):
        train(TrainConfig(**{**vars(config), "batch_size": 8, "resume": True}), verbose=0)

    # The command line resumes from the saved config alone.
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    assert "of 3" in capsys.readouterr().out
    history = read_history(run)
    assert [row["epoch"] for row in history] == [0, 1, 2]
    result = json.loads((run / "result.json").read_text())
    assert result["epochs_completed"] == 3
    assert not (run / "backup").exists()

    # Resuming a finished run does nothing and returns its result.
    again = train(TrainConfig(**{**vars(config), "resume": True}), verbose=0)
    assert again.epochs_completed == 3 and read_history(run) == history


def test_augmentation_is_recorded_off_for_the_original_and_for_older_runs(tmp_path):
    import dataclasses

    from nightact.training.train import make_config

    original = TrainConfig.from_preset("original", data="store", model="cnn_gru", out="run")
    assert original.augment is False
    assert TrainConfig(data="s", model="gru", out="r", augment=True).augment is True
    # A run saved before the setting existed resumes without augmentation.
    saved = dataclasses.asdict(TrainConfig(data="store", model="gru", out=str(tmp_path / "old")))
    saved.pop("augment")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
    assert make_config(resume=True, out=str(tmp_path / "old")).augment is False


@pytest.mark.skipif(keras.config.backend() != "jax", reason="the device path is JAX's")
def test_batches_made_on_the_device_train_exactly_as_those_read_from_the_store(
    store, tmp_path, caplog
):
    import logging

    settings = dict(model="gru", epochs=1, batch_size=16, units=(8,), seed=3, augment=True)
    with caplog.at_level(logging.INFO, logger="nightact.training.train"):
        train(TrainConfig(data=store, out=tmp_path / "device", data_on_device="yes", **settings))
        # The same run from the command line, from the store.
        arguments = ["train", "--data", str(store), "--out", str(tmp_path / "host"), "--quiet"]
        arguments += ["--model", "gru", "--epochs", "1", "--batch-size", "16", "--units", "8"]
        assert main([*arguments, "--seed", "3", "--augment", "--data-on-device", "no"]) == 0
    # One line says which path each run took, and why.
    assert "batches gathered on the device: train + val (" in caplog.text
    assert "batches read from the store: --data-on-device no" in caplog.text
    for run, path in (("device", "device"), ("host", "host")):
        saved = json.loads((tmp_path / run / "config.json").read_text())
        assert saved["data_on_device"] == {"device": "yes", "host": "no"}[run]
        assert saved["data_path"] == path
    # The same batches, so the same training, to the last bit.
    on_device, from_store = read_history(tmp_path / "device"), read_history(tmp_path / "host")
    for ours, theirs in zip(on_device, from_store, strict=True):
        assert {key: ours[key] for key in ours if key != "seconds"} == {
            key: theirs[key] for key in theirs if key != "seconds"
        }
    with pytest.raises(ValueError, match="data_on_device"):
        TrainConfig(data="s", model="gru", out="r", data_on_device="maybe")

"""Data parallelism over logical CPU devices: 2 devices must train like 1.

Each training runs in a fresh process, because both backends fix their devices when their runtime
starts, and this test process has long started it. This file is also that process's script:
``python tests/test_devices.py --devices 2 --out weights.npz`` (see ``train_and_save``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve()
SOURCE = HERE.parents[1] / "src"
GLOBAL_BATCH = 8
CLIPS = 32
VALIDATION_CLIPS = 6  # a last validation batch of 2: still even over 2 devices, as JAX needs


def train_and_save(arguments: list[str]) -> None:
    """Train a small CNN GRU for 2 epochs on fixed random clips; save its weights and history."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--coordinator")
    parser.add_argument("--processes", type=int)
    parser.add_argument("--process-id", type=int)
    args = parser.parse_args(arguments)

    import keras

    from nightact.nets.models import build_model
    from nightact.training.devices import initialize_processes, setup_devices

    if args.coordinator:
        initialize_processes(args.coordinator, args.processes, args.process_id)
    setup = setup_devices(args.devices)
    keras.utils.set_random_seed(0)
    with setup.scope():
        model = build_model(
            "cnn_gru",
            frames=4,
            height=16,
            width=16,
            num_classes=3,
            units=(8, 4),
            # Dropout draws different masks on each replica: off, so 1 and 2 devices can agree.
            dropout=0.0,
            conv_filters=4,
            conv_kernel=3,
            conv_stride=2,
        )
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=1e-2),
            loss=keras.losses.CategoricalCrossentropy(),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
    rng = np.random.default_rng(1)
    clips = rng.integers(0, 256, size=(CLIPS + VALIDATION_CLIPS, 4, 16, 16, 3), dtype=np.uint8)
    labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, size=len(clips))]

    class Batches(keras.utils.PyDataset):
        """This process's share of each global batch: its contiguous slice, in process order."""

        def __init__(self, start: int, stop: int, batch_size: int):
            super().__init__()
            self.start, self.stop, self.batch_size = start, stop, batch_size

        def __len__(self):
            return -(-(self.stop - self.start) // self.batch_size)

        def __getitem__(self, index):
            first = self.start + index * self.batch_size
            rows = np.arange(first, min(first + self.batch_size, self.stop))
            share = len(rows) // setup.processes
            rows = rows[setup.process_id * share : (setup.process_id + 1) * share]
            return clips[rows], labels[rows]

    history = model.fit(
        Batches(0, CLIPS, GLOBAL_BATCH),
        validation_data=Batches(CLIPS, CLIPS + VALIDATION_CLIPS, 4),
        epochs=2,
        shuffle=False,
        verbose=0,
    )
    np.savez(args.out, *[np.asarray(weight) for weight in model.get_weights()])
    Path(args.out).with_suffix(".json").write_text(
        json.dumps({"history": history.history, "setup": setup.record()})
    )


def interrupt_then_resume(arguments: list[str]) -> None:
    """Train STORE into RUN on DEVICES, batch BATCH; stop after epoch 1; resume from the CLI."""
    store, run = arguments[0], arguments[1]
    devices, batch_size = int(arguments[2]), int(arguments[3])
    import keras

    from nightact.cli import main
    from nightact.training.train import TrainConfig, train

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise KeyboardInterrupt

    config = TrainConfig(
        data=store,
        model="cnn_gru",
        out=run,
        epochs=2,
        batch_size=batch_size,
        units=(8, 8),
        conv_filters=4,
        conv_kernel=3,
        conv_stride=2,
        devices=devices,
    )
    try:
        train(config, callbacks=[Interrupt()], verbose=0)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the run was not interrupted")
    # The saved config holds the devices: resuming needs no --devices.
    sys.exit(main(["train", "--out", run, "--resume", "--quiet"]))


def compare_paths(out: str) -> None:
    """On 2 JAX devices: the batches gathered on the device equal those read from the store, each
    device holding its half, and fit trains alike on both; writes OUT when all is well."""
    import jax
    import keras

    from nightact.core.store import Split
    from nightact.data.augment import AugmentConfig
    from nightact.data.batches import ClipBatches
    from nightact.data.placement import batch_sharding
    from nightact.training.devices import setup_devices

    setup = setup_devices(2)
    generator = np.random.default_rng(3)
    frames = generator.integers(0, 256, size=(20, 4 * 2, 16, 16, 3), dtype=np.uint8)
    split = Split("train", frames, np.arange(20) % 3, list("abc"), [""] * 20, 2)
    settings = dict(shuffle=True, seed=1, drop_remainder=True, augment=AugmentConfig())
    readers = {
        "store": ClipBatches(split, GLOBAL_BATCH, **settings),
        "placed": ClipBatches(split, GLOBAL_BATCH, place=True, workers=2, **settings),
        "device": ClipBatches(split, GLOBAL_BATCH, on_device=True, workers=2, **settings),
    }
    for index in range(5):
        expected = readers["store"][index][0]
        for name in ("placed", "device"):
            clips = readers[name][index][0]
            np.testing.assert_array_equal(np.asarray(clips), expected, err_msg=name)
            # Split over both devices as Keras would split it: each holds its own 4 clips.
            assert clips.sharding.is_equivalent_to(batch_sharding(5), 5), clips.sharding
            assert {shard.data.shape[0] for shard in clips.addressable_shards} == {4}
    # Each device has a whole copy of the split to gather its clips from.
    copy = readers["device"].split.frames
    assert len(copy.sharding.device_set) == 2 and copy.sharding.is_fully_replicated

    weights = []
    for reader in readers.values():
        keras.utils.set_random_seed(0)
        with setup.scope():
            model = keras.Sequential(
                [keras.Input((4, 16, 16, 3)), keras.layers.Flatten(), keras.layers.Dense(3)]
            )
            model.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy())
        model.fit(reader, steps_per_epoch=len(reader), epochs=2, verbose=0, shuffle=False)
        reader.close()
        weights.append(model.get_weights())
    for other in weights[1:]:
        for ours, theirs in zip(weights[0], other, strict=True):
            np.testing.assert_array_equal(ours, theirs)
    Path(out).write_text(json.dumps({"devices": [str(d) for d in jax.local_devices()]}))


def _command(backend: str, out: Path, *arguments: str) -> tuple[list[str], dict]:
    environment = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": str(SOURCE),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
    }
    # A flag inherited from the caller would decide the JAX device count behind our back.
    environment.pop("XLA_FLAGS", None)
    return [sys.executable, str(HERE), "--out", str(out), *arguments], environment


def _run_all(commands: list[tuple[list[str], dict]], timeout: float = 900) -> None:
    """Start every command at once (they may need each other) and wait for them all."""
    running = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for command, env in commands
    ]
    failures = []
    for process in running:
        output, _ = process.communicate(timeout=timeout)
        if process.returncode != 0:
            failures.append(output.decode(errors="replace")[-3000:])
    assert not failures, "\n\n".join(failures)


def _weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as saved:
        return [saved[f"arr_{index}"] for index in range(len(saved.files))]


def _assert_same_training(one: Path, two: Path, devices: int = 2) -> None:
    first, second = _weights(one), _weights(two)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        # Summing gradients in another order changes the last bits only.
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    record_one = json.loads(one.with_suffix(".json").read_text())
    record_two = json.loads(two.with_suffix(".json").read_text())
    assert record_one["setup"]["devices"] == 1
    assert record_two["setup"]["devices"] == devices
    for name in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(
            record_one["history"][name], record_two["history"][name], rtol=1e-4
        )


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_logical_devices_train_like_one(tmp_path, backend):
    if backend == "jax":
        pytest.importorskip("jax")
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    _run_all([_command(backend, one, "--devices", "1"), _command(backend, two, "--devices", "2")])
    _assert_same_training(one, two)
    # The runs must also have trained: the loss changed between the epochs.
    assert json.loads(two.with_suffix(".json").read_text())["setup"]["platform"] == "cpu"
    history = json.loads(two.with_suffix(".json").read_text())["history"]
    assert history["loss"][1] != history["loss"][0]


@pytest.mark.slow
def test_two_jax_processes_train_like_one(tmp_path):
    pytest.importorskip("jax")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    coordinator = f"127.0.0.1:{port}"
    one = tmp_path / "one.npz"
    shares = [tmp_path / f"process{index}.npz" for index in range(2)]
    commands = [_command("jax", one, "--devices", "1")]
    for index, out in enumerate(shares):
        commands.append(
            _command(
                "jax",
                out,
                *("--coordinator", coordinator, "--processes", "2", "--process-id", str(index)),
            )
        )
    _run_all(commands)
    _assert_same_training(one, shares[0])
    # Both processes hold the same, replicated weights.
    for a, b in zip(_weights(shares[0]), _weights(shares[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert json.loads(shares[1].with_suffix(".json").read_text())["setup"]["processes"] == 2


@pytest.mark.parametrize(
    "backend, devices",
    # 5 JAX devices, so that the last validation batch (24 clips in batches of 10: 4) is padded.
    [("tensorflow", 2), pytest.param("jax", 5, marks=pytest.mark.slow)],
)
def test_train_on_devices_checkpoints_and_resumes(tmp_path, synthetic_store, backend, devices):
    if backend == "jax":
        pytest.importorskip("jax")
    import keras

    from nightact.core.runs import read_history
    from nightact.core.store import open_split

    run = tmp_path / "run"
    command, environment = _command(backend, run)
    command[2:4] = ["--interrupt-then-resume", str(synthetic_store), str(run), str(devices), "10"]
    _run_all([(command, environment)])

    config = json.loads((run / "config.json").read_text())
    assert config["devices"] == devices
    assert [row["epoch"] for row in read_history(run)] == [0, 1]
    result = json.loads((run / "result.json").read_text())
    assert result["epochs_completed"] == 2
    assert not (run / "backup").exists()
    # The checkpoint is the best validation epoch, scored on all the validation clips: on JAX
    # the last, padded batch must count its real clips only.
    model = keras.saving.load_model(run / "model.keras")
    val = open_split(synthetic_store, "val")
    # TensorFlow splits the last batch (4) 2 + 2; JAX pads it to 5 clips with one of weight 0.
    assert len(val) % 10 == 4 and (backend != "jax" or 4 % devices)
    predicted = np.asarray(model.predict(np.asarray(val.frames), verbose=0)).argmax(axis=1)
    best = max(row["val_accuracy"] for row in read_history(run))
    assert np.mean(predicted == val.labels) == pytest.approx(best, abs=1e-6)


def test_batches_made_on_two_jax_devices_are_split_between_them(tmp_path):
    pytest.importorskip("jax")
    out = tmp_path / "compared.json"
    command, environment = _command("jax", out)
    command[2:4] = ["--compare-paths", str(out)]
    _run_all([(command, environment)])
    assert len(json.loads(out.read_text())["devices"]) == 2


def test_device_count_must_be_positive():
    from nightact.training.devices import setup_devices

    with pytest.raises(ValueError, match="at least 1"):
        setup_devices(0)


def test_batch_must_divide_over_devices():
    from nightact.training.devices import DeviceSetup

    setup = DeviceSetup("jax", "cpu", ["cpu:0", "cpu:1"], processes=2, process_id=1)
    assert setup.process_batch_size(8) == 4
    with pytest.raises(ValueError, match="multiple of 2"):
        setup.process_batch_size(7)


if __name__ == "__main__":
    if sys.argv[1] == "--interrupt-then-resume":
        interrupt_then_resume(sys.argv[2:])
    elif sys.argv[1] == "--compare-paths":
        compare_paths(sys.argv[2])
    else:
        train_and_save(sys.argv[1:])

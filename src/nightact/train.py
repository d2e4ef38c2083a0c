"""Train one of the six models on a prepared clip store with Keras' compiled ``fit`` loop.

``train(TrainConfig(data=STORE, model="cnn_gru", out=RUN))`` writes one run folder::

    RUN/
      config.json     the TrainConfig, with the clip shape read from the store filled in
      classes.json    {"class_names": [...]}: output i of the model is class_names[i]
      model.keras     the checkpoint with the best validation accuracy so far
      history.csv     epoch (from 0, as Keras counts), loss, accuracy, val_loss, val_accuracy,
                      seconds (wall time of the epoch, validation included)
      tensorboard/    TensorBoard logs (``tensorboard --logdir RUN/tensorboard``)
      backup/         the last finished epoch's weights and optimizer state while a run is
                      unfinished; ``resume=True`` continues from there; removed at the end
      result.json     written when training ends: the RunResult; a run with it is finished

What differs from the original notebooks, and why:

- One compiled training step (``model.fit``) instead of an eager ``GradientTape`` loop, and the
  accuracy comes from the same forward pass as the loss instead of a second, inference-mode one.
- Batches stream from the memory-mapped store (:class:`ClipBatches`); memory holds a few batches,
  never the dataset (the original kept 15 GB of clips in RAM).
- The loss is categorical cross-entropy by default; ``loss="msle"`` reproduces the original's mean
  squared logarithmic error on the softmax output.
- The checkpoint is chosen on the validation split; the test split is left for
  :func:`nightact.evaluate.evaluate`.
- The seed sets Keras', NumPy's and Python's generators and the per-epoch shuffle, so a run can be
  repeated; the whole config is saved beside the run.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from nightact.models import MODEL_NAMES, build_model, count_trainable_parameters

log = logging.getLogger(__name__)

LOSSES = ("crossentropy", "msle")

# The original project's training settings. Clips of 10 frames at 240x320 are an expectation
# about the store (prepare it with `--frames 10 --size 240x320`), checked when training starts.
PRESETS = {
    "original": {
        "frames": 10,
        "height": 240,
        "width": 320,
        "batch_size": 64,
        "epochs": 50,
        "learning_rate": 1e-4,
        "loss": "msle",
        "units": (128, 64, 32),
        "dropout": 0.5,
        "conv_filters": 256,
        "conv_kernel": 15,
        "conv_stride": 15,
    },
}

# Everything in the config that shapes the result; a resumed run must agree on all of these.
_SAME_ON_RESUME = (
    "data",
    "model",
    "batch_size",
    "learning_rate",
    "loss",
    "mixed_precision",
    "seed",
    "units",
    "dropout",
    "conv_filters",
    "conv_kernel",
    "conv_stride",
    "unroll",
    "frames",
    "height",
    "width",
)


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved as RUN/config.json."""

    data: str  # a prepared store (nightact prepare)
    model: str  # one of MODEL_NAMES
    out: str  # the run folder
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-4  # Adam
    loss: str = "crossentropy"  # or "msle", the original's
    mixed_precision: bool = False  # mixed_float16 compute; worth it on a GPU only
    seed: int = 0
    early_stopping: int | None = None  # patience in epochs on val_accuracy; None: off
    resume: bool = False  # continue an interrupted run in `out`
    workers: int = 1  # threads reading batches ahead of the model (1: none besides Keras')
    units: tuple[int, ...] = (128, 64, 32)
    dropout: float = 0.5
    conv_filters: int = 256
    conv_kernel: int = 15
    conv_stride: int = 15
    unroll: bool = False
    # Compile the training step with XLA where the model allows it. Keras leaves XLA off on
    # TensorFlow without a GPU; there it trains these models 2-4 times faster. (On a GPU the
    # cuDNN LSTM/GRU kernels win, and Keras keeps XLA off for models that use them.)
    xla: bool = True
    preset: str | None = None  # the preset these settings started from, for the record
    # The clip shape. None: whatever the store holds (filled in when training starts); a number:
    # the store must have it.
    frames: int | None = None
    height: int | None = None
    width: int | None = None

    def __post_init__(self) -> None:
        self.data = str(self.data)
        self.out = str(self.out)
        self.units = tuple(int(width) for width in self.units)
        if self.model not in MODEL_NAMES:
            raise ValueError(
                f"unknown model {self.model!r}; choose one of {', '.join(MODEL_NAMES)}"
            )
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"epochs and batch_size must be positive, got {self.epochs} and {self.batch_size}"
            )
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.early_stopping is not None and self.early_stopping < 1:
            raise ValueError(
                f"early_stopping patience must be at least 1, got {self.early_stopping}"
            )
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")

    @classmethod
    def from_preset(cls, preset: str, **settings) -> TrainConfig:
        """A config with ``preset``'s settings, overridden by ``settings``.

        ``original`` also turns on mixed precision (mixed_float16) when a GPU is present, as the
        original did; on a CPU float16 only slows training down.
        """
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        values = dict(PRESETS[preset])
        if preset == "original":
            values["mixed_precision"] = gpu_available()
        values.update(settings)
        return cls(preset=preset, **values)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


@dataclass
class RunResult:
    """What a training run did; saved as RUN/result.json when training ends."""

    run: str
    model: str
    epochs_completed: int
    best_epoch: int  # counted from 1
    best_val_accuracy: float
    stopped_early: bool
    seconds: float  # wall time of the fit call(s), summed over resumes
    parameters: int
    history: list[dict] = field(default_factory=list)

    @property
    def model_path(self) -> Path:
        return Path(self.run) / "model.keras"


class ClipBatches(keras.utils.PyDataset):
    """Batches of (uint8 clips, one-hot float32 labels) read from a memory-mapped split.

    Each batch reads its rows from the store in ascending order (sequential reads on disk), so
    memory holds one batch, plus the few being read ahead.

    With ``shuffle=False`` it is an ordinary finite dataset of ``len(self)`` batches in row order
    (validation, test, prediction).

    With ``shuffle=True`` it is an endless stream for ``fit(steps_per_epoch=len(self))``: batch
    ``index`` belongs to epoch ``start_epoch + index // len(self)``, and each epoch visits every
    clip once in the order of a permutation drawn from ``(seed, epoch)``; with
    ``drop_remainder``, all but the last ``len(split) % batch_size`` clips of that order, a
    different few each epoch. Deriving the order from the batch index (rather than reshuffling in
    ``on_epoch_end``) keeps it right even though Keras starts reading the next epoch before the
    current one has ended, and lets a resumed run see exactly the batches an uninterrupted one
    would have.
    """

    def __init__(
        self,
        split,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        start_epoch: int = 0,
        workers: int = 1,
        drop_remainder: bool = False,
    ):
        # Keras' own worker threads are not used: its enqueuer drops the batches it has read
        # ahead at every epoch's end, which would break the index -> epoch mapping above.
        super().__init__(workers=1, use_multiprocessing=False)
        if len(split) == 0:
            raise ValueError(f"the {split.name} split has no clips")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.start_epoch = start_epoch
        if shuffle and drop_remainder and len(split) >= batch_size:
            # Every batch full: one shape, so a compiled step is traced and compiled only once.
            self.steps_per_epoch = len(split) // batch_size
        else:
            self.steps_per_epoch = math.ceil(len(split) / batch_size)
        self._one_hot = np.eye(len(split.class_names), dtype=np.float32)
        self._lock = threading.Lock()
        self._orders: dict[int, np.ndarray] = {}
        self._read_ahead = workers - 1
        self._pool = ThreadPoolExecutor(self._read_ahead) if self._read_ahead > 0 else None
        self._pending: dict = {}

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.steps_per_epoch

    @property
    def num_batches(self):
        # None tells Keras the stream is endless; fit then needs steps_per_epoch.
        return None if self.shuffle else self.steps_per_epoch

    def epoch_of(self, index: int) -> int:
        return self.start_epoch + index // self.steps_per_epoch if self.shuffle else 0

    def rows(self, index: int) -> np.ndarray:
        """The sorted store rows of batch ``index``."""
        if index < 0 or (not self.shuffle and index >= self.steps_per_epoch):
            raise IndexError(f"batch {index} is out of range (0..{self.steps_per_epoch - 1})")
        position = index % self.steps_per_epoch
        start, stop = position * self.batch_size, (position + 1) * self.batch_size
        if not self.shuffle:
            return np.arange(start, min(stop, len(self.split)))
        return np.sort(self._order(self.epoch_of(index))[start:stop])

    def __getitem__(self, index: int):
        if self._pool is None:
            return self._read(index)
        with self._lock:
            future = self._pending.pop(index, None) or self._pool.submit(self._read, index)
            for stale in [key for key in self._pending if key < index]:
                del self._pending[stale]
            last = None if self.shuffle else self.steps_per_epoch - 1
            for ahead in range(index + 1, index + 1 + self._read_ahead):
                if (last is None or ahead <= last) and ahead not in self._pending:
                    self._pending[ahead] = self._pool.submit(self._read, ahead)
        return future.result()

    def close(self) -> None:
        """Stop the read-ahead threads, if any."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _read(self, index: int):
        rows = self.rows(index)
        clips = np.ascontiguousarray(self.split.frames[rows])
        labels = self._one_hot[self.split.labels[rows]]
        return clips, labels

    def _order(self, epoch: int) -> np.ndarray:
        with self._lock:
            order = self._orders.get(epoch)
            if order is None:
                order = np.random.default_rng([self.seed, epoch]).permutation(len(self.split))
                # Batches of at most two epochs are in flight at once.
                self._orders = {
                    key: value for key, value in self._orders.items() if key >= epoch - 1
                }
                self._orders[epoch] = order
            return order


def train(config: TrainConfig, callbacks=None, verbose: int = 1) -> RunResult:
    """Train ``config.model`` on ``config.data`` and write the run folder ``config.out``.

    Args:
        config: the run's settings.
        callbacks: extra Keras callbacks, called after the run's own ones.
        verbose: Keras' progress display: 1 a progress bar per epoch, 2 one line per epoch,
            0 none. A one-line summary per epoch is logged either way.

    Returns:
        The RunResult, also saved as RUN/result.json. If the run in ``config.out`` already
        finished and ``config.resume`` is set, it is returned without training.

    Raises:
        FileExistsError: ``config.out`` holds a run and ``config.resume`` is not set.
        ValueError: the store does not fit the config, or a resumed run's settings differ.
    """
    from nightact.dataset import open_split, read_store_info

    run = Path(config.out)
    config = dataclasses.replace(config)
    info = read_store_info(config.data)
    for name in ("frames", "height", "width"):
        expected = getattr(config, name)
        if expected is not None and expected != info[name]:
            raise ValueError(
                f"{config.data}: the store holds clips of {info['frames']} frames at "
                f"{info['height']}x{info['width']}, but the config expects {name}={expected}"
                + (f" (preset {config.preset})" if config.preset else "")
            )
        setattr(config, name, info[name])

    if (run / "config.json").exists():
        if not config.resume:
            raise FileExistsError(
                f"{run} already holds a training run; pass --resume to continue it, "
                "or choose another --out"
            )
        _check_same_run(config, load_run_config(run), run)
        finished = _read_result(run)
        if finished is not None:
            log.info("%s already finished after %d epochs", run, finished.epochs_completed)
            if config.epochs > finished.epochs_completed and not finished.stopped_early:
                log.warning(
                    "%s finished its %d epochs and kept no backup to go on from; start a new "
                    "run to train for %d",
                    run,
                    finished.epochs_completed,
                    config.epochs,
                )
            return finished

    train_split = open_split(config.data, "train")
    val_split = open_split(config.data, "val")
    class_names = list(info["class_names"])
    if len(val_split) == 0:
        raise ValueError(
            f"{config.data}: the validation split is empty; the checkpoint is chosen on it"
        )

    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(config.to_json(), encoding="utf-8")
    (run / "classes.json").write_text(
        json.dumps({"class_names": class_names}, indent=2), encoding="utf-8"
    )

    keras.utils.set_random_seed(config.seed)
    model = _build_and_compile(config, len(class_names))

    start_epoch = _backup_epoch(run / "backup") if config.resume else 0
    history = _read_history(run / "history.csv")[:start_epoch]
    _write_history(run / "history.csv", history)
    if start_epoch:
        log.info("resuming %s after epoch %d of %d", run, start_epoch, config.epochs)

    train_batches = ClipBatches(
        train_split,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        start_epoch=start_epoch,
        workers=config.workers,
        drop_remainder=True,
    )
    val_batches = ClipBatches(val_split, config.batch_size, workers=config.workers)
    early_stopping = None
    if config.early_stopping:
        early_stopping = keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=config.early_stopping
        )
    best = max((row["val_accuracy"] for row in history), default=None)
    run_callbacks = [
        # Order matters: the epoch's time must be in the logs before CSVLogger writes them, and
        # the history row must be on disk before the backup says the epoch is done.
        _EpochTimer(),
        keras.callbacks.CSVLogger(str(run / "history.csv"), append=True),
        keras.callbacks.ModelCheckpoint(
            str(run / "model.keras"),
            monitor="val_accuracy",
            mode="max",
            save_best_only=True,
            # After a resume, beat the best epoch from before the interruption.
            initial_value_threshold=best,
        ),
        keras.callbacks.BackupAndRestore(str(run / "backup")),
        *_tensorboard(run / "tensorboard"),
        *(
            [early_stopping, _RestoreEarlyStopping(early_stopping, history)]
            if early_stopping
            else []
        ),
        # Placed here, not appended by Keras at the end, so the progress bar finishes its line
        # before the summary is logged. It follows fit's `verbose`.
        keras.callbacks.ProgbarLogger(),
        _EpochSummary(config.model, config.epochs, best),
        *(callbacks or []),
    ]
    started = time.perf_counter()
    try:
        model.fit(
            train_batches,
            steps_per_epoch=len(train_batches),
            validation_data=val_batches,
            epochs=config.epochs,
            callbacks=run_callbacks,
            verbose=verbose,
            # The stream shuffles itself, per epoch, from the seed.
            shuffle=False,
        )
    finally:
        train_batches.close()
        val_batches.close()
    seconds = time.perf_counter() - started

    history = _read_history(run / "history.csv")
    if not history:
        raise ValueError(f"{run}: training ended without finishing an epoch")
    best_index = int(np.argmax([row["val_accuracy"] for row in history]))
    result = RunResult(
        run=str(run),
        model=config.model,
        epochs_completed=len(history),
        best_epoch=best_index + 1,
        best_val_accuracy=history[best_index]["val_accuracy"],
        stopped_early=len(history) < config.epochs,
        seconds=sum(row.get("seconds", 0.0) for row in history) or seconds,
        parameters=count_trainable_parameters(model),
        history=history,
    )
    (run / "result.json").write_text(
        json.dumps(dataclasses.asdict(result), indent=2), encoding="utf-8"
    )
    log.info(
        "%s: best val_accuracy %.3f at epoch %d of %d; checkpoint %s",
        config.model,
        result.best_val_accuracy,
        result.best_epoch,
        result.epochs_completed,
        result.model_path,
    )
    return result


def load_run_config(run: str | os.PathLike) -> dict:
    """The saved TrainConfig of a run folder, as a dict."""
    path = Path(run) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run}: not a training run (no config.json)")
    return json.loads(path.read_text(encoding="utf-8"))


def read_history(run: str | os.PathLike) -> list[dict]:
    """The rows of RUN/history.csv as dicts of floats (``epoch`` as int, from 0)."""
    return _read_history(Path(run) / "history.csv")


def gpu_available() -> bool:
    """Whether the active Keras backend sees a GPU."""
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def _build_and_compile(config: TrainConfig, num_classes: int) -> keras.Model:
    build = dict(
        frames=config.frames,
        height=config.height,
        width=config.width,
        num_classes=num_classes,
        units=config.units,
        dropout=config.dropout,
        conv_filters=config.conv_filters,
        conv_kernel=config.conv_kernel,
        conv_stride=config.conv_stride,
        unroll=config.unroll,
    )
    if config.mixed_precision:
        if not gpu_available():
            log.warning("mixed precision without a GPU: float16 on a CPU is slower, not faster")
        # The policy is global in Keras; the layers keep it once built, so restore it at once.
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_float16")
        try:
            model = build_model(config.model, **build)
        finally:
            keras.config.set_dtype_policy(previous)
    else:
        model = build_model(config.model, **build)
    if config.loss == "msle":
        loss = keras.losses.MeanSquaredLogarithmicError()
    else:
        loss = keras.losses.CategoricalCrossentropy()
    # Under mixed_float16, compile wraps Adam in a LossScaleOptimizer by itself.
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss=loss,
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=_jit_compile(config),
    )
    return model


def _jit_compile(config: TrainConfig):
    """Keras' jit_compile value for the config: XLA also on TensorFlow without a GPU."""
    if not config.xla:
        return False
    if keras.config.backend() == "tensorflow" and not gpu_available():
        return True
    return "auto"


def _tensorboard(folder: Path) -> list:
    """The TensorBoard callback, or none (with a warning) where tensorboard is not installed."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        log.warning("tensorboard is not installed: no logs in %s (pip install tensorboard)", folder)
        return []
    return [keras.callbacks.TensorBoard(str(folder), write_graph=False)]


def _check_same_run(config: TrainConfig, saved: dict, run: Path) -> None:
    differences = []
    for name in _SAME_ON_RESUME:
        ours, theirs = getattr(config, name), saved.get(name)
        if isinstance(ours, tuple):
            theirs = tuple(theirs or ())
        if name == "data":
            same = Path(ours).resolve() == Path(theirs).resolve()
        else:
            same = ours == theirs
        if not same:
            differences.append(f"{name}={ours!r} (the run has {theirs!r})")
    if differences:
        raise ValueError(f"{run}: cannot resume with other settings: " + ", ".join(differences))


def _backup_epoch(backup: Path) -> int:
    """Epochs finished before the interruption, from BackupAndRestore's metadata (0 if none)."""
    path = backup / "training_metadata.json"
    if not path.exists():
        return 0
    return int(json.loads(path.read_text(encoding="utf-8"))["epoch"])


def _read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            parsed = {key: float(value) for key, value in row.items() if value not in ("", None)}
            parsed["epoch"] = int(parsed["epoch"])
            rows.append(parsed)
    return rows


def _write_history(path: Path, rows: list[dict]) -> None:
    """Rewrite history.csv with ``rows`` only (dropping epochs a resume will redo)."""
    if not rows:
        path.unlink(missing_ok=True)
        return
    columns = ["epoch", *sorted(key for key in rows[0] if key != "epoch")]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _read_result(run: Path) -> RunResult | None:
    path = run / "result.json"
    if not path.exists():
        return None
    return RunResult(**json.loads(path.read_text(encoding="utf-8")))


class _EpochTimer(keras.callbacks.Callback):
    """Adds ``seconds``, the epoch's wall time including validation, to the epoch's logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["seconds"] = time.perf_counter() - self._started


class _EpochSummary(keras.callbacks.Callback):
    """Logs one line per epoch: losses, accuracies, time, and whether it is the best so far."""

    def __init__(self, name: str, epochs: int, best: float | None):
        super().__init__()
        self.name = name
        self.epochs = epochs
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        accuracy = logs.get("val_accuracy", float("nan"))
        improved = self.best is None or accuracy > self.best
        if improved:
            self.best = accuracy
        log.info(
            "%s epoch %d/%d: loss %.4f, accuracy %.3f, val_loss %.4f, val_accuracy %.3f (%.1f s)%s",
            self.name,
            epoch + 1,
            self.epochs,
            logs.get("loss", float("nan")),
            logs.get("accuracy", float("nan")),
            logs.get("val_loss", float("nan")),
            accuracy,
            logs.get("seconds", float("nan")),
            ", best so far: saved" if improved else "",
        )


class _RestoreEarlyStopping(keras.callbacks.Callback):
    """Gives EarlyStopping back its best value and patience count after a resume.

    EarlyStopping forgets both at the start of every ``fit``; without this, a resumed run would
    wait ``patience`` more epochs than an uninterrupted one. Must come right after it.
    """

    def __init__(self, early_stopping, history: list[dict]):
        super().__init__()
        self.early_stopping = early_stopping
        self.history = history

    def on_train_begin(self, logs=None):
        if not self.history:
            return
        values = [row["val_accuracy"] for row in self.history]
        best_index = int(np.argmax(values))
        self.early_stopping.best = values[best_index]
        self.early_stopping.best_epoch = self.history[best_index]["epoch"]
        self.early_stopping.wait = len(values) - 1 - best_index

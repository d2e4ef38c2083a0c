"""Train one of the six models on a prepared clip store with Keras' compiled ``fit`` loop.

``train(TrainConfig(data=STORE, model="cnn_gru", out=RUN))`` writes one run folder::

    RUN/
      config.json     the TrainConfig, with the clip shape read from the store filled in
      classes.json    {"class_names": [...]}: output i of the model is class_names[i]
      model.keras     the checkpoint with the best validation accuracy so far
      history.csv     epoch (from 0, as Keras counts), loss, accuracy, val_loss, val_accuracy,
                      seconds (wall time of the epoch, validation included)
      tensorboard/    TensorBoard logs (``tensorboard --logdir RUN/tensorboard``)
      backup/         the last two finished epochs' weights, optimizer state and history while
                      a run is unfinished (:class:`nightact.training.checkpoints.EpochBackup`);
                      ``resume=True`` continues from the newest whole one; removed at the end
      result.json     written when training ends: the RunResult; a run with it is finished
      .lock           held while a process trains into RUN (:mod:`nightact.core.locks`)

Every file is written atomically (a temporary name, fsync, rename), so a kill at any instant
costs at most the epoch in progress; see docs/failures.md.

On an embedding store (``nightact embed``, :mod:`nightact.data.embed`) the model is a recurrent head
(``simple_rnn``, ``lstm`` or ``gru``) over the cached frame features, and the run also holds::

      head.keras      the head's best checkpoint (reads embeddings); while training, that
                      checkpoint is model.keras, and it moves here when training ends
      model.keras     when training ends: the backbone + that head in one model that reads
                      clips, so evaluate, compare and predict work on videos end to end

What differs from the original notebooks, and why:

- One compiled training step (``model.fit``) instead of an eager ``GradientTape`` loop, and the
  accuracy comes from the same forward pass as the loss instead of a second, inference-mode one.
- Where the splits fit in the device's memory (with room to spare), they are copied there once,
  as uint8, and every batch is gathered, shuffled and augmented on the device; otherwise batches
  stream from the memory-mapped store (:class:`nightact.data.batches.ClipBatches`), reading
  threads putting them on the device a few steps ahead, and host memory holds a few batches,
  never the dataset (the original kept 15 GB of clips in RAM). ``data_on_device`` chooses
  (:mod:`nightact.data.placement`); both paths give the same batches.
- The loss is categorical cross-entropy by default; ``loss="msle"`` reproduces the original's mean
  squared logarithmic error on the softmax output.
- The checkpoint is chosen on the validation split; the test split is left for
  :func:`nightact.scoring.evaluate.evaluate`.
- The seed sets Keras', NumPy's and Python's generators and the per-epoch shuffle, so a run can be
  repeated; the whole config is saved beside the run.
- ``devices`` spreads each batch over several GPUs (or logical CPU devices) with Keras' own data
  parallelism (:mod:`nightact.training.devices`); the batch size stays the global one, so N devices
  train like one up to float rounding.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from nightact.core import files, runs
from nightact.core.locks import folder_lock
from nightact.core.names import LOSSES, LSTM_KERNELS, MIXED_DTYPES, MODEL_NAMES
from nightact.core.store import (
    is_embedding_store,
    open_split,
    read_embedding_info,
    read_store_info,
    source_store,
)
from nightact.data.augment import AugmentConfig
from nightact.data.placement import DATA_ON_DEVICE
from nightact.nets import gpu
from nightact.nets.backbones import build_backbone, network_of, weights_record
from nightact.training import devices

__all__ = [
    "AUGMENT_DEFAULT",
    "HEAD_MODELS",
    "MAX_DEFAULT_WORKERS",
    "PRESETS",
    "best_checkpoint",
    "build_and_compile",
    "check_free_space",
    "check_store",
    "choose_data_path",
    "default_run_folder",
    "fine_tune",
    "fit",
    "gpu_available",
    "load_run_config",
    "make_batches",
    "make_callbacks",
    "make_config",
    "open_or_resume_run",
    "open_splits",
    "read_history",
    "remove_backups",
    "restore_state",
    "RunResult",
    "save_video_model",
    "settle_lstm_kernel",
    "start_run",
    "train",
    "TrainConfig",
    "unfreeze_top",
    "use_devices",
    "write_result",
]

# nets.models, data.batches, training.callbacks and training.checkpoints import Keras at their top:
# they are imported inside the functions that use them, so the CLI reads TrainConfig without Keras.

log = logging.getLogger(__name__)

# Whether `nightact train` augments by default: the measurement in docs/augmentation.md decides.
AUGMENT_DEFAULT = True

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
        # The original showed every clip the same frames, untouched.
        "augment": False,
    },
}

# The config fields that are arguments of nightact.nets.models.build_model.
_MODEL_SETTINGS = (
    "frames",
    "height",
    "width",
    "units",
    "dropout",
    "conv_filters",
    "conv_kernel",
    "conv_stride",
    "unroll",
)

# Everything in the config that shapes the result; a resumed run must agree on all of these.
_SAME_ON_RESUME = (
    "data",
    "model",
    "batch_size",
    "learning_rate",
    "loss",
    "mixed_precision",
    "mixed_dtype",
    "seed",
    "backbone",
    "fine_tune",
    "fine_tune_epochs",
    "fine_tune_learning_rate",
    "augment",
    *_MODEL_SETTINGS,
)
# The models that can be trained on an embedding store: the recurrent head alone.
HEAD_MODELS = ("simple_rnn", "lstm", "gru")
# Reading threads when none are asked for: one thread reads 1,300-1,800 clips per CPU-second at
# the full shape (benchmarks/loader.py), so a few keep a GPU fed and leave a CPU its compute.
MAX_DEFAULT_WORKERS = 4


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
    mixed_precision: bool = False  # 16-bit compute, float32 weights; worth it on a GPU only
    # The 16-bit float of mixed precision: "float16" (the original's; the loss is scaled) or
    # "bfloat16" (float32's range, nothing to scale).
    mixed_dtype: str = "float16"
    # How the LSTM layers compute (LSTM_KERNELS, docs/backends.md): "cudnn", "scan" or
    # "cudnn-float32". "auto" is filled in when training starts with the one it picks: "scan"
    # under mixed precision on JAX (whose cuDNN LSTM takes float32 only), else "cudnn". Saved as
    # null for a model without an LSTM layer. A resume may change it (the weights are the same).
    lstm_kernel: str | None = "auto"
    seed: int = 0
    early_stopping: int | None = None  # patience in epochs on val_accuracy; None: off
    resume: bool = False  # continue an interrupted run in `out`
    # Threads reading whole batches ahead of the model (1: each batch read between two steps).
    # None: one per CPU, at most 4 (filled in, so the saved config holds the number used).
    workers: int | None = None
    # Copy the train and validation splits to the device once and make every batch there:
    # "auto" where the backend is JAX, one process trains and they take at most half of the
    # device's free memory (nightact.data.placement), "yes" (refused where impossible), "no".
    data_on_device: str = "auto"
    # What training did: "device" or "host" (reading threads put batches on the device ahead
    # of the step); filled in when training starts.
    data_path: str | None = None
    # Devices sharing each batch (data parallel). None: every accelerator, 1 on a CPU; the saved
    # config holds the number used. On a CPU, N > 1 splits it into N logical devices.
    devices: int | None = None
    # The Keras backend that trained it (nightact.core.backend chooses it), filled in when training
    # starts; a resume under another backend records the one it continued on.
    backend: str | None = None
    units: tuple[int, ...] = (128, 64, 32)
    dropout: float = 0.5
    conv_filters: int = 256
    conv_kernel: int = 15
    conv_stride: int = 15
    unroll: bool = False
    # Training clips get a random candidate frame per segment (stores with
    # --frames-per-segment K > 1) and one random flip, crop, gamma, contrast, gain and noise per
    # clip (nightact.data.augment); validation and test never do. See docs/augmentation.md.
    augment: bool = AUGMENT_DEFAULT
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
    # The frame encoder in front of the head, read from an embedding store (nightact embed);
    # None on a clip store. A name here: the store must have been embedded with it.
    backbone: str | None = None
    # After the head trained on embeddings: unfreeze this many layers at the top of the backbone
    # (batch normalisation stays frozen) and train backbone + head end to end on the clip store
    # the embeddings came from. 0: off.
    fine_tune: int = 0
    fine_tune_epochs: int = 5
    fine_tune_learning_rate: float = 1e-5  # low: the pretrained features are to be kept, refined
    # Candidate frames per segment in the store, read from it when training starts.
    frames_per_segment: int | None = None

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
        if self.mixed_dtype not in MIXED_DTYPES:
            raise ValueError(
                f"mixed_dtype must be one of {', '.join(MIXED_DTYPES)}, got {self.mixed_dtype!r}"
            )
        if self.lstm_kernel is not None and self.lstm_kernel not in LSTM_KERNELS:
            raise ValueError(
                f"lstm_kernel must be one of {', '.join(LSTM_KERNELS)}, got {self.lstm_kernel!r}"
            )
        if self.early_stopping is not None and self.early_stopping < 1:
            raise ValueError(
                f"early_stopping patience must be at least 1, got {self.early_stopping}"
            )
        if self.workers is None:
            self.workers = min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.data_path not in (None, "device", "host"):
            raise ValueError(f"data_path must be device or host, got {self.data_path!r}")
        if self.data_on_device not in DATA_ON_DEVICE:
            raise ValueError(
                f"data_on_device must be one of {', '.join(DATA_ON_DEVICE)}, "
                f"got {self.data_on_device!r}"
            )
        if self.devices is not None and self.devices < 1:
            raise ValueError(f"devices must be at least 1, got {self.devices}")
        if self.fine_tune < 0 or self.fine_tune_epochs < 1 or self.fine_tune_learning_rate <= 0:
            raise ValueError(
                "fine_tune must be >= 0, fine_tune_epochs >= 1 and fine_tune_learning_rate > 0, "
                f"got {self.fine_tune}, {self.fine_tune_epochs}, {self.fine_tune_learning_rate}"
            )
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")

    @classmethod
    def from_preset(cls, preset: str, **settings) -> TrainConfig:
        """A config with ``preset``'s settings, overridden by ``settings``.

        ``original`` also turns on mixed precision (mixed_float16) when a GPU is present, as the
        original did; on a CPU float16 only slows training down. Its LSTM models then run the
        kernel ``lstm_kernel="auto"`` picks (:func:`settle_lstm_kernel`).
        """
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        values = dict(PRESETS[preset])
        if preset == "original":
            values["mixed_precision"] = gpu_available()
        values.update(settings)
        return cls(preset=preset, **values)

    @property
    def dtype_policy(self) -> str:
        """The Keras dtype policy the model is built under."""
        return f"mixed_{self.mixed_dtype}" if self.mixed_precision else "float32"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def resume_settings(self) -> dict:
        """The settings a resumed run must share with the saved one, as they are saved."""
        settings = json.loads(self.to_json())
        saved = {name: settings[name] for name in _SAME_ON_RESUME}
        # The same store reached by another relative path is the same store.
        saved["data"] = str(Path(self.data).resolve())
        return saved


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
        return runs.model_path(self.run)


def train(
    config: TrainConfig, callbacks=None, verbose: int = 1, overwrite: bool = False
) -> RunResult:
    """Train ``config.model`` on ``config.data`` and write the run folder ``config.out``.

    Args:
        config: the run's settings.
        callbacks: extra Keras callbacks, called after the run's own ones.
        verbose: Keras' progress display: 1 a progress bar per epoch, 2 one line per epoch,
            0 none. A one-line summary per epoch is logged either way.
        overwrite: discard a run already in ``config.out`` first (only the files a run writes).

    Returns:
        The RunResult, also saved as RUN/result.json. If the run in ``config.out`` already
        finished and ``config.resume`` is set, it is returned without training.

    Raises:
        FileExistsError: ``config.out`` holds a run and ``config.resume`` is not set.
        ValueError: the store does not fit the config, or a resumed run's settings differ.
        nightact.training.checkpoints.ResumeError: nothing in the run folder is whole enough to
            resume.
        nightact.core.locks.FolderLockedError: another process is training into ``config.out``.
        nightact.core.files.DiskSpaceError: the disk lacks the space the run's checkpoints need.
        nightact.core.files.DiskFullError: the disk filled up during a save; resume once freed.
    """
    config, class_names = check_store(config)
    with folder_lock(config.out):
        if overwrite:
            runs.remove_run(config.out)
        finished = open_or_resume_run(config)
        if finished is not None:
            remove_backups(config)  # left by a kill between result.json and their removal
            return finished
        train_split, val_split = open_splits(config)
        config, setup = use_devices(config)
        gpu.warn_if_gpu_unused()  # after the device setup: JAX fixes its devices on first use
        config = settle_lstm_kernel(config)
        config = choose_data_path(config, (train_split, val_split), setup)
        # Under MirroredStrategy every variable must be made in its scope, the optimizer's too,
        # which the free-space check and a resume build.
        with setup.scope():
            model = build_and_compile(config, len(class_names), setup)
            # Before anything is written: a refused run leaves no run behind.
            check_free_space(config, model)
            start_run(config, class_names)
            start_epoch, history = restore_state(config, model)
        train_batches, val_batches = make_batches(
            config, train_split, val_split, start_epoch, setup
        )
        try:
            run_callbacks = make_callbacks(config, history, callbacks)
            seconds = fit(
                model, config, train_batches, val_batches, run_callbacks, verbose, start_epoch
            )
        finally:
            train_batches.close()
            val_batches.close()
        if config.backbone:
            save_video_model(config)
            if config.fine_tune:
                seconds += fine_tune(config, verbose)
        result = write_result(config, model, seconds)
        # Only now: a kill before result.json is on disk resumes from the last backup.
        remove_backups(config)
        return result


# --- the steps of train(), in order ---------------------------------------------------------------


def check_store(config: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """A copy of ``config`` with the store's clip shape filled in, and the store's class names.

    Raises ValueError when the config expects another clip shape than the store holds.
    """
    config = dataclasses.replace(config)
    info = read_store_info(config.data)
    if is_embedding_store(config.data):
        backbone = read_embedding_info(config.data)["backbone"]
        if config.model not in HEAD_MODELS:
            raise ValueError(
                f"{config.data}: an embedding store trains a recurrent head "
                f"({', '.join(HEAD_MODELS)}), not {config.model}"
            )
        if config.backbone is not None and config.backbone != backbone:
            raise ValueError(
                f"{config.data}: embedded with {backbone}, but the config expects "
                f"backbone={config.backbone}"
            )
        config.backbone = backbone
        if config.augment:
            # The frames were turned into fixed features once; there are no pixels left to
            # flip, crop or darken.
            log.info("%s: an embedding store; pixel augmentation is off", config.data)
            config.augment = False
    elif config.fine_tune:
        raise ValueError(
            f"{config.data}: --fine-tune continues a head trained on an embedding store "
            "(nightact embed); this is a clip store"
        )
    elif config.backbone is not None:
        raise ValueError(
            f"{config.data}: a clip store; backbone={config.backbone} needs an embedding store "
            "(nightact embed)"
        )
    for name in ("frames", "height", "width"):
        expected = getattr(config, name)
        if expected is not None and expected != info[name]:
            raise ValueError(
                f"{config.data}: the store holds clips of {info['frames']} frames at "
                f"{info['height']}x{info['width']}, but the config expects {name}={expected}"
                + (f" (preset {config.preset})" if config.preset else "")
            )
        setattr(config, name, info[name])
    config.frames_per_segment = info["frames_per_segment"]
    return config, list(info["class_names"])


def open_or_resume_run(config: TrainConfig) -> RunResult | None:
    """Check that ``config.out`` may be trained into; return its RunResult if it already finished.

    Raises FileExistsError for an existing run without ``resume``, ValueError for a resume with
    other settings.
    """
    run = Path(config.out)
    if not runs.is_run(run):
        return None
    if not config.resume:
        raise FileExistsError(
            f"{run} already holds a training run; pass --resume to continue it, "
            "or choose another --out"
        )
    # Runs from before augmentation existed trained without it.
    saved = TrainConfig(**{"augment": False, **runs.read_config(run), "resume": True})
    runs.require_same_settings(
        saved.resume_settings(),
        config.resume_settings(),
        where=run,
        what="a training run",
        remedy="resume it with its own settings, or start a new run in another --out",
    )
    finished = runs.read_result(run)
    if finished is None:
        return None
    finished = RunResult(**finished)
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


def open_splits(config: TrainConfig):
    """The store's train and validation splits; an empty validation split is refused."""
    train_split = open_split(config.data, "train")
    val_split = open_split(config.data, "val")
    if len(train_split) == 0:
        raise ValueError(
            f"{config.data}: the train split is empty (a test-only store?); train on a store "
            "prepared with a non-zero train fraction"
        )
    if len(val_split) == 0:
        raise ValueError(
            f"{config.data}: the validation split is empty; the checkpoint is chosen on it"
        )
    return train_split, val_split


def use_devices(config: TrainConfig):
    """Set up the config's devices; return a copy of the config recording them and the backend.

    Must come before the backend's first operation. A process started with Keras' multi-process
    variables set (``KERAS_DISTRIBUTION_JOB_ADDRESSES`` ...) joins its JAX cluster first.
    """
    if os.environ.get(devices.ADDRESS_VARIABLE):
        devices.initialize_processes()
    setup = devices.setup_devices(config.devices)
    if config.batch_size % setup.count:
        raise ValueError(
            f"batch_size {config.batch_size} does not divide evenly over {setup.count} devices; "
            f"choose a multiple of {setup.count}"
        )
    return dataclasses.replace(config, devices=setup.count, backend=setup.backend), setup


def settle_lstm_kernel(config: TrainConfig) -> TrainConfig:
    """A copy of the config with the LSTM kernel the run uses filled in (None: no LSTM layer).

    Comes after :func:`use_devices`, because it asks the backend. "auto" becomes what
    :func:`nightact.nets.models.choose_lstm_kernel` picks for the backend and precision. Raises
    ValueError for "cudnn" under mixed precision on JAX with a GPU, where it cannot run.
    """
    import keras

    from nightact.nets.models import choose_lstm_kernel

    if config.model.removeprefix("cnn_") != "lstm":
        if config.lstm_kernel not in (None, "auto"):
            log.info("%s has no LSTM layer; lstm_kernel does not apply", config.model)
        return dataclasses.replace(config, lstm_kernel=None)
    backend = keras.config.backend()
    kernel = config.lstm_kernel
    if kernel in (None, "auto"):
        kernel = choose_lstm_kernel(config.dtype_policy, backend)
    elif kernel == "cudnn" and config.mixed_precision and backend == "jax" and gpu_available():
        raise ValueError(
            f"{config.out}: lstm_kernel 'cudnn' cannot train under mixed precision on JAX with a "
            "GPU (JAX's cuDNN LSTM takes float32 only); choose 'scan', 'cudnn-float32' or 'auto'"
        )
    log.info("%s: LSTM kernel %s (%s, %s)", config.model, kernel, config.dtype_policy, backend)
    return dataclasses.replace(config, lstm_kernel=kernel)


def choose_data_path(config: TrainConfig, splits, setup=None) -> TrainConfig:
    """A copy of ``config`` with ``data_path`` set to where its batches will be made; logged.

    Raises ValueError where ``data_on_device="yes"`` cannot be done, saying why.
    """
    import keras

    from nightact.data.placement import choose

    devices = None
    if setup is not None and setup.backend == "jax":
        devices = setup.local_jax_devices()
    choice = choose(
        config.data_on_device,
        splits,
        keras.config.backend(),
        devices=devices,
        processes=setup.processes if setup is not None else 1,
    )
    threads = "" if choice.on_device else f" ({config.workers} reading thread(s))"
    log.log(logging.WARNING if choice.risky else logging.INFO, "%s%s", choice.describe(), threads)
    return dataclasses.replace(config, data_path="device" if choice.on_device else "host")


def make_batches(config: TrainConfig, train_split, val_split, start_epoch: int = 0, setup=None):
    """The shuffled training stream, from ``start_epoch`` on, and the ordered validation batches.

    They are made where ``config.data_path`` says (:func:`choose_data_path` decides when it is
    None): gathered from a copy of each split on the device, or read from the store by threads
    that put them on the device ahead of the step (JAX, one process) or hand NumPy arrays to
    Keras (any other case). Under several devices (``setup``), each process reads its share of
    every batch, and on JAX the validation batches are padded to a multiple of the devices (see
    ClipBatches).
    """
    import keras

    from nightact.data.batches import ClipBatches

    if config.data_path is None:
        config = choose_data_path(config, (train_split, val_split), setup)
    sharing = {}
    processes = 1
    if setup is not None:
        sharing["process"] = (setup.process_id, setup.processes)
        processes = setup.processes
    pad_to = setup.count if setup is not None and setup.backend == "jax" else 1
    on_device = config.data_path == "device"
    placing = {
        "on_device": on_device,
        "place": not on_device and keras.config.backend() == "jax" and processes == 1,
    }
    train_batches = ClipBatches(
        train_split,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        start_epoch=start_epoch,
        workers=config.workers,
        drop_remainder=True,
        augment=AugmentConfig() if config.augment else None,
        **sharing,
        **placing,
    )
    try:
        val_batches = ClipBatches(
            val_split,
            config.batch_size,
            workers=config.workers,
            pad_to=pad_to,
            **sharing,
            **placing,
        )
    except BaseException:
        train_batches.close()
        raise
    return train_batches, val_batches


def start_run(config: TrainConfig, class_names: list[str]) -> None:
    """Create the run folder and write its config.json and classes.json."""
    run = Path(config.out)
    run.mkdir(parents=True, exist_ok=True)
    runs.write_config(run, dataclasses.asdict(config))
    runs.write_classes(run, class_names)


def build_and_compile(config: TrainConfig, num_classes: int, setup=None):
    """The seeded, compiled keras.Model the config describes, in ``setup``'s distribution scope."""
    import contextlib

    with setup.scope() if setup is not None else contextlib.nullcontext():
        mirrored = setup is not None and setup.strategy is not None
        # Padded validation batches (JAX, several devices) carry sample weights, which Keras
        # applies to `weighted_metrics` only.
        padded = setup is not None and setup.backend == "jax" and setup.count > 1
        return _build_and_compile(config, num_classes, mirrored, padded)


def _build_and_compile(
    config: TrainConfig, num_classes: int, mirrored: bool = False, weighted: bool = False
):
    import keras

    keras.utils.set_random_seed(config.seed)
    build = {name: getattr(config, name) for name in _MODEL_SETTINGS}
    build["num_classes"] = num_classes
    build["lstm_kernel"] = config.lstm_kernel or "auto"
    if config.backbone:
        build = _head_settings(config, num_classes)
    if config.mixed_precision:
        if not gpu_available():
            log.warning(
                "mixed precision without a GPU: %s on a CPU is slower, not faster",
                config.mixed_dtype,
            )
        # The policy is global in Keras; the layers keep it once built, so restore it at once.
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(config.dtype_policy)
        try:
            model = _build(config, build)
        finally:
            keras.config.set_dtype_policy(previous)
    else:
        model = _build(config, build)
    if config.loss == "msle":
        loss = keras.losses.MeanSquaredLogarithmicError()
    else:
        loss = keras.losses.CategoricalCrossentropy()
    # Under mixed_float16 (not bfloat16), compile wraps Adam in a LossScaleOptimizer by itself.
    accuracy = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss=loss,
        metrics=None if weighted else accuracy,
        weighted_metrics=accuracy if weighted else None,
        jit_compile=_jit_compile(config, mirrored),
    )
    return model


def _build(config: TrainConfig, settings: dict):
    from nightact.nets.models import build_head, build_model

    if config.backbone:
        return build_head(config.model, **settings)
    return build_model(config.model, **settings)


def _head_settings(config: TrainConfig, num_classes: int) -> dict:
    """The arguments of build_head for a run on an embedding store."""
    return {
        "frames": config.frames,
        "features": read_embedding_info(config.data)["features"],
        "num_classes": num_classes,
        "units": config.units,
        "dropout": config.dropout,
        "unroll": config.unroll,
        "lstm_kernel": config.lstm_kernel or "auto",
    }


def save_video_model(config: TrainConfig) -> Path:
    """Write RUN/model.keras: the embedding store's backbone + the best head, reading clips.

    The backbone is rebuilt with the weights the store was embedded with (a weights file must
    still hold the same bytes), so the saved model turns a clip into what the head was trained on.
    """
    import keras

    from nightact.nets.models import attach_backbone

    run = Path(config.out)
    info = read_embedding_info(config.data)
    weights = info["weights"]
    source = weights.get("path", weights["name"])
    if weights["name"] == "file" and weights_record(source)["sha256"] != weights["sha256"]:
        raise ValueError(
            f"{source}: changed since {config.data} was embedded with it (SHA-256 differs)"
        )
    height, width, _ = info["input"]
    backbone = build_backbone(info["backbone"], height, width, source)
    checkpoint = keras.saving.load_model(runs.model_path(run), compile=False)
    if len(checkpoint.input.shape) == 3:
        # The head's best checkpoint, as training left it: keep it, byte for byte, as head.keras.
        files.write_bytes_atomic(runs.head_path(run), runs.model_path(run).read_bytes())
        head = checkpoint
    else:
        # Already backbone + head (a run killed after this step and resumed).
        head = keras.saving.load_model(runs.head_path(run), compile=False)
    model = attach_backbone(backbone, head)
    # Keras insists on the .keras suffix, so the temporary file keeps it.
    temporary = run / f"{runs.MODEL}.partial.keras"
    model.save(temporary)
    files.replace_atomic(temporary, runs.model_path(run))
    log.info("saved %s + %s as %s", info["network"], config.model, runs.model_path(run))
    return runs.model_path(run)


def fine_tune(config: TrainConfig, verbose: int = 1) -> float:
    """Train RUN/model.keras end to end with the top ``config.fine_tune`` backbone layers unfrozen.

    Reads the clip store the embeddings came from. The epochs continue the run's history.csv;
    model.keras is replaced only by an epoch that beats the best validation accuracy so far (the
    head's included). Returns the wall time in seconds. Not resumable on its own: an interrupted
    fine-tune leaves a working model.keras but no result.json, so a resume starts the run over.
    """
    import keras

    from nightact.nets.models import settle_loaded_lstms
    from nightact.training import callbacks, checkpoints

    run = Path(config.out)
    model = keras.saving.load_model(runs.model_path(run), compile=False)
    settle_loaded_lstms(model)
    unfrozen = unfreeze_top(model, config.fine_tune)
    log.info("fine-tuning %d backbone layers: %s ...", len(unfrozen), ", ".join(unfrozen[:3]))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.fine_tune_learning_rate),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=_jit_compile(config),
    )
    store = source_store(config.data)
    # The clip store, not the embeddings the head trained on: where its batches go is decided
    # anew.
    train_batches, val_batches = make_batches(
        dataclasses.replace(config, data_path=None),
        open_split(store, "train"),
        open_split(store, "val"),
    )
    history = runs.read_history(run)
    best = max(row["val_accuracy"] for row in history)
    total = len(history) + config.fine_tune_epochs
    started = time.perf_counter()
    try:
        model.fit(
            train_batches,
            steps_per_epoch=len(train_batches),
            validation_data=val_batches,
            initial_epoch=len(history),
            epochs=total,
            callbacks=[
                callbacks.EpochTimer(),
                checkpoints.HistoryLogger(run, history),
                best_checkpoint(run, best),
                keras.callbacks.ProgbarLogger(),
                callbacks.EpochSummary(f"{config.model} fine-tune", total, best),
            ],
            verbose=verbose,
            shuffle=False,
        )
    finally:
        train_batches.close()
        val_batches.close()
    return time.perf_counter() - started


def unfreeze_top(model, count: int) -> list[str]:
    """Make the top ``count`` layers of the backbone inside ``model`` trainable; return names.

    ``model`` is backbone + head (:func:`nightact.nets.models.attach_backbone`). Batch normalisation
    layers stay frozen (in Keras 3 a frozen one also keeps using its stored statistics), as
    Keras' transfer-learning guide advises for small datasets.
    """
    import keras

    network = network_of(model.get_layer("frame_features").layer)
    network.trainable = True
    top = network.layers[-count:] if count else []
    for layer in network.layers:
        batch_norm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = layer in top and not batch_norm
    return [layer.name for layer in top if layer.trainable]


def _jit_compile(config: TrainConfig, mirrored: bool = False):
    """Keras' jit_compile value for the config: XLA also on TensorFlow without a GPU.

    Never under TensorFlow's MirroredStrategy: XLA cannot compile a step whose replicas' variables
    live on other devices ("Trying to access resource ... located in device CPU:1").
    """
    import keras

    if not config.xla or mirrored:
        return False
    if keras.config.backend() == "tensorflow" and not gpu_available():
        return True
    return "auto"


def check_free_space(config: TrainConfig, model) -> None:
    """Refuse to start unless the disk holds what the run's checkpoints and backups will take.

    Raises nightact.core.files.DiskSpaceError naming both figures.
    """
    from nightact.training import checkpoints

    run = Path(config.out)
    needed = checkpoints.run_bytes_needed(model) - checkpoints.run_bytes_present(run)
    files.check_free_space(
        run,
        max(needed, 0),
        f"training {config.model} (checkpoint and two backups)",
        margin_bytes=_SPACE_MARGIN_BYTES,
    )


# Room for what is not estimated: history, TensorBoard logs, evaluation files.
_SPACE_MARGIN_BYTES = 8 << 20


def restore_state(config: TrainConfig, model) -> tuple[int, list[dict]]:
    """Load the newest whole state of a resumed run into ``model``; (0, []) for a new run.

    Returns the epoch to start from and the history up to it; history.csv and model.keras are
    put back in step with it (:func:`nightact.training.checkpoints.restore_training`).
    """
    if not config.resume:
        return 0, []
    from nightact.training.checkpoints import restore_training

    run = Path(config.out)
    point = restore_training(run, model, monitor="val_accuracy", mode="max")
    if point.epoch:
        log.info("resuming %s after epoch %d of %d", run, point.epoch, config.epochs)
    return point.epoch, point.history


def remove_backups(config: TrainConfig) -> None:
    """Remove a finished run's backups (its result.json is on disk)."""
    from nightact.training.checkpoints import remove_backups as remove

    remove(Path(config.out) / runs.BACKUP)


def best_checkpoint(run: Path, best: float | None):
    """The callback that keeps RUN/model.keras the epoch with the best validation accuracy.

    ``best``: the best value before this fit (after a resume, or before fine-tuning), which a
    new checkpoint must beat.
    """
    from nightact.training import checkpoints

    return checkpoints.AtomicModelCheckpoint(
        str(runs.model_path(run)),
        monitor="val_accuracy",
        mode="max",
        save_best_only=True,
        initial_value_threshold=best,
    )


def make_callbacks(config: TrainConfig, history: list[dict], extra=None) -> list:
    """The run's callbacks, in the order they must run, then ``extra``."""
    import keras

    from nightact.training import callbacks, checkpoints

    run = Path(config.out)
    early_stopping = None
    if config.early_stopping:
        early_stopping = keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=config.early_stopping
        )
    best = max((row["val_accuracy"] for row in history), default=None)
    return [
        # Order matters: the epoch's time must be in the logs before the history row is written,
        # and the backup, which commits the epoch, links the checkpoint saved just before it.
        callbacks.EpochTimer(),
        checkpoints.HistoryLogger(run, history),
        best_checkpoint(run, best),
        checkpoints.EpochBackup(run / runs.BACKUP, runs.model_path(run), history),
        *callbacks.tensorboard(run / runs.TENSORBOARD),
        *(
            [early_stopping, callbacks.RestoreEarlyStopping(early_stopping, history)]
            if early_stopping
            else []
        ),
        # Placed here, not appended by Keras at the end, so the progress bar finishes its line
        # before the summary is logged. It follows fit's `verbose`.
        keras.callbacks.ProgbarLogger(),
        callbacks.EpochSummary(config.model, config.epochs, best),
        *(extra or []),
    ]


def fit(
    model, config: TrainConfig, train_batches, val_batches, run_callbacks, verbose, start_epoch=0
) -> float:
    """Run Keras' fit loop from ``start_epoch``; return its wall time in seconds."""
    started = time.perf_counter()
    model.fit(
        train_batches,
        steps_per_epoch=len(train_batches),
        validation_data=val_batches,
        epochs=config.epochs,
        initial_epoch=start_epoch,
        callbacks=run_callbacks,
        verbose=verbose,
        # The stream shuffles itself, per epoch, from the seed.
        shuffle=False,
    )
    return time.perf_counter() - started


def write_result(config: TrainConfig, model, seconds: float) -> RunResult:
    """Sum up the finished run from its history and write RUN/result.json."""
    import numpy as np

    from nightact.nets.models import count_trainable_parameters

    run = Path(config.out)
    history = runs.read_history(run)
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
    runs.write_result(run, dataclasses.asdict(result))
    log.info(
        "%s: best val_accuracy %.3f at epoch %d of %d; checkpoint %s",
        config.model,
        result.best_val_accuracy,
        result.best_epoch,
        result.epochs_completed,
        result.model_path,
    )
    return result


# --- configs for the command line and notebooks ---------------------------------------------------


def default_run_folder(model: str) -> str:
    """runs/MODEL-YYYYmmdd-HHMMSS, the run folder when none is given."""
    return f"runs/{model}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_config(preset: str | None = None, resume: bool = False, **settings) -> TrainConfig:
    """The TrainConfig for a new or resumed run from the settings given (None: not given).

    Resuming a run that exists takes its saved config.json and overlays the settings given, which
    :func:`train` then checks against the saved ones. Otherwise ``data`` and ``model`` are
    needed; ``out`` defaults to :func:`default_run_folder` and ``preset`` supplies the defaults.
    """
    settings = {name: value for name, value in settings.items() if value is not None}
    out = settings.get("out")
    if resume:
        if not out:
            raise ValueError("--resume needs --out, the run folder to continue")
        if runs.is_run(out):
            # Runs from before augmentation existed trained without it.
            saved = {"augment": False, **runs.read_config(out)}
            return TrainConfig(**{**saved, **settings, "resume": True})
    if "data" not in settings or "model" not in settings:
        raise ValueError("--data and --model are required (except to --resume a run)")
    settings.setdefault("out", default_run_folder(settings["model"]))
    if preset:
        return TrainConfig.from_preset(preset, resume=resume, **settings)
    return TrainConfig(resume=resume, **settings)


def load_run_config(run: str | os.PathLike) -> dict:
    """The saved TrainConfig of a run folder, as a dict."""
    return runs.read_config(run)


def read_history(run: str | os.PathLike) -> list[dict]:
    """The rows of RUN/history.csv as dicts of floats (``epoch`` as int, from 0)."""
    return runs.read_history(run)


def gpu_available() -> bool:
    """Whether the active Keras backend sees a GPU."""
    return gpu.backend_sees_gpu()

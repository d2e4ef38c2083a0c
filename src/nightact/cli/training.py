"""``nightact train``, ``demo`` and ``study``: one run, the whole line on synthetic videos, a grid.

The modules imported here import Keras only inside the functions that train
(:mod:`nightact.training.train`, :mod:`nightact.demo`, :mod:`nightact.study`).
"""

from __future__ import annotations

import argparse
import dataclasses

from nightact.cli.options import build_config, layer_widths, numbers, option, ray_option, words
from nightact.core.names import LOSSES, LSTM_KERNELS, MIXED_DTYPES, MODEL_NAMES
from nightact.data.placement import DATA_ON_DEVICE
from nightact.demo import DemoConfig, format_demo_result, run_demo
from nightact.study import TRAIN_SETTINGS, StudyConfig, study
from nightact.training.train import PRESETS, TrainConfig, make_config, train

__all__ = [
    "add_demo_parser",
    "add_study_parser",
    "add_train_parser",
    "demo_config",
    "study_config",
    "train_config",
]


def add_train_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train one model on a prepared store (best checkpoint, history, resume)"
    )
    _add_run_flags(parser)
    _add_optimisation_flags(parser)
    _add_device_flags(parser)
    _add_architecture_flags(parser)
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar; one log line per epoch"
    )
    parser.set_defaults(handler=_train_command)


def _add_run_flags(parser) -> None:
    """What to train on and where it goes: data, model, run folder, preset, seed, resume."""
    parser.add_argument("--data", default=None, help="a prepared store (nightact prepare)")
    parser.add_argument("--model", choices=MODEL_NAMES, default=None)
    parser.add_argument(
        "--out", default=None, help="run folder (default runs/MODEL-YYYYmmdd-HHMMSS)"
    )
    _add_preset_flag(parser)
    option(parser, "--seed", TrainConfig, "seed of weights and shuffling", type=int)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out from its last finished epoch",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="discard the run already in --out first (its checkpoint, history and backups)",
    )


def _add_preset_flag(parser) -> None:
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="start from the original project's settings: 10x240x320 store, batch 64, 50 "
        "epochs, Adam 1e-4, MSLE, mixed_float16 on a GPU; other flags override them",
    )


def _add_optimisation_flags(parser) -> None:
    """How a run optimises: epochs, batch, learning rate, loss, precision, stopping, XLA."""
    option(parser, "--epochs", TrainConfig, "epochs to train", type=int)
    option(parser, "--batch-size", TrainConfig, "clips per batch", type=int)
    option(
        parser,
        "--lr",
        TrainConfig,
        "Adam learning rate",
        field="learning_rate",
        type=float,
        metavar="LR",
    )
    option(parser, "--loss", TrainConfig, "msle is the original's", choices=LOSSES)
    option(
        parser,
        "--mixed-precision",
        TrainConfig,
        "16-bit compute, float32 weights (for GPUs)",
        action="store_true",
    )
    option(
        parser,
        "--mixed-dtype",
        TrainConfig,
        "the 16-bit float of --mixed-precision",
        choices=MIXED_DTYPES,
    )
    option(
        parser,
        "--lstm-kernel",
        TrainConfig,
        "how LSTM layers compute: auto picks scan under mixed precision on JAX (its cuDNN LSTM "
        "takes float32 only), cudnn otherwise; the run's config.json records the one used",
        choices=LSTM_KERNELS,
    )
    option(
        parser,
        "--early-stopping",
        TrainConfig,
        "stop after N epochs without a better val_accuracy",
        type=int,
        metavar="N",
        none="off",
    )
    parser.add_argument(
        "--no-xla",
        dest="xla",
        action="store_false",
        default=None,
        help="do not compile the training step with XLA (on by default where the model allows)",
    )


def _add_device_flags(parser) -> None:
    """Where the run computes: reader threads and devices."""
    option(
        parser,
        "--workers",
        TrainConfig,
        "threads reading batches ahead of the model",
        type=int,
        none="one per CPU, at most 4",
    )
    option(
        parser,
        "--devices",
        TrainConfig,
        "devices sharing each batch; on a CPU, N > 1 splits it into N logical devices",
        type=int,
        none="every GPU, or 1 CPU",
    )
    option(
        parser,
        "--data-on-device",
        TrainConfig,
        "copy the train and validation clips to the device once and make every batch there; "
        "auto: where the backend is JAX, one process trains and they take at most half of the "
        "device's free memory, else reading threads feed it",
        choices=DATA_ON_DEVICE,
    )


def _add_architecture_flags(parser) -> None:
    """The model's shape, fine-tuning on embeddings, and augmentation."""
    option(parser, "--units", TrainConfig, "recurrent layer widths", type=layer_widths)
    option(parser, "--dropout", TrainConfig, "dropout after each recurrent layer", type=float)
    option(parser, "--conv-filters", TrainConfig, "CNN models' filters", type=int)
    option(parser, "--conv-kernel", TrainConfig, "CNN models' kernel size", type=int)
    option(parser, "--conv-stride", TrainConfig, "CNN models' stride", type=int)
    option(parser, "--unroll", TrainConfig, "unroll the recurrent layers", action="store_true")
    option(
        parser,
        "--fine-tune",
        TrainConfig,
        "on an embedding store: after the head, unfreeze this many top backbone layers and "
        "train end to end on the clip store",
        type=int,
    )
    option(parser, "--fine-tune-epochs", TrainConfig, "epochs of --fine-tune", type=int)
    option(
        parser, "--fine-tune-learning-rate", TrainConfig, "Adam's rate in --fine-tune", type=float
    )
    option(
        parser,
        "--augment",
        TrainConfig,
        "random candidate frame per segment and one random flip, crop, gamma, contrast, gain "
        "and noise per training clip (--no-augment: off; --preset original: off)",
        action=argparse.BooleanOptionalAction,
    )


def train_config(args) -> TrainConfig:
    """The TrainConfig the `train` flags ask for (a resumed run's saved one, with them)."""
    given = {
        field.name: getattr(args, field.name, None)
        for field in dataclasses.fields(TrainConfig)
        if field.name not in ("resume", "preset")
    }
    return make_config(preset=args.preset, resume=args.resume, **given)


def _train_command(args) -> int:
    result = train(train_config(args), verbose=2 if args.quiet else 1, overwrite=args.overwrite)
    print(
        f"{result.model}: best val_accuracy {result.best_val_accuracy:.3f} at epoch "
        f"{result.best_epoch} of {result.epochs_completed}; run in {result.run}"
    )
    print(f"next: nightact evaluate {result.run}")
    return 0


def add_demo_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="synthetic videos -> store -> train all six -> evaluate -> report, on a CPU",
    )
    option(parser, "--out", DemoConfig, "folder")
    option(parser, "--models", DemoConfig, "comma-separated models", type=words)
    option(parser, "--epochs", DemoConfig, "per model", type=int)
    option(parser, "--videos-per-class", DemoConfig, "synthetic videos per class", type=int)
    option(parser, "--seed", DemoConfig, "seed of videos, split and training", type=int)
    option(
        parser,
        "--augment",
        DemoConfig,
        "train with clip-consistent augmentation (--no-augment: without)",
        action=argparse.BooleanOptionalAction,
    )
    option(
        parser, "--workers", DemoConfig, "processes for synth and prepare", type=int, none="CPUs"
    )
    parser.set_defaults(handler=_demo_command)


def demo_config(args) -> DemoConfig:
    return build_config(args, DemoConfig)


def _demo_command(args) -> int:
    result = run_demo(demo_config(args))
    print(format_demo_result(result))
    return 0


def add_study_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "study",
        help="a grid of runs (models x seeds), resumable, ending in compare's report; "
        "every train flag applies to all runs",
    )
    parser.add_argument("--data", required=True, help="a prepared store")
    parser.add_argument("--out", required=True, help="the study folder (runs/, logs/, report/)")
    option(parser, "--models", StudyConfig, "comma-separated models", type=words)
    option(parser, "--seeds", StudyConfig, "comma-separated seeds", type=numbers)
    _add_preset_flag(parser)
    _add_optimisation_flags(parser)
    _add_device_flags(parser)
    _add_architecture_flags(parser)
    option(
        parser,
        "--parallel",
        StudyConfig,
        "runs at the same time",
        type=int,
        none="1; with --ray, as many as the cluster's resources allow",
    )
    parser.add_argument(
        "--gpus",
        type=numbers,
        default=None,
        help="GPU ids shared out to the parallel runs, --devices each (default: no pinning)",
    )
    ray_option(parser, "train the runs")
    option(
        parser,
        "--cpus-per-run",
        StudyConfig,
        "CPUs each run asks Ray for (its GPUs: --devices, on a cluster with GPUs)",
        type=float,
    )
    parser.set_defaults(handler=_study_command)


def study_config(args) -> StudyConfig:
    """The StudyConfig of the flags; the train flags given go to every run (``train``)."""
    own = {field.name for field in dataclasses.fields(StudyConfig)}
    train = {
        name: getattr(args, name)
        for name in TRAIN_SETTINGS
        if name not in own and getattr(args, name, None) is not None
    }
    return build_config(args, StudyConfig, train=train or None)


def _study_command(args) -> int:
    report = study(study_config(args))
    print(f"wrote {report} (open it in a browser) and {report.with_suffix('.md')}")
    return 0

"""The `nightact` command line: a thin layer that parses flags and calls the Python API.

Every command builds the same config object a notebook would build, and hands it to the function
that does the work. Heavy imports (Keras, the backend) happen inside the command functions, so
`nightact prepare --help` starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from nightact import __version__
from nightact.nets.backbones import WeightsUnavailableError

# Every flag that sets a config field defaults to None, meaning "not given": the config's own
# dataclass default then applies, and the help text shows that default, read from the dataclass.


def _height_by_width(text: str) -> tuple[int, int]:
    """Parse HEIGHTxWIDTH, e.g. 240x320."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        message = f"expected HEIGHTxWIDTH such as 240x320, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"height and width must be positive, got {text!r}")
    return height, width


def _comma_separated(kind, what: str, example: str):
    """A flag parser for comma-separated numbers of type ``kind``, e.g. 128,64,32."""

    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what} such as {example}, got {text!r}"
            ) from None

    return parse


_layer_widths = _comma_separated(int, "integers", "128,64,32")
_fractions = _comma_separated(float, "fractions", "0.7,0.15,0.15")
_numbers = _comma_separated(int, "integers", "0,1,2")


def _words(text: str) -> tuple[str, ...]:
    """Parse a comma-separated list of names, dropping blanks."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _default(config_class, name: str):
    """The dataclass default of field ``name`` of ``config_class``."""
    for field in dataclasses.fields(config_class):
        if field.name == name:
            if field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
            return field.default
    raise KeyError(f"{config_class.__name__} has no field {name!r}")


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(part) for part in value)
    return str(value)


def _option(parser, flag: str, config_class, help: str, field: str | None = None, **kwargs):
    """A flag for one config field, defaulting to None, its help ending in the config's default.

    ``none`` words what a default of None means (e.g. "CPUs").
    """
    field = field or flag.lstrip("-").replace("-", "_")
    default = _default(config_class, field)
    none = kwargs.pop("none", None)
    shown = none if default is None and none else _shown(default)
    if kwargs.get("action") != "store_true":  # a switch is off unless given
        help = f"{help} (default {shown})"
    parser.add_argument(flag, dest=field, default=None, help=help, **kwargs)


def _config(args, config_class, **settings):
    """``config_class`` built from the flags that were given (and ``settings`` not None)."""
    given = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(config_class)
        if getattr(args, field.name, None) is not None
    }
    given.update({name: value for name, value in settings.items() if value is not None})
    return config_class(**given)


# --- data commands: synth, prepare, preview ----------------------------------------------------


def _add_data_commands(subparsers) -> None:
    from nightact.core.store import SHORT_CLIP_POLICIES, SPLIT_NAMES
    from nightact.data.leakage import LeakageConfig
    from nightact.data.prepare import PrepareConfig
    from nightact.sources.synthetic import SynthConfig

    synth = subparsers.add_parser(
        "synth", help="write the built-in synthetic night-action videos (real mp4 files)"
    )
    synth.add_argument("out", help="folder to write OUT/<class name>/*.mp4 into")
    _option(synth, "--videos-per-class", SynthConfig, "videos per class", type=int)
    _option(synth, "--seed", SynthConfig, "seed of every random choice", type=int)
    _option(synth, "--min-seconds", SynthConfig, "shortest clip duration", type=float)
    _option(synth, "--max-seconds", SynthConfig, "longest clip duration", type=float)
    _option(
        synth,
        "--size",
        SynthConfig,
        "HEIGHTxWIDTH for every video",
        type=_height_by_width,
        none="varied",
    )
    _option(synth, "--workers", SynthConfig, "processes", type=int, none="CPUs")
    synth.set_defaults(run=_run_synth)

    prepare = subparsers.add_parser(
        "prepare", help="turn SRC/<class>/*.mp4 into a clip store of uint8 arrays on disk"
    )
    prepare.add_argument("src", help="folder with one sub-folder of videos per class")
    prepare.add_argument("out", help="store folder to create or resume")
    _option(prepare, "--frames", PrepareConfig, "frames sampled per clip", type=int)
    _size_option(prepare, PrepareConfig)
    _option(prepare, "--split", PrepareConfig, "train,val,test fractions", type=_fractions)
    _option(prepare, "--seed", PrepareConfig, "seed of the stratified split", type=int)
    _option(prepare, "--workers", PrepareConfig, "processes", type=int, none="CPUs")
    _option(
        prepare,
        "--frames-per-segment",
        PrepareConfig,
        "candidate frames stored per segment, for training with --augment; memory and disk "
        "grow K times",
        type=int,
        metavar="K",
    )
    _option(
        prepare,
        "--extensions",
        PrepareConfig,
        "comma-separated video file extensions to index",
        type=_words,
    )
    _option(
        prepare,
        "--short-clips",
        PrepareConfig,
        "a clip with fewer decodable frames than --frames: repeat its last sampled frame "
        "or skip it; either way it is recorded in the manifest",
        choices=SHORT_CLIP_POLICIES,
    )
    _option(
        prepare,
        "--group-by",
        PrepareConfig,
        "what must share a split: none, near-duplicates (copies of one recording, found from "
        "the pixels; a pre-pass decodes every video once more at 60x80) or a REGEX whose first "
        r"capture group on the path names the group (UCF101: 'v_(.*_g\d+)_c\d+')",
        metavar="{none,near-duplicates,REGEX}",
    )
    prepare.add_argument(
        "--no-leakage-check",
        dest="check_leakage",
        action="store_false",
        default=None,
        help="skip the search for near-duplicates across splits at the end",
    )
    prepare.add_argument(
        "--overwrite", action="store_true", help="discard an existing store in OUT first"
    )
    prepare.set_defaults(run=_run_prepare)

    leakage = subparsers.add_parser(
        "leakage",
        help="find near-duplicate clips (copies of one recording) across a store's splits",
    )
    leakage.add_argument("store", help="a prepared store; writes STORE/leakage.csv")
    _option(
        leakage,
        "--within",
        LeakageConfig,
        "also list pairs inside one split in leakage.csv",
        action="store_true",
    )
    _option(
        leakage,
        "--threshold",
        LeakageConfig,
        "similarity from which two clips count as copies",
        type=float,
    )
    leakage.add_argument(
        "--fail-on-leak",
        action="store_true",
        help="exit with status 1 when any pair lies across splits (for CI)",
    )
    leakage.set_defaults(run=_run_leakage)

    preview = subparsers.add_parser("preview", help="write a PNG of one prepared clip's frames")
    preview.add_argument("store", help="a prepared store")
    preview.add_argument("--split", choices=SPLIT_NAMES, default="train")
    preview.add_argument("--index", type=int, default=0, help="row of the clip in that split")
    preview.add_argument("--out", default=None, help="PNG path (default STORE/preview-*.png)")
    preview.set_defaults(run=_run_preview)


def _size_option(parser, config_class) -> None:
    """--size HEIGHTxWIDTH for a config with ``height`` and ``width`` fields."""
    default = f"{_default(config_class, 'height')}x{_default(config_class, 'width')}"
    parser.add_argument(
        "--size", type=_height_by_width, default=None, help=f"HEIGHTxWIDTH (default {default})"
    )


def _sized_config(args, config_class, **settings):
    height, width = args.size or (None, None)
    return _config(args, config_class, height=height, width=width, **settings)


def synth_config(args):
    from nightact.sources.synthetic import SynthConfig

    return _config(args, SynthConfig)


def prepare_config(args):
    from nightact.data.prepare import PrepareConfig

    return _sized_config(args, PrepareConfig)


def _run_synth(args) -> int:
    from nightact.sources.synthetic import write_synthetic_dataset

    paths = write_synthetic_dataset(synth_config(args))
    print(f"wrote {len(paths)} videos under {args.out}")
    return 0


def _run_prepare(args) -> int:
    from nightact.data.prepare import prepare

    summary = prepare(prepare_config(args), overwrite=args.overwrite)
    print(summary.table())
    return 0 if summary.prepared > 0 else 1


def leakage_config(args):
    from nightact.data.leakage import LeakageConfig

    return _config(args, LeakageConfig, store=args.store)


def _run_leakage(args) -> int:
    from nightact.data.leakage import check_store, write_report

    report = check_store(leakage_config(args))
    path = write_report(report)
    print(report.table())
    print(f"\nwrote {path}")
    return 1 if args.fail_on_leak and report.cross_pairs else 0


def _run_preview(args) -> int:
    from nightact.data.prepare import write_preview

    path = write_preview(args.store, split=args.split, index=args.index, out=args.out)
    print(f"wrote {path}")
    return 0


# --- model commands: models, explain (nightact.nets.models, nightact.nets.explain) --------------------------


def _add_model_commands(subparsers) -> None:
    from nightact.core.names import NUM_CLASSES
    from nightact.data.prepare import PrepareConfig
    from nightact.nets.explain import CELL_NAMES
    from nightact.training.train import TrainConfig

    # The models as `train` would build them on a store that `prepare` made with its defaults.
    models = subparsers.add_parser(
        "models", help="build the six models and print their sizes and shapes"
    )
    _option(models, "--frames", PrepareConfig, "frames per clip", type=int)
    _size_option(models, PrepareConfig)
    models.add_argument(
        "--classes",
        type=int,
        default=NUM_CLASSES,
        help=f"number of classes (default {NUM_CLASSES})",
    )
    _option(models, "--units", TrainConfig, "recurrent layer widths", type=_layer_widths)
    _option(models, "--conv-filters", TrainConfig, "filters of the CNN models", type=int)
    models.set_defaults(run=_run_models)

    explain = subparsers.add_parser(
        "explain",
        help="show a recurrent cell's shapes and equations, checked against Keras in NumPy",
    )
    explain.add_argument("cell", choices=CELL_NAMES)
    explain.add_argument(
        "--plot", default=None, metavar="FILE", help="write heatmaps of every gate over time (PNG)"
    )
    explain.add_argument("--batch", type=int, default=16, help="sequences (default 16)")
    explain.add_argument("--steps", type=int, default=5, help="time steps (default 5)")
    explain.add_argument("--features", type=int, default=3, help="input features (default 3)")
    explain.add_argument("--units", type=int, default=4, help="hidden units (default 4)")
    explain.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    explain.add_argument(
        "--reset-before",
        action="store_true",
        help="GRU only: apply the reset gate before the recurrent matmul (reset_after=False)",
    )
    explain.set_defaults(run=_run_explain)


def models_settings(args) -> dict:
    """The keyword arguments of `nightact.nets.models.describe_models` the flags ask for."""
    from nightact.data.prepare import PrepareConfig
    from nightact.training.train import TrainConfig

    def given(config_class, name: str):
        value = getattr(args, name, None)
        return _default(config_class, name) if value is None else value

    height, width = args.size or (given(PrepareConfig, "height"), given(PrepareConfig, "width"))
    return dict(
        frames=given(PrepareConfig, "frames"),
        height=height,
        width=width,
        num_classes=args.classes,
        units=given(TrainConfig, "units"),
        conv_filters=given(TrainConfig, "conv_filters"),
    )


def _run_models(args) -> int:
    from nightact.nets.models import describe_models, format_model_table

    print(format_model_table(describe_models(**models_settings(args))))
    return 0


def _run_explain(args) -> int:
    from nightact.nets.explain import equations, plot_gates, shape_demo

    if args.reset_before and args.cell != "gru":
        raise ValueError("--reset-before applies to the gru cell only")
    reset_after = not args.reset_before
    demo = shape_demo(
        args.cell,
        batch=args.batch,
        steps=args.steps,
        features=args.features,
        units=args.units,
        seed=args.seed,
        reset_after=reset_after,
    )
    print(demo.summary())
    print()
    print(equations(args.cell, args.features, args.units, reset_after=reset_after))
    if args.plot:
        path = plot_gates(demo.trace, args.plot, sample=0)
        print(f"\nwrote {path} (sequence 0 of the batch)")
    return 0


# --- end model commands -------------------------------------------------------------------------

# --- training commands: train, evaluate, compare, demo ------------------------------------------


def _add_training_commands(subparsers) -> None:
    from nightact.core.names import LOSSES, MODEL_NAMES
    from nightact.core.store import SPLIT_NAMES
    from nightact.demo import DemoConfig
    from nightact.training.train import PRESETS, TrainConfig

    train = subparsers.add_parser(
        "train", help="train one model on a prepared store (best checkpoint, history, resume)"
    )
    train.add_argument("--data", default=None, help="a prepared store (nightact prepare)")
    train.add_argument("--model", choices=MODEL_NAMES, default=None)
    train.add_argument(
        "--out", default=None, help="run folder (default runs/MODEL-YYYYmmdd-HHMMSS)"
    )
    train.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="start from the original project's settings: 10x240x320 store, batch 64, 50 "
        "epochs, Adam 1e-4, MSLE, mixed_float16 on a GPU; other flags override them",
    )
    _option(train, "--epochs", TrainConfig, "epochs to train", type=int)
    _option(train, "--batch-size", TrainConfig, "clips per batch", type=int)
    _option(
        train,
        "--lr",
        TrainConfig,
        "Adam learning rate",
        field="learning_rate",
        type=float,
        metavar="LR",
    )
    _option(train, "--loss", TrainConfig, "msle is the original's", choices=LOSSES)
    _option(
        train,
        "--mixed-precision",
        TrainConfig,
        "mixed_float16 compute (for GPUs)",
        action="store_true",
    )
    _option(train, "--seed", TrainConfig, "seed of weights and shuffling", type=int)
    _option(
        train,
        "--early-stopping",
        TrainConfig,
        "stop after N epochs without a better val_accuracy",
        type=int,
        metavar="N",
        none="off",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out from its last finished epoch",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="discard the run already in --out first (its checkpoint, history and backups)",
    )
    _option(
        train,
        "--workers",
        TrainConfig,
        "threads reading batches ahead of the model",
        type=int,
        none="one per CPU, at most 4",
    )
    _option(
        train,
        "--devices",
        TrainConfig,
        "devices sharing each batch; on a CPU, N > 1 splits it into N logical devices",
        type=int,
        none="every GPU, or 1 CPU",
    )
    _option(train, "--units", TrainConfig, "recurrent layer widths", type=_layer_widths)
    _option(train, "--dropout", TrainConfig, "dropout after each recurrent layer", type=float)
    _option(train, "--conv-filters", TrainConfig, "CNN models' filters", type=int)
    _option(train, "--conv-kernel", TrainConfig, "CNN models' kernel size", type=int)
    _option(train, "--conv-stride", TrainConfig, "CNN models' stride", type=int)
    _option(train, "--unroll", TrainConfig, "unroll the recurrent layers", action="store_true")
    _option(
        train,
        "--fine-tune",
        TrainConfig,
        "on an embedding store: after the head, unfreeze this many top backbone layers and "
        "train end to end on the clip store",
        type=int,
    )
    _option(train, "--fine-tune-epochs", TrainConfig, "epochs of --fine-tune", type=int)
    _option(
        train, "--fine-tune-learning-rate", TrainConfig, "Adam's rate in --fine-tune", type=float
    )
    _option(
        train,
        "--augment",
        TrainConfig,
        "random candidate frame per segment and one random flip, crop, gamma, contrast, gain "
        "and noise per training clip (--no-augment: off; --preset original: off)",
        action=argparse.BooleanOptionalAction,
    )
    train.add_argument(
        "--no-xla",
        dest="xla",
        action="store_false",
        default=None,
        help="do not compile the training step with XLA (on by default where the model allows)",
    )
    train.add_argument(
        "--quiet", action="store_true", help="no progress bar; one log line per epoch"
    )
    train.set_defaults(run=_run_train)

    evaluate = subparsers.add_parser(
        "evaluate", help="score a run's best checkpoint on the held-out test split"
    )
    evaluate.add_argument("run_folder", metavar="RUN", help="a training run folder")
    evaluate.add_argument(
        "--split",
        choices=SPLIT_NAMES,
        default="test",
        help="test (default); val chose the checkpoint and needs --allow-validation",
    )
    evaluate.add_argument(
        "--allow-validation",
        action="store_true",
        help="accept --split val, whose scores are optimistic",
    )
    evaluate.add_argument(
        "--data",
        default=None,
        help="the test split of another store with the same class names (another camera); "
        "results go to RUN/evaluation-STORENAME/",
    )
    evaluate.add_argument("--batch-size", type=int, default=None, help="default: the run's")
    evaluate.add_argument(
        "--views",
        type=int,
        default=1,
        help="average the softmax over V views: candidate frames of the store, mirrored too "
        "if the run trained flips (default 1)",
    )
    evaluate.set_defaults(run=_run_evaluate)

    robustness = subparsers.add_parser(
        "robustness", help="test accuracy as the clips get darker and noisier (PNG + CSV)"
    )
    robustness.add_argument("run_folder", metavar="RUN", help="a training run folder")
    robustness.add_argument(
        "--data", default=None, help="another store with the same class names (default: the run's)"
    )
    robustness.add_argument("--batch-size", type=int, default=None, help="default: the run's")
    robustness.set_defaults(run=_run_robustness)

    compare = subparsers.add_parser(
        "compare", help="compare runs: curves, confusion matrices, table (HTML + Markdown)"
    )
    compare.add_argument(
        "runs",
        nargs="+",
        help="run folders, or folders holding runs; unevaluated runs are "
        "evaluated on their test split first",
    )
    compare.add_argument("--out", default="report", help="report folder (default report)")
    compare.set_defaults(run=_run_compare)

    demo = subparsers.add_parser(
        "demo",
        help="synthetic videos -> store -> train all six -> evaluate -> report, on a CPU",
    )
    _option(demo, "--out", DemoConfig, "folder")
    _option(demo, "--models", DemoConfig, "comma-separated models", type=_words)
    _option(demo, "--epochs", DemoConfig, "per model", type=int)
    _option(demo, "--videos-per-class", DemoConfig, "synthetic videos per class", type=int)
    _option(demo, "--seed", DemoConfig, "seed of videos, split and training", type=int)
    _option(
        demo,
        "--augment",
        DemoConfig,
        "train with clip-consistent augmentation (--no-augment: without)",
        action=argparse.BooleanOptionalAction,
    )
    _option(demo, "--workers", DemoConfig, "processes for synth and prepare", type=int, none="CPUs")
    demo.set_defaults(run=_run_demo)

    from nightact.study import StudyConfig

    study = subparsers.add_parser(
        "study", help="a grid of runs (models x seeds), resumable, ending in compare's report"
    )
    study.add_argument("--data", required=True, help="a prepared store")
    study.add_argument("--out", required=True, help="the study folder (runs/, logs/, report/)")
    _option(study, "--models", StudyConfig, "comma-separated models", type=_words)
    _option(study, "--seeds", StudyConfig, "comma-separated seeds", type=_numbers)
    study.add_argument("--preset", choices=list(PRESETS), default=None, help="a train preset")
    _option(study, "--epochs", StudyConfig, "per run", type=int, none="train's")
    _option(study, "--batch-size", StudyConfig, "global batch", type=int, none="train's")
    _option(study, "--devices", StudyConfig, "per run", type=int, none="every GPU, or 1 CPU")
    _option(study, "--parallel", StudyConfig, "runs at the same time", type=int)
    study.add_argument(
        "--gpus",
        type=_numbers,
        default=None,
        help="GPU ids shared out to the parallel runs, --devices each (default: no pinning)",
    )
    study.set_defaults(run=_run_study)


def train_config(args):
    """The TrainConfig the `train` flags ask for (a resumed run's saved one, with them)."""
    from nightact.training.train import TrainConfig, make_config

    given = {
        field.name: getattr(args, field.name, None)
        for field in dataclasses.fields(TrainConfig)
        if field.name not in ("resume", "preset")
    }
    return make_config(preset=args.preset, resume=args.resume, **given)


def demo_config(args):
    from nightact.demo import DemoConfig

    return _config(args, DemoConfig)


def _run_train(args) -> int:
    from nightact.training.train import train

    result = train(train_config(args), verbose=2 if args.quiet else 1, overwrite=args.overwrite)
    print(
        f"{result.model}: best val_accuracy {result.best_val_accuracy:.3f} at epoch "
        f"{result.best_epoch} of {result.epochs_completed}; run in {result.run}"
    )
    print(f"next: nightact evaluate {result.run}")
    return 0


def _run_evaluate(args) -> int:
    from nightact.scoring.evaluate import evaluate, format_metrics

    metrics = evaluate(
        args.run_folder,
        split=args.split,
        data=args.data,
        batch_size=args.batch_size,
        allow_validation=args.allow_validation,
        views=args.views,
    )
    print(format_metrics(metrics))
    print(f"wrote {metrics['output']}")
    return 0


def _run_robustness(args) -> int:
    from nightact.scoring.robustness import format_sweep, robustness

    result = robustness(args.run_folder, data=args.data, batch_size=args.batch_size)
    print(format_sweep(result["rows"]))
    print(f"wrote {result['output']}")
    return 0


def _run_compare(args) -> int:
    from nightact.scoring.compare import compare

    report = compare(args.runs, args.out, evaluate_missing=True)
    print(f"wrote {report} (open it in a browser) and {report.with_suffix('.md')}")
    return 0


def _run_study(args) -> int:
    from nightact.study import StudyConfig, study

    report = study(_config(args, StudyConfig))
    print(f"wrote {report} (open it in a browser) and {report.with_suffix('.md')}")
    return 0


def _run_demo(args) -> int:
    from nightact.demo import format_demo_result, run_demo

    result = run_demo(demo_config(args))
    print(format_demo_result(result))
    return 0


# --- end training commands ----------------------------------------------------------------------

# --- download and predict -----------------------------------------------------------------------


def _add_download_predict_commands(subparsers) -> None:
    from nightact.serve.predictor import ENGINES
    from nightact.sources.download import DownloadConfig

    download = subparsers.add_parser(
        "download",
        help="download and safely extract the NoctAct-HAR videos (Kaggle or a mirror URL)",
    )
    _option(download, "--dest", DownloadConfig, "folder to download into")
    download.add_argument(
        "--url",
        default=None,
        help="download from this URL (a mirror) instead of Kaggle; without it Kaggle's client is "
        "used when Kaggle credentials are configured, else Kaggle's public download URL",
    )
    download.add_argument("--sha256", default=None, help="expected SHA-256 of the zip")
    download.add_argument(
        "--keep-archive", action="store_true", default=None, help="keep the zip after extracting it"
    )
    _option(download, "--retries", DownloadConfig, "resumes after a lost connection", type=int)
    download.set_defaults(run=_run_download)

    predict = subparsers.add_parser(
        "predict", help="predict the action in videos with a trained run, a .keras or .onnx model"
    )
    predict.add_argument(
        "model", help="a training run folder (RUN/model.keras), a .keras or an .onnx file"
    )
    predict.add_argument(
        "videos", nargs="+", help="video files, or folders to predict every video in"
    )
    predict.add_argument("--top-k", type=int, default=3, help="classes to show per video")
    predict.add_argument("--batch-size", type=int, default=8, help="clips per model call")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.add_argument(
        "--views",
        type=int,
        default=1,
        help="average the softmax over V views: candidate frames, mirrored too if the run "
        "trained flips (default 1)",
    )
    predict.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="keras, or onnx: ONNX Runtime on an exported .onnx file, without TensorFlow or "
        "Keras (default: onnx for an .onnx file, else keras)",
    )
    predict.set_defaults(run=_run_predict)


def download_config(args):
    from nightact.sources.download import DownloadConfig

    return _config(args, DownloadConfig)


def _run_download(args) -> int:
    from nightact.sources.download import DownloadError, download_dataset

    try:
        result = download_dataset(download_config(args))
    except DownloadError as error:
        print(f"nightact download: error: {error}", file=sys.stderr)
        return 1
    if result.already_present:
        print(f"{result.dataset_root}: already downloaded and extracted; nothing to do")
    print(result.table())
    return 0


def _run_predict(args) -> int:
    import json

    from nightact.serve.predict import format_predictions, predict_videos

    predictions = predict_videos(
        args.model,
        args.videos,
        top_k=args.top_k,
        batch_size=args.batch_size,
        views=args.views,
        engine=args.engine,
    )
    if args.json:
        print(json.dumps([prediction.to_dict() for prediction in predictions], indent=2))
    else:
        print(format_predictions(predictions))
    return 0 if any(prediction.error is None for prediction in predictions) else 1


# --- end download and predict -------------------------------------------------------------------

# --- embed ------------------------------------------------------------------------------------


def _add_embed_command(subparsers) -> None:
    from nightact.data.embed import EmbedConfig
    from nightact.nets.backbones import BACKBONE_NAMES

    embed = subparsers.add_parser(
        "embed",
        help="run a frozen pretrained backbone over every frame of a store once, caching features",
    )
    embed.add_argument("store", help="a prepared clip store (nightact prepare)")
    embed.add_argument(
        "--backbone", required=True, choices=BACKBONE_NAMES, help="the frame encoder"
    )
    _option(
        embed,
        "--weights",
        EmbedConfig,
        "imagenet (downloaded once by Keras), none (random: for tests and timing only), or a "
        "path to a .weights.h5 of the same network",
    )
    embed.add_argument("--out", required=True, help="the embedding store to write or resume")
    _option(embed, "--batch-size", EmbedConfig, "frames per call of the backbone", type=int)
    embed.add_argument(
        "--overwrite", action="store_true", help="replace the embeddings already in OUT"
    )
    embed.set_defaults(run=_run_embed)


def embed_config(args):
    from nightact.data.embed import EmbedConfig

    return _config(args, EmbedConfig)


def _run_embed(args) -> int:
    from nightact.data.embed import embed

    summary = embed(embed_config(args), overwrite=args.overwrite)
    print(summary.table())
    print(f"next: nightact train --data {summary.out} --model gru")
    return 0


# --- end embed ------------------------------------------------------------------------------------


# --- timeline and export ------------------------------------------------------------------------


def _add_timeline_export_commands(subparsers) -> None:
    from nightact.serve.export import FORMATS, ExportConfig
    from nightact.serve.predictor import ENGINES
    from nightact.serve.timeline import TimelineConfig

    timeline = subparsers.add_parser(
        "timeline",
        help="slide a window over a long video, a folder or a live stream: which action when",
    )
    timeline.add_argument("model", help="a training run folder, a .keras or an .onnx file")
    timeline.add_argument(
        "source", help="a video file, a folder of videos, a URL (rtsp://, http://) or /dev/videoN"
    )
    timeline.add_argument("--out", required=True, help="folder for timeline.csv/.json/.png")
    _option(
        timeline,
        "--window",
        TimelineConfig,
        "window length in seconds",
        type=float,
        none="the median training clip, else 2 s",
    )
    _option(
        timeline, "--stride", TimelineConfig, "seconds between windows", type=float, none="half"
    )
    _option(timeline, "--smooth", TimelineConfig, "average over the last N windows", type=int)
    _option(
        timeline,
        "--min-prob",
        TimelineConfig,
        "below this averaged probability a window is 'uncertain'",
        type=float,
    )
    _option(timeline, "--top-k", TimelineConfig, "classes per row of timeline.csv", type=int)
    _option(
        timeline,
        "--annotate",
        TimelineConfig,
        "also write annotated.mp4 with the label drawn on every frame",
        action="store_true",
    )
    _option(
        timeline,
        "--engine",
        TimelineConfig,
        "keras, or onnx (ONNX Runtime, no TensorFlow)",
        choices=ENGINES,
        none="onnx for an .onnx file, else keras",
    )
    _option(timeline, "--batch-size", TimelineConfig, "windows per model call", type=int)
    _option(
        timeline,
        "--live",
        TimelineConfig,
        "treat SOURCE as live (URLs, devices and pipes are live anyway)",
        action="store_true",
    )
    _option(
        timeline,
        "--reconnects",
        TimelineConfig,
        "live: attempts to reopen a stream that stopped, in a row",
        type=int,
    )
    timeline.set_defaults(run=_run_timeline)

    export = subparsers.add_parser(
        "export",
        help="export a run to ONNX, SavedModel or LiteRT, checked against Keras before it is kept",
    )
    export.add_argument("model", help="a training run folder or a .keras file")
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--out", required=True, help="the .onnx/.tflite file or SavedModel folder")
    _option(
        export,
        "--tolerance",
        ExportConfig,
        "largest probability difference from Keras accepted",
        type=float,
    )
    _option(export, "--overwrite", ExportConfig, "replace an existing OUT", action="store_true")
    export.set_defaults(run=_run_export)


def _run_timeline(args) -> int:
    from nightact.core.videos import VideoError
    from nightact.serve.timeline import TimelineConfig, run_timeline

    try:
        results = run_timeline(_config(args, TimelineConfig))
    except VideoError as error:
        print(f"nightact timeline: error: {error}", file=sys.stderr)
        return 1
    for result in results:
        problem = f"; error: {result.error}" if result.error else ""
        print(
            f"{result.out}: {result.windows} windows ({result.skipped} skipped, "
            f"{result.dropped} dropped), {result.media_seconds:.1f} s of video at "
            f"{result.realtime_factor:.1f}x real time; {result.stopped}{problem}"
        )
    return 0 if any(result.windows for result in results) else 1


def _run_export(args) -> int:
    from nightact.core.backend import prefer_backend

    prefer_backend("tensorflow")  # before Keras is imported: its converters do the exports
    from nightact.serve.export import ExportConfig, ExportError, export

    try:
        result = export(_config(args, ExportConfig))
    except ExportError as error:
        print(f"nightact export: error: {error}", file=sys.stderr)
        return 1
    print(
        f"{result.path}: {result.format} export matches Keras within "
        f"{result.max_difference:.1e} on {result.clips} clips (top-1 agreement "
        f"{100 * result.top1_agreement:.0f} %)"
    )
    return 0


# --- end timeline and export --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nightact",
        description="Recognise human actions in night-time video with recurrent networks.",
    )
    parser.add_argument("--version", action="version", version=f"nightact {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Each group of commands registers itself; the order here is the order in `nightact --help`.
    for add_commands in _COMMAND_GROUPS:
        add_commands(subparsers)
    return parser


_COMMAND_GROUPS = [
    _add_data_commands,
    _add_embed_command,
    _add_model_commands,
    _add_training_commands,
    _add_download_predict_commands,
    _add_timeline_export_commands,
]


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter (no CUDA driver, CPU instruction sets) hides our own
    # output; warnings and errors still show. A user's own setting wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from nightact.core.files import DiskFullError, DiskSpaceError
    from nightact.core.locks import FolderLockedError

    try:
        return args.run(args)
    except (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        WeightsUnavailableError,
        FolderLockedError,
        DiskSpaceError,
        DiskFullError,
    ) as error:
        # Errors the user can fix get one clear line, not a traceback.
        print(f"nightact {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nightact {args.command}: interrupted; run it again to resume", file=sys.stderr)
        return 130

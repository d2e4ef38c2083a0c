"""The `nightact` command line: a thin layer that parses flags and calls the Python API.

Every command builds the same config object a notebook would build, and hands it to the function
that does the work. Heavy imports (Keras, the backend) happen inside the command functions, so
`nightact prepare --help` starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from nightact import __version__


def _size(text: str) -> tuple[int, int]:
    """Parse HEIGHTxWIDTH, e.g. 240x320."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        message = f"expected HEIGHTxWIDTH such as 240x320, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"height and width must be positive, got {text!r}")
    return height, width


# --- data commands: synth, prepare, preview ----------------------------------------------------


def _add_data_commands(subparsers) -> None:
    from nightact.dataset import DEFAULT_EXTENSIONS

    synth = subparsers.add_parser(
        "synth", help="write the built-in synthetic night-action videos (real mp4 files)"
    )
    synth.add_argument("out", help="folder to write OUT/<class name>/*.mp4 into")
    synth.add_argument("--videos-per-class", type=int, default=8)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--min-seconds", type=float, default=2.0, help="shortest clip duration (default 2)"
    )
    synth.add_argument(
        "--max-seconds", type=float, default=15.0, help="longest clip duration (default 15)"
    )
    synth.add_argument(
        "--size", type=_size, default=None, help="HEIGHTxWIDTH for every video (default: varied)"
    )
    synth.add_argument("--workers", type=int, default=None, help="processes (default: CPUs)")
    synth.set_defaults(run=_run_synth)

    prepare = subparsers.add_parser(
        "prepare", help="turn SRC/<class>/*.mp4 into a clip store of uint8 arrays on disk"
    )
    prepare.add_argument("src", help="folder with one sub-folder of videos per class")
    prepare.add_argument("out", help="store folder to create or resume")
    prepare.add_argument("--frames", type=int, default=10, help="frames sampled per clip")
    prepare.add_argument(
        "--size", type=_size, default=(240, 320), help="HEIGHTxWIDTH (default 240x320)"
    )
    prepare.add_argument(
        "--split", default="0.7,0.15,0.15", help="train,val,test fractions (default 0.7,0.15,0.15)"
    )
    prepare.add_argument("--seed", type=int, default=31, help="seed of the stratified split")
    prepare.add_argument("--workers", type=int, default=None, help="processes (default: CPUs)")
    prepare.add_argument(
        "--extensions",
        default=",".join(DEFAULT_EXTENSIONS),
        help="comma-separated video file extensions to index",
    )
    prepare.add_argument(
        "--short-clips",
        choices=["repeat-last", "skip"],
        default="repeat-last",
        help="a clip with fewer decodable frames than --frames: repeat its last sampled frame "
        "(default) or skip it; either way it is recorded in the manifest",
    )
    prepare.add_argument(
        "--overwrite", action="store_true", help="discard an existing store in OUT first"
    )
    prepare.set_defaults(run=_run_prepare)

    preview = subparsers.add_parser("preview", help="write a PNG of one prepared clip's frames")
    preview.add_argument("store", help="a prepared store")
    preview.add_argument("--split", default="train")
    preview.add_argument("--index", type=int, default=0, help="row of the clip in that split")
    preview.add_argument("--out", default=None, help="PNG path (default STORE/preview-*.png)")
    preview.set_defaults(run=_run_preview)


def _run_synth(args) -> int:
    from nightact.synthetic import SynthConfig, write_synthetic_dataset

    config = SynthConfig(
        out=args.out,
        videos_per_class=args.videos_per_class,
        seed=args.seed,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
        workers=args.workers,
        size=args.size,
    )
    paths = write_synthetic_dataset(config)
    print(f"wrote {len(paths)} videos under {args.out}")
    return 0


def _run_prepare(args) -> int:
    from nightact.dataset import PrepareConfig, prepare

    config = PrepareConfig(
        src=args.src,
        out=args.out,
        frames=args.frames,
        height=args.size[0],
        width=args.size[1],
        split=tuple(float(part) for part in args.split.split(",")),
        seed=args.seed,
        workers=args.workers,
        extensions=tuple(part.strip() for part in args.extensions.split(",") if part.strip()),
        short_clips=args.short_clips,
    )
    summary = prepare(config, overwrite=args.overwrite)
    print(summary.table())
    return 0 if summary.prepared > 0 else 1


def _run_preview(args) -> int:
    from nightact.dataset import write_preview

    path = write_preview(args.store, split=args.split, index=args.index, out=args.out)
    print(f"wrote {path}")
    return 0


# --- model commands: models, explain (nightact.models, nightact.cells) --------------------------


def _layer_widths(text: str) -> tuple[int, ...]:
    """Parse comma-separated layer widths, e.g. 128,64,32."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 128,64,32, got {text!r}"
        ) from None


def _add_model_commands(subparsers) -> None:
    from nightact.cells import CELL_NAMES

    models = subparsers.add_parser(
        "models", help="build the six models and print their sizes and shapes"
    )
    models.add_argument("--frames", type=int, default=10, help="frames per clip (default 10)")
    models.add_argument(
        "--size", type=_size, default=(240, 320), help="HEIGHTxWIDTH (default 240x320)"
    )
    models.add_argument("--classes", type=int, default=12, help="number of classes (default 12)")
    models.add_argument(
        "--units",
        type=_layer_widths,
        default=(128, 64, 32),
        help="recurrent layer widths (default 128,64,32)",
    )
    models.add_argument(
        "--conv-filters", type=int, default=256, help="filters of the CNN models (default 256)"
    )
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


def _run_models(args) -> int:
    from nightact.models import describe_models, format_model_table

    height, width = args.size
    rows = describe_models(
        frames=args.frames,
        height=height,
        width=width,
        num_classes=args.classes,
        units=args.units,
        conv_filters=args.conv_filters,
    )
    print(format_model_table(rows))
    return 0


def _run_explain(args) -> int:
    from nightact.cells import equations, plot_gates, shape_demo

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
    from nightact.demo import DemoConfig
    from nightact.report import MODEL_ORDER

    train = subparsers.add_parser(
        "train", help="train one model on a prepared store (best checkpoint, history, resume)"
    )
    train.add_argument("--data", default=None, help="a prepared store (nightact prepare)")
    train.add_argument("--model", choices=MODEL_ORDER, default=None)
    train.add_argument(
        "--out", default=None, help="run folder (default runs/MODEL-YYYYmmdd-HHMMSS)"
    )
    train.add_argument(
        "--preset",
        choices=["original"],
        default=None,
        help="start from the original project's settings: 10x240x320 store, batch 64, 50 "
        "epochs, Adam 1e-4, MSLE, mixed_float16 on a GPU; other flags override them",
    )
    train.add_argument("--epochs", type=int, default=None, help="default 30")
    train.add_argument("--batch-size", type=int, default=None, help="default 32")
    train.add_argument("--lr", type=float, default=None, help="Adam learning rate (1e-4)")
    train.add_argument(
        "--loss",
        choices=["crossentropy", "msle"],
        default=None,
        help="crossentropy (default) or msle, the original's",
    )
    train.add_argument(
        "--mixed-precision",
        action="store_true",
        default=None,
        help="mixed_float16 compute (for GPUs)",
    )
    train.add_argument("--seed", type=int, default=None, help="default 0")
    train.add_argument(
        "--early-stopping",
        type=int,
        default=None,
        metavar="N",
        help="stop after N epochs without a better val_accuracy",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out from its last finished epoch",
    )
    train.add_argument(
        "--workers", type=int, default=None, help="threads reading batches ahead (default 1)"
    )
    train.add_argument(
        "--units", default=None, help="recurrent layer widths, e.g. 128,64,32 (the default)"
    )
    train.add_argument("--dropout", type=float, default=None, help="default 0.5")
    train.add_argument("--conv-filters", type=int, default=None, help="CNN models (256)")
    train.add_argument("--conv-kernel", type=int, default=None, help="CNN models (15)")
    train.add_argument("--conv-stride", type=int, default=None, help="CNN models (15)")
    train.add_argument(
        "--unroll", action="store_true", default=None, help="unroll the recurrent layers"
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
        choices=["test", "val", "train"],
        default="test",
        help="test (default); val chose the checkpoint and needs --allow-validation",
    )
    evaluate.add_argument(
        "--allow-validation",
        action="store_true",
        help="accept --split val, whose scores are optimistic",
    )
    evaluate.add_argument("--data", default=None, help="the store, if it moved since training")
    evaluate.add_argument("--batch-size", type=int, default=None, help="default: the run's")
    evaluate.set_defaults(run=_run_evaluate)

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
    demo.add_argument("--out", default="nightact-demo", help="folder (default ./nightact-demo)")
    demo.add_argument("--models", default=None, help="comma-separated models (default: all six)")
    demo.add_argument(
        "--epochs", type=int, default=None, help=f"per model (default {DemoConfig.epochs})"
    )
    demo.add_argument(
        "--videos-per-class",
        type=int,
        default=None,
        help=f"synthetic videos per class (default {DemoConfig.videos_per_class})",
    )
    demo.add_argument("--seed", type=int, default=None, help="default 0")
    demo.add_argument(
        "--workers", type=int, default=None, help="processes for synth and prepare (CPUs)"
    )
    demo.set_defaults(run=_run_demo)


def _run_train(args) -> int:
    import time
    from pathlib import Path

    from nightact.train import TrainConfig, load_run_config, train

    explicit = {
        "data": args.data,
        "model": args.model,
        "out": args.out,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "loss": args.loss,
        "mixed_precision": args.mixed_precision,
        "seed": args.seed,
        "early_stopping": args.early_stopping,
        "workers": args.workers,
        "units": _widths(args.units) if args.units else None,
        "dropout": args.dropout,
        "conv_filters": args.conv_filters,
        "conv_kernel": args.conv_kernel,
        "conv_stride": args.conv_stride,
        "unroll": args.unroll,
        "xla": args.xla,
    }
    explicit = {name: value for name, value in explicit.items() if value is not None}
    if args.resume:
        if not args.out:
            raise ValueError("--resume needs --out, the run folder to continue")
        if (Path(args.out) / "config.json").exists():
            # A resumed run keeps its saved settings; flags given now must agree with them.
            config = TrainConfig(**{**load_run_config(args.out), **explicit, "resume": True})
        else:
            config = None
    else:
        config = None
    if config is None:
        if "data" not in explicit or "model" not in explicit:
            raise ValueError("--data and --model are required (except to --resume a run)")
        explicit.setdefault("out", f"runs/{explicit['model']}-{time.strftime('%Y%m%d-%H%M%S')}")
        explicit["resume"] = args.resume
        if args.preset:
            config = TrainConfig.from_preset(args.preset, **explicit)
        else:
            config = TrainConfig(**explicit)
    result = train(config, verbose=2 if args.quiet else 1)
    print(
        f"{result.model}: best val_accuracy {result.best_val_accuracy:.3f} at epoch "
        f"{result.best_epoch} of {result.epochs_completed}; run in {result.run}"
    )
    print(f"next: nightact evaluate {result.run}")
    return 0


def _run_evaluate(args) -> int:
    from nightact.evaluate import evaluate, format_metrics

    metrics = evaluate(
        args.run_folder,
        split=args.split,
        data=args.data,
        batch_size=args.batch_size,
        allow_validation=args.allow_validation,
    )
    print(format_metrics(metrics))
    print(f"wrote {metrics['output']}")
    return 0


def _run_compare(args) -> int:
    from nightact.report import compare, find_runs

    runs = find_runs(args.runs)
    unevaluated = [run for run in runs if not (run / "evaluation" / "metrics.json").exists()]
    if unevaluated:
        from nightact.evaluate import evaluate

        for run in unevaluated:
            print(f"evaluating {run} on its test split first")
            evaluate(run)
    report = compare(runs, args.out)
    print(f"wrote {report} (open it in a browser) and {report.with_suffix('.md')}")
    return 0


def _run_demo(args) -> int:
    from nightact.demo import DemoConfig, format_demo_result, run_demo

    settings = {
        "out": args.out,
        "models": tuple(name.strip() for name in args.models.split(",")) if args.models else None,
        "epochs": args.epochs,
        "videos_per_class": args.videos_per_class,
        "seed": args.seed,
        "workers": args.workers,
    }
    config = DemoConfig(**{name: value for name, value in settings.items() if value is not None})
    result = run_demo(config)
    print(format_demo_result(result))
    return 0


def _widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(
            f"--units expects comma-separated integers such as 128,64,32, got {text!r}"
        ) from None


# --- end training commands ----------------------------------------------------------------------

# --- download and predict -----------------------------------------------------------------------


def _add_download_predict_commands(subparsers) -> None:
    download = subparsers.add_parser(
        "download",
        help="download and safely extract the NoctAct-HAR videos (Kaggle or a mirror URL)",
    )
    download.add_argument("--dest", default="data", help="folder to download into (default data)")
    download.add_argument(
        "--url",
        default=None,
        help="download from this URL (a mirror) instead of Kaggle; without it Kaggle's client is "
        "used when Kaggle credentials are configured, else Kaggle's public download URL",
    )
    download.add_argument("--sha256", default=None, help="expected SHA-256 of the zip")
    download.add_argument(
        "--keep-archive", action="store_true", help="keep the zip after extracting it"
    )
    download.add_argument("--retries", type=int, default=3, help="resumes after a lost connection")
    download.set_defaults(run=_run_download)

    predict = subparsers.add_parser(
        "predict", help="predict the action in videos with a trained run or a .keras model"
    )
    predict.add_argument("model", help="a training run folder (RUN/model.keras) or a .keras file")
    predict.add_argument(
        "videos", nargs="+", help="video files, or folders to predict every video in"
    )
    predict.add_argument("--top-k", type=int, default=3, help="classes to show per video")
    predict.add_argument("--batch-size", type=int, default=8, help="clips per model call")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.set_defaults(run=_run_predict)


def _run_download(args) -> int:
    from nightact.download import DownloadConfig, DownloadError, download_dataset

    config = DownloadConfig(
        dest=args.dest,
        url=args.url,
        sha256=args.sha256,
        keep_archive=args.keep_archive,
        retries=args.retries,
    )
    try:
        result = download_dataset(config)
    except DownloadError as error:
        print(f"nightact download: error: {error}", file=sys.stderr)
        return 1
    if result.already_present:
        print(f"{result.dataset_root}: already downloaded and extracted; nothing to do")
    print(result.table())
    return 0


def _run_predict(args) -> int:
    import json

    from nightact.inference import format_predictions, predict_videos

    predictions = predict_videos(
        args.model, args.videos, top_k=args.top_k, batch_size=args.batch_size
    )
    if args.json:
        print(json.dumps([prediction.to_dict() for prediction in predictions], indent=2))
    else:
        print(format_predictions(predictions))
    return 0 if any(prediction.error is None for prediction in predictions) else 1


# --- end download and predict -------------------------------------------------------------------


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
    _add_model_commands,
    _add_training_commands,
    _add_download_predict_commands,
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
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as error:
        # Errors the user can fix get one clear line, not a traceback.
        print(f"nightact {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nightact {args.command}: interrupted; run it again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

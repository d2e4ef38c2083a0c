"""``nightact predict``, ``timeline`` and ``export``: using a trained model (:mod:`nightact.serve`).

The modules imported here load Keras (or ONNX Runtime) only inside the functions that load a
model; ``export`` picks its backend before that happens.
"""

from __future__ import annotations

import json
import sys

from nightact.cli.options import build_config, option
from nightact.core.backend import prefer_backend
from nightact.core.videos import VideoError
from nightact.serve.export import FORMATS, ExportConfig, ExportError, export
from nightact.serve.predict import PredictConfig, format_predictions, run_predict
from nightact.serve.predictor import ENGINES
from nightact.serve.timeline import TimelineConfig, run_timeline

__all__ = [
    "add_export_parser",
    "add_predict_parser",
    "add_timeline_parser",
    "export_config",
    "predict_config",
    "timeline_config",
]


def add_predict_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="predict the action in videos with a trained run, a .keras or .onnx model"
    )
    parser.add_argument(
        "model", help="a training run folder (RUN/model.keras), a .keras or an .onnx file"
    )
    parser.add_argument(
        "videos", nargs="+", help="video files, or folders to predict every video in"
    )
    option(parser, "--top-k", PredictConfig, "classes to show per video", type=int)
    option(parser, "--batch-size", PredictConfig, "clips per model call", type=int)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    option(
        parser,
        "--views",
        PredictConfig,
        "average the softmax over V views: candidate frames, mirrored too if the run trained flips",
        type=int,
    )
    option(
        parser,
        "--engine",
        PredictConfig,
        "keras, or onnx: ONNX Runtime on an exported .onnx file, without TensorFlow or Keras",
        choices=ENGINES,
        none="onnx for an .onnx file, else keras",
    )
    parser.set_defaults(handler=_predict_command)


def predict_config(args) -> PredictConfig:
    return build_config(args, PredictConfig)


def _predict_command(args) -> int:
    predictions = run_predict(predict_config(args))
    if args.json:
        print(json.dumps([prediction.to_dict() for prediction in predictions], indent=2))
    else:
        print(format_predictions(predictions))
    return 0 if any(prediction.error is None for prediction in predictions) else 1


def add_timeline_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "timeline",
        help="slide a window over a long video, a folder or a live stream: which action when",
    )
    parser.add_argument("model", help="a training run folder, a .keras or an .onnx file")
    parser.add_argument(
        "source", help="a video file, a folder of videos, a URL (rtsp://, http://) or /dev/videoN"
    )
    parser.add_argument("--out", required=True, help="folder for timeline.csv/.json/.png")
    option(
        parser,
        "--window",
        TimelineConfig,
        "window length in seconds",
        type=float,
        none="the median training clip, else 2 s",
    )
    option(parser, "--stride", TimelineConfig, "seconds between windows", type=float, none="half")
    option(parser, "--smooth", TimelineConfig, "average over the last N windows", type=int)
    option(
        parser,
        "--min-prob",
        TimelineConfig,
        "below this averaged probability a window is 'uncertain'",
        type=float,
    )
    option(parser, "--top-k", TimelineConfig, "classes per row of timeline.csv", type=int)
    option(
        parser,
        "--annotate",
        TimelineConfig,
        "also write annotated.mp4 with the label drawn on every frame",
        action="store_true",
    )
    option(
        parser,
        "--engine",
        TimelineConfig,
        "keras, or onnx (ONNX Runtime, no TensorFlow)",
        choices=ENGINES,
        none="onnx for an .onnx file, else keras",
    )
    option(parser, "--batch-size", TimelineConfig, "windows per model call", type=int)
    option(
        parser,
        "--live",
        TimelineConfig,
        "treat SOURCE as live (URLs, devices and pipes are live anyway)",
        action="store_true",
    )
    option(
        parser,
        "--reconnects",
        TimelineConfig,
        "live: attempts to reopen a stream that stopped, in a row",
        type=int,
    )
    parser.set_defaults(handler=_timeline_command)


def timeline_config(args) -> TimelineConfig:
    return build_config(args, TimelineConfig)


def _timeline_command(args) -> int:
    try:
        results = run_timeline(timeline_config(args))
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


def add_export_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a run to ONNX, SavedModel or LiteRT, checked against Keras before it is kept",
    )
    parser.add_argument("model", help="a training run folder or a .keras file")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="the .onnx/.tflite file or SavedModel folder")
    option(
        parser,
        "--tolerance",
        ExportConfig,
        "largest probability difference from Keras accepted",
        type=float,
    )
    option(parser, "--overwrite", ExportConfig, "replace an existing OUT", action="store_true")
    parser.set_defaults(handler=_export_command)


def export_config(args) -> ExportConfig:
    return build_config(args, ExportConfig)


def _export_command(args) -> int:
    # Before Keras is imported (inside export): TensorFlow's converters do the exports.
    prefer_backend("tensorflow")
    try:
        result = export(export_config(args))
    except ExportError as error:
        print(f"nightact export: error: {error}", file=sys.stderr)
        return 1
    print(
        f"{result.path}: {result.format} export matches Keras within "
        f"{result.max_difference:.1e} on {result.clips} clips (top-1 agreement "
        f"{100 * result.top1_agreement:.0f} %)"
    )
    return 0

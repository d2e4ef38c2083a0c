"""``nightact synth`` and ``download``: where the videos come from (:mod:`nightact.sources`)."""

from __future__ import annotations

import sys

from nightact.cli.options import build_config, height_by_width, option
from nightact.sources.download import DownloadConfig, DownloadError, download_dataset
from nightact.sources.synthetic import SynthConfig, write_synthetic_dataset

__all__ = ["add_download_parser", "add_synth_parser", "download_config", "synth_config"]


def add_synth_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth", help="write the built-in synthetic night-action videos (real mp4 files)"
    )
    parser.add_argument("out", help="folder to write OUT/<class name>/*.mp4 into")
    option(parser, "--videos-per-class", SynthConfig, "videos per class", type=int)
    option(parser, "--seed", SynthConfig, "seed of every random choice", type=int)
    option(parser, "--min-seconds", SynthConfig, "shortest clip duration", type=float)
    option(parser, "--max-seconds", SynthConfig, "longest clip duration", type=float)
    option(
        parser,
        "--size",
        SynthConfig,
        "HEIGHTxWIDTH for every video",
        type=height_by_width,
        none="varied",
    )
    option(parser, "--workers", SynthConfig, "processes", type=int, none="CPUs")
    parser.set_defaults(handler=_synth_command)


def synth_config(args) -> SynthConfig:
    return build_config(args, SynthConfig)


def _synth_command(args) -> int:
    paths = write_synthetic_dataset(synth_config(args))
    print(f"wrote {len(paths)} videos under {args.out}")
    return 0


def add_download_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download and safely extract the NoctAct-HAR videos (Kaggle or a mirror URL)",
    )
    option(parser, "--dest", DownloadConfig, "folder to download into")
    parser.add_argument(
        "--url",
        default=None,
        help="download from this URL (a mirror) instead of Kaggle; without it Kaggle's client is "
        "used when Kaggle credentials are configured, else Kaggle's public download URL",
    )
    parser.add_argument("--sha256", default=None, help="expected SHA-256 of the zip")
    parser.add_argument(
        "--keep-archive", action="store_true", default=None, help="keep the zip after extracting it"
    )
    option(parser, "--retries", DownloadConfig, "resumes after a lost connection", type=int)
    parser.set_defaults(handler=_download_command)


def download_config(args) -> DownloadConfig:
    return build_config(args, DownloadConfig)


def _download_command(args) -> int:
    try:
        result = download_dataset(download_config(args))
    except DownloadError as error:
        print(f"nightact download: error: {error}", file=sys.stderr)
        return 1
    if result.already_present:
        print(f"{result.dataset_root}: already downloaded and extracted; nothing to do")
    print(result.table())
    return 0

"""The `nightact` command line: a thin layer that parses flags and calls the Python API.

Every command builds the same config object a notebook would build, and hands it to the function
that does the work. Heavy imports (Keras, the backend) happen inside the command functions, so
`nightact prepare --help` starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import logging
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
# --- end model commands -------------------------------------------------------------------------

# --- training commands: train, evaluate, compare, demo ------------------------------------------
# --- end training commands ----------------------------------------------------------------------

# --- download and predict -----------------------------------------------------------------------
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


_COMMAND_GROUPS = [_add_data_commands]


def main(argv: list[str] | None = None) -> int:
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

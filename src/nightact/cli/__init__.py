"""The `nightact` command line: a thin layer that parses flags and calls the Python API.

Every command builds the same config object a notebook would build, and hands it to the function
that does the work. One module per stage of the pipeline holds its commands, each as
``add_<command>_parser`` (the flags), ``<command>_config`` (the config the flags ask for) and the
function that runs it::

    options.py   the flag helpers the command modules share
    sources.py   synth, download
    data.py      prepare, leakage, preview, embed
    nets.py      models, explain
    training.py  train, demo, study
    scoring.py   evaluate, robustness, compare
    serve.py     predict, timeline, export
    doctor.py    doctor (the backend, versions and devices)

Keras and the backend are imported only when a command needs them, so `nightact prepare --help`
starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import logging
import sys

from nightact import __version__
from nightact.cli import data, doctor, nets, scoring, serve, sources, training
from nightact.cli.data import embed_config, leakage_config, prepare_config
from nightact.cli.nets import models_settings
from nightact.cli.scoring import compare_config, evaluate_config, robustness_config
from nightact.cli.serve import export_config, predict_config, timeline_config
from nightact.cli.sources import download_config, synth_config
from nightact.cli.training import demo_config, study_config, train_config
from nightact.core.cluster import ClusterUnreachable
from nightact.core.extras import MissingPackageError
from nightact.core.files import DiskFullError, DiskSpaceError
from nightact.core.locks import FolderLockedError
from nightact.core.quiet import quiet_backends
from nightact.nets.backbones import WeightsUnavailableError

__all__ = [
    "build_parser",
    "compare_config",
    "demo_config",
    "download_config",
    "embed_config",
    "evaluate_config",
    "export_config",
    "leakage_config",
    "main",
    "models_settings",
    "predict_config",
    "prepare_config",
    "robustness_config",
    "study_config",
    "synth_config",
    "timeline_config",
    "train_config",
]

# One function per command adds its parser; this order is the order in `nightact --help`.
COMMANDS = (
    sources.add_synth_parser,
    data.add_prepare_parser,
    data.add_leakage_parser,
    data.add_preview_parser,
    data.add_embed_parser,
    nets.add_models_parser,
    nets.add_explain_parser,
    training.add_train_parser,
    scoring.add_evaluate_parser,
    scoring.add_robustness_parser,
    scoring.add_compare_parser,
    training.add_demo_parser,
    training.add_study_parser,
    sources.add_download_parser,
    serve.add_predict_parser,
    serve.add_timeline_parser,
    serve.add_export_parser,
    doctor.add_doctor_parser,
)

# Errors the user can fix: one clear line and exit status 2, not a traceback.
USER_ERRORS = (
    ValueError,
    ClusterUnreachable,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    WeightsUnavailableError,
    FolderLockedError,
    DiskSpaceError,
    DiskFullError,
    MissingPackageError,
)


VERBOSE_HELP = "log debug messages, and show the backends' start-up lines"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nightact",
        description="Recognise human actions in night-time video with recurrent networks.",
    )
    parser.add_argument("--version", action="version", version=f"nightact {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in COMMANDS:
        add_parser(subparsers)
    # Also after the command (`nightact models -v`), where users type it; SUPPRESS keeps the
    # value given before the command when it is not repeated after it.
    for command in subparsers.choices.values():
        command.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
        )
    return parser


# What a command interrupted by Ctrl-C keeps, and how to go on; the others write nothing until
# they are done (atomic writes), so running them again is all there is.
_RESUME_HINTS = {
    "train": "; run it again with --resume to go on from its last finished epoch",
    **{
        command: "; run the same command again to go on where it stopped"
        for command in ("synth", "download", "prepare", "embed", "study", "demo")
    },
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before any command imports Keras: the backends' start-up lines hide our own output
    # (nightact.core.quiet says which, and how); --verbose shows them. A user's settings win.
    quiet_backends(verbose=args.verbose)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except USER_ERRORS as error:
        print(f"nightact {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nightact {args.command}: interrupted{_RESUME_HINTS.get(args.command, '')}",
              file=sys.stderr)  # fmt: skip
        return 130

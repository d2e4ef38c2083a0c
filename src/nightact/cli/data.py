"""``nightact prepare``, ``leakage``, ``preview``, ``embed``: the clip store (:mod:`nightact.data`).

These commands start without Keras (tests/test_dataset.py checks it): the modules imported here
import it only inside the functions that build a network.
"""

from __future__ import annotations

from nightact.cli.options import (
    build_config,
    fractions,
    option,
    ray_option,
    size_option,
    sized_config,
    words,
)
from nightact.core.store import SHORT_CLIP_POLICIES, SPLIT_NAMES
from nightact.data.embed import EmbedConfig, embed
from nightact.data.leakage import LeakageConfig, check_store, write_report
from nightact.data.prepare import PrepareConfig, prepare, write_preview
from nightact.nets.backbones import BACKBONE_NAMES

__all__ = [
    "add_embed_parser",
    "add_leakage_parser",
    "add_prepare_parser",
    "add_preview_parser",
    "embed_config",
    "leakage_config",
    "prepare_config",
]


def add_prepare_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare", help="turn SRC/<class>/*.mp4 into a clip store of uint8 arrays on disk"
    )
    parser.add_argument("src", help="folder with one sub-folder of videos per class")
    parser.add_argument("out", help="store folder to create or resume")
    option(parser, "--frames", PrepareConfig, "frames sampled per clip", type=int)
    size_option(parser, PrepareConfig)
    option(parser, "--split", PrepareConfig, "train,val,test fractions", type=fractions)
    option(parser, "--seed", PrepareConfig, "seed of the stratified split", type=int)
    option(
        parser,
        "--workers",
        PrepareConfig,
        "processes (with --ray and no ADDRESS: the new cluster's CPUs)",
        type=int,
        none="CPUs",
    )
    ray_option(parser, "decode the videos")
    option(
        parser,
        "--frames-per-segment",
        PrepareConfig,
        "candidate frames stored per segment, for training with --augment; memory and disk "
        "grow K times",
        type=int,
        metavar="K",
    )
    option(
        parser,
        "--extensions",
        PrepareConfig,
        "comma-separated video file extensions to index",
        type=words,
    )
    option(
        parser,
        "--short-clips",
        PrepareConfig,
        "a clip with fewer decodable frames than --frames, or a truncated file (fewer frames "
        "decode than its index promises): keep it (repeating its last frame where it is short) "
        "or skip it; either way it is recorded in the manifest",
        choices=SHORT_CLIP_POLICIES,
    )
    option(
        parser,
        "--group-by",
        PrepareConfig,
        "what must share a split: none, near-duplicates (copies of one recording, found from "
        "the pixels; a pre-pass decodes every video once more at 60x80) or a REGEX whose first "
        r"capture group on the path names the group (UCF101: 'v_(.*_g\d+)_c\d+')",
        metavar="{none,near-duplicates,REGEX}",
    )
    parser.add_argument(
        "--no-leakage-check",
        dest="check_leakage",
        action="store_false",
        default=None,
        help="skip the search for near-duplicates across splits at the end",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="discard an existing store in OUT first"
    )
    parser.set_defaults(handler=_prepare_command)


def prepare_config(args) -> PrepareConfig:
    return sized_config(args, PrepareConfig)


def _prepare_command(args) -> int:
    summary = prepare(prepare_config(args), overwrite=args.overwrite)
    print(summary.table())
    return 0 if summary.prepared > 0 else 1


def add_leakage_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "leakage",
        help="find near-duplicate clips (copies of one recording) across a store's splits",
    )
    parser.add_argument("store", help="a prepared store; writes STORE/leakage.csv")
    option(
        parser,
        "--within",
        LeakageConfig,
        "also list pairs inside one split in leakage.csv",
        action="store_true",
    )
    option(
        parser,
        "--threshold",
        LeakageConfig,
        "similarity from which two clips count as copies",
        type=float,
    )
    parser.add_argument(
        "--fail-on-leak",
        action="store_true",
        help="exit with status 1 when any pair lies across splits (for CI)",
    )
    parser.set_defaults(handler=_leakage_command)


def leakage_config(args) -> LeakageConfig:
    return build_config(args, LeakageConfig, store=args.store)


def _leakage_command(args) -> int:
    report = check_store(leakage_config(args))
    path = write_report(report)
    print(report.table())
    print(f"\nwrote {path}")
    return 1 if args.fail_on_leak and report.cross_pairs else 0


def add_preview_parser(subparsers) -> None:
    parser = subparsers.add_parser("preview", help="write a PNG of one prepared clip's frames")
    parser.add_argument("store", help="a prepared store")
    parser.add_argument("--split", choices=SPLIT_NAMES, default="train")
    parser.add_argument("--index", type=int, default=0, help="row of the clip in that split")
    parser.add_argument("--out", default=None, help="PNG path (default STORE/preview-*.png)")
    parser.set_defaults(handler=_preview_command)


def _preview_command(args) -> int:
    path = write_preview(args.store, split=args.split, index=args.index, out=args.out)
    print(f"wrote {path}")
    return 0


def add_embed_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="run a frozen pretrained backbone over every frame of a store once, caching features",
    )
    parser.add_argument("store", help="a prepared clip store (nightact prepare)")
    parser.add_argument(
        "--backbone", required=True, choices=BACKBONE_NAMES, help="the frame encoder"
    )
    option(
        parser,
        "--weights",
        EmbedConfig,
        "imagenet (downloaded once by Keras), none (random: for tests and timing only), or a "
        "path to a .weights.h5 of the same network",
    )
    parser.add_argument("--out", required=True, help="the embedding store to write or resume")
    option(parser, "--batch-size", EmbedConfig, "frames per call of the backbone", type=int)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the embeddings already in OUT"
    )
    parser.set_defaults(handler=_embed_command)


def embed_config(args) -> EmbedConfig:
    return build_config(args, EmbedConfig)


def _embed_command(args) -> int:
    summary = embed(embed_config(args), overwrite=args.overwrite)
    print(summary.table())
    print(f"next: nightact train --data {summary.out} --model gru")
    return 0

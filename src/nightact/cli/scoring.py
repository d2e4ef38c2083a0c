"""``nightact evaluate``, ``robustness`` and ``compare``: scoring runs (:mod:`nightact.scoring`).

The modules imported here load Keras only inside the functions that load a checkpoint.
"""

from __future__ import annotations

from nightact.cli.options import build_config, option
from nightact.core.store import SPLIT_NAMES
from nightact.scoring.compare import CompareConfig, run_compare
from nightact.scoring.evaluate import EvaluateConfig, format_metrics, run_evaluate
from nightact.scoring.robustness import RobustnessConfig, format_sweep, run_robustness

__all__ = [
    "add_compare_parser",
    "add_evaluate_parser",
    "add_robustness_parser",
    "compare_config",
    "evaluate_config",
    "robustness_config",
]


def add_evaluate_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score a run's best checkpoint on the held-out test split"
    )
    parser.add_argument("run", metavar="RUN", help="a training run folder")
    option(
        parser,
        "--split",
        EvaluateConfig,
        "the split to score; val chose the checkpoint and needs --allow-validation",
        choices=SPLIT_NAMES,
    )
    option(
        parser,
        "--allow-validation",
        EvaluateConfig,
        "accept --split val, whose scores are optimistic",
        action="store_true",
    )
    option(
        parser,
        "--data",
        EvaluateConfig,
        "the test split of another store with the same class names (another camera); "
        "results go to RUN/evaluation-STORENAME/",
        none="the run's store",
    )
    option(
        parser,
        "--batch-size",
        EvaluateConfig,
        "clips per forward pass",
        type=int,
        none="the run's",
    )
    option(
        parser,
        "--views",
        EvaluateConfig,
        "average the softmax over V views: candidate frames of the store, mirrored too "
        "if the run trained flips",
        type=int,
    )
    parser.set_defaults(handler=_evaluate_command)


def evaluate_config(args) -> EvaluateConfig:
    return build_config(args, EvaluateConfig)


def _evaluate_command(args) -> int:
    metrics = run_evaluate(evaluate_config(args))
    print(format_metrics(metrics))
    print(f"wrote {metrics['output']}")
    return 0


def add_robustness_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "robustness", help="test accuracy as the clips get darker and noisier (PNG + CSV)"
    )
    parser.add_argument("run", metavar="RUN", help="a training run folder")
    option(
        parser,
        "--data",
        RobustnessConfig,
        "another store with the same class names",
        none="the run's",
    )
    option(
        parser,
        "--batch-size",
        RobustnessConfig,
        "clips per forward pass",
        type=int,
        none="the run's",
    )
    parser.set_defaults(handler=_robustness_command)


def robustness_config(args) -> RobustnessConfig:
    return build_config(args, RobustnessConfig)


def _robustness_command(args) -> int:
    result = run_robustness(robustness_config(args))
    print(format_sweep(result["rows"]))
    print(f"wrote {result['output']}")
    return 0


def add_compare_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare runs: curves, confusion matrices, table (HTML + Markdown)"
    )
    parser.add_argument(
        "runs",
        nargs="+",
        help="run folders, or folders holding runs; unevaluated runs are "
        "evaluated on their test split first",
    )
    option(parser, "--out", CompareConfig, "report folder")
    parser.set_defaults(handler=_compare_command)


def compare_config(args) -> CompareConfig:
    # The command evaluates what is missing; the Python API refuses unless asked.
    return build_config(args, CompareConfig, evaluate_missing=True)


def _compare_command(args) -> int:
    report = run_compare(compare_config(args))
    print(f"wrote {report} (open it in a browser) and {report.with_suffix('.md')}")
    return 0

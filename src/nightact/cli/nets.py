"""``nightact models`` and ``nightact explain``: the networks (:mod:`nightact.nets`)."""

from __future__ import annotations

from nightact.cli.options import field_default, layer_widths, option, size_option
from nightact.core.names import NUM_CLASSES
from nightact.data.prepare import PrepareConfig
from nightact.nets.explain import CELL_NAMES, equations, plot_gates, shape_demo
from nightact.training.train import TrainConfig

__all__ = ["add_explain_parser", "add_models_parser", "models_settings"]


def add_models_parser(subparsers) -> None:
    # The models as `train` would build them on a store that `prepare` made with its defaults.
    parser = subparsers.add_parser(
        "models", help="build the six models and print their sizes and shapes"
    )
    option(parser, "--frames", PrepareConfig, "frames per clip", type=int)
    size_option(parser, PrepareConfig)
    parser.add_argument(
        "--classes",
        type=int,
        default=NUM_CLASSES,
        help=f"number of classes (default {NUM_CLASSES})",
    )
    option(parser, "--units", TrainConfig, "recurrent layer widths", type=layer_widths)
    option(parser, "--conv-filters", TrainConfig, "filters of the CNN models", type=int)
    parser.set_defaults(handler=_models_command)


def models_settings(args) -> dict:
    """The keyword arguments of `nightact.nets.models.describe_models` the flags ask for."""

    def given(config_class, name: str):
        value = getattr(args, name, None)
        return field_default(config_class, name) if value is None else value

    height, width = args.size or (given(PrepareConfig, "height"), given(PrepareConfig, "width"))
    return dict(
        frames=given(PrepareConfig, "frames"),
        height=height,
        width=width,
        num_classes=args.classes,
        units=given(TrainConfig, "units"),
        conv_filters=given(TrainConfig, "conv_filters"),
    )


def _models_command(args) -> int:
    # Imported here: nightact.nets.models imports Keras, which the other commands must not wait for.
    from nightact.nets.models import describe_models, format_model_table

    print(format_model_table(describe_models(**models_settings(args))))
    return 0


def add_explain_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="show a recurrent cell's shapes and equations, checked against Keras in NumPy",
    )
    parser.add_argument("cell", choices=CELL_NAMES)
    parser.add_argument(
        "--plot", default=None, metavar="FILE", help="write heatmaps of every gate over time (PNG)"
    )
    parser.add_argument("--batch", type=int, default=16, help="sequences (default 16)")
    parser.add_argument("--steps", type=int, default=5, help="time steps (default 5)")
    parser.add_argument("--features", type=int, default=3, help="input features (default 3)")
    parser.add_argument("--units", type=int, default=4, help="hidden units (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    parser.add_argument(
        "--reset-before",
        action="store_true",
        help="GRU only: apply the reset gate before the recurrent matmul (reset_after=False)",
    )
    parser.set_defaults(handler=_explain_command)


def _explain_command(args) -> int:
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

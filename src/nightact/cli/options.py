"""The flag helpers every command module shares: value parsers, config-field flags, config builders.

Every flag that sets a config field defaults to None, meaning "not given": the config's own
dataclass default then applies, and the help text shows that default, read from the dataclass
(:func:`option`). :func:`build_config` builds the config from the flags that were given.
"""

from __future__ import annotations

import argparse
import dataclasses

from nightact.core.cluster import LOCAL

__all__ = [
    "build_config",
    "comma_separated",
    "field_default",
    "fractions",
    "height_by_width",
    "layer_widths",
    "numbers",
    "option",
    "ray_option",
    "size_option",
    "sized_config",
    "words",
]


def height_by_width(text: str) -> tuple[int, int]:
    """Parse HEIGHTxWIDTH, e.g. 240x320."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        message = f"expected HEIGHTxWIDTH such as 240x320, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"height and width must be positive, got {text!r}")
    return height, width


def comma_separated(kind, what: str, example: str):
    """A flag parser for comma-separated numbers of type ``kind``, e.g. 128,64,32."""

    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what} such as {example}, got {text!r}"
            ) from None

    return parse


layer_widths = comma_separated(int, "integers", "128,64,32")
fractions = comma_separated(float, "fractions", "0.7,0.15,0.15")
numbers = comma_separated(int, "integers", "0,1,2")


def words(text: str) -> tuple[str, ...]:
    """Parse a comma-separated list of names, dropping blanks."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def field_default(config_class, name: str):
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


def option(parser, flag: str, config_class, help: str, field: str | None = None, **kwargs):
    """A flag for one config field, defaulting to None, its help ending in the config's default.

    ``none`` words what a default of None means (e.g. "CPUs").
    """
    field = field or flag.lstrip("-").replace("-", "_")
    default = field_default(config_class, field)
    none = kwargs.pop("none", None)
    shown = none if default is None and none else _shown(default)
    if kwargs.get("action") != "store_true":  # a switch is off unless given
        help = f"{help} (default {shown})"
    parser.add_argument(flag, dest=field, default=None, help=help, **kwargs)


def ray_option(parser, what: str) -> None:
    """--ray [ADDRESS]: ``what`` on a Ray cluster (nightact.core.cluster); sets field ``ray``."""
    parser.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL,
        default=None,
        metavar="ADDRESS",
        help=f"{what} on a Ray cluster: without ADDRESS a new one on this machine, 'auto' the "
        "one `ray start` joined this machine to, or HOST:PORT of its head (needs "
        "nightact[ray]; docs/scaling.md)",
    )


def size_option(parser, config_class) -> None:
    """--size HEIGHTxWIDTH for a config with ``height`` and ``width`` fields."""
    default = f"{field_default(config_class, 'height')}x{field_default(config_class, 'width')}"
    parser.add_argument(
        "--size", type=height_by_width, default=None, help=f"HEIGHTxWIDTH (default {default})"
    )


def build_config(args, config_class, **settings):
    """``config_class`` built from the flags that were given (and ``settings`` not None)."""
    given = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(config_class)
        if getattr(args, field.name, None) is not None
    }
    given.update({name: value for name, value in settings.items() if value is not None})
    return config_class(**given)


def sized_config(args, config_class, **settings):
    """:func:`build_config` for a config with ``height`` and ``width``, set by ``--size``."""
    height, width = args.size or (None, None)
    return build_config(args, config_class, height=height, width=width, **settings)

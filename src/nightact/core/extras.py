"""Optional packages: imported where a feature needs them, refused in one line naming the extra.

nightact's core install runs every command but four paths, which need packages from the extras
in ``pyproject.toml``::

    predict / timeline --engine onnx   onnxruntime                 nightact[onnx]
    export --format onnx               tf2onnx, onnx, onnxruntime  nightact[export]
    timeline --annotate                Pillow                      (matplotlib's own dependency)
    study / prepare --ray              ray                         nightact[ray]

``make demo`` installs the ``export`` extra, which holds the first three. Where one is missing,
:func:`require` raises :class:`MissingPackageError`, an ``ImportError`` whose message is one line
that says what to install; the command line prints it with exit status 2, never a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingPackageError", "install_hint", "require"]


class MissingPackageError(ImportError):
    """An optional package a feature needs is not installed (or does not import)."""


def install_hint(extra: str | None = None, package: str | None = None) -> str:
    """The command that installs ``extra`` of nightact, or else the PyPI ``package``."""
    if extra:
        return f"pip install 'nightact[{extra}]' (from a clone: pip install -e '.[{extra}]')"
    return f"pip install {package}"


def require(
    module: str, purpose: str, extra: str | None = None, package: str | None = None
) -> ModuleType:
    """Import ``module`` for ``purpose``, or raise :class:`MissingPackageError` saying what to do.

    Args:
        module: the module to import, e.g. ``onnxruntime``.
        purpose: what needs it, as the start of a sentence: "the ONNX engine".
        extra: the nightact extra that installs it; else ``package`` (default ``module``) is
            named as the PyPI package to install.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = getattr(error, "name", None) or module
        if not isinstance(error, ModuleNotFoundError):
            problem = f"{module}, which does not import ({error})"
        elif missing.split(".")[0] == module.split(".")[0]:
            problem = f"{module}, which is not installed"
        else:
            problem = f"{module}, whose dependency {missing} is not installed"
        hint = install_hint(extra, package or module)
        raise MissingPackageError(f"{purpose} needs {problem}: {hint}", name=module) from error

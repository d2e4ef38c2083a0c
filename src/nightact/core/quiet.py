"""Keep the deep-learning backends' start-up chatter off the terminal, unless asked for.

The ``nightact`` command calls :func:`quiet_backends` before anything imports Keras. Without it,
every Keras command opens with lines such as::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1796403795.104826  913 port.cc:153] oneDNN custom operations are on. ...
    I0000 00:00:1796403795.105606  913 cudart_stub.cc:31] Could not find cuda drivers ...
    E0000 00:00:1796403798.535838  913 cuda_platform.cc:52] failed call to cuInit: ... (303)
    INFO jax._src.xla_bridge: Unable to initialize backend 'tpu': ...

Each is silenced where it starts, and only where the user has not chosen otherwise:

* TensorFlow's C++ log level, ``TF_CPP_MIN_LOG_LEVEL``, defaults to 2 (warnings and errors
  hidden, as before this module), unless set.
* TensorFlow writes some lines before its log level is read (Abseil's "before InitializeLog"
  lines): those are written to file descriptor 2 by C++, so the import of ``tensorflow`` alone
  runs with descriptor 2 sent to a temporary file, and what it caught is then written to the real
  stderr less the lines below ``TF_CPP_MIN_LOG_LEVEL`` (so a real error still shows; an import
  that fails shows everything it wrote).
* Where the machine has no NVIDIA GPU (:func:`nightact.core.backend.nvidia_gpu_present`),
  TensorFlow's CUDA probe fails with an ERROR line that means only "no GPU here": the probe is
  run inside the same import and its ``failed call to cuInit`` line dropped. On a machine with a
  GPU that line is a real fault (a driver mismatch), so it shows there.
* JAX's and Abseil's Python loggers, which inherit the command's INFO level, are set to WARNING
  unless a level was given to them.

``nightact --verbose`` (``verbose=True``) changes none of this: every line shows. The library
itself configures nothing (a notebook's logging is its owner's); this is for the command line.
Keras-free: it never imports a backend, it only watches one being imported.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator

from nightact.core.backend import nvidia_gpu_present

__all__ = [
    "PYTHON_LOGGERS",
    "TF_LOG_LEVEL",
    "filtered_stderr",
    "is_backend_noise",
    "quiet_backends",
]

# TensorFlow's C++ threshold: 0 all, 1 no INFO, 2 no WARNING (the default set here), 3 no ERROR.
TF_LOG_LEVEL = "2"
# Python loggers of the backends that log start-up INFO lines through the command's handler.
PYTHON_LOGGERS = ("jax", "absl")

# An Abseil/glog line: severity letter, MMDD, then time, thread and source.
_GLOG_LINE = re.compile(rb"^([IWEF])\d{4} ")
_SEVERITY = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called"
_NO_GPU_PROBE = b"failed call to cuInit"


def quiet_backends(verbose: bool = False) -> None:
    """Silence the backends' start-up lines (see the module docstring); ``verbose``: do nothing.

    Call it before Keras or a backend is imported; it is harmless, but too late, after.
    """
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)
    for name in PYTHON_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
    if "tensorflow" not in sys.modules and not any(
        isinstance(finder, _QuietImport) for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietImport("tensorflow"))


def is_backend_noise(line: bytes, level: int, gpu: bool) -> bool:
    """Whether a line caught during TensorFlow's import is start-up noise at C++ log ``level``.

    ``gpu``: whether the machine has an NVIDIA GPU (then a failed CUDA probe is news).
    """
    match = _GLOG_LINE.match(line)
    if match is None:
        return level > 0 and line.startswith(_ABSL_PREAMBLE)
    if _SEVERITY[match[1]] < level:
        return True
    return not gpu and _NO_GPU_PROBE in line


@contextlib.contextmanager
def filtered_stderr(noise: Callable[[bytes], bool]) -> Iterator[None]:
    """Send file descriptor 2 to a temporary file for the block, then pass on all but ``noise``.

    Everything is passed on when the block raises: the lines may say why.
    """
    _flush_stderr()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            lines = caught.read().splitlines(keepends=True)
            kept = b"".join(line for line in lines if failed or not noise(line))
            while kept:
                kept = kept[os.write(2, kept) :]


def _flush_stderr() -> None:
    if sys.stderr is not None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()


def _tf_log_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds one top-level package with the other finders, and imports it under filtered_stderr.

    It steps out of ``sys.meta_path`` at its first use, so it acts on one import only.
    """

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    """The real loader, with its ``exec_module`` run under :func:`filtered_stderr`."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        gpu = nvidia_gpu_present()
        level = _tf_log_level()
        with filtered_stderr(lambda line: is_backend_noise(line, level, gpu)):
            self.loader.exec_module(module)
            if not gpu:
                # The CUDA probe otherwise runs at the first operation, outside this window.
                with contextlib.suppress(Exception):
                    module.config.list_physical_devices("GPU")
        module.__loader__ = module.__spec__.loader = self.loader

    def __getattr__(self, name):
        return getattr(self.loader, name)

"""Which Keras backend nightact runs on, chosen before Keras is imported.

Keras reads ``KERAS_BACKEND`` once, when it is first imported, so the choice has to be made by
the time anything imports Keras; :mod:`nightact` calls :func:`use_default_backend` on import.
The rule follows what ``python benchmarks/backends.py`` measured for these six models
(docs/backends.md has the figures and the reasons):

1. ``KERAS_BACKEND`` set: it is used, always. (Keras' own ``~/.keras/keras.json`` is not read:
   Keras writes that file on its first import, so it cannot be told apart from Keras' default.)
2. Keras already imported by the caller: its backend is fixed; nothing is changed.
3. An NVIDIA GPU present: TensorFlow, which runs LSTM and GRU on the fused cuDNN kernels.
4. Otherwise JAX if it is installed (a dependency of nightact; a trimmed install may lack it),
   else TensorFlow.

Nothing here imports Keras or a backend, so the data commands stay fast; the GPU check reads
``/proc`` and runs ``nvidia-smi -L`` only where the answer could change the choice.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = [
    "CHOICE_MARKER",
    "NVIDIA_GPUS",
    "choose_backend",
    "nvidia_gpu_present",
    "prefer_backend",
    "use_default_backend",
]

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


def nvidia_gpu_present() -> bool:
    """Whether the machine has an NVIDIA GPU, asked of the driver, not of a backend."""
    try:
        if NVIDIA_GPUS.is_dir() and any(NVIDIA_GPUS.iterdir()):
            return True
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def choose_backend(environ=None) -> str:
    """The backend the rule above picks, without setting anything."""
    environ = os.environ if environ is None else environ
    if environ.get("KERAS_BACKEND"):
        return environ["KERAS_BACKEND"]
    if "keras" in sys.modules:
        return sys.modules["keras"].config.backend()
    if not _installed("jax"):
        return "tensorflow"
    return "tensorflow" if nvidia_gpu_present() else "jax"


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, asked without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # an import hook that refuses it, a broken package
        return False


# Set beside KERAS_BACKEND whenever nightact wrote it, and inherited with it by child processes,
# so that a later request can tell nightact's own choice, which it may revise, from the user's,
# which it may not.
CHOICE_MARKER = "NIGHTACT_CHOSE_KERAS_BACKEND"


def _set(backend: str) -> None:
    os.environ["KERAS_BACKEND"] = os.environ[CHOICE_MARKER] = backend


def use_default_backend() -> str:
    """Set ``KERAS_BACKEND`` to :func:`choose_backend`'s answer where that still has an effect.

    The variable is set in this process's environment, so the worker processes nightact
    starts (prepare's pool, study's runs) inherit the same backend.
    """
    backend = choose_backend()
    if "keras" not in sys.modules and not os.environ.get("KERAS_BACKEND"):
        _set(backend)
    return backend


def prefer_backend(backend: str) -> str:
    """Use ``backend`` for a command that needs it, unless the user chose one or Keras runs.

    ``nightact export`` asks for TensorFlow, whose converters write all three export formats.
    Returns the backend Keras will use.
    """
    current = os.environ.get("KERAS_BACKEND")
    if "keras" not in sys.modules and current in (None, "", os.environ.get(CHOICE_MARKER)):
        _set(backend)
    return choose_backend()

"""Which Keras backend nightact runs on, chosen before Keras is imported.

Keras reads ``KERAS_BACKEND`` once, when it is first imported, so the choice has to be made by
the time anything imports Keras; :mod:`nightact` calls :func:`use_default_backend` on import.
The rule follows what was measured for these six models, on a CPU (``python
benchmarks/backends.py``) and on an NVIDIA H200 (docs/backends.md has the figures):

1. ``KERAS_BACKEND`` set: it is used, always. (Keras' own ``~/.keras/keras.json`` is not read:
   Keras writes that file on its first import, so it cannot be told apart from Keras' default.)
2. Keras already imported by the caller: its backend is fixed; nothing is changed.
3. JAX, wherever it is installed (a dependency of nightact), GPU or not: it trained all six
   models fastest on a 2-core CPU and, on an H200, faster than torch on all six (torch took
   1.15-6.5x as long per step; TensorFlow was not installed there, so it is unmeasured on a GPU).
4. Otherwise (a trimmed install without JAX) TensorFlow.

``nightact export`` asks for TensorFlow, whose converters write the exports
(:func:`prefer_backend`). JAX uses an NVIDIA GPU only with its CUDA plugin (``pip install
'nightact[cuda]'``); :func:`unused_gpu_warning` words the one line said when a GPU is present
and the backend cannot see it (``nightact.nets.gpu`` says it when Keras work starts, ``nightact
doctor`` on demand).

Nothing here imports Keras or a backend, so the data commands stay fast, and nothing here asks
the driver on import: :func:`nvidia_gpu_present` reads ``/proc`` and runs ``nvidia-smi -L`` only
when called.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CHOICE_MARKER",
    "CUDA_INSTALL",
    "NVIDIA_DEVICES",
    "NVIDIA_GPUS",
    "BackendChoice",
    "choose_backend",
    "explain_backend",
    "gpus_hidden_by",
    "imported_keras",
    "nvidia_gpu_present",
    "prefer_backend",
    "unused_gpu_warning",
    "use_default_backend",
]

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
# The device files a process reaches an NVIDIA GPU through. A container started without GPU access
# still sees the host's GPUs under /proc/driver/nvidia, but not these (JAX asks the same files).
NVIDIA_DEVICES = (Path("/dev/nvidiactl"), Path("/dev/nvidia0"))

# What gives each backend an NVIDIA GPU: nightact's `cuda` extra brings JAX's CUDA 12 plugin with
# its CUDA libraries (docs/backends.md says why CUDA 12); the other two have their own builds.
CUDA_INSTALL = {
    "jax": "pip install 'nightact[cuda]'",
    "tensorflow": "pip install 'tensorflow[and-cuda]'",
    "torch": "pip install torch (its CUDA build, the default on Linux)",
}

# Set beside KERAS_BACKEND whenever nightact wrote it, and inherited with it by child processes,
# so that a later request can tell nightact's own choice, which it may revise, from the user's,
# which it may not.
CHOICE_MARKER = "NIGHTACT_CHOSE_KERAS_BACKEND"


@dataclass(frozen=True)
class BackendChoice:
    """The backend Keras runs on in this process, and the rule's reason for it."""

    backend: str
    reason: str


def nvidia_gpu_present() -> bool:
    """Whether this process can reach an NVIDIA GPU, asked of the driver, not of a backend."""
    try:
        listed = NVIDIA_GPUS.is_dir() and any(NVIDIA_GPUS.iterdir())
        if listed and any(device.exists() for device in NVIDIA_DEVICES):
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


def gpus_hidden_by(backend: str, environ=None) -> str | None:
    """The setting that hides the GPUs from ``backend`` on purpose, or None.

    ``CUDA_VISIBLE_DEVICES`` empty or ``-1``, or (for JAX) ``JAX_PLATFORMS`` without ``cuda``:
    a GPU hidden so is not one to warn about.
    """
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible}"
    platforms = environ.get("JAX_PLATFORMS", "")
    if backend == "jax" and platforms and not {"cuda", "gpu"} & set(platforms.split(",")):
        return f"JAX_PLATFORMS={platforms}"
    return None


def imported_keras():
    """The Keras module this process has imported, or None.

    None also where a caller has blocked Keras (``sys.modules["keras"] = None``, which makes
    ``import keras`` fail) or where Keras is half-way through its own import.
    """
    keras = sys.modules.get("keras")
    return keras if hasattr(getattr(keras, "config", None), "backend") else None


def explain_backend(environ=None) -> BackendChoice:
    """The backend the rule above picks, and why, without setting anything."""
    environ = os.environ if environ is None else environ
    chosen = environ.get("KERAS_BACKEND")
    if chosen and chosen != environ.get(CHOICE_MARKER):
        return BackendChoice(chosen, f"KERAS_BACKEND={chosen} is set, and the user's choice wins")
    keras = imported_keras()
    if keras is not None:
        return BackendChoice(
            keras.config.backend(), "Keras was imported before nightact, so its backend is fixed"
        )
    if chosen:  # nightact's own choice, made here or inherited from the process that started us
        rule = explain_backend({})
        if rule.backend == chosen:
            return rule
        return BackendChoice(chosen, f"nightact chose {chosen} for a command that needs it")
    if _installed("jax"):
        return BackendChoice(
            "jax",
            "JAX is installed; it trained all six models fastest on a 2-core CPU and faster "
            "than torch on an NVIDIA H200 (docs/backends.md)",
        )
    return BackendChoice("tensorflow", "JAX is not installed")


def choose_backend(environ=None) -> str:
    """The backend the rule above picks, without setting anything."""
    return explain_backend(environ).backend


def unused_gpu_warning(backend: str) -> str:
    """The one line for a machine whose NVIDIA GPU ``backend`` cannot see: what runs, the fix."""
    fix = CUDA_INSTALL.get(backend, f"a CUDA build of {backend}")
    return (
        f"an NVIDIA GPU is present but Keras' {backend} backend sees no GPU, so this runs on "
        f"the CPU; to use the GPU: {fix}"
    )


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, asked without importing it."""
    try:  # (a module blocked with sys.modules[module] = None is found as None: not installed)
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # an import hook that refuses it, a broken package
        return False


def _set(backend: str) -> None:
    os.environ["KERAS_BACKEND"] = os.environ[CHOICE_MARKER] = backend


def use_default_backend() -> str:
    """Set ``KERAS_BACKEND`` to :func:`choose_backend`'s answer where that still has an effect.

    The variable is set in this process's environment, so the worker processes nightact
    starts (prepare's pool, study's runs) inherit the same backend.
    """
    backend = choose_backend()
    if imported_keras() is None and not os.environ.get("KERAS_BACKEND"):
        _set(backend)
    return backend


def prefer_backend(backend: str) -> str:
    """Use ``backend`` for a command that needs it, unless the user chose one or Keras runs.

    ``nightact export`` asks for TensorFlow, whose converters write all three export formats.
    Returns the backend Keras will use.
    """
    current = os.environ.get("KERAS_BACKEND")
    if imported_keras() is None and current in (None, "", os.environ.get(CHOICE_MARKER)):
        _set(backend)
    return choose_backend()

"""Whether Keras' backend sees a GPU, and the one warning when an NVIDIA GPU would go unused.

JAX, the default backend, uses an NVIDIA GPU only with its CUDA plugin (``pip install
'nightact[cuda]'``); without it, everything runs on the CPU. :func:`warn_if_gpu_unused` says so
in one logged line that names the fix, once per process, when Keras work starts: ``train``,
``evaluate``, ``robustness``, ``embed``, and ``predict`` and ``timeline`` on the Keras engine.
Never on ``import nightact``, and never in the data commands, which load no backend; ``nightact
export`` runs on TensorFlow on the CPU by design and does not ask.

The backend is imported only when asked (the ONNX engine's path never loads Keras).
"""

from __future__ import annotations

import logging

from nightact.core import backend as backend_choice

__all__ = ["backend_sees_gpu", "warn_if_gpu_unused"]

log = logging.getLogger(__name__)

# Whether this process has looked already: the line is said once, however many runs it starts.
_checked = False


def backend_sees_gpu() -> bool:
    """Whether the active Keras backend sees a GPU (this starts the backend's runtime)."""
    import keras  # the backend's own device list, so Keras has to be loaded

    name = keras.config.backend()
    if name == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if name == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    if name == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def warn_if_gpu_unused() -> bool:
    """Log one warning if an NVIDIA GPU is present and Keras' backend cannot see it.

    Checked once per process, and only once Keras is loaded (the ONNX engine never loads it). JAX
    fixes its devices when its runtime starts, so call this after any device setup
    (``nightact.training.devices.setup_devices``). Returns whether it warned.
    """
    global _checked
    keras = backend_choice.imported_keras()
    if _checked or keras is None:
        return False
    _checked = True
    name = keras.config.backend()
    if backend_choice.gpus_hidden_by(name) or not backend_choice.nvidia_gpu_present():
        return False
    if backend_sees_gpu():
        return False
    warning = backend_choice.unused_gpu_warning(name)
    log.warning("%s (`nightact doctor` shows what each backend sees)", warning)
    return True

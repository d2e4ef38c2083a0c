"""Run an exported ``.onnx`` model with ONNX Runtime: no TensorFlow, Keras or JAX imported.

This is the light path for a small box beside the camera: ``pip install 'nightact[onnx]'``
brings ONNX Runtime, PyAV and NumPy. The class names and preprocessing settings (frames, height,
width, short-clip policy, window length) travel inside the ``.onnx`` file, in the metadata
property ``nightact`` that :func:`nightact.serve.export.export_model` writes; clips are decoded
by the same :func:`nightact.core.videos.read_clip` as ``prepare`` and the Keras path.

    >>> import nightact
    >>> nightact.predict("model.onnx", ["clip.mp4"])     # dispatches here by the suffix
    >>> from nightact.serve.onnx_engine import load_onnx_predictor
    >>> predictor = load_onnx_predictor("model.onnx")   # a nightact.serve.predictor.Predictor
    >>> predictor.model.predict_on_batch(clips)          # (n, classes) float32
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from nightact.core import extras
from nightact.serve.predictor import Predictor

__all__ = ["ONNX_METADATA_KEY", "OnnxModel", "load_onnx_predictor", "read_onnx_metadata"]

log = logging.getLogger(__name__)

ONNX_METADATA_KEY = "nightact"  # the same key nightact.serve.export writes


class OnnxModel:
    """An ONNX Runtime session behind the small part of keras.Model that prediction uses.

    ``input_shape``, ``output_shape`` and ``predict_on_batch`` behave as Keras' do, so
    :class:`nightact.serve.predictor.Predictor` and everything built on it take either.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        onnxruntime = _onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        options = onnxruntime.SessionOptions()
        # ONNX Runtime's idle threads spin-wait for the next call by default, taking the CPU
        # the video decoder needs between calls (a timeline ran 8.3x real time with spinning,
        # against 10.7x for Keras, on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: not a loadable ONNX model ({error})") from error
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_shape = tuple(_dimension(size) for size in model_input.shape)
        self.output_shape = tuple(_dimension(size) for size in self.session.get_outputs()[0].shape)
        self.name = self.path.stem
        self.metadata = _metadata(self.session)

    def predict_on_batch(self, clips: np.ndarray) -> np.ndarray:
        clips = np.ascontiguousarray(clips, dtype=np.uint8)
        return self.session.run(None, {self.input_name: clips})[0]


def _onnxruntime():
    # Optional (the onnx extra): imported on call, and refused in one line where it is missing.
    return extras.require("onnxruntime", "the ONNX engine", extra="onnx")


def _dimension(size) -> int | None:
    # A symbolic dimension (the dynamic batch) comes back as a name or None.
    return size if isinstance(size, int) else None


def _metadata(session) -> dict:
    text = session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
    return json.loads(text) if text else {}


def read_onnx_metadata(path: str | os.PathLike) -> dict:
    """The nightact metadata of an ``.onnx`` file ({} for a file nightact did not write)."""
    session = _onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return _metadata(session)


def load_onnx_predictor(
    path: str | os.PathLike, allow_short: bool | None = None, threads: int | None = None
) -> Predictor:
    """A Predictor over an ``.onnx`` file, with class names and settings from its metadata.

    A file without nightact metadata still works: the clip shape comes from its input, the
    classes are named ``class_0, class_1, ...`` and short clips are padded.
    """
    model = OnnxModel(path, threads)
    shape = model.input_shape
    if len(shape) != 5 or shape[-1] != 3 or None in shape[1:]:
        raise ValueError(
            f"{path}: expected an input of (batch, frames, height, width, 3), got {shape}"
        )
    _, frames, height, width, _ = shape
    metadata = model.metadata
    num_classes = model.output_shape[-1]
    class_names = metadata.get("class_names") or [f"class_{i}" for i in range(num_classes)]
    if num_classes is not None and len(class_names) != num_classes:
        raise ValueError(
            f"{path}: the model has {num_classes} outputs but {len(class_names)} class names"
        )
    if not metadata:
        log.warning("%s: no nightact metadata; classes are named class_0, class_1, ...", path)
    if allow_short is None:
        allow_short = metadata.get("short_clips", "repeat-last") != "skip"
    return Predictor(model, list(class_names), frames, height, width, allow_short, str(path))

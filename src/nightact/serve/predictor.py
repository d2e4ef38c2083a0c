"""What prediction needs of a model, whatever runs it: the :class:`Predictor` interface.

A :class:`Predictor` holds a loaded model (a ``keras.Model``, or the ONNX Runtime session of
:mod:`nightact.serve.onnx_engine`, which answers the same calls) beside its class names and the
clip shape it reads. :func:`nightact.serve.predict.load_predictor` builds one from a run folder, a
``.keras`` or an ``.onnx`` file; prediction, the timeline and export's checks all take one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["ENGINES", "Predictor", "checked_class_names", "engine_of"]


# What runs a model: Keras (a run folder or a .keras file) or ONNX Runtime (an .onnx file).
ENGINES = ("keras", "onnx")


@dataclass
class Predictor:
    """A loaded model and what is needed to feed it: class names, clip shape, short-clip rule."""

    model: object  # keras.Model
    class_names: list[str]
    frames: int
    height: int
    width: int
    allow_short: bool = True
    source: str = "<in memory>"
    # Test-time views (predict_videos(views=...)): the run's store's candidates per segment,
    # and whether the run trained flips, so mirrored views are in its distribution.
    frames_per_segment: int = 1
    mirror: bool = False


def engine_of(model, engine: str | None = None) -> str:
    """The engine that runs ``model``: ``onnx`` for an ``.onnx`` file, ``keras`` otherwise.

    A given ``engine`` must fit the model: ONNX Runtime runs only ``.onnx`` files, Keras
    everything else.
    """
    is_onnx = isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(".onnx")
    if engine is None:
        return "onnx" if is_onnx else "keras"
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "onnx" and not is_onnx:
        raise ValueError(f"{model}: engine 'onnx' needs an .onnx file (see `nightact export`)")
    if engine == "keras" and is_onnx:
        raise ValueError(f"{model}: an .onnx file runs with engine 'onnx'")
    return engine


def checked_class_names(class_names, model, source) -> list[str]:
    """The class names as a list, refused unless there is one per output of the model."""
    class_names = list(class_names)
    num_classes = int(model.output_shape[-1])
    if len(class_names) != num_classes:
        raise ValueError(
            f"{source}: the model has {num_classes} outputs but {len(class_names)} class names"
        )
    return class_names

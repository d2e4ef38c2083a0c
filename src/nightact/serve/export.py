"""Export a trained model for inference outside Keras, and prove every export by running it.

``export_model(RUN, "onnx", "model.onnx")`` goes through Keras' own ``model.export`` and then
runs the exported file in its own runtime (ONNX Runtime, TensorFlow's SavedModel loader, the
LiteRT interpreter) on test clips beside the Keras model. An export is kept only when the largest
absolute difference of any probability is at most ``tolerance`` (1e-4) and every clip gets the
same top-1 class; otherwise it is refused with :class:`ExportError` and the reason. Everything is
written under a hidden temporary name beside OUT and renamed into place only once it has passed,
so nothing half-working ever carries the real name::

    model.onnx                  ONNX (opset chosen by tf2onnx), uint8 input "pixels"
                                (batch, frames, height, width, 3), dynamic batch; the metadata
                                property "nightact" holds the JSON below
    saved_model/                TensorFlow SavedModel, endpoint "serve";
      assets.extra/nightact.json  the JSON below
    model.tflite                LiteRT flatbuffer, builtin ops only, dynamic batch
    model.tflite.json           the JSON below

    the JSON: {"class_names": [...], "frames": F, "height": H, "width": W,
               "short_clips": "repeat-last" | "skip", "window_seconds": S | null,
               "model": NAME, "format": ..., "config": ExportConfig, "validation": {...}}

What the exported graph is made from, and why:

- A portable copy of the model with the same weights: every LSTM/GRU layer has ``use_cudnn``
  off, because on a machine with a GPU Keras would otherwise trace the fused cuDNN kernel
  (``CudnnRNNV3``), which neither a CPU, ONNX nor LiteRT can run.
- For LiteRT the recurrent layers are also unrolled over the (fixed) number of frames. Keras'
  RNN loop over a dynamic batch converts to TensorList ops that only the Flex delegate ("select
  TF ops") runs; the plain interpreter on an edge device lacks them. Unrolled, the graph needs
  builtin ops only, and gives the same numbers (unrolling changes no arithmetic).
- For ONNX, SimpleRNN and GRU layers are unrolled too: tf2onnx writes their loop as an ONNX
  ``Loop`` node, which ONNX Runtime runs step by step with a large overhead per step (the GRU
  at the demo's shape took 58 ms per clip looped, 30 ms unrolled; SimpleRNN 30 ms and 1.2 ms).
  LSTM layers stay as they are: tf2onnx fuses them into ONNX's own ``LSTM`` node.
- GRU: Keras' default ``reset_after=True`` applies the reset gate after the recurrent matrix
  product, which ONNX spells ``linear_before_reset=1``. tf2onnx does not fuse Keras' GRU into
  an ONNX ``GRU`` node (it is unrolled, or written as a ``Loop``); should a converter do so, the
  attribute is checked, and the numbers are compared in any case.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nightact.core import extras, files, runs
from nightact.core.store import open_split
from nightact.serve.onnx_engine import ONNX_METADATA_KEY, read_onnx_metadata
from nightact.serve.predict import load_predictor
from nightact.serve.timeline import training_clip_seconds

__all__ = [
    "FORMATS",
    "SAVED_MODEL_METADATA",
    "ExportConfig",
    "ExportError",
    "ExportResult",
    "compare",
    "export",
    "export_model",
    "portable_copy",
    "read_metadata",
    "validation_clips",
]

log = logging.getLogger(__name__)

FORMATS = ("onnx", "saved_model", "litert")
# The name Keras' model.export gives each format.
_KERAS_FORMATS = {"onnx": "onnx", "saved_model": "tf_saved_model", "litert": "litert"}
_SUFFIXES = {"onnx": ".onnx", "saved_model": "", "litert": ".tflite"}
# The optional packages (the export extra) a format needs: Keras' ONNX export goes through
# tf2onnx and onnx, and ONNX Runtime runs the file to check it.
_PACKAGES = {"onnx": ("tf2onnx", "onnx", "onnxruntime")}
# Where the metadata lives inside or beside each format (ONNX: the metadata property
# nightact.serve.onnx_engine.ONNX_METADATA_KEY).
SAVED_MODEL_METADATA = Path("assets.extra") / "nightact.json"

DEFAULT_TOLERANCE = 1e-4
# Clips from the store's test split used for validation, plus seeded random clips, which reach
# parts of the input space (bright, saturated) that night footage does not.
DEFAULT_TEST_CLIPS = 8
DEFAULT_RANDOM_CLIPS = 4


class ExportError(Exception):
    """A format that cannot be exported faithfully for this model, with the reason."""

    def __init__(self, format: str, source: str, reason: str):
        self.format = format
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {format} export refused: {reason}")


@dataclass
class ExportConfig:
    """One export job; saved inside the export's metadata as "config"."""

    model: str  # run folder or .keras file
    format: str  # one of FORMATS
    out: str
    tolerance: float = DEFAULT_TOLERANCE  # max |p_export - p_keras| accepted
    test_clips: int = DEFAULT_TEST_CLIPS
    random_clips: int = DEFAULT_RANDOM_CLIPS
    seed: int = 0  # of the random clips
    overwrite: bool = False

    def __post_init__(self):
        self.model = str(self.model)
        self.out = str(self.out)
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not 0 < self.tolerance < 1:
            raise ValueError(f"tolerance must be in (0, 1), got {self.tolerance}")
        if self.test_clips < 0 or self.random_clips < 0 or self.test_clips + self.random_clips < 1:
            raise ValueError("validation needs at least one clip (test_clips + random_clips)")


@dataclass
class ExportResult:
    """What was written and how closely it matched Keras."""

    path: str
    format: str
    max_difference: float  # largest |probability difference| over all clips and classes
    clips: int  # clips compared
    top1_agreement: float  # share of clips with the same top-1 class
    metadata: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def export(config: ExportConfig) -> ExportResult:
    """Run one :class:`ExportConfig` (see :func:`export_model`)."""
    return export_model(
        config.model,
        config.format,
        config.out,
        tolerance=config.tolerance,
        overwrite=config.overwrite,
        test_clips=config.test_clips,
        random_clips=config.random_clips,
        seed=config.seed,
    )


def export_model(
    model,
    format: str,
    out: str | os.PathLike,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    clips: np.ndarray | None = None,
    class_names: list[str] | None = None,
    overwrite: bool = False,
    test_clips: int = DEFAULT_TEST_CLIPS,
    random_clips: int = DEFAULT_RANDOM_CLIPS,
    seed: int = 0,
) -> ExportResult:
    """Export a run folder, ``.keras`` file or loaded model to ``out`` and validate it.

    Args:
        model: what :func:`nightact.serve.predict.load_predictor` accepts.
        format: ``onnx``, ``saved_model`` or ``litert``.
        out: the file (``.onnx``, ``.tflite``) or folder (SavedModel) to write.
        tolerance: the largest absolute probability difference accepted.
        clips: uint8 clips to validate on; by default up to ``test_clips`` clips of the run's
            test split (when its store is found) and ``random_clips`` seeded random clips.
        class_names: override the run's class names (needed for a bare keras.Model).
        overwrite: replace an existing ``out`` (only once the new export has passed).

    Raises:
        ExportError: the format cannot be exported faithfully for this model (the reason says
            why: conversion failed, the runtime cannot run it, or the numbers differ).
        FileExistsError: ``out`` exists and ``overwrite`` is false.
        nightact.core.extras.MissingPackageError: the format needs a package of the export
            extra that is not installed.
    """
    source = str(model) if isinstance(model, (str, os.PathLike)) else "<in memory>"
    _require_tensorflow(format, source)
    for module in _PACKAGES.get(format, ()):
        extras.require(module, f"exporting to {format}", extra="export")
    config = ExportConfig(source, format, out, tolerance, test_clips, random_clips, seed, overwrite)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass overwrite=True / --overwrite)")
    predictor = load_predictor(model, class_names)
    if clips is None:
        clips = validation_clips(model, predictor, test_clips, random_clips, seed)
    clips = _checked_clips(clips, predictor)
    reference = np.asarray(predictor.model.predict_on_batch(clips), dtype=np.float32)
    metadata = _export_metadata(model, predictor, config)

    portable = portable_copy(predictor.model, unroll=_UNROLL[format])
    # Keras exports only a model that has been called; one clip is enough.
    portable(clips[:1], training=False)
    validation = _write_validated(portable, predictor.model, clips, reference, metadata, config)
    log.info(
        "%s: %s export written to %s (max difference %.2e over %d clips)",
        source,
        format,
        out,
        validation["max_difference"],
        validation["clips"],
    )
    return ExportResult(
        str(out),
        format,
        validation["max_difference"],
        validation["clips"],
        validation["top1_agreement"],
        metadata,
    )


def _require_tensorflow(format: str, source: str) -> None:
    """Refuse unless Keras runs on TensorFlow, the backend of the converters checked here."""
    # Keras is imported on call, so importing this module loads no deep-learning stack.
    import keras

    if keras.config.backend() != "tensorflow":
        # Keras exports from JAX through other converters (jax2onnx, a large extra dependency)
        # than the tf2onnx and TFLite paths checked here; a .keras file loads in either backend.
        raise ExportError(
            format,
            source,
            f"exporting runs under the TensorFlow backend and this process runs Keras on "
            f"{keras.config.backend()}; use `nightact export`, which chooses TensorFlow, or set "
            "KERAS_BACKEND=tensorflow before Keras is imported",
        )


def _checked_clips(clips, predictor) -> np.ndarray:
    """The validation clips as contiguous uint8, refused unless they fit the model's input."""
    clips = np.ascontiguousarray(clips, dtype=np.uint8)
    expected_shape = (predictor.frames, predictor.height, predictor.width, 3)
    if clips.ndim != 5 or clips.shape[1:] != expected_shape:
        raise ValueError(f"validation clips must be (n, *{expected_shape}), got {clips.shape}")
    return clips


def _export_metadata(model, predictor, config: ExportConfig) -> dict:
    """The JSON every export carries (see the module docstring), less its "validation"."""
    return {
        "class_names": predictor.class_names,
        "frames": predictor.frames,
        "height": predictor.height,
        "width": predictor.width,
        "short_clips": "repeat-last" if predictor.allow_short else "skip",
        "window_seconds": _window_seconds(model),
        "model": predictor.model.name,
        "format": config.format,
        "config": dataclasses.asdict(config),
    }


def _write_validated(
    portable, keras_model, clips, reference, metadata: dict, config: ExportConfig
) -> dict:
    """Export ``portable`` under a hidden name beside OUT, run it on ``clips`` and compare with
    ``reference``; only when it passes, add ``metadata`` and rename it onto OUT.

    Returns the validation (also stored in ``metadata``). Raises :class:`ExportError` when the
    conversion fails, the export does not run or its numbers differ; nothing is left behind.
    """
    format, source, out = config.format, config.model, Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        temporary = staging / ("model" + _SUFFIXES[format])
        try:
            portable.export(str(temporary), format=_KERAS_FORMATS[format], verbose=False)
        except Exception as error:  # the converters raise anything from ValueError to their own
            raise ExportError(format, source, f"conversion failed: {_first_line(error)}") from error
        run_export = _RUNNERS[format](temporary, keras_model, source)
        try:
            exported = np.asarray(run_export(clips), dtype=np.float32)
        except Exception as error:
            raise ExportError(
                format, source, f"the exported model does not run: {_first_line(error)}"
            ) from error
        validation = compare(reference, exported, config.tolerance)
        metadata["validation"] = validation
        if not validation["passed"]:
            raise ExportError(format, source, validation["reason"])
        _write_metadata(format, temporary, metadata)
        _move_into_place(staging, temporary, out, format)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return validation


def compare(reference: np.ndarray, exported: np.ndarray, tolerance: float) -> dict:
    """Compare probabilities: max absolute difference and top-1 agreement, with a verdict.

    A clip whose two best Keras probabilities are closer than ``tolerance`` may legitimately
    swap its top-1 within the tolerance; such ties are not counted as disagreements.
    """
    if reference.shape != exported.shape:
        return {
            "passed": False,
            "reason": f"output shape {exported.shape} differs from Keras' {reference.shape}",
            "max_difference": float("inf"),
            "clips": int(reference.shape[0]),
            "top1_agreement": 0.0,
        }
    difference = float(np.max(np.abs(reference - exported)))
    same = reference.argmax(axis=1) == exported.argmax(axis=1)
    ordered = np.sort(reference, axis=1)
    tied = (ordered[:, -1] - ordered[:, -2]) < tolerance
    agreement = float(np.mean(same))
    reason = None
    if not np.isfinite(difference) or difference > tolerance:
        reason = f"probabilities differ from Keras by up to {difference:.3g} (> {tolerance:g})"
    elif not np.all(same | tied):
        reason = f"top-1 class differs from Keras on {int(np.sum(~(same | tied)))} clips"
    return {
        "passed": reason is None,
        "reason": reason,
        "max_difference": difference,
        "clips": int(reference.shape[0]),
        "top1_agreement": agreement,
    }


def portable_copy(model, unroll: bool | tuple[str, ...] = False):
    """The same model and weights with cuDNN off, and recurrent layers unrolled if asked.

    ``unroll``: True for every recurrent layer, or the class names to unroll ("GRU", ...).
    """
    import keras  # on call: importing this module loads no Keras

    def clone_layer(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.RNN):
            wanted = unroll if isinstance(unroll, bool) else type(layer).__name__ in unroll
            config["unroll"] = wanted or config.get("unroll", False)
        clone = layer.__class__.from_config(config)
        if hasattr(clone, "use_cudnn"):
            # Not part of the layer's config, so it is set on the instance.
            clone.use_cudnn = False
        return clone

    copy = keras.models.clone_model(model, clone_function=clone_layer)
    copy.set_weights(model.get_weights())
    return copy


def validation_clips(model, predictor, test_clips: int, random_clips: int, seed: int) -> np.ndarray:
    """Up to ``test_clips`` clips of the run's test split, then ``random_clips`` random ones."""
    shape = (predictor.frames, predictor.height, predictor.width, 3)
    parts = []
    store = _store_of(model)
    if store is not None and test_clips:
        try:
            split = open_split(store, "test")
        except (FileNotFoundError, ValueError) as error:
            log.debug("%s: no test clips for validation: %s", store, error)
        else:
            if split.frames.shape[1:] == shape and len(split.frames):
                parts.append(np.asarray(split.frames[:test_clips]))
    count = random_clips if parts else max(random_clips, test_clips)
    if count:
        rng = np.random.default_rng(seed)
        parts.append(rng.integers(0, 256, size=(count, *shape), dtype=np.uint8))
    return np.concatenate(parts)


def read_metadata(path: str | os.PathLike) -> dict:
    """The nightact metadata of an export (any format), without loading a deep-learning stack."""
    path = Path(path)
    if path.is_dir():
        return json.loads((path / SAVED_MODEL_METADATA).read_text(encoding="utf-8"))
    if path.suffix == ".tflite":
        return json.loads(Path(str(path) + ".json").read_text(encoding="utf-8"))
    return read_onnx_metadata(path)


# --- running each format --------------------------------------------------------------------


def _run_onnx(path: Path, keras_model, source: str):
    # Optional packages (the export extra), imported only for this format.
    import onnx
    import onnxruntime

    graph = onnx.load(str(path)).graph
    _check_onnx_gru(graph, keras_model, source)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return lambda clips: session.run(None, {input_name: clips})[0]


def _check_onnx_gru(graph, keras_model, source: str) -> None:
    """Keras' reset-after GRU must become an ONNX GRU with linear_before_reset=1."""
    import keras  # on call: importing this module loads no Keras

    reset_after = any(
        isinstance(layer, keras.layers.GRU) and layer.reset_after for layer in keras_model.layers
    )
    for node in graph.node:
        if node.op_type != "GRU":
            continue
        linear = next((a.i for a in node.attribute if a.name == "linear_before_reset"), 0)
        if reset_after and linear != 1:
            raise ExportError(
                "onnx",
                source,
                f"GRU node {node.name!r} has linear_before_reset={linear}, but Keras' GRU "
                "(reset_after=True) needs 1",
            )


def _run_saved_model(path: Path, keras_model, source: str):
    import tensorflow as tf  # the backend, imported only for this format

    loaded = tf.saved_model.load(str(path))
    operations = {
        node.op for function in loaded.serve.concrete_functions for node in _graph_nodes(function)
    }
    cudnn = sorted(op for op in operations if "Cudnn" in op)
    if cudnn:
        raise ExportError(
            "saved_model", source, f"the graph holds GPU-only cuDNN ops ({', '.join(cudnn)})"
        )
    return lambda clips: loaded.serve(tf.constant(clips)).numpy()


def _graph_nodes(function):
    graph_def = function.graph.as_graph_def()
    yield from graph_def.node
    for library_function in graph_def.library.function:
        yield from library_function.node_def


def _run_litert(path: Path, keras_model, source: str):
    import tensorflow as tf  # the backend, imported only for this format

    interpreter = tf.lite.Interpreter(model_path=str(path))
    try:
        operations = {detail["op_name"] for detail in interpreter._get_ops_details()}
    except AttributeError:  # a private helper; without it the run below still decides
        operations = set()
    flex = sorted(op for op in operations if op.startswith("Flex") or op == "CUSTOM")
    if flex:
        raise ExportError(
            "litert",
            source,
            f"needs TensorFlow ops the plain LiteRT interpreter lacks ({', '.join(flex)})",
        )

    def run(clips: np.ndarray) -> np.ndarray:
        input_index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(input_index, clips.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(input_index, clips)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()

    return run


_RUNNERS = {"onnx": _run_onnx, "saved_model": _run_saved_model, "litert": _run_litert}
# Which recurrent layers each format gets unrolled (see the module docstring).
_UNROLL = {"onnx": ("SimpleRNN", "GRU"), "saved_model": False, "litert": True}


# --- writing -----------------------------------------------------------------------------------


def _write_metadata(format: str, temporary: Path, metadata: dict) -> None:
    text = json.dumps(metadata, indent=2)
    if format == "onnx":
        import onnx  # optional (the export extra), imported only for this format

        model = onnx.load(str(temporary))
        entry = model.metadata_props.add()
        entry.key, entry.value = ONNX_METADATA_KEY, text
        onnx.save(model, str(temporary))
    elif format == "saved_model":
        files.write_text_atomic(temporary / SAVED_MODEL_METADATA, text + "\n")
    else:
        files.write_text_atomic(Path(str(temporary) + ".json"), text + "\n")


def _move_into_place(staging: Path, temporary: Path, out: Path, format: str) -> None:
    """Rename the validated export (and its sidecar) onto the real name, replacing an old one."""
    moves = [(temporary, out)]
    if format == "litert":
        moves.append((Path(str(temporary) + ".json"), Path(str(out) + ".json")))
    for source, target in moves:
        if target.is_dir():
            # A folder cannot be replaced atomically: move the old one aside first.
            old = staging / "old"
            os.replace(target, old)
        files.replace_atomic(source, target)


def _window_seconds(model) -> float | None:
    if not isinstance(model, (str, os.PathLike)):
        return None
    return training_clip_seconds(model)


def _store_of(model) -> Path | None:
    """The store a run folder (or the run of a model.keras) trained on, if it still exists."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    run = runs.run_of(model)
    return runs.training_store(run) if run else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]

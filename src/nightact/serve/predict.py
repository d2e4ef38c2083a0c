"""Predict the action in new videos with a trained run or a saved ``.keras`` model.

This is the last step of the pipeline, ``nightact predict`` and ``nightact.predict(...)``. A video
becomes model input through :func:`nightact.core.videos.read_clip`, the very function
``prepare`` uses, with the frame count and size read off the model's input, so a clip is
decoded, sampled, letterboxed and resized exactly as the training clips were. The model itself
scales the uint8 pixels, so nothing else stands between the decoded frames and the model.

An ``.onnx`` file exported by ``nightact export`` runs on the ONNX engine
(:mod:`nightact.serve.onnx_engine`: ONNX Runtime and PyAV, no TensorFlow or Keras imported),
with its class names and clip settings read from the file's metadata.

:func:`predict_videos` takes the settings as keywords; :class:`PredictConfig` holds the same
settings as one object (what ``nightact predict`` builds from its flags) and :func:`run_predict`
runs it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nightact.core import runs
from nightact.core.store import read_store_info
from nightact.core.videos import (
    VIDEO_EXTENSIONS,
    Clip,
    VideoError,
    find_videos,
    read_clip,
    truncation_note,
)
from nightact.data.sampling import select_frames, view_plan
from nightact.nets import gpu
from nightact.serve.onnx_engine import load_onnx_predictor
from nightact.serve.predictor import Predictor, checked_class_names, engine_of

__all__ = ["Prediction", "expand_paths", "format_predictions", "load_predictor", "predict_videos"]

log = logging.getLogger(__name__)


@dataclass
class PredictConfig:
    """Everything that decides a prediction of some videos."""

    # A training run folder, a .keras or an .onnx file (kept as a str), or a loaded
    # keras.Model or Predictor (then pass class_names).
    model: object
    videos: tuple[str, ...]  # video files and folders (every video inside is predicted)
    top_k: int = 3  # the most likely classes each prediction lists
    batch_size: int = 8  # clips per model call
    views: int = 1  # softmax averaged over this many views of each video (view_plan)
    engine: str | None = None  # ENGINES; None: "onnx" for a .onnx file, else "keras"
    class_names: list[str] | None = None  # None: what load_predictor finds
    allow_short: bool | None = None  # None: the run's store's short-clip policy
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS  # which files in a folder count as videos

    def __post_init__(self):
        videos = [self.videos] if isinstance(self.videos, (str, os.PathLike)) else self.videos
        self.videos = tuple(str(path) for path in videos)
        self.extensions = tuple(self.extensions)
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.views < 1:
            raise ValueError(f"views must be at least 1, got {self.views}")
        # A loaded model is taken as it is (load_predictor); a path says which engine it needs.
        if isinstance(self.model, (str, os.PathLike)):
            self.model = str(self.model)
            self.engine = engine_of(self.model, self.engine)


@dataclass
class Prediction:
    """The prediction for one video, or the reason there is none."""

    path: str
    top_k: list[tuple[str, float]] = field(default_factory=list)  # best first
    probabilities: np.ndarray | None = None  # (num_classes,) float32, in class_names order
    error: str | None = None  # None when the video was predicted
    class_names: list[str] = field(default_factory=list, repr=False)
    # Predicted, but from a damaged or short video: truncated (fewer frames decode than its
    # index promises) or fewer frames than the model reads (the last one repeated).
    warning: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        """A JSON-ready dict: path, top_k, probabilities by class name, error, warning."""
        probabilities = None
        if self.probabilities is not None:
            probabilities = {
                name: float(value)
                for name, value in zip(self.class_names, self.probabilities, strict=True)
            }
        return {
            "path": self.path,
            "top_k": [{"class": name, "probability": float(p)} for name, p in self.top_k],
            "probabilities": probabilities,
            "error": self.error,
            "warning": self.warning,
        }


def load_predictor(
    model,
    class_names: list[str] | None = None,
    allow_short: bool | None = None,
    engine: str | None = None,
) -> Predictor:
    """Load a run folder (RUN/model.keras), a ``.keras`` or ``.onnx`` file, or wrap a model.

    Class names come from ``class_names``, else ``classes.json`` beside the model file (the
    metadata of an ``.onnx`` file), else ``class_0, class_1, ...``. Clips too short for the
    model's frame count are refused when the run's data was prepared with ``short_clips="skip"``
    (and ``allow_short`` is not given), and padded by repeating the last frame otherwise, as
    ``prepare`` does. ``engine`` (see :func:`engine_of`) defaults to what the model needs.
    """
    if isinstance(model, Predictor):
        return model
    if engine_of(model, engine) == "onnx":
        predictor = load_onnx_predictor(model, allow_short)
        if class_names is not None:
            predictor.class_names = checked_class_names(class_names, predictor.model, model)
        return predictor
    source = "<in memory>"
    metadata_folder = None
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.is_dir():
            model_path = runs.model_path(path)
            if not model_path.is_file():
                raise FileNotFoundError(f"{path}: no model.keras in this run folder")
        elif path.is_file() and path.suffix == ".keras":
            model_path = path
        elif not path.exists():
            raise FileNotFoundError(f"{path}: no such run folder or .keras file")
        else:
            raise ValueError(f"{path}: expected a training run folder or a .keras model file")
        # Imported here: training.checkpoints imports Keras; the ONNX path never needs it.
        from nightact.training.checkpoints import load_checkpoint

        model = load_checkpoint(model_path, compile=False)
        source = str(model_path)
        metadata_folder = model_path.parent

    input_shape = tuple(model.input_shape)
    if len(input_shape) != 5 or input_shape[-1] != 3 or None in input_shape[1:]:
        raise ValueError(
            f"{source}: expected a model reading (batch, frames, height, width, 3) clips, "
            f"got input shape {input_shape}"
        )
    _, frames, height, width, _ = input_shape
    num_classes = int(model.output_shape[-1])

    if class_names is None and metadata_folder is not None:
        class_names = runs.read_classes(metadata_folder)
    if class_names is None:
        class_names = [f"class_{index}" for index in range(num_classes)]
    class_names = checked_class_names(class_names, model, source)
    if allow_short is None:
        policy = _short_clip_policy(metadata_folder) if metadata_folder else None
        allow_short = policy != "skip"
    per_segment, mirror = 1, False
    if metadata_folder is not None and runs.is_run(metadata_folder):
        config = runs.read_config(metadata_folder)
        per_segment = int(config.get("frames_per_segment") or 1)
        mirror = bool(config.get("augment", False))
    return Predictor(
        model,
        class_names,
        int(frames),
        int(height),
        int(width),
        allow_short,
        source,
        frames_per_segment=per_segment,
        mirror=mirror,
    )


def _short_clip_policy(run: Path) -> str | None:
    """The short-clip policy of the store the run trained on; None when that is unknown."""
    store = runs.training_store(run) if runs.is_run(run) else None
    return read_store_info(store)["config"].get("short_clips") if store else None


def expand_paths(
    paths: Iterable[str | os.PathLike], extensions: Iterable[str] = VIDEO_EXTENSIONS
) -> list[tuple[Path, str | None]]:
    """Replace each folder by the videos inside it (any depth, sorted, by extension).

    Returns ``(path, error)`` pairs; error is set for a folder with no videos. Files named
    explicitly are kept whatever their extension: reading them decides.
    """
    items: list[tuple[Path, str | None]] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            items.append((path, None))
            continue
        videos = find_videos(path, extensions)
        if not videos:
            listed = ", ".join(sorted(extension.lower() for extension in extensions))
            items.append((path, f"no video files ({listed}) in this folder"))
        items.extend((video, None) for video in videos)
    return items


def predict_videos(
    model,
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    top_k: int = PredictConfig.top_k,
    batch_size: int = PredictConfig.batch_size,
    class_names: list[str] | None = PredictConfig.class_names,
    allow_short: bool | None = PredictConfig.allow_short,
    extensions: Iterable[str] = PredictConfig.extensions,
    progress: bool = True,
    views: int = PredictConfig.views,
    engine: str | None = PredictConfig.engine,
) -> list[Prediction]:
    """Predict the action in each video; one :class:`Prediction` per video, in input order.

    Args:
        model: a training run folder, a ``.keras`` or ``.onnx`` file, or a loaded keras.Model
            (then pass ``class_names``); see :func:`load_predictor`.
        paths: video files and folders (every video inside a folder is predicted).
        top_k: how many of the most likely classes each prediction lists.
        batch_size: clips per model call.
        class_names, allow_short: override what :func:`load_predictor` would find.
        extensions: which files in a folder count as videos.
        progress: show a progress bar over the videos.
        views: average the softmax over this many views of each video, as ``evaluate`` does:
            the candidate frames per segment of the run's store, mirrored too when the run
            trained flips (:func:`nightact.data.sampling.view_plan`).
        engine: ``keras`` or ``onnx`` (see :func:`engine_of`); by default what the model needs.

    A video that cannot be used (missing, not a video, too short under the run's policy) gets a
    Prediction with ``error`` set; the others are still predicted. One predicted from a damaged
    file (fewer frames decode than its index promises) or a short one gets ``warning`` set, and
    the same line is logged as a warning.
    """
    config = PredictConfig(
        model, paths, top_k, batch_size, views, engine, class_names, allow_short, extensions
    )
    return run_predict(config, progress=progress)


def run_predict(config: PredictConfig, progress: bool = True) -> list[Prediction]:
    """Run a :class:`PredictConfig`; see :func:`predict_videos`."""
    predictor = load_predictor(config.model, config.class_names, config.allow_short, config.engine)
    gpu.warn_if_gpu_unused()  # Keras' engine only: the ONNX engine never loads Keras
    plan = view_plan(config.views, predictor.frames_per_segment, predictor.mirror)
    # Candidates are decoded only when a view needs one beyond the first.
    per_segment = predictor.frames_per_segment if config.views > 1 else 1
    items = expand_paths(config.videos, config.extensions)
    # No point padding a handful of videos up to a large batch.
    batch_size = max(1, min(config.batch_size, len(items)))
    top_k = config.top_k
    predictions: list[Prediction | None] = [None] * len(items)
    pending: list[tuple[int, np.ndarray]] = []
    warnings: dict[int, str | None] = {}

    for index, (path, error) in enumerate(tqdm(items, unit="video", disable=not progress)):
        if error is None:
            try:
                clip = read_clip(
                    path,
                    predictor.frames,
                    predictor.height,
                    predictor.width,
                    allow_short=predictor.allow_short,
                    frames_per_segment=per_segment,
                )
            except VideoError as video_error:
                error = video_error.reason
            else:
                warnings[index] = _clip_warning(clip, predictor.frames)
                if warnings[index] is not None:
                    log.warning("%s: %s", path, warnings[index])
                pending.append((index, clip.frames))
        if error is not None:
            # Returned in the result, so only worth a debug line here.
            log.debug("%s: %s", path, error)
            predictions[index] = Prediction(str(path), error=error)
        if len(pending) == batch_size:
            _predict_batch(predictor, pending, items, predictions, top_k, batch_size, plan)
    if pending:
        _predict_batch(predictor, pending, items, predictions, top_k, batch_size, plan)
    for index, warning in warnings.items():
        predictions[index].warning = warning
    return predictions


def _clip_warning(clip: Clip, frames: int) -> str | None:
    """The one warning line a decoded clip deserves: truncated, short, both, or none."""
    repeated = f"repeated the last to make {frames}"
    if clip.truncated:
        note = f"truncated: {truncation_note(clip.decoded_frames, clip.promised_frames)}"
        return f"{note}; {repeated}" if clip.short else note
    if clip.short:
        return f"only {clip.decoded_frames} decodable frames; {repeated}"
    return None


def _predict_batch(
    predictor, pending, items, predictions, top_k: int, batch_size: int, plan=((0, False),)
) -> None:
    stored = np.stack([frames for _, frames in pending])
    if len(stored) < batch_size:
        # Pad the last batch to the usual size so the model runs one compiled shape; the model
        # treats every clip independently, so the padding changes no other clip's output.
        padding = np.zeros((batch_size - len(stored), *stored.shape[1:]), dtype=stored.dtype)
        stored = np.concatenate([stored, padding])
    per_segment = stored.shape[1] // predictor.frames
    probabilities = 0.0
    for candidate, mirrored in plan:
        choices = np.full(predictor.frames, candidate, dtype=np.int64)
        clips = select_frames(stored, predictor.frames, per_segment, choices)
        if mirrored:
            clips = np.ascontiguousarray(clips[:, :, :, ::-1])
        output = np.asarray(predictor.model.predict_on_batch(clips), dtype=np.float32)
        probabilities = probabilities + output / len(plan)
    for row, (index, _) in enumerate(pending):
        vector = probabilities[row]
        best = np.argsort(-vector, kind="stable")[:top_k]
        predictions[index] = Prediction(
            path=str(items[index][0]),
            top_k=[(predictor.class_names[label], float(vector[label])) for label in best],
            probabilities=vector,
            class_names=predictor.class_names,
        )
    pending.clear()


def format_predictions(predictions: list[Prediction]) -> str:
    """A readable table: each video's path, then its top classes with percentages or its error."""
    lines = []
    for prediction in predictions:
        lines.append(prediction.path)
        if prediction.error is not None:
            lines.append(f"    error: {prediction.error}")
            continue
        width = max(len(name) for name, _ in prediction.top_k)
        for rank, (name, probability) in enumerate(prediction.top_k, start=1):
            lines.append(f"    {rank}. {name:<{width}}  {100 * probability:6.2f} %")
    predicted = sum(prediction.ok for prediction in predictions)
    lines.append(f"{predicted} of {len(predictions)} videos predicted")
    return "\n".join(lines)

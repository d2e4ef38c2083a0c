"""Evaluate a trained run honestly: on the held-out test split, with per-class detail.

``evaluate(RUN)`` loads ``RUN/model.keras`` (the checkpoint that was best on the validation split),
predicts every clip of the store's *test* split, which training never looked at, and writes::

    RUN/evaluation/
      metrics.json    accuracy and macro F1 with 95 % bootstrap intervals (accuracy_ci,
                      macro_f1_ci: 2,000 resamples of the clips, seed 0), top-3 accuracy, mean
                      class accuracy, per-class scores, the confusion matrix (counts and
                      row-normalised), inference ms per clip, and every clip's label and
                      prediction (predictions: paths, labels, predicted) for paired tests
      per_class.csv   class, precision, recall, f1, support
      confusion.csv   counts, rows = true class, columns = predicted class
      confusion_normalized.csv   the same, each row divided by its total
      confusion.png   the matrix as a picture, every class name readable, each cell its count
                      and the percentage of its true class
      evaluate_config.json   the EvaluateConfig, with the batch size actually used

The validation split chose the checkpoint, so scores on it are optimistic; evaluating it needs an
explicit ``allow_validation=True`` and lands in ``RUN/evaluation-val/`` so a report never mixes it
up with test scores.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nightact.core import files, runs
from nightact.core.locks import folder_lock
from nightact.core.store import SPLIT_NAMES, open_split
from nightact.data.sampling import view_plan
from nightact.nets import gpu
from nightact.scoring.stats import metric_intervals

__all__ = [
    "CONFIG_NAME",
    "TOP_K",
    "class_mismatch",
    "compute_metrics",
    "confusion_figure",
    "draw_confusion",
    "evaluate",
    "EvaluateConfig",
    "format_metrics",
    "predict_split",
    "run_evaluate",
    "write_evaluation",
]

log = logging.getLogger(__name__)

TOP_K = 3
CONFIG_NAME = "evaluate_config.json"


@dataclass
class EvaluateConfig:
    """Everything that decides an evaluation; saved as RUN/evaluation*/evaluate_config.json."""

    run: str  # a training run folder
    split: str = "test"  # one of SPLIT_NAMES; "val" chose the checkpoint
    data: str | None = None  # another store with the same class names; None: the run's own
    batch_size: int | None = None  # clips per forward pass; None: the run's training batch
    allow_validation: bool = False  # accept split "val", whose scores are optimistic
    views: int = 1  # softmax averaged over this many views of each clip (view_plan)

    def __post_init__(self):
        self.run = str(self.run)
        self.data = None if self.data is None else str(self.data)
        if self.split not in SPLIT_NAMES:
            raise ValueError(f"split must be one of {', '.join(SPLIT_NAMES)}, got {self.split!r}")
        if self.split == "val" and not self.allow_validation:
            raise ValueError(
                f"{self.run}: the validation split chose this run's checkpoint, so its scores "
                "are optimistic; evaluate the held-out test split, or pass --allow-validation"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.views < 1:
            raise ValueError(f"views must be at least 1, got {self.views}")


def compute_metrics(labels, probabilities, class_names: list[str]) -> dict:
    """Scores of predicted class probabilities against true labels.

    Args:
        labels: true class indices, shape (n,).
        probabilities: predicted probabilities (or any scores), shape (n, classes).
        class_names: one name per column of ``probabilities``.

    Returns:
        A JSON-ready dict: ``clips``, ``accuracy``, ``top3_accuracy``, ``macro_f1`` (the mean F1
        over all classes, a class never predicted nor present scoring 0), ``mean_class_accuracy``
        (the mean recall over the classes present in ``labels``: scikit-learn's balanced
        accuracy), ``per_class`` (precision, recall, f1, support per class name), ``confusion``
        (counts, rows true, columns predicted) and ``confusion_normalized`` (each row divided by
        its total; a row without clips is all zeros).
    """
    from sklearn import metrics

    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_classes = len(class_names)
    if probabilities.ndim != 2 or probabilities.shape[1] != num_classes:
        raise ValueError(
            f"probabilities must have shape (clips, {num_classes}), got {probabilities.shape}"
        )
    if labels.shape != (probabilities.shape[0],):
        raise ValueError(f"labels must have shape ({probabilities.shape[0]},), got {labels.shape}")
    if len(labels) == 0:
        raise ValueError("cannot compute metrics on zero clips")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )

    predicted = probabilities.argmax(axis=1)
    every_class = list(range(num_classes))
    confusion = metrics.confusion_matrix(labels, predicted, labels=every_class)
    totals = confusion.sum(axis=1, keepdims=True)
    normalized = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        labels, predicted, labels=every_class, zero_division=0
    )
    with warnings.catch_warnings():
        # Predicting a class absent from the labels is normal on a small test split.
        warnings.simplefilter("ignore", UserWarning)
        mean_class_accuracy = metrics.balanced_accuracy_score(labels, predicted)
    top_k = min(TOP_K, num_classes)
    # Seeded bootstrap over the test clips: the same predictions always give the same interval.
    intervals = metric_intervals(labels, predicted, num_classes)
    return {
        "clips": int(len(labels)),
        "accuracy": float(metrics.accuracy_score(labels, predicted)),
        "top3_accuracy": float(
            metrics.top_k_accuracy_score(labels, probabilities, k=top_k, labels=every_class)
        ),
        "macro_f1": float(
            metrics.f1_score(
                labels, predicted, labels=every_class, average="macro", zero_division=0
            )
        ),
        "accuracy_ci": intervals["accuracy_ci"],
        "macro_f1_ci": intervals["macro_f1_ci"],
        "bootstrap": intervals["bootstrap"],
        "mean_class_accuracy": float(mean_class_accuracy),
        "class_names": list(class_names),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion": confusion.astype(int).tolist(),
        "confusion_normalized": normalized.tolist(),
        # Per clip, in split order: what paired tests between models (compare) need.
        "predictions": {"labels": labels.tolist(), "predicted": predicted.tolist()},
    }


def evaluate(
    run: str | os.PathLike,
    split: str = EvaluateConfig.split,
    data: str | os.PathLike | None = EvaluateConfig.data,
    batch_size: int | None = EvaluateConfig.batch_size,
    allow_validation: bool = EvaluateConfig.allow_validation,
    views: int = EvaluateConfig.views,
) -> dict:
    """Evaluate the best checkpoint of a training run and write ``RUN/evaluation/``.

    Args:
        run: a run folder written by :func:`nightact.training.train.train`.
        split: "test" (default). "val" chose the checkpoint, so it is refused unless
            ``allow_validation`` is set; "train" only tells how well the model fits.
        data: another prepared store with the same class names (another camera or site, often
            test-only: ``prepare --split 0,0,1``); its results go to ``RUN/evaluation-NAME/``,
            NAME its folder name, beside the run's own. Default: the run's own store.
        batch_size: clips per forward pass (default: the run's training batch size).
        allow_validation: accept ``split="val"``; its scores are optimistic.
        views: average the softmax over this many views of each clip: the store's candidate
            frames per segment, and their mirror images when the run trained with flips
            (:func:`nightact.data.sampling.view_plan`); 1 reads the original's frames only.

    Returns:
        The metrics dict of :func:`compute_metrics` plus ``run``, ``model``, ``split``, ``data``,
        ``parameters``, ``model_size_mb`` (the weights, in MB of 2**20 bytes, as Keras'
        ``summary()`` counts them), ``checkpoint_mb`` (``model.keras`` on disk, optimizer state
        included), ``inference_ms_per_clip`` and ``inference_batch_size``. Also saved as
        ``metrics.json`` in the output folder (key ``output``), with ``views`` and
        ``view_plan`` (candidate and mirrored, per view).

    Raises:
        ValueError: a damaged checkpoint (one line naming it), or a store that does not fit.
        nightact.core.locks.FolderLockedError: another process is writing the same evaluation
            folder.
    """
    config = EvaluateConfig(run, split, data, batch_size, allow_validation, views)
    return run_evaluate(config)


def run_evaluate(config: EvaluateConfig) -> dict:
    """Run an :class:`EvaluateConfig`; see :func:`evaluate`."""
    run = Path(config.run)
    if config.split == "val":
        log.warning(
            "evaluating %s on the validation split that chose its checkpoint: "
            "these scores are optimistic, not a test result",
            run,
        )
    # Refuse a folder that is not a run before creating anything in it.
    own_store = runs.training_store(run, required=config.data is None)
    store = Path(config.data) if config.data is not None else own_store
    other_store = own_store is None or store.resolve() != own_store.resolve()
    output = runs.evaluation_folder(
        run, config.split, store=store.resolve().name if other_store else None, views=config.views
    )
    with folder_lock(output):
        return _evaluate(config, store, output)


def _evaluate(config: EvaluateConfig, store: Path, output: Path) -> dict:
    # Imported here: training.checkpoints imports Keras.
    from nightact.training.checkpoints import load_checkpoint

    run, split = Path(config.run), config.split
    run_config = runs.read_config(run)
    model_path = runs.model_path(run)
    if not model_path.exists():
        raise FileNotFoundError(f"{model_path}: no checkpoint; has the run finished an epoch?")
    clips = open_split(store, split)
    if len(clips) == 0:
        raise ValueError(f"{store}: the {split} split is empty; nothing to evaluate")
    trained_classes = runs.read_classes(run)
    if trained_classes is not None and trained_classes != clips.class_names:
        raise ValueError(
            f"{store}: its class names differ from those {run} was trained on: "
            + class_mismatch(trained_classes, clips.class_names)
        )
    plan = view_plan(config.views, clips.frames_per_segment, bool(run_config.get("augment")))

    model = load_checkpoint(model_path)
    gpu.warn_if_gpu_unused()
    expected = tuple(model.input.shape[1:])
    shape = (clips.segments, *clips.frames.shape[2:])
    if expected != shape:
        raise ValueError(
            f"{store}: clips of shape {shape} do not fit {model_path}, which reads {expected}"
        )
    batch_size = config.batch_size or int(run_config.get("batch_size", 32))
    probabilities, milliseconds = _predict_views(model, clips, batch_size, plan)

    result = compute_metrics(clips.labels, probabilities, clips.class_names)
    # Which clip each prediction is of, so that compare pairs models only on the same clips.
    result["predictions"]["paths"] = list(clips.paths)
    result = {
        "run": str(run),
        "model": run_config.get("model", model.name),
        "split": split,
        "data": str(store),
        "parameters": int(model.count_params()),
        "model_size_mb": _weights_megabytes(model),
        "checkpoint_mb": model_path.stat().st_size / 2**20,
        "inference_ms_per_clip": milliseconds,
        "inference_batch_size": batch_size,
        "views": config.views,
        "view_plan": [{"candidate": c, "mirrored": m} for c, m in plan],
        **result,
        "output": str(output),
    }
    used = dataclasses.replace(config, batch_size=batch_size)
    files.write_json_atomic(output / CONFIG_NAME, dataclasses.asdict(used))
    write_evaluation(result, output)
    log.info(
        "%s on %s (%d clips): accuracy %.3f, top-3 %.3f, macro F1 %.3f, mean class accuracy "
        "%.3f, %.2f ms per clip",
        result["model"],
        split,
        result["clips"],
        result["accuracy"],
        result["top3_accuracy"],
        result["macro_f1"],
        result["mean_class_accuracy"],
        milliseconds,
    )
    return result


def _predict_views(model, clips, batch_size: int, plan) -> tuple[np.ndarray, float]:
    """Each clip's softmax averaged over the views of ``plan``; ms per clip summed over them.

    The split is copied to the device once where it fits, as training's are
    (:mod:`nightact.data.placement`), and every view is gathered from that copy; otherwise each
    view reads the store.
    """
    # Imported here: data.batches imports Keras.
    import keras

    from nightact.data.batches import ClipBatches
    from nightact.data.placement import DeviceSplit, choose

    choice = choose("auto", [clips], keras.config.backend())
    log.info("%s", choice.describe())
    source = DeviceSplit(clips) if choice.on_device else clips
    probabilities, milliseconds = 0.0, 0.0
    try:
        for candidate, mirrored in plan:
            batches = ClipBatches(source, batch_size, candidate=candidate, mirror=mirrored)
            view_probabilities, view_milliseconds = predict_split(model, batches)
            probabilities = probabilities + view_probabilities / len(plan)
            milliseconds += view_milliseconds
    finally:
        if choice.on_device:
            source.release()
    return probabilities, milliseconds


def class_mismatch(expected: list[str], found: list[str]) -> str:
    """What differs between two class name lists, in words."""
    missing = [name for name in expected if name not in found]
    extra = [name for name in found if name not in expected]
    if not missing and not extra:
        return f"the same names in another order ({found} instead of {expected})"
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"not trained on {extra}")
    return ", ".join(parts)


def predict_split(model, batches) -> tuple[np.ndarray, float]:
    """Predict every batch in order; return the probabilities and milliseconds per clip.

    The time covers the model's compiled forward pass only, not reading clips from disk. Every
    batch shape is run once untimed first, so tracing and compilation are not counted.
    """
    count = len(batches)
    # Batches differ in shape only at the end (a smaller last batch), so these two cover all.
    for index in sorted({0, count - 1}):
        model.predict_on_batch(batches[index][0])
    outputs = []
    elapsed = 0.0
    for index in range(count):
        clips, _ = batches[index]
        if hasattr(clips, "block_until_ready"):
            # Gathered on the device, asynchronously: done before the clock starts.
            clips.block_until_ready()
        started = time.perf_counter()
        probabilities = np.asarray(model.predict_on_batch(clips))
        elapsed += time.perf_counter() - started
        outputs.append(probabilities)
    probabilities = np.concatenate(outputs)
    return probabilities, 1000.0 * elapsed / len(probabilities)


def write_evaluation(result: dict, output: str | os.PathLike) -> Path:
    """Write metrics.json, per_class.csv, confusion.csv, confusion_normalized.csv, confusion.png."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    names = result["class_names"]
    with open(output / "per_class.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for name in names:
            scores = result["per_class"][name]
            writer.writerow(
                [
                    name,
                    f"{scores['precision']:.6f}",
                    f"{scores['recall']:.6f}",
                    f"{scores['f1']:.6f}",
                    scores["support"],
                ]
            )
    _write_matrix_csv(output / "confusion.csv", result["confusion"], names, "{:d}")
    _write_matrix_csv(
        output / "confusion_normalized.csv", result["confusion_normalized"], names, "{:.6f}"
    )
    title = (
        f"{result.get('model', '')}: {result.get('split', '')} split, "
        f"accuracy {100 * result['accuracy']:.1f} % ({result['clips']} clips)"
    )
    figure = confusion_figure(np.array(result["confusion"]), names, title=title)
    figure.savefig(output / "confusion.png", dpi=110, bbox_inches="tight")
    # Written last: its presence says the evaluation is complete (nightact.core.runs.is_evaluated).
    files.write_json_atomic(output / runs.METRICS, result)
    return output


def _write_matrix_csv(path: Path, matrix, names: list[str], number_format: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["true \\ predicted", *names])
        for name, row in zip(names, matrix, strict=True):
            writer.writerow([name, *(number_format.format(value) for value in row)])


def confusion_figure(confusion, class_names: list[str], title: str = ""):
    """A matplotlib Figure of one confusion matrix with every class name readable."""
    from matplotlib.figure import Figure

    size = len(class_names)
    side = max(4.0, 0.55 * size + 2.5)
    figure = Figure(figsize=(side + 1.5, side), layout="constrained")
    axis = figure.subplots()
    image = draw_confusion(axis, confusion, class_names)
    colorbar = figure.colorbar(image, ax=axis, shrink=0.8)
    colorbar.set_label("fraction of the true class")
    if title:
        axis.set_title(title, fontsize=11)
    return figure


def draw_confusion(
    axis,
    confusion,
    class_names: list[str],
    show_x_names=True,
    show_y_names=True,
    fontsize=9,
    cell_fontsize=None,
):
    """Draw a confusion matrix on ``axis``: colour = row fraction, text = clip count over it.

    Each non-empty cell reads its count and, below, the percentage of its true class (the row),
    at ``cell_fontsize`` points (default ``fontsize - 1``); empty cells stay blank so the errors
    stand out. Long class names stay whole: the predicted-class names are rotated and anchored
    at their end, and callers save with ``bbox_inches="tight"`` so nothing is cut at the
    figure's edge.
    """
    confusion = np.asarray(confusion)
    totals = confusion.sum(axis=1, keepdims=True)
    fractions = np.divide(
        confusion, totals, out=np.zeros(confusion.shape, dtype=float), where=totals > 0
    )
    image = axis.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    size = len(class_names)
    ticks = np.arange(size)
    axis.set_xticks(ticks)
    axis.set_yticks(ticks)
    if show_x_names:
        axis.set_xticklabels(class_names, rotation=45, ha="right", rotation_mode="anchor")
        axis.set_xlabel("predicted class", fontsize=fontsize)
    else:
        axis.set_xticklabels([])
    if show_y_names:
        axis.set_yticklabels(class_names)
        axis.set_ylabel("true class", fontsize=fontsize)
    else:
        axis.set_yticklabels([])
    axis.tick_params(labelsize=fontsize)
    for row in range(size):
        for column in range(size):
            count = confusion[row, column]
            if count == 0:
                continue
            # Dark text on light cells and light text on dark ones.
            colour = "white" if fractions[row, column] > 0.6 else "black"
            axis.text(
                column,
                row,
                f"{_count_text(count)}\n{_percent_text(fractions[row, column])}",
                ha="center",
                va="center",
                color=colour,
                fontsize=fontsize - 1 if cell_fontsize is None else cell_fontsize,
                linespacing=1.1,
            )
    return image


def _count_text(count) -> str:
    value = float(count)
    return str(int(value)) if math.isclose(value, round(value)) else f"{value:.1f}"


def _percent_text(fraction: float) -> str:
    # No space before the sign: "100%" must fit a cell a little over three digits wide.
    if 0 < fraction < 0.005:
        return "<1%"
    return f"{100 * fraction:.0f}%"


def _weights_megabytes(model) -> float:
    """Bytes of all the model's weights, at their stored precision, in MB of 2**20 bytes."""
    import keras

    total = sum(
        math.prod(weight.shape) * np.dtype(keras.backend.standardize_dtype(weight.dtype)).itemsize
        for weight in model.weights
    )
    return total / 2**20


def _interval_text(result: dict, key: str, scale: float, digits: int, suffix: str) -> str:
    if key not in result:
        return ""
    low, high = (scale * bound for bound in result[key])
    return f"  (95 % CI {low:.{digits}f}-{high:.{digits}f}{suffix}, bootstrap over clips)"


def format_metrics(result: dict) -> str:
    """A plain-text summary of :func:`evaluate`'s result: the scores, then one line per class."""
    accuracy_interval = _interval_text(result, "accuracy_ci", 100, 1, " %")
    f1_interval = _interval_text(result, "macro_f1_ci", 1, 3, "")
    lines = [
        f"{result.get('model', '')} on the {result.get('split', '')} split "
        f"({result['clips']} clips)",
        f"  accuracy             {100 * result['accuracy']:6.1f} %{accuracy_interval}",
        f"  top-3 accuracy       {100 * result['top3_accuracy']:6.1f} %",
        f"  macro F1             {result['macro_f1']:8.3f}{f1_interval}",
        f"  mean class accuracy  {100 * result['mean_class_accuracy']:6.1f} %",
    ]
    if "inference_ms_per_clip" in result:
        lines.append(
            f"  inference            {result['inference_ms_per_clip']:8.2f} ms per clip "
            f"(batch {result.get('inference_batch_size')})"
        )
    width = max(len("class"), *(len(name) for name in result["class_names"]))
    lines += ["", f"{'class':<{width}}  precision  recall     f1  support"]
    for name in result["class_names"]:
        scores = result["per_class"][name]
        lines.append(
            f"{name:<{width}}  {scores['precision']:9.3f}  {scores['recall']:6.3f}  "
            f"{scores['f1']:5.3f}  {scores['support']:7d}"
        )
    return "\n".join(lines)

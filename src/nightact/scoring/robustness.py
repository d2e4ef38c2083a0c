"""``nightact robustness RUN``: accuracy as the test clips get darker and noisier.

Each level of :data:`nightact.scoring.darkness.SWEEPS` (a darkness sweep of gamma and gain, and a
noise sweep) is applied to every test clip, deterministically, and the run's best checkpoint scores
them with one view (candidate 0, as ``evaluate`` does). Writes::

    RUN/robustness/
      robustness.csv   sweep, level, gamma, gain, noise, accuracy, clips
      robustness.png   accuracy against level, one panel per sweep (chance drawn dashed)
      robustness_config.json   the RobustnessConfig, with the batch size actually used

``nightact compare`` draws one line per run from these files when they are present.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nightact.core import files, runs
from nightact.core.store import open_split
from nightact.data.sampling import first_candidates, select_frames
from nightact.nets import gpu
from nightact.scoring.darkness import SWEEPS, Degradation, degrade
from nightact.scoring.evaluate import class_mismatch

__all__ = [
    "COLUMNS",
    "CONFIG_NAME",
    "CSV_NAME",
    "FOLDER",
    "PNG_NAME",
    "format_sweep",
    "read_sweep",
    "robustness",
    "RobustnessConfig",
    "run_robustness",
    "sweep_accuracy",
    "sweep_figure",
    "write_sweep",
]

log = logging.getLogger(__name__)

FOLDER = "robustness"
CSV_NAME = "robustness.csv"
PNG_NAME = "robustness.png"
CONFIG_NAME = "robustness_config.json"
COLUMNS = ("sweep", "level", "gamma", "gain", "noise", "accuracy", "clips")


@dataclass
class RobustnessConfig:
    """Everything that decides a sweep; saved as RUN/robustness*/robustness_config.json."""

    run: str  # a training run folder
    data: str | None = None  # another store with the same class names; None: the run's own
    batch_size: int | None = None  # clips per forward pass; None: the run's training batch

    def __post_init__(self):
        self.run = str(self.run)
        self.data = None if self.data is None else str(self.data)
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


def robustness(
    run: str | os.PathLike,
    data: str | os.PathLike | None = RobustnessConfig.data,
    batch_size: int | None = RobustnessConfig.batch_size,
) -> dict:
    """Score a run's best checkpoint along both sweeps; write ``RUN/robustness/``.

    Args:
        run: a training run folder.
        data: another store with the same class names (default: the run's own); its results go
            to ``RUN/robustness-NAME/``.
        batch_size: clips per forward pass (default: the run's training batch size).

    Returns:
        ``{"run", "model", "data", "output", "rows"}``, the rows as :func:`sweep_accuracy` gives.
    """
    return run_robustness(RobustnessConfig(run, data, batch_size))


def run_robustness(config: RobustnessConfig) -> dict:
    """Run a :class:`RobustnessConfig`; see :func:`robustness`."""
    # Imported here: training.checkpoints imports Keras.
    from nightact.training.checkpoints import load_checkpoint

    run = Path(config.run)
    run_config = runs.read_config(run)
    model_path = runs.model_path(run)
    if not model_path.exists():
        raise FileNotFoundError(f"{model_path}: no checkpoint; has the run finished an epoch?")
    own_store = runs.training_store(run, required=config.data is None)
    store = Path(config.data) if config.data is not None else own_store
    clips = open_split(store, "test")
    if len(clips) == 0:
        raise ValueError(f"{store}: the test split is empty; nothing to sweep")
    trained_classes = runs.read_classes(run)
    if trained_classes is not None and trained_classes != clips.class_names:
        raise ValueError(
            f"{store}: its class names differ from those {run} was trained on: "
            + class_mismatch(trained_classes, clips.class_names)
        )
    model = load_checkpoint(model_path, compile=False)
    gpu.warn_if_gpu_unused()
    batch_size = config.batch_size or int(run_config.get("batch_size", 32))
    segments, per_segment = clips.segments, clips.frames_per_segment

    class FirstCandidates:
        """The stored rows as the model reads them: candidate 0 of every segment."""

        def __getitem__(self, rows):
            stored = np.asarray(clips.frames[rows])
            return select_frames(stored, segments, per_segment, first_candidates(segments))

    def predict(batch):
        count = len(batch)
        if count < batch_size:
            # One compiled shape for every batch; padding rows change no other row's output.
            padding = np.zeros((batch_size - count, *batch.shape[1:]), np.uint8)
            batch = np.concatenate([batch, padding])
        return np.asarray(model.predict_on_batch(batch))[:count]

    rows = sweep_accuracy(predict, FirstCandidates(), clips.labels, batch_size)
    other = own_store is None or store.resolve() != own_store.resolve()
    output = run / (f"{FOLDER}-{store.resolve().name}" if other else FOLDER)
    title = f"{run_config.get('model', model.name)} ({run.name})"
    write_sweep(rows, output, title=title, chance=1.0 / len(clips.class_names))
    used = dataclasses.replace(config, batch_size=batch_size)
    files.write_json_atomic(output / CONFIG_NAME, dataclasses.asdict(used))
    return {
        "run": str(run),
        "model": run_config.get("model", model.name),
        "data": str(store),
        "output": str(output),
        "rows": rows,
    }


def format_sweep(rows: list[dict]) -> str:
    """The sweep as a text table, one line per level."""
    lines = ["sweep     level  gamma   gain  noise  accuracy"]
    for row in rows:
        lines.append(
            f"{row['sweep']:<8}  {row['level']:>5}  {row['gamma']:5.2f}  {row['gain']:5.2f}  "
            f"{row['noise']:5.2f}  {100 * row['accuracy']:6.1f} %"
        )
    return "\n".join(lines)


def sweep_accuracy(predict, clips, labels, batch_size: int = 32, seed: int = 0) -> list[dict]:
    """Accuracy at every level of every sweep.

    Args:
        predict: a function from uint8 clips (batch, frames, h, w, 3) to class probabilities.
        clips: uint8 (n, frames, h, w, 3), indexable in slices (a memory map is fine).
        labels: int (n,).
        batch_size: clips per call of ``predict``.
        seed: the noise's seed.

    Returns:
        One row per (sweep, level), keys :data:`COLUMNS`.
    """
    labels = np.asarray(labels)
    rows = []
    for sweep, levels in SWEEPS.items():
        for degradation in levels:
            correct = 0
            for start in range(0, len(labels), batch_size):
                batch = degrade(
                    np.asarray(clips[start : start + batch_size]), degradation, seed, start
                )
                predicted = np.argmax(np.asarray(predict(batch)), axis=1)
                correct += int(np.sum(predicted == labels[start : start + batch_size]))
            rows.append(_row(sweep, degradation, correct / len(labels), len(labels)))
            log.info("%s level %d: accuracy %.3f", sweep, degradation.level, rows[-1]["accuracy"])
    return rows


def write_sweep(rows: list[dict], folder: str | os.PathLike, title: str = "", chance=None) -> Path:
    """Write robustness.csv and robustness.png into ``folder``; return the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files.write_text_atomic(folder / CSV_NAME, buffer.getvalue())
    figure = sweep_figure({title or "model": rows}, chance=chance)
    figure.savefig(folder / PNG_NAME, dpi=110, bbox_inches="tight")
    return folder


def read_sweep(folder: str | os.PathLike) -> list[dict] | None:
    """The rows of ``folder/robustness.csv``, or None when there is none."""
    path = Path(folder) / CSV_NAME
    if not path.exists():
        return None
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["level"], row["clips"] = int(row["level"]), int(row["clips"])
        for key in ("gamma", "gain", "noise", "accuracy"):
            row[key] = float(row[key])
    return rows


def sweep_figure(results: dict[str, list[dict]], chance: float | None = None):
    """One panel per sweep, one line per entry of ``results`` (label -> rows)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    axes = figure.subplots(1, len(SWEEPS), squeeze=False)[0]
    for axis, (sweep, levels) in zip(axes, SWEEPS.items(), strict=True):
        for label, rows in results.items():
            points = sorted(
                (row["level"], row["accuracy"]) for row in rows if row["sweep"] == sweep
            )
            if points:
                x, y = zip(*points, strict=True)
                axis.plot(x, [100 * value for value in y], marker="o", label=label)
        if chance is not None:
            axis.axhline(100 * chance, color="grey", linestyle="--", linewidth=1, label="chance")
        axis.set_xticks([level.level for level in levels])
        axis.set_xticklabels([_level_label(sweep, level) for level in levels], fontsize=8)
        axis.set_xlabel("gamma / gain" if sweep == "darkness" else "noise (std, 0-1)")
        axis.set_ylabel("test accuracy (%)")
        axis.set_ylim(0, 100)
        axis.set_title(f"{sweep} sweep")
        axis.grid(alpha=0.3)
    axes[-1].legend(fontsize=8, loc="upper right")
    return figure


def _level_label(sweep: str, level: Degradation) -> str:
    if sweep == "darkness":
        return f"{level.gamma:g}/{level.gain:g}"
    return f"{level.noise:g}"


def _row(sweep: str, degradation: Degradation, accuracy: float, clips: int) -> dict:
    return {
        "sweep": sweep,
        "level": degradation.level,
        "gamma": degradation.gamma,
        "gain": degradation.gain,
        "noise": degradation.noise,
        "accuracy": accuracy,
        "clips": clips,
    }

"""Compare training runs: curves, confusion matrices and a table, as HTML and Markdown.

``compare([RUN, ...], OUT)`` reads each run's ``config.json``, ``history.csv`` and
``evaluation/metrics.json`` (written by ``nightact evaluate``) and writes::

    OUT/
      report.html     self-contained: the figures are embedded, it opens from disk
      report.md       the same report in Markdown, with the PNGs beside it
      report.json     the table's numbers, per model and per run
      loss.png        training and validation loss per epoch, one line per model
      accuracy.png    training and validation accuracy per epoch
      confusion.png   one test-split confusion matrix per model, two per row where they fit;
                      each cell: clips and the percentage of the true class
      robustness.png  accuracy along the darkness and noise sweeps, one line per run, when
                      any run has RUN/robustness/ (``nightact robustness RUN``)
      compare_config.json   the CompareConfig

Several runs of the same model (different seeds) are drawn as their mean with a band of one
standard deviation, their confusion matrices are summed, and the table shows mean +- std.
Nothing here imports Keras: a report is made from the files the runs left on disk.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import logging
import math
import os
import statistics
import textwrap
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from nightact.core import files
from nightact.core import runs as run_files
from nightact.core.locks import folder_lock
from nightact.core.names import MODEL_NAMES, model_key
from nightact.nets.backbones import model_label
from nightact.scoring.evaluate import draw_confusion, evaluate
from nightact.scoring.robustness import FOLDER, read_sweep, sweep_figure
from nightact.scoring.stats import compare_predictions, comparisons_to_json

__all__ = [
    "CELL_FONT",
    "CONFIG_NAME",
    "FIGURE_DPI",
    "FIGURE_FONT",
    "FIGURES",
    "REPORT_WIDTH_PX",
    "ROBUSTNESS_FIGURE",
    "ROBUSTNESS_TITLE",
    "TABLE_COLUMNS",
    "compare",
    "CompareConfig",
    "confusion_grid_figure",
    "curves_figure",
    "evaluate_runs",
    "find_runs",
    "load_run",
    "paired_tests",
    "render_html",
    "render_markdown",
    "robustness_sweeps",
    "run_compare",
    "summarize",
    "table_cells",
]

log = logging.getLogger(__name__)

CONFIG_NAME = "compare_config.json"
FIGURES = ("loss.png", "accuracy.png", "confusion.png")
# The figures are saved at FIGURE_DPI; the confusion matrices are drawn no wider than
# REPORT_WIDTH_PX, which fits the HTML's 1300 px column, so a browser shows them at their own size
# and their text at FIGURE_FONT points is 14 px on the page (CELL_FONT, in the cells: 12.5 px).
FIGURE_DPI = 100
REPORT_WIDTH_PX = 1280
FIGURE_FONT = 10
CELL_FONT = 9
_SUPTITLE_FONT = 11
_TITLE_INCHES = 0.45  # room for a matrix's title, or the grid's
TABLE_COLUMNS = (
    "model",
    "runs",
    "parameters",
    "size MB",
    "s per epoch",
    "inference ms per clip",
    "test accuracy",
    "accuracy 95 % CI",
    "macro F1",
    "macro F1 95 % CI",
    "mean class accuracy",
)


@dataclass
class CompareConfig:
    """Everything that decides a report; saved as OUT/compare_config.json."""

    runs: tuple[str, ...]  # run folders, or folders holding runs
    out: str = "report"  # the report folder
    evaluate_missing: bool = False  # evaluate runs not yet evaluated (loads Keras); else refuse

    def __post_init__(self):
        self.runs = tuple(str(path) for path in self.runs)
        self.out = str(self.out)
        if not self.runs:
            raise ValueError("runs must name at least one run folder or folder of runs, got none")


def find_runs(paths) -> list[Path]:
    """Run folders among ``paths``; a folder that is not a run stands for the runs inside it."""
    runs = []
    for path in map(Path, paths):
        if run_files.is_run(path):
            runs.append(path)
        elif path.is_dir():
            inside = sorted(child for child in path.iterdir() if run_files.is_run(child))
            if not inside:
                raise FileNotFoundError(f"{path}: neither a training run nor a folder of runs")
            runs.extend(inside)
        else:
            raise FileNotFoundError(f"{path}: no such training run")
    return runs


def load_run(run: str | os.PathLike) -> dict:
    """The files of one evaluated run: its config, history rows and test metrics."""
    config = run_files.read_config(run)
    return {
        "run": str(run),
        "config": config,
        "history": run_files.read_history(run),
        "metrics": run_files.read_metrics(run),
    }


def evaluate_runs(folders: list[Path]) -> list[Path]:
    """Evaluate, on the test split, each run whose evaluation is missing or stale; return them."""
    missing = [run for run in folders if not run_files.is_evaluated(run)]
    if missing:
        for run in missing:
            log.info("evaluating %s on its test split first", run)
            evaluate(run)
    return missing


def summarize(runs: list[dict]) -> list[dict]:
    """One table row per model: the runs' numbers, their mean and standard deviation."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        config = run["config"]
        groups.setdefault(model_key(config["model"], config.get("backbone")), []).append(run)
    order = [name for name in MODEL_NAMES if name in groups]
    order += sorted(name for name in groups if name not in MODEL_NAMES)
    rows = []
    for name in order:
        members = groups[name]
        values = {
            "parameters": [run["metrics"]["parameters"] for run in members],
            "size_mb": [run["metrics"]["model_size_mb"] for run in members],
            "seconds_per_epoch": [_seconds_per_epoch(run["history"]) for run in members],
            "inference_ms_per_clip": [run["metrics"]["inference_ms_per_clip"] for run in members],
            "accuracy": [run["metrics"]["accuracy"] for run in members],
            "macro_f1": [run["metrics"]["macro_f1"] for run in members],
            "mean_class_accuracy": [run["metrics"]["mean_class_accuracy"] for run in members],
        }
        rows.append(
            {
                "model": name,
                "label": model_label(
                    members[0]["config"]["model"], members[0]["config"].get("backbone")
                ),
                "runs": [run["run"] for run in members],
                "seeds": [run["config"].get("seed") for run in members],
                "values": values,
                # Bootstrap intervals over test clips, per run (None: evaluated before they were).
                "intervals": {
                    key: [run["metrics"].get(f"{key}_ci") for run in members]
                    for key in ("accuracy", "macro_f1")
                },
                "mean": {key: _mean(numbers) for key, numbers in values.items()},
                "std": {key: _std(numbers) for key, numbers in values.items()},
            }
        )
    return rows


def compare(
    runs, out: str | os.PathLike, evaluate_missing: bool = CompareConfig.evaluate_missing
) -> Path:
    """Write the comparison report of ``runs`` (run folders, or folders of runs) to ``out``.

    Runs not yet evaluated (see :func:`nightact.core.runs.is_evaluated`) are refused, or, with
    ``evaluate_missing``, evaluated on their test split first (this loads Keras).

    Returns:
        The path of ``report.html``.

    Holds the lock of ``out`` while it writes (a second compare into it is refused).
    """
    return run_compare(CompareConfig(runs, out, evaluate_missing))


def run_compare(config: CompareConfig) -> Path:
    """Run a :class:`CompareConfig`; see :func:`compare`."""
    folders = find_runs(config.runs)
    with folder_lock(config.out):
        return _compare(config, folders)


def _compare(config: CompareConfig, folders: list[Path]) -> Path:
    if config.evaluate_missing:
        evaluate_runs(folders)
    loaded = [load_run(run) for run in folders]
    class_names = loaded[0]["metrics"]["class_names"]
    for run in loaded[1:]:
        if run["metrics"]["class_names"] != class_names:
            raise ValueError(
                f"{run['run']}: its classes differ from {loaded[0]['run']}'s; "
                "compare runs of the same data"
            )
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    files.write_json_atomic(out / CONFIG_NAME, dataclasses.asdict(config))
    rows = summarize(loaded)
    figures = {
        "loss.png": curves_figure(loaded, rows, "loss", "loss"),
        "accuracy.png": curves_figure(loaded, rows, "accuracy", "accuracy"),
        "confusion.png": confusion_grid_figure(loaded, rows, class_names),
    }
    sections = list(_SECTIONS)
    sweeps = robustness_sweeps(folders)
    if sweeps:
        figures[ROBUSTNESS_FIGURE] = sweep_figure(sweeps, chance=1.0 / len(class_names))
        sections.append((ROBUSTNESS_FIGURE, ROBUSTNESS_TITLE))
    else:
        # A report rewritten after its runs lost their sweeps must not show a stale picture.
        (out / ROBUSTNESS_FIGURE).unlink(missing_ok=True)
    for name, figure in figures.items():
        figure.savefig(out / name, dpi=FIGURE_DPI, bbox_inches="tight")
    context = _context(loaded)
    context["paired"] = paired_tests(loaded, rows)
    files.write_json_atomic(out / "report.json", {**context, "models": rows})
    files.write_text_atomic(out / "report.md", render_markdown(rows, context, sections))
    images = {name: (out / name).read_bytes() for name, _ in sections}
    html_text = render_html(rows, context, images, sections)
    report = files.write_text_atomic(out / "report.html", html_text)
    log.info("wrote %s (%d runs of %d models)", report, len(loaded), len(rows))
    return report


# --- paired tests --------------------------------------------------------------------------------


def paired_tests(runs: list[dict], rows: list[dict]) -> dict:
    """McNemar's exact test between every two models on the same test clips.

    Each model is represented by its first run (lowest seed); models whose evaluation has no
    per-clip predictions, or whose test clips differ from the others', are left out and named.
    Returns ``comparisons`` (see :func:`nightact.scoring.stats.comparisons_to_json`), ``runs``
    used, ``left_out`` and ``sentences`` for people.
    """
    by_path = {run["run"]: run for run in runs}
    chosen, left_out = {}, []
    reference = None
    for row in rows:
        first = min(
            (by_path[path] for path in row["runs"]),
            key=lambda run: (run["config"].get("seed") is None, run["config"].get("seed") or 0),
        )
        predictions = first["metrics"].get("predictions")
        if not predictions or "predicted" not in predictions:
            left_out.append(f"{row['label']}: no per-clip predictions (evaluate it again)")
            continue
        clips = (predictions.get("paths"), predictions["labels"])
        if reference is None:
            reference = clips
        elif clips != reference:
            left_out.append(f"{row['label']}: scored on other test clips")
            continue
        chosen[row["label"]] = first
    result = {"runs": {label: run["run"] for label, run in chosen.items()}, "left_out": left_out}
    if len(chosen) < 2:
        result.update(comparisons=[], sentences=[])
        return result
    labels = reference[1]
    comparisons = compare_predictions(
        labels, {label: run["metrics"]["predictions"]["predicted"] for label, run in chosen.items()}
    )
    significant = [c for c in comparisons if c.significant]
    headline = (
        f"{len(significant)} of {len(comparisons)} differences in test accuracy are significant "
        f"at 5 % (McNemar's exact test on the {len(labels)} shared test clips, Holm-adjusted for "
        f"{len(comparisons)} comparisons)."
    )
    ordered = significant + [c for c in comparisons if not c.significant]
    result.update(
        comparisons=comparisons_to_json(comparisons),
        sentences=[headline, *(c.sentence() for c in ordered)],
    )
    return result


def _paired_lines(paired: dict, text=str, code=lambda path: f"`{path}`") -> list[str]:
    """The paired tests in sentences; ``text`` escapes words, ``code`` marks up a run's path.

    The defaults write Markdown; the HTML report passes ``html.escape`` and a ``<code>`` element,
    so that no Markdown syntax reaches a browser as literal characters.
    """
    lines = [text(line) for line in paired.get("sentences", [])]
    if not lines:
        lines.append(text("Paired tests need at least two models with per-clip test predictions."))
    if paired.get("runs") and len(paired["runs"]) > 1:
        lines.append(
            text("Each model is represented by its first run (lowest seed): ")
            + ", ".join(f"{text(label)} {code(run)}" for label, run in paired["runs"].items())
            + "."
        )
    lines += [text(f"Left out: {reason}.") for reason in paired.get("left_out", [])]
    return lines


# --- figures -------------------------------------------------------------------------------------


def _colours(rows: list[dict]) -> dict[str, tuple]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {row["model"]: palette(index % 10) for index, row in enumerate(rows)}


def curves_figure(runs: list[dict], rows: list[dict], metric: str, label: str):
    """Train (left) and validation (right) curves of ``metric``, one line per model.

    Several runs of a model: the mean per epoch, with a band of one standard deviation.
    """
    from matplotlib.figure import Figure

    colours = _colours(rows)
    figure = Figure(figsize=(13, 4.8), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    for axis, key, title in zip(
        axes, (metric, f"val_{metric}"), ("training", "validation"), strict=True
    ):
        for row in rows:
            histories = [run["history"] for run in runs if run["run"] in row["runs"]]
            epochs, mean, std = _curve(histories, key)
            if not epochs:
                continue
            name = row["label"] + (f" ({len(histories)} runs)" if len(histories) > 1 else "")
            axis.plot(epochs, mean, color=colours[row["model"]], label=name, marker=".")
            if len(histories) > 1:
                axis.fill_between(
                    epochs, mean - std, mean + std, color=colours[row["model"]], alpha=0.2
                )
        axis.set_title(f"{title} {label}")
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel(label)
    if metric == "accuracy":
        axes[0].set_ylim(0, 1.02)
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return figure


def _curve(histories: list[list[dict]], key: str):
    """Mean and standard deviation of ``key`` per epoch (counted from 1) over the histories."""
    by_epoch: dict[int, list[float]] = {}
    for history in histories:
        for row in history:
            if key in row and "epoch" in row:
                by_epoch.setdefault(int(row["epoch"]) + 1, []).append(row[key])
    epochs = sorted(by_epoch)
    mean = np.array([np.mean(by_epoch[epoch]) for epoch in epochs])
    std = np.array([np.std(by_epoch[epoch]) for epoch in epochs])
    return epochs, mean, std


def confusion_grid_figure(runs: list[dict], rows: list[dict], class_names: list[str]):
    """One test-split confusion matrix per model, two side by side where they fit.

    Runs of the same model are pooled (their counts summed). Each cell shows its clip count and
    the percentage of its true class (the colour). The figure is sized from the number of classes
    and the longest class name so that, saved at :data:`FIGURE_DPI`, it is no wider than the
    report's column: a browser then shows it at its own size, text at :data:`FIGURE_FONT` points
    (:data:`CELL_FONT` in the cells) instead of shrinking it. The class names are written once
    per row and column of the grid, where they have room to be read whole.
    """
    from matplotlib.figure import Figure

    count, classes = len(rows), len(class_names)
    plan = _confusion_plan(count, class_names)
    columns, matrix = plan["columns"], plan["matrix"]
    lines = math.ceil(count / columns)
    figure = Figure(
        figsize=(
            columns * matrix + plan["names"],
            lines * (matrix + _TITLE_INCHES) + plan["names_below"] + _TITLE_INCHES,
        ),
        layout="compressed",
    )
    axes = np.atleast_1d(figure.subplots(lines, columns, squeeze=False)).reshape(lines, columns)
    for index, row in enumerate(rows):
        line, column = divmod(index, columns)
        axis = axes[line, column]
        matrices = [
            np.array(run["metrics"]["confusion"]) for run in runs if run["run"] in row["runs"]
        ]
        pooled = np.sum(matrices, axis=0)
        # Names at the left of each grid row, and under the lowest matrix of each grid column.
        draw_confusion(
            axis,
            pooled,
            class_names,
            show_x_names=index + columns >= count,
            show_y_names=column == 0,
            fontsize=FIGURE_FONT,
            cell_fontsize=min(CELL_FONT, CELL_FONT * matrix / (classes * plan["cell"])),
        )
        accuracy = np.trace(pooled) / max(pooled.sum(), 1)
        runs_note = f", {len(matrices)} runs pooled" if len(matrices) > 1 else ""
        axis.set_title(f"{row['label']}: {100 * accuracy:.1f} %{runs_note}", fontsize=11)
    for index in range(count, lines * columns):
        axes.flat[index].set_visible(False)
    title = (
        "Confusion matrices on the test split (rows: true class; each cell: clips, and the "
        "percentage of the true class, which sets its colour)"
    )
    # Wrapped to the figure's width (a character is about 0.6 em): a title wider than the grid
    # would widen the saved picture, and the browser would shrink it all to fit the page.
    characters = int(figure.get_figwidth() * 72 / (0.6 * _SUPTITLE_FONT))
    figure.suptitle(textwrap.fill(title, max(characters, 30)), fontsize=_SUPTITLE_FONT)
    return figure


def _confusion_plan(count: int, class_names: list[str]) -> dict:
    """Inches of the grid: columns, one matrix's side, one cell, and the names beside and below.

    A cell must hold "100%" under a count at :data:`CELL_FONT`; two matrices go side by side when
    two such matrices and the names fit in the report's width, else one per row (they then shrink,
    and their cell text with them, only past about 24 classes).
    """
    from matplotlib import rcParams
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    def inches(text: str, size: float) -> float:
        width, _, _ = TextToPath().get_text_width_height_descent(
            text, FontProperties(size=size), ismath=False
        )
        return width / 72

    longest = max(inches(name, FIGURE_FONT) for name in class_names)
    # The names, the tick marks and the axis label beside or below them.
    names = longest + 2.2 * FIGURE_FONT / 72
    cell = inches("100%", CELL_FONT) + 0.5 * CELL_FONT / 72
    # Saving with bbox_inches="tight" pads the picture by pad_inches on each side.
    width = REPORT_WIDTH_PX / FIGURE_DPI - 2 * rcParams["savefig.pad_inches"]
    classes = len(class_names)
    columns = 2 if count > 1 and 2 * classes * cell + names <= width else 1
    # Roomier cells where the page allows it, as in evaluate's own figure.
    matrix = min(classes * max(cell, 0.55), (width - names) / columns)
    return {
        "columns": columns,
        "matrix": matrix,
        "cell": cell,
        "names": names,
        # Names written at 45 degrees: their height is their length over the square root of 2.
        "names_below": longest / math.sqrt(2) + names - longest,
    }


# --- the table and the documents -----------------------------------------------------------------


def table_cells(row: dict) -> list[str]:
    """The table's cells for one model: mean +- std where the model has several runs."""
    several = len(row["runs"]) > 1

    def cell(key: str, scale: float = 1.0, digits: int = 1, suffix: str = "") -> str:
        mean = row["mean"][key]
        if mean is None:
            return "n/a"
        text = f"{scale * mean:.{digits}f}"
        if several:
            text += f" ± {scale * row['std'][key]:.{digits}f}"
        return text + suffix

    def interval(key: str, scale: float = 1.0, digits: int = 1, suffix: str = "") -> str:
        if several:
            # Several seeds: their spread is the honest interval (the ± column gives the std).
            values = [value for value in row["values"][key] if value is not None]
            low, high = min(values), max(values)
            return f"seeds {scale * low:.{digits}f}–{scale * high:.{digits}f}{suffix}"
        bounds = row.get("intervals", {}).get(key, [None])[0]
        if not bounds:
            return "n/a"
        return f"{scale * bounds[0]:.{digits}f}–{scale * bounds[1]:.{digits}f}{suffix}"

    parameters = row["values"]["parameters"]
    return [
        row["label"],
        str(len(row["runs"])),
        f"{parameters[0]:,}" if len(set(parameters)) == 1 else cell("parameters", digits=0),
        cell("size_mb", digits=2),
        cell("seconds_per_epoch", digits=1),
        cell("inference_ms_per_clip", digits=2),
        cell("accuracy", scale=100, suffix=" %"),
        interval("accuracy", scale=100, suffix=" %"),
        cell("macro_f1", digits=3),
        interval("macro_f1", digits=3),
        cell("mean_class_accuracy", scale=100, suffix=" %"),
    ]


def robustness_sweeps(folders: list[Path]) -> dict[str, list[dict]]:
    """The ``nightact robustness`` rows of each run that has them, labelled by run folder."""
    sweeps = {}
    for run in folders:
        rows = read_sweep(Path(run) / FOLDER)
        if rows:
            sweeps[Path(run).name] = rows
    return sweeps


def render_markdown(rows: list[dict], context: dict, sections=None) -> str:
    lines = ["# nightact: model comparison", "", *_context_lines(context), ""]
    lines += ["## Test-split results", ""]
    lines.append("| " + " | ".join(TABLE_COLUMNS) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(TABLE_COLUMNS) - 1)) + "|")
    for row in rows:
        lines.append("| " + " | ".join(table_cells(row)) + " |")
    lines += ["", _TABLE_NOTE, ""]
    for name, title in sections or _SECTIONS:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    lines += ["## Which differences are real", ""]
    lines += [f"- {line}" for line in _paired_lines(context.get("paired", {}))]
    lines += [""]
    lines += ["## Runs", ""]
    for row in rows:
        for run, seed in zip(row["runs"], row["seeds"], strict=True):
            lines.append(f"- {row['label']} (seed {seed}): `{run}`")
    return "\n".join(lines) + "\n"


def render_html(rows: list[dict], context: dict, images: dict[str, bytes], sections=None) -> str:
    """The report as one HTML document with the PNGs embedded as base64 data URIs."""
    escape = html.escape
    head = "".join(f"<th>{escape(column)}</th>" for column in TABLE_COLUMNS)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in table_cells(row)) + "</tr>"
        for row in rows
    )
    blocks = []
    for name, title in sections or _SECTIONS:
        data = base64.b64encode(images[name]).decode("ascii")
        blocks.append(
            f'<h2>{escape(title)}</h2>\n<img src="data:image/png;base64,{data}" '
            f'alt="{escape(title)}">'
        )
    run_items = "\n".join(
        f"<li>{escape(row['label'])} (seed {escape(str(seed))}): <code>{escape(run)}</code></li>"
        for row in rows
        for run, seed in zip(row["runs"], row["seeds"], strict=True)
    )
    context_html = "\n".join(f"<p>{escape(line)}</p>" for line in _context_lines(context))
    paired_lines = _paired_lines(
        context.get("paired", {}), text=escape, code=lambda path: f"<code>{escape(path)}</code>"
    )
    paired_items = "\n".join(f"<li>{line}</li>" for line in paired_lines)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>nightact: model comparison</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1300px; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }}
th, td {{ border: 1px solid #ccc; padding: 0.35em 0.55em; text-align: right; }}
td {{ white-space: nowrap; }}
/* Eleven columns: the headings wrap, so the table fits a laptop's window. */
th {{ background: #f0f3f7; vertical-align: bottom; max-width: 6.5em; }}
.table-frame {{ overflow-x: auto; }}
td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; height: auto; display: block; margin: 0.5em 0 1.5em; }}
.note {{ color: #555; font-size: 0.9em; }}
code {{ font-size: 0.9em; }}
</style>
</head>
<body>
<h1>nightact: model comparison</h1>
{context_html}
<h2>Test-split results</h2>
<div class="table-frame">
<table>
<thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody>
</table>
</div>
<p class="note">{escape(_TABLE_NOTE)}</p>
{chr(10).join(blocks)}
<h2>Which differences are real</h2>
<ul class="paired">
{paired_items}
</ul>
<h2>Runs</h2>
<ul>
{run_items}
</ul>
</body>
</html>
"""


ROBUSTNESS_FIGURE = "robustness.png"
ROBUSTNESS_TITLE = "Robustness: test accuracy as the clips get darker and noisier"
_SECTIONS = (
    ("loss.png", "Loss per epoch"),
    ("accuracy.png", "Accuracy per epoch"),
    ("confusion.png", "Confusion matrices"),
)
_TABLE_NOTE = (
    "Scores are on the held-out test split, which chose nothing (the checkpoint is the epoch "
    "with the best validation accuracy). Mean class accuracy is the mean of the per-class "
    "recalls. Size is that of the weights, in MB of 2^20 = 1,048,576 bytes. Seconds per epoch is "
    "the median over epochs, validation included. Inference is the model's forward pass alone, "
    "per clip, at the training batch size. With several runs of a model: mean ± standard "
    "deviation. 95 % CI: a bootstrap over the test clips (2,000 resamples, seeded); with several "
    "runs, the range over seeds instead."
)


def _context(runs: list[dict]) -> dict:
    first = runs[0]
    config = first["config"]
    return {
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "data": sorted({run["config"].get("data", "") for run in runs}),
        "clip_shape": f"{config.get('frames')} frames of {config.get('height')}x"
        f"{config.get('width')}",
        "test_clips": sorted({run["metrics"]["clips"] for run in runs}),
        "classes": first["metrics"]["class_names"],
        "epochs": sorted({run["config"].get("epochs") for run in runs}),
        "losses": sorted({run["config"].get("loss") for run in runs}),
    }


def _context_lines(context: dict) -> list[str]:
    return [
        f"Generated {context['generated']} from {', '.join(context['data'])}: "
        f"{context['clip_shape']}, {len(context['classes'])} classes, "
        f"{', '.join(map(str, context['test_clips']))} test clips.",
        f"Training: up to {', '.join(map(str, context['epochs']))} epochs, loss "
        f"{', '.join(map(str, context['losses']))}.",
    ]


def _seconds_per_epoch(history: list[dict]) -> float | None:
    seconds = [row["seconds"] for row in history if "seconds" in row]
    return statistics.median(seconds) if seconds else None


def _mean(numbers) -> float | None:
    numbers = [number for number in numbers if number is not None]
    return float(np.mean(numbers)) if numbers else None


def _std(numbers) -> float | None:
    numbers = [number for number in numbers if number is not None]
    # The spread between runs: the sample standard deviation (0 for a single run).
    return float(np.std(numbers, ddof=1)) if len(numbers) > 1 else 0.0 if numbers else None

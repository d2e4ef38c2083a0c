"""compare(): figures, a self-contained HTML report and a Markdown copy, from run folders on disk.

The runs here are written by hand (config.json, history.csv, evaluation/metrics.json), so the
numbers in the table can be checked against values known in advance; no model is trained.
"""

from __future__ import annotations

import base64
import html
import html.parser
import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from conftest import write_run_folder
from nightact.cli import main
from nightact.core.names import MODEL_LABELS, MODEL_NAMES
from nightact.scoring.compare import (
    FIGURE_DPI,
    REPORT_WIDTH_PX,
    CompareConfig,
    compare,
    confusion_grid_figure,
    find_runs,
    load_run,
    summarize,
)
from nightact.sources.synthetic import CLASS_NAMES


def write_fake_run(
    folder: Path,
    model: str,
    seed: int,
    accuracy: float,
    macro_f1: float,
    seconds: list[float],
    inference_ms: float,
    parameters: int = 1000,
    predictions: dict | None = None,
    accuracy_ci: list[float] | None = None,
) -> Path:
    """A run folder as train + evaluate leave it, with chosen numbers."""
    config = {"model": model, "seed": seed, "data": "store", "epochs": len(seconds)}
    config.update(frames=4, height=24, width=32, loss="crossentropy")
    history = []
    for epoch, duration in enumerate(seconds):
        progress = (epoch + 1) / len(seconds)
        history.append(
            dict(
                epoch=epoch,
                accuracy=accuracy * progress,
                loss=2.5 - progress,
                seconds=duration,
                val_accuracy=accuracy * progress,
                val_loss=2.6,
            )
        )
    rng = np.random.default_rng(seed)
    confusion = rng.integers(0, 3, size=(12, 12)) + np.diag(np.full(12, 8))
    metrics = {
        "model": model,
        "split": "test",
        "clips": int(confusion.sum()),
        "accuracy": accuracy,
        "top3_accuracy": min(1.0, accuracy + 0.1),
        "macro_f1": macro_f1,
        "mean_class_accuracy": accuracy - 0.01,
        "class_names": CLASS_NAMES,
        "confusion": confusion.tolist(),
        "parameters": parameters,
        "model_size_mb": parameters * 12 / 1e6,
        "inference_ms_per_clip": inference_ms,
    }
    if predictions is not None:
        metrics["predictions"] = predictions
    if accuracy_ci is not None:
        metrics["accuracy_ci"] = accuracy_ci
        metrics["macro_f1_ci"] = [macro_f1 - 0.05, macro_f1 + 0.05]
    return write_run_folder(folder, config, history=history, metrics=metrics)


TEST_CLIPS = 100


def fake_predictions(accuracy: float, seed: int) -> dict:
    """Per-clip predictions on one shared set of test clips, right on exactly ``accuracy``."""
    labels = np.random.default_rng(99).integers(0, 12, TEST_CLIPS)
    right = np.zeros(TEST_CLIPS, dtype=bool)
    right[np.random.default_rng(seed).permutation(TEST_CLIPS)[: round(accuracy * TEST_CLIPS)]] = 1
    predicted = np.where(right, labels, (labels + 1) % 12)
    paths = [f"class/clip_{index:03d}.mp4" for index in range(TEST_CLIPS)]
    return {"paths": paths, "labels": labels.tolist(), "predicted": predicted.tolist()}


def write_fake_runs(runs: Path) -> Path:
    """Six models, one run each, plus two more seeds of cnn_gru."""
    for index, model in enumerate(MODEL_NAMES):
        write_fake_run(
            runs / model,
            model,
            seed=0,
            accuracy=0.3 + 0.1 * index,
            macro_f1=0.25 + 0.1 * index,
            seconds=[9.0, 2.0, 3.0],
            inference_ms=1.0 + index,
            parameters=1000 * (index + 1),
            predictions=fake_predictions(0.3 + 0.1 * index, seed=index),
            accuracy_ci=[0.3 + 0.1 * index - 0.09, 0.3 + 0.1 * index + 0.09],
        )
    write_fake_run(runs / "cnn_gru-seed1", "cnn_gru", 1, 0.7, 0.6, [5.0, 4.0], 4.0, 6000)
    write_fake_run(runs / "cnn_gru-seed2", "cnn_gru", 2, 0.9, 0.8, [5.0, 6.0], 8.0, 6000)
    return runs


@pytest.fixture
def fake_runs(tmp_path) -> Path:
    return write_fake_runs(tmp_path / "runs")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The report of the fake runs, made once for the tests that only read it."""
    folder = tmp_path_factory.mktemp("report")
    return compare([write_fake_runs(folder / "runs")], folder / "report")


class _Collector(html.parser.HTMLParser):
    """Tags, attributes and text of an HTML document, with the standard library's parser."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.cells: list[list[str]] = []
        self._in_cell = False
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("link", "script") and (attrs.get("href") or attrs.get("src")):
            self.links.append(attrs.get("href") or attrs.get("src"))
        if tag == "tr":
            self.cells.append([])
        if tag in ("td", "th"):
            self._in_cell = True
            self.cells[-1].append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_cell:
            self.cells[-1][-1] += data


def test_compare_writes_every_figure_and_lists_all_six_models(report):
    out = report.parent
    assert report.name == "report.html"
    for name in ("loss.png", "accuracy.png", "confusion.png", "report.md", "report.json"):
        assert (out / name).stat().st_size > 0, name
    for name in ("loss.png", "accuracy.png", "confusion.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page = _Collector()
    page.feed(report.read_text(encoding="utf-8"))
    # Self-contained: three embedded PNGs that decode, and nothing fetched from elsewhere.
    assert len(page.images) == 3
    for source in page.images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:4] == b"\x89PNG"
    assert page.links == []
    header, *rows = page.cells
    assert header[0] == "model" and "test accuracy" in header
    assert [row[0] for row in rows] == [MODEL_LABELS[name] for name in MODEL_NAMES]

    markdown = (out / "report.md").read_text(encoding="utf-8")
    for name in MODEL_NAMES:
        assert f"| {MODEL_LABELS[name]} |" in markdown
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (out / image).is_file(), image
    assert json.loads((out / "compare_config.json").read_text()) == {
        "runs": [str(out.parent / "runs")],
        "out": str(out),
        "evaluate_missing": False,
    }


def test_table_shows_mean_and_std_over_seeds(report):
    models = json.loads((report.parent / "report.json").read_text())["models"]
    by_name = {row["model"]: row for row in models}

    gru = by_name["cnn_gru"]
    accuracies = [0.8, 0.7, 0.9]  # seed 0 (0.3 + 0.1 * 5), seed 1, seed 2
    assert len(gru["runs"]) == 3
    assert gru["mean"]["accuracy"] == pytest.approx(0.8)
    # Sample standard deviation of 0.8, 0.7, 0.9: sqrt((0.01 + 0.01) / 2) = 0.1.
    assert gru["std"]["accuracy"] == pytest.approx(0.1)
    # Median seconds per epoch of each run: 3.0 (of 9, 2, 3), 4.5 and 5.5.
    assert gru["values"]["seconds_per_epoch"] == pytest.approx([3.0, 4.5, 5.5])
    assert by_name["lstm"]["std"]["accuracy"] == 0.0
    assert by_name["lstm"]["mean"]["accuracy"] == pytest.approx(0.4)

    page = _Collector()
    page.feed(report.read_text(encoding="utf-8"))
    header, *rows = page.cells
    gru_row = dict(zip(header, rows[-1], strict=True))
    assert gru_row["model"] == "CNN + GRU"
    assert gru_row["runs"] == "3"
    assert gru_row["test accuracy"] == f"{np.mean(accuracies) * 100:.1f} ± 10.0 %"
    assert gru_row["inference ms per clip"] == "6.00 ± 2.00"  # mean and std of 6, 4 and 8
    lstm_row = dict(zip(header, rows[1], strict=True))
    assert lstm_row["test accuracy"] == "40.0 %"
    assert lstm_row["parameters"] == "2,000"
    # One run: its bootstrap interval; several seeds: their range.
    assert lstm_row["accuracy 95 % CI"] == "31.0–49.0 %"
    assert lstm_row["macro F1 95 % CI"] == "0.300–0.400"
    assert gru_row["accuracy 95 % CI"] == "seeds 70.0–90.0 %"


def test_paired_tests_say_which_differences_are_significant(report):
    from scipy.stats import binomtest

    paired = json.loads((report.parent / "report.json").read_text())["paired"]
    comparisons = {(c["model_a"], c["model_b"]): c for c in paired["comparisons"]}
    assert len(comparisons) == 15  # six models, each by its first run
    weakest, strongest = MODEL_LABELS["simple_rnn"], MODEL_LABELS["cnn_gru"]
    extremes = comparisons[(weakest, strongest)]
    a = fake_predictions(0.3, seed=0)
    b = fake_predictions(0.8, seed=5)
    labels, first, second = (np.array(a[key]) for key in ("labels", "predicted", "predicted"))
    second = np.array(b["predicted"])
    only_a = int(np.sum((first == labels) & (second != labels)))
    only_b = int(np.sum((first != labels) & (second == labels)))
    assert (extremes["only_a_right"], extremes["only_b_right"]) == (only_a, only_b)
    assert extremes["p_value"] == pytest.approx(binomtest(only_a, only_a + only_b).pvalue)
    assert extremes["significant"]
    assert paired["sentences"][0].endswith("Holm-adjusted for 15 comparisons).")
    assert f"{strongest} is more accurate than {weakest}" in " ".join(paired["sentences"])

    page = _Collector()
    page.feed(report.read_text(encoding="utf-8"))
    text = " ".join(page.text)
    assert "Which differences are real" in text
    assert f"{strongest} is more accurate than {weakest}" in text
    assert "not distinguishable at 5 %" in text
    markdown = (report.parent / "report.md").read_text(encoding="utf-8")
    assert "## Which differences are real" in markdown
    assert f"- {paired['sentences'][0]}" in markdown


def test_paired_tests_leave_out_runs_without_predictions(fake_runs, tmp_path):
    metrics_file = fake_runs / "lstm" / "evaluation" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    del metrics["predictions"]
    metrics_file.write_text(json.dumps(metrics))
    report = compare([fake_runs], tmp_path / "report")
    paired = json.loads((report.parent / "report.json").read_text())["paired"]
    assert len(paired["comparisons"]) == 10  # five models left
    assert paired["left_out"] == ["LSTM: no per-clip predictions (evaluate it again)"]


def test_compare_refuses_an_unevaluated_run(fake_runs, tmp_path):
    (fake_runs / "lstm" / "evaluation" / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match="nightact evaluate"):
        compare([fake_runs / "lstm"], tmp_path / "new" / "report")
    # Refused inside its lock: neither the lock file nor the folders made for it stay.
    assert not (tmp_path / "new").exists()
    (tmp_path / "report").mkdir()
    with pytest.raises(FileNotFoundError, match="nightact evaluate"):
        compare([fake_runs / "lstm"], tmp_path / "report")
    assert list((tmp_path / "report").iterdir()) == []


def test_compare_config_needs_a_run_and_keeps_paths_as_text(tmp_path):
    with pytest.raises(ValueError, match="runs must name at least one run folder"):
        compare([], tmp_path / "report")
    assert not (tmp_path / "report").exists()  # refused before the folder is made
    config = CompareConfig([tmp_path / "a", "b"], tmp_path / "report")
    assert config == CompareConfig(
        (str(tmp_path / "a"), "b"), str(tmp_path / "report"), evaluate_missing=False
    )


def test_find_runs_expands_a_folder_of_runs(fake_runs):
    assert len(find_runs([fake_runs])) == 8
    assert find_runs([fake_runs / "gru"]) == [fake_runs / "gru"]
    with pytest.raises(FileNotFoundError):
        find_runs([fake_runs / "missing"])


def test_compare_command(fake_runs, tmp_path, capsys):
    out = tmp_path / "cli-report"
    assert (
        main(["compare", str(fake_runs / "gru"), str(fake_runs / "lstm"), "--out", str(out)]) == 0
    )
    assert str(out / "report.html") in capsys.readouterr().out
    markdown = (out / "report.md").read_text()
    assert "| GRU |" in markdown and "| LSTM |" in markdown and "| SimpleRNN |" not in markdown
    assert not (out / ".lock").exists()  # let go of, and removed, at the end


# Text in a figure shown at its own size (one PNG pixel per CSS pixel) must be at least this tall,
# in CSS pixels: about the smallest that reads without leaning in (the page's own text is 16).
LEGIBLE_PX = 11


def _report_grid(report: Path):
    """The report's confusion grid figure, drawn again from the runs it was made of."""
    runs = [load_run(run) for run in find_runs([report.parent.parent / "runs"])]
    rows = summarize(runs)
    return confusion_grid_figure(runs, rows, runs[0]["metrics"]["class_names"]), runs, rows


def _smallest_font_points(figure) -> float:
    """The smallest font of any text the figure shows (hidden grid places aside)."""
    from matplotlib.text import Text

    return min(
        text.get_fontsize()
        for text in figure.findobj(Text)
        if text.get_visible()
        and text.get_text().strip()
        and (text.axes is None or text.axes.get_visible())
    )


def test_confusion_grid_fits_the_page_with_legible_text_and_whole_cells(report):
    from matplotlib import image
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure, runs, rows = _report_grid(report)
    # Twelve classes, six models: two matrices side by side, three grid rows.
    shown = [axis for axis in figure.axes if axis.get_visible()]
    assert len(shown) == 6
    assert len({round(axis.get_position().x0, 3) for axis in shown}) == 2
    # The saved picture is no wider than the report's column, so a browser does not shrink it...
    saved = image.imread(report.parent / "confusion.png")
    assert saved.shape[1] <= REPORT_WIDTH_PX
    # ...and at its own size its smallest text, the cells' numbers, is legible.
    assert _smallest_font_points(figure) * FIGURE_DPI / 72 >= LEGIBLE_PX

    figure.set_dpi(FIGURE_DPI)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    gru = next(row for row in rows if row["model"] == "cnn_gru")
    pooled = sum(np.array(run["metrics"]["confusion"]) for run in runs if run["run"] in gru["runs"])
    axis = shown[[row["model"] for row in rows].index("cnn_gru")]
    assert (
        axis.get_title()
        == f"CNN + GRU: {100 * np.trace(pooled) / pooled.sum():.1f} %, 3 runs pooled"
    )
    # Every matrix of the grid has cells of this size.
    corner = axis.transData.transform([(-0.5, -0.5), (0.5, 0.5)])
    cell_width, cell_height = np.abs(corner[1] - corner[0])
    for text in axis.texts:
        column, row = map(round, text.get_position())
        count = pooled[row, column]
        assert text.get_text() == f"{count}\n{100 * count / pooled[row].sum():.0f}%"
        # The two lines sit inside their cell, with room to spare around them.
        box = text.get_window_extent(renderer)
        assert box.width < 0.95 * cell_width and box.height < 0.95 * cell_height, text
    assert len(axis.texts) == np.count_nonzero(pooled)
    # Long names stay whole, inside the figure, and neighbours do not run into each other.
    left = shown[4]  # lowest left: names below and beside it
    names = [label.get_text() for label in left.get_yticklabels()]
    assert names == [label.get_text() for label in left.get_xticklabels()] == list(CLASS_NAMES)
    for label in left.get_xticklabels() + left.get_yticklabels():
        box = label.get_window_extent(renderer)
        assert figure.bbox.x0 <= box.x0 and box.x1 <= figure.bbox.x1, label.get_text()
        assert figure.bbox.y0 <= box.y0 and box.y1 <= figure.bbox.y1, label.get_text()
    rows_boxes = [label.get_window_extent(renderer) for label in left.get_yticklabels()]
    for upper, lower in zip(rows_boxes[:-1], rows_boxes[1:], strict=True):
        assert lower.y1 < upper.y0
    # The names below are parallel lines at 45 degrees, one cell apart along the axis: measured
    # across them, neighbours are a cell width over the square root of 2 apart, which must hold a
    # line of text.
    columns_boxes = [label.get_window_extent(renderer) for label in left.get_xticklabels()]
    for first, second in zip(columns_boxes[:-1], columns_boxes[1:], strict=True):
        assert first.x1 < second.x1
    line_height = 1.2 * left.get_xticklabels()[0].get_fontsize() * FIGURE_DPI / 72
    assert cell_width / np.sqrt(2) > line_height


# Added to a copy of the report, after the page has loaded: what the browser laid out, written
# into the DOM that --dump-dom prints (the report itself has no script).
_MEASURE = """<script>
addEventListener("load", () => {
  const figures = Array.from(document.images, (image) => ({
    alt: image.alt,
    natural: image.naturalWidth,
    rendered: image.getBoundingClientRect().width,
  }));
  const table = document.querySelector("table").getBoundingClientRect();
  const measured = {
    window: innerWidth, text: document.body.innerText, figures,
    table: {left: table.left, right: table.right},
    page: document.documentElement.scrollWidth,
  };
  document.body.dataset.measured = encodeURIComponent(JSON.stringify(measured));
});
</script>
"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_a_headless_browser(report, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium); HTML render unchecked")
    screenshot = tmp_path / "screenshot.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ]
    measured_page = tmp_path / "measured.html"
    measured_page.write_text(
        report.read_text(encoding="utf-8").replace("</body>", _MEASURE + "</body>"),
        encoding="utf-8",
    )
    window = "--window-size=1400,2000"
    with tempfile.TemporaryDirectory() as profile:
        common = [browser, *flags, f"--user-data-dir={profile}", window]
        env = {**os.environ, "HOME": profile}
        subprocess.run(
            [*common, f"--screenshot={screenshot}", report.as_uri()],
            check=True,
            capture_output=True,
            timeout=120,
            env=env,
        )
        dom = subprocess.run(
            [*common, "--dump-dom", measured_page.as_uri()],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        ).stdout

    # The browser parsed the table: every model's name is in the rendered document.
    for name in MODEL_NAMES:
        assert f"<td>{MODEL_LABELS[name]}</td>" in dom
    found = re.search(r'data-measured="([^"]*)"', dom)
    assert found, "the measuring script did not run"
    measured = json.loads(urllib.parse.unquote(html.unescape(found.group(1))))
    assert measured["window"] == 1400
    # The results table fits the window: nothing to scroll sideways for.
    assert measured["table"]["right"] <= 1400 and measured["page"] <= 1400, measured["table"]

    # The confusion matrices' smallest text, as the browser shows it: its size in the PNG (points
    # at the dpi the PNG records) times the scale at which the page draws the picture.
    from PIL import Image

    figures = {figure["alt"]: figure for figure in measured["figures"]}
    confusion = figures["Confusion matrices"]
    with Image.open(report.parent / "confusion.png") as png:
        assert confusion["natural"] == png.width
        dpi = png.info["dpi"][0]
    scale = confusion["rendered"] / confusion["natural"]
    points = _smallest_font_points(_report_grid(report)[0])
    assert points / 72 * dpi * scale >= LEGIBLE_PX, (points, dpi, scale)

    # No Markdown reaches the reader as literal characters; run paths are shown as code.
    text = measured["text"]
    assert "`" not in text and "**" not in text
    assert str(report.parent.parent / "runs" / "gru") in text
    assert "<code>" in dom.split("Which differences are real", 1)[1].split("<h2>Runs", 1)[0]

    # The embedded figures were decoded and drawn: the curves and matrices are the only strongly
    # coloured things on the page (text is black and grey), and they cover a good part of it.
    from matplotlib import image

    pixels = image.imread(screenshot)[..., :3]
    assert pixels.shape[:2] == (2000, 1400)
    saturation = pixels.max(axis=-1) - pixels.min(axis=-1)
    assert (saturation > 0.15).mean() > 0.01
    # The loss figure's top edge sits below the table, not on top of it: there is white space.
    assert (pixels.min(axis=-1) > 0.98).mean() > 0.3

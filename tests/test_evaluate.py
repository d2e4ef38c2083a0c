"""Metrics checked against hand-worked numbers, and evaluate() on a real tiny run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from nightact.cli import main
from nightact.scoring import stats as statistics
from nightact.scoring.evaluate import (
    EvaluateConfig,
    compute_metrics,
    confusion_figure,
    draw_confusion,
    evaluate,
    format_metrics,
)

# Eight clips, four classes; class "d" is predicted once but never true.
#   true   a a a b b c c c
#   argmax a a b b c c c d
# The probabilities also decide top-3 membership: the lowest class of each row is left out of
# its top three, which is the true class in rows 2 and 7 only.
NAMES = ["a", "b", "c", "d"]
LABELS = [0, 0, 0, 1, 1, 2, 2, 2]
PROBABILITIES = [
    [0.70, 0.10, 0.15, 0.05],
    [0.60, 0.20, 0.15, 0.05],
    [0.05, 0.50, 0.30, 0.15],
    [0.10, 0.60, 0.25, 0.05],
    [0.20, 0.30, 0.40, 0.10],
    [0.15, 0.20, 0.60, 0.05],
    [0.25, 0.10, 0.50, 0.15],
    [0.30, 0.20, 0.05, 0.45],
]


def test_metrics_match_hand_worked_values():
    metrics = compute_metrics(LABELS, PROBABILITIES, NAMES)

    assert metrics["clips"] == 8
    assert metrics["confusion"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 2, 1], [0, 0, 0, 0]]
    assert metrics["accuracy"] == pytest.approx(5 / 8)
    assert metrics["top3_accuracy"] == pytest.approx(6 / 8)
    # precision = diagonal / column total; recall = diagonal / row total; F1 = their harmonic mean.
    expected = {
        "a": (2 / 2, 2 / 3, 0.8, 3),
        "b": (1 / 2, 1 / 2, 0.5, 2),
        "c": (2 / 3, 2 / 3, 2 / 3, 3),
        "d": (0.0, 0.0, 0.0, 0),
    }
    for name, (precision, recall, f1, support) in expected.items():
        scores = metrics["per_class"][name]
        assert scores["precision"] == pytest.approx(precision)
        assert scores["recall"] == pytest.approx(recall)
        assert scores["f1"] == pytest.approx(f1)
        assert scores["support"] == support
    # Macro F1 averages all four classes; the mean class accuracy only the three that occur.
    assert metrics["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3 + 0.0) / 4)
    assert metrics["mean_class_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert metrics["confusion_normalized"][0] == pytest.approx([2 / 3, 1 / 3, 0, 0])
    assert metrics["confusion_normalized"][3] == [0.0, 0.0, 0.0, 0.0]
    json.dumps(metrics)  # JSON-ready as it is


def test_metrics_carry_bootstrap_intervals_and_the_predictions():
    metrics = compute_metrics(LABELS, PROBABILITIES, NAMES)
    # The intervals are those of nightact.scoring.stats on the same predictions, seeded.
    predicted = np.asarray(PROBABILITIES).argmax(axis=1)
    expected = statistics.metric_intervals(LABELS, predicted, len(NAMES))
    assert metrics["accuracy_ci"] == expected["accuracy_ci"]
    assert metrics["macro_f1_ci"] == expected["macro_f1_ci"]
    assert metrics["accuracy_ci"][0] <= metrics["accuracy"] <= metrics["accuracy_ci"][1]
    assert metrics["macro_f1_ci"][0] <= metrics["macro_f1"] <= metrics["macro_f1_ci"][1]
    assert metrics["bootstrap"] == {"resamples": 2000, "seed": 0, "level": 0.95}
    assert metrics["predictions"] == {"labels": list(LABELS), "predicted": predicted.tolist()}
    assert "95 % CI" in format_metrics({**metrics, "model": "m", "split": "test"})


def test_metrics_reject_mismatched_inputs():
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(LABELS, np.array(PROBABILITIES)[:, :3], NAMES)
    with pytest.raises(ValueError, match="labels"):
        compute_metrics(LABELS[:-1], PROBABILITIES, NAMES)
    with pytest.raises(ValueError, match="lie in"):
        compute_metrics([0, 0, 0, 1, 1, 2, 2, 4], PROBABILITIES, NAMES)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"split": "dev"}, "split must be one of train, val, test, got 'dev'"),
        ({"split": "val"}, "validation split chose"),
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"views": 0}, "views must be at least 1, got 0"),
    ],
)
def test_evaluate_config_refuses_a_bad_value_naming_it(settings, message):
    with pytest.raises(ValueError, match=message):
        EvaluateConfig("run", **settings)


def test_evaluate_config_keeps_paths_as_text(tmp_path):
    config = EvaluateConfig(
        tmp_path / "run", data=tmp_path / "store", split="val", allow_validation=True
    )
    assert (config.run, config.data) == (str(tmp_path / "run"), str(tmp_path / "store"))
    assert EvaluateConfig("run", split="train").data is None


def test_confusion_figure_keeps_long_class_names_whole(tmp_path):
    from nightact.sources.synthetic import CLASS_NAMES

    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 5, size=(12, 12)) + np.diag(np.full(12, 10))
    figure = confusion_figure(confusion, list(CLASS_NAMES), title="test")
    path = tmp_path / "confusion.png"
    figure.savefig(path, dpi=80, bbox_inches="tight")

    axis = figure.axes[0]
    assert [label.get_text() for label in axis.get_xticklabels()] == list(CLASS_NAMES)
    assert [label.get_text() for label in axis.get_yticklabels()] == list(CLASS_NAMES)
    # Every name lies inside the figure's own area (not only inside a tight crop): the layout made
    # room for the rotated names instead of pushing them over the edge.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    area = figure.bbox
    for label in axis.get_xticklabels() + axis.get_yticklabels():
        box = label.get_window_extent(renderer)
        assert area.x0 <= box.x0 and box.x1 <= area.x1, label.get_text()
        assert area.y0 <= box.y0 and box.y1 <= area.y1, label.get_text()
    # Rotated names of neighbouring columns do not run into each other.
    boxes = [label.get_window_extent(renderer) for label in axis.get_xticklabels()]
    for left, right in zip(boxes[:-1], boxes[1:], strict=True):
        assert left.x0 < right.x0


def test_confusion_cells_show_the_count_and_the_percentage_of_the_true_class():
    from matplotlib.figure import Figure

    # Row 0: 2 of 3 and 1 of 3; row 1: 1 of 400 (under 1 %) and 399 of 400; row 2: no clips.
    confusion = np.array([[2, 1, 0], [1, 0, 399], [0, 0, 0]])
    axis = Figure().subplots()
    draw_confusion(axis, confusion, ["a", "b", "c"], fontsize=10, cell_fontsize=7)
    cells = {tuple(map(round, text.get_position())): text for text in axis.texts}
    # Keyed (column, row); empty cells are left blank so that the errors stand out.
    assert {key: text.get_text() for key, text in cells.items()} == {
        (0, 0): "2\n67%",
        (1, 0): "1\n33%",
        (0, 1): "1\n<1%",
        (2, 1): "399\n100%",
    }
    assert {text.get_fontsize() for text in cells.values()} == {7}
    # Light text on dark cells (over 60 % of the row), dark text on light ones.
    assert [cells[key].get_color() for key in ((0, 0), (1, 0), (2, 1))] == [
        "white",
        "black",
        "white",
    ]


# --- evaluate() on a real run ---------------------------------------------------------------------


@pytest.fixture
def tiny_run(finished_run):
    """The shared one-epoch run of a small CNN GRU (conftest.finished_run)."""
    return finished_run


def test_evaluate_agrees_with_an_independent_computation(tiny_run):
    import keras

    from nightact.core.store import open_split

    result = evaluate(tiny_run)

    test = open_split(json.loads((tiny_run / "config.json").read_text())["data"], "test")
    model = keras.saving.load_model(tiny_run / "model.keras")
    predicted = np.asarray(model.predict(np.asarray(test.frames), verbose=0)).argmax(axis=1)
    assert result["split"] == "test"
    assert result["clips"] == len(test)
    assert result["accuracy"] == pytest.approx(np.mean(predicted == test.labels))
    counts = np.zeros((12, 12), dtype=int)
    np.add.at(counts, (test.labels, predicted), 1)
    assert np.array_equal(result["confusion"], counts)
    assert result["inference_ms_per_clip"] > 0
    assert result["parameters"] == model.count_params()

    output = tiny_run / "evaluation"
    saved = json.loads((output / "metrics.json").read_text())
    assert saved["accuracy"] == result["accuracy"]
    with open(output / "confusion.csv", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    assert header[1:] == test.class_names
    assert [row[0] for row in rows] == test.class_names
    assert np.array_equal(np.array([row[1:] for row in rows], dtype=int), counts)
    with open(output / "per_class.csv", newline="") as handle:
        per_class = list(csv.DictReader(handle))
    assert [row["class"] for row in per_class] == test.class_names
    assert sum(int(row["support"]) for row in per_class) == len(test)
    assert (output / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert (output / "confusion_normalized.csv").exists()
    assert "walking with flashlight" in format_metrics(result)
    # The settings beside the scores, with the batch size that was used: the run's.
    run_batch_size = json.loads((tiny_run / "config.json").read_text())["batch_size"]
    assert json.loads((output / "evaluate_config.json").read_text()) == {
        "run": str(tiny_run),
        "split": "test",
        "data": None,
        "batch_size": run_batch_size,
        "allow_validation": False,
        "views": 1,
    }


def test_evaluate_refuses_the_validation_split_unless_asked(tiny_run, capsys):
    with pytest.raises(ValueError, match="validation split chose"):
        evaluate(tiny_run, split="val")
    assert main(["evaluate", str(tiny_run), "--split", "val"]) == 2
    assert "--allow-validation" in capsys.readouterr().err

    result = evaluate(tiny_run, split="val", allow_validation=True)
    assert result["split"] == "val"
    # Kept apart from the test results that reports read.
    assert (tiny_run / "evaluation-val" / "metrics.json").exists()


def test_a_failed_evaluation_leaves_no_folder_and_none_keeps_a_lock_file(
    tiny_run, tmp_path, capsys
):
    before = sorted(path.name for path in tiny_run.iterdir())
    # One view per candidate and orientation at most: refused once its folder is locked.
    assert main(["evaluate", str(tiny_run), "--views", "5"]) == 2
    assert "5 views asked" in capsys.readouterr().err
    (tmp_path / "not-a-store").mkdir()
    assert main(["evaluate", str(tiny_run), "--data", str(tmp_path / "not-a-store")]) == 2
    assert "not-a-store" in capsys.readouterr().err
    assert sorted(path.name for path in tiny_run.iterdir()) == before
    # Training and the evaluations that finished let go of their locks and removed the files.
    assert list(tiny_run.rglob(".lock")) == []


def test_evaluate_command(tiny_run, capsys):
    assert main(["evaluate", str(tiny_run)]) == 0
    printed = capsys.readouterr().out
    assert "mean class accuracy" in printed
    assert str(tiny_run / "evaluation") in printed


def test_evaluate_scores_alike_from_the_device_or_the_store(tiny_run, monkeypatch, caplog):
    import logging

    import keras

    if keras.config.backend() != "jax":
        pytest.skip("the device path is JAX's")

    from nightact.data import placement

    # Two views (the clip and its mirror image): both gathered from one copy on the device.
    with caplog.at_level(logging.INFO, logger="nightact.scoring.evaluate"):
        on_device = evaluate(tiny_run, views=2)
        assert "batches gathered on the device: test (" in caplog.text
        # Where nothing fits, every view reads the store.
        monkeypatch.setattr(placement, "memory_free", lambda devices: (0, "on a full device"))
        from_store = evaluate(tiny_run, views=2)
        assert "read from the store: test (" in caplog.text
    assert on_device["view_plan"] == [
        {"candidate": 0, "mirrored": False},
        {"candidate": 0, "mirrored": True},
    ]
    assert on_device["predictions"] == from_store["predictions"]
    assert on_device["accuracy"] == from_store["accuracy"]

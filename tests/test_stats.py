"""Confidence intervals, McNemar's exact test, the paired bootstrap and Holm's correction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics

from nightact.scoring import stats as statistics


def test_macro_f1_matches_scikit_learn_with_absent_classes():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, 200)
    predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 6, 200))
    expected = metrics.f1_score(
        labels, predictions, labels=list(range(7)), average="macro", zero_division=0
    )
    assert statistics.macro_f1(labels, predictions, classes=7) == pytest.approx(expected)


def test_intervals_cover_the_true_accuracy_at_about_the_nominal_rate():
    # 300 simulated test sets of 200 clips from a model that is right 70 % of the time, 4
    # classes: the true accuracy is 0.7, the true macro F1 is that of the infinite population.
    rng = np.random.default_rng(0)
    true_accuracy, classes, clips = 0.7, 4, 200
    population_labels = rng.integers(0, classes, 400_000)
    wrong = (population_labels + rng.integers(1, classes, 400_000)) % classes
    population_predictions = np.where(rng.random(400_000) < true_accuracy, population_labels, wrong)
    true_f1 = statistics.macro_f1(population_labels, population_predictions, classes)
    covered_accuracy = covered_f1 = 0
    trials = 300
    for trial in range(trials):
        rows = rng.integers(0, len(population_labels), clips)
        result = statistics.metric_intervals(
            population_labels[rows], population_predictions[rows], classes, 500, seed=trial
        )
        low, high = result["accuracy_ci"]
        covered_accuracy += low <= true_accuracy <= high
        low, high = result["macro_f1_ci"]
        covered_f1 += low <= true_f1 <= high
    # Nominal 95 %; the binomial spread of 300 trials is about +-1.3 points.
    assert 0.91 <= covered_accuracy / trials <= 0.98
    assert 0.90 <= covered_f1 / trials <= 0.98


def test_intervals_are_seeded_and_bracket_the_estimate():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0] * 5)
    predictions = np.array([0, 1, 1, 0, 2, 2, 0, 1, 0, 0] * 5)
    first = statistics.metric_intervals(labels, predictions, seed=5)
    again = statistics.metric_intervals(labels, predictions, seed=5)
    other = statistics.metric_intervals(labels, predictions, seed=6)
    assert first == again
    assert first["accuracy_ci"] != other["accuracy_ci"]
    assert first["accuracy"] == pytest.approx(0.7)
    assert first["accuracy_ci"][0] < 0.7 < first["accuracy_ci"][1]
    assert first["macro_f1_ci"][0] < first["macro_f1"] < first["macro_f1_ci"][1]


def test_mcnemar_exact_matches_a_hand_computed_binomial():
    # 12 clips: a right and b wrong on 7 of them, b right and a wrong on 2; 3 agree.
    labels = np.zeros(12, dtype=int)
    a = np.array([0] * 7 + [1] * 2 + [0, 0, 1])
    b = np.array([1] * 7 + [0] * 2 + [0, 0, 1])
    result = statistics.mcnemar_exact(labels, a, b)
    assert (result.only_a_right, result.only_b_right) == (7, 2)
    # Two-sided: 2 * P(X <= 2), X ~ Binomial(9, 1/2) = 2 * (1 + 9 + 36) / 512.
    assert result.p_value == pytest.approx(2 * (1 + 9 + 36) / 512)
    assert result.p_value == pytest.approx(0.1796875)


def test_mcnemar_without_discordant_clips_and_symmetric_case():
    labels = np.array([0, 1, 2])
    assert statistics.mcnemar_exact(labels, labels, labels).p_value == 1.0
    assert statistics.binomial_two_sided(5, 10) == 1.0
    assert statistics.binomial_two_sided(0, 1000) == pytest.approx(2 * 0.5**1000)


def test_paired_bootstrap_sees_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 400)
    good = np.where(rng.random(400) < 0.8, labels, (labels + 1) % 3)
    bad = np.where(rng.random(400) < 0.5, labels, (labels + 1) % 3)
    result = statistics.paired_bootstrap(labels, good, bad, resamples=1000)
    assert result["difference"] == pytest.approx(
        statistics.accuracy(labels, good) - statistics.accuracy(labels, bad)
    )
    assert result["ci"][0] > 0 and result["p_value"] < 0.01
    same = statistics.paired_bootstrap(labels, good, good, metric="macro_f1", resamples=200)
    assert same["difference"] == 0 and same["p_value"] == 1.0


def test_holm_adjustment_by_hand():
    assert statistics.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_compare_predictions_says_which_differences_are_significant():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 300)
    predictions = {
        "strong": np.where(rng.random(300) < 0.9, labels, (labels + 1) % 4),
        "weak": np.where(rng.random(300) < 0.4, labels, (labels + 1) % 4),
        "weak too": np.where(rng.random(300) < 0.42, labels, (labels + 1) % 4),
    }
    results = {
        (c.model_a, c.model_b): c for c in statistics.compare_predictions(labels, predictions)
    }
    assert len(results) == 3
    assert results[("strong", "weak")].significant
    assert "strong is more accurate than weak" in results[("strong", "weak")].sentence()
    assert not results[("weak", "weak too")].significant
    assert "not distinguishable" in results[("weak", "weak too")].sentence()
    # Holm never lowers a p-value.
    assert all(c.p_holm >= c.p_value for c in results.values())


def test_seed_spread_and_bad_input():
    spread = statistics.seed_spread([0.5, 0.7, 0.6])
    assert spread["mean"] == pytest.approx(0.6)
    assert spread["std"] == pytest.approx(0.1)
    assert (spread["min"], spread["max"], spread["runs"]) == (0.5, 0.7, 3)
    assert math.isclose(statistics.seed_spread([0.4])["std"], 0.0)
    with pytest.raises(ValueError, match="equal length"):
        statistics.metric_intervals([0, 1], [0])
    with pytest.raises(ValueError, match="zero clips"):
        statistics.accuracy([], [])

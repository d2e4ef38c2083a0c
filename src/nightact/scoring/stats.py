"""How sure a score is: bootstrap confidence intervals, paired tests, the spread over seeds.

A test split of a few hundred clips measures accuracy to within several points, and models scored
on the same clips must be compared *paired* (each clip is seen by both), not by their two
intervals. Everything here is NumPy only and seeded, so the same predictions always give the same
intervals.

- :func:`metric_intervals`: accuracy and macro F1 with percentile-bootstrap 95 % intervals over
  test clips (clips resampled with replacement).
- :func:`mcnemar_exact`: McNemar's exact test on the clips where exactly one of two models is
  right (a two-sided binomial test with p = 1/2 on those discordant clips).
- :func:`paired_bootstrap`: the difference of a metric between two models on the same resampled
  clips, its interval and a two-sided bootstrap p-value.
- :func:`compare_predictions`: every pair of models, with Holm's correction for the number of
  pairs and a sentence saying which differences are significant.
- :func:`seed_spread`: mean, standard deviation and range of one score over several seeds.

Macro F1 follows :func:`nightact.scoring.evaluate.compute_metrics`: the mean F1 over all classes, a
class never predicted nor present scoring 0.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "ALPHA",
    "LEVEL",
    "RESAMPLES",
    "SEED",
    "accuracy",
    "binomial_two_sided",
    "compare_predictions",
    "comparisons_to_json",
    "holm",
    "macro_f1",
    "McNemar",
    "mcnemar_exact",
    "metric_intervals",
    "paired_bootstrap",
    "PairedComparison",
    "seed_spread",
]

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0
ALPHA = 0.05


def _check(labels, predictions) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if labels.ndim != 1 or labels.shape != predictions.shape:
        raise ValueError(
            f"labels and predictions must be 1-D of equal length, got {labels.shape} and "
            f"{predictions.shape}"
        )
    if len(labels) == 0:
        raise ValueError("cannot score zero clips")
    return labels, predictions


def _resample_indices(count: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, count, size=(resamples, count))


def _accuracies(labels: np.ndarray, predictions: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return (labels == predictions)[indices].mean(axis=1)


def _macro_f1s(
    labels: np.ndarray, predictions: np.ndarray, indices: np.ndarray, classes: int
) -> np.ndarray:
    """Macro F1 of every resample (rows of ``indices``), all classes counted."""
    resamples = indices.shape[0]
    cell = labels[indices] * classes + predictions[indices]
    offsets = (np.arange(resamples) * classes * classes)[:, None]
    counts = np.bincount((cell + offsets).ravel(), minlength=resamples * classes * classes)
    confusion = counts.reshape(resamples, classes, classes)
    true_positive = np.diagonal(confusion, axis1=1, axis2=2)
    false_negative = confusion.sum(axis=2) - true_positive
    false_positive = confusion.sum(axis=1) - true_positive
    denominator = 2 * true_positive + false_positive + false_negative
    f1 = np.divide(
        2 * true_positive, denominator, out=np.zeros(denominator.shape), where=denominator > 0
    )
    return f1.mean(axis=1)


def accuracy(labels, predictions) -> float:
    labels, predictions = _check(labels, predictions)
    return float((labels == predictions).mean())


def macro_f1(labels, predictions, classes: int | None = None) -> float:
    labels, predictions = _check(labels, predictions)
    classes = classes or int(max(labels.max(), predictions.max()) + 1)
    return float(_macro_f1s(labels, predictions, np.arange(len(labels))[None, :], classes)[0])


def _interval(values: np.ndarray, level: float) -> list[float]:
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return [float(low), float(high)]


def metric_intervals(
    labels,
    predictions,
    classes: int | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict:
    """Accuracy and macro F1 with percentile-bootstrap intervals over the test clips.

    Returns a JSON-ready dict: ``accuracy``, ``accuracy_ci`` ([low, high]), ``macro_f1``,
    ``macro_f1_ci``, and ``bootstrap`` (resamples, seed, level) so the numbers can be redrawn.
    """
    labels, predictions = _check(labels, predictions)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 100:
        raise ValueError(f"resamples must be at least 100, got {resamples}")
    classes = classes or int(max(labels.max(), predictions.max()) + 1)
    indices = _resample_indices(len(labels), resamples, seed)
    return {
        "accuracy": accuracy(labels, predictions),
        "accuracy_ci": _interval(_accuracies(labels, predictions, indices), level),
        "macro_f1": macro_f1(labels, predictions, classes),
        "macro_f1_ci": _interval(_macro_f1s(labels, predictions, indices, classes), level),
        "bootstrap": {"resamples": resamples, "seed": seed, "level": level},
    }


@dataclass
class McNemar:
    """McNemar's exact test between models a and b on the same clips."""

    only_a_right: int  # clips a got right and b wrong
    only_b_right: int  # clips b got right and a wrong
    p_value: float


def binomial_two_sided(successes: int, trials: int) -> float:
    """Exact two-sided p-value of ``successes`` in ``trials`` under p = 1/2 (doubled tail)."""
    if trials == 0:
        return 1.0
    tail = min(successes, trials - successes)
    # Whole-number arithmetic: exact for any number of clips.
    count = sum(math.comb(trials, k) for k in range(tail + 1))
    return min(1.0, 2 * count / 2**trials)


def mcnemar_exact(labels, predictions_a, predictions_b) -> McNemar:
    """McNemar's exact test: are a and b wrong on different clips more often one way?"""
    labels, predictions_a = _check(labels, predictions_a)
    _, predictions_b = _check(labels, predictions_b)
    right_a = labels == predictions_a
    right_b = labels == predictions_b
    only_a = int(np.sum(right_a & ~right_b))
    only_b = int(np.sum(~right_a & right_b))
    return McNemar(only_a, only_b, binomial_two_sided(only_a, only_a + only_b))


def paired_bootstrap(
    labels,
    predictions_a,
    predictions_b,
    metric: str = "accuracy",
    classes: int | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict:
    """Metric of a minus metric of b over the same resampled clips.

    Returns ``difference``, ``ci`` and ``p_value`` (twice the share of resamples on the far side
    of zero, at least 1 / resamples).
    """
    labels, predictions_a = _check(labels, predictions_a)
    _, predictions_b = _check(labels, predictions_b)
    if metric not in ("accuracy", "macro_f1"):
        raise ValueError(f"metric must be accuracy or macro_f1, got {metric!r}")
    classes = classes or int(max(labels.max(), predictions_a.max(), predictions_b.max()) + 1)
    indices = _resample_indices(len(labels), resamples, seed)
    everything = np.arange(len(labels))[None, :]
    if metric == "accuracy":

        def score(predictions, rows):
            return _accuracies(labels, predictions, rows)
    else:

        def score(predictions, rows):
            return _macro_f1s(labels, predictions, rows, classes)

    differences = score(predictions_a, indices) - score(predictions_b, indices)
    observed = float(score(predictions_a, everything)[0] - score(predictions_b, everything)[0])
    far_side = min(np.mean(differences <= 0), np.mean(differences >= 0))
    return {
        "metric": metric,
        "difference": observed,
        "ci": _interval(differences, level),
        "p_value": float(min(1.0, max(2 * far_side, 1.0 / resamples))),
    }


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: family-wise error control over several comparisons."""
    order = np.argsort(p_values, kind="stable")
    adjusted = np.empty(len(p_values))
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, (len(p_values) - rank) * p_values[index])
        adjusted[index] = min(1.0, running)
    return adjusted.tolist()


@dataclass
class PairedComparison:
    """Models a and b on the same test clips."""

    model_a: str
    model_b: str
    accuracy_a: float
    accuracy_b: float
    only_a_right: int
    only_b_right: int
    p_value: float  # McNemar's exact test
    p_holm: float  # adjusted for the number of pairs compared
    significant: bool  # p_holm below alpha

    def sentence(self) -> str:
        better, worse = (
            (self.model_a, self.model_b)
            if self.accuracy_a >= self.accuracy_b
            else (self.model_b, self.model_a)
        )
        high, low = max(self.accuracy_a, self.accuracy_b), min(self.accuracy_a, self.accuracy_b)
        numbers = (
            f"{100 * high:.1f} % vs {100 * low:.1f} %; right only for one of them on "
            f"{self.only_a_right} vs {self.only_b_right} clips; McNemar p = {self.p_value:.3g}, "
            f"Holm-adjusted {self.p_holm:.3g}"
        )
        if self.significant:
            return f"{better} is more accurate than {worse} ({numbers})."
        return f"{better} and {worse} are not distinguishable at 5 % ({numbers})."


def compare_predictions(
    labels, predictions: Mapping[str, Sequence[int]], alpha: float = ALPHA
) -> list[PairedComparison]:
    """McNemar's exact test between every pair of models scored on the same clips."""
    names = list(predictions)
    if len(names) < 2:
        return []
    results = []
    for name_a, name_b in itertools.combinations(names, 2):
        test = mcnemar_exact(labels, predictions[name_a], predictions[name_b])
        results.append((name_a, name_b, test))
    adjusted = holm([test.p_value for _, _, test in results])
    return [
        PairedComparison(
            model_a=name_a,
            model_b=name_b,
            accuracy_a=accuracy(labels, predictions[name_a]),
            accuracy_b=accuracy(labels, predictions[name_b]),
            only_a_right=test.only_a_right,
            only_b_right=test.only_b_right,
            p_value=test.p_value,
            p_holm=p_holm,
            significant=p_holm < alpha,
        )
        for (name_a, name_b, test), p_holm in zip(results, adjusted, strict=True)
    ]


def comparisons_to_json(comparisons: Sequence[PairedComparison]) -> list[dict]:
    return [{**asdict(c), "sentence": c.sentence()} for c in comparisons]


def seed_spread(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation, minimum and maximum of one score over seeds."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError("seed_spread needs a non-empty list of scores")
    return {
        "runs": int(len(values)),
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "min": float(values.min()),
        "max": float(values.max()),
    }

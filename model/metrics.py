"""Exact CTR metrics (ROC AUC, log loss), and the rank correlations that judge a supernet's scores."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count one half)."""
    metrics = StreamingMetrics()
    metrics.update(labels, scores)
    return metrics.auc()


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    labels = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probabilities, dtype=np.float64).ravel(), eps, 1 - eps)
    return float(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean())


class StreamingMetrics:
    """Exact AUC and log loss over predictions that arrive in batches.

    Holding every prediction of a large validation split costs memory linear in its rows. Exact AUC only needs,
    per distinct score, how many positives and negatives carry it, so that is all this keeps: memory is bounded
    by the number of distinct scores (plus at most `compact_threshold` pending rows), not by the row count.
    """

    _EPS = 1e-7  # the same clipping as log_loss

    def __init__(self, compact_threshold: int = 1_000_000) -> None:
        if compact_threshold < 1:
            raise ValueError(f"compact_threshold must be at least 1, got {compact_threshold}")
        self._compact_threshold = compact_threshold
        self._scores = np.empty(0, dtype=np.float64)  # distinct scores, ascending
        self._positives = np.empty(0, dtype=np.float64)  # counts per distinct score; float64 is exact below 2**53
        self._negatives = np.empty(0, dtype=np.float64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        self._loss_sum = 0.0
        self._rows = 0

    def update(self, labels: np.ndarray, probabilities: np.ndarray) -> None:
        """Add one batch; labels must be 0 or 1 and probabilities finite."""
        # copies, not views: the batch stays pending, and callers may reuse their buffers
        labels = np.array(labels, dtype=np.float64).ravel()
        probabilities = np.array(probabilities, dtype=np.float64).ravel()
        if labels.shape != probabilities.shape:
            raise ValueError(f"labels and probabilities differ in length: {labels.size} vs {probabilities.size}")
        if not np.isin(labels, (0.0, 1.0)).all():
            raise ValueError("labels must be 0 or 1")
        if not np.isfinite(probabilities).all():
            raise ValueError("probabilities must be finite")
        if labels.size == 0:
            return
        p = np.clip(probabilities, self._EPS, 1 - self._EPS)
        self._loss_sum -= float((labels * np.log(p) + (1 - labels) * np.log(1 - p)).sum())
        self._rows += labels.size
        self._pending.append((probabilities, labels))
        self._pending_rows += labels.size
        if self._pending_rows > self._compact_threshold:
            self._compact()

    @property
    def rows(self) -> int:
        return self._rows

    def auc(self) -> float:
        """Exact ROC AUC: the chance a random positive outscores a random negative, ties counting one half."""
        self._compact()
        positives = self._positives.sum()
        negatives = self._negatives.sum()
        if positives == 0 or negatives == 0:
            raise ValueError("AUC needs both positive and negative labels")
        negatives_below = np.cumsum(self._negatives) - self._negatives
        return float((self._positives * (negatives_below + 0.5 * self._negatives)).sum() / (positives * negatives))

    def log_loss(self) -> float:
        if self._rows == 0:
            raise ValueError("log loss needs at least one row")
        return self._loss_sum / self._rows

    def summary(self) -> dict[str, float | int]:
        return {"auc": self.auc(), "log_loss": self.log_loss(), "rows": self.rows}

    def _compact(self) -> None:
        """Fold pending batches into the per-score counts."""
        if not self._pending:
            return
        scores = np.concatenate([self._scores, *(s for s, _ in self._pending)])
        positives = np.concatenate([self._positives, *(y for _, y in self._pending)])
        negatives = np.concatenate([self._negatives, *(1 - y for _, y in self._pending)])
        self._scores, inverse = np.unique(scores, return_inverse=True)
        self._positives = np.bincount(inverse, weights=positives, minlength=self._scores.size)
        self._negatives = np.bincount(inverse, weights=negatives, minlength=self._scores.size)
        self._pending = []
        self._pending_rows = 0


def _paired(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} vs {y.size}")
    if x.size < 2:
        raise ValueError(f"rank correlation needs at least 2 points, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite")
    return x, y


def _tied_pairs(values: np.ndarray) -> float:
    counts = np.unique(values, return_counts=True)[1].astype(np.float64)
    return float((counts * (counts - 1) / 2).sum())


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b, which corrects for ties on either side; O(n^2) time, O(n) memory.

    Raises ValueError if either side is constant, where the correlation is undefined.
    """
    x, y = _paired(x, y)
    n = x.size
    pairs = n * (n - 1) / 2
    denominator = np.sqrt((pairs - _tied_pairs(x)) * (pairs - _tied_pairs(y)))
    if denominator == 0:
        raise ValueError("Kendall's tau is undefined when x or y is constant")
    # concordant minus discordant pairs; tied pairs contribute zero
    score = sum(float(np.dot(np.sign(x[i + 1 :] - x[i]), np.sign(y[i + 1 :] - y[i]))) for i in range(n - 1))
    return float(score / denominator)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, lowest value first; tied values share their mean rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    # 1-based ranks: a run of `count` equal values ending at rank `end` averages end - (count - 1) / 2
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of average ranks, so ties share their mean rank.

    Raises ValueError if either side is constant, where the correlation is undefined.
    """
    x, y = _paired(x, y)
    rx = average_ranks(x) - (x.size + 1) / 2.0
    ry = average_ranks(y) - (y.size + 1) / 2.0
    denominator = np.sqrt(np.dot(rx, rx) * np.dot(ry, ry))
    if denominator == 0:
        raise ValueError("Spearman's rho is undefined when x or y is constant")
    return float(np.dot(rx, ry) / denominator)


def bootstrap_interval(
    correlation: Callable[[np.ndarray, np.ndarray], float],
    x: np.ndarray,
    y: np.ndarray,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a paired statistic, resampling (x, y) pairs with replacement.

    A rank correlation over a few dozen architectures is noisy; the interval says how far another draw of
    architectures could move it. Resamples where the statistic is undefined (one side constant) are skipped.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    x, y = _paired(x, y)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, x.size, x.size)
        try:
            values.append(correlation(x[pick], y[pick]))
        except ValueError:
            continue
    if not values:
        raise ValueError("the statistic is undefined on every resample")
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)

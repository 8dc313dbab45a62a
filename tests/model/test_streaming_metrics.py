import numpy as np
import pytest
from scipy.stats import bootstrap, kendalltau, spearmanr
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from model.metrics import StreamingMetrics, bootstrap_interval, kendall_tau, log_loss, spearman_rho


def _tied_predictions(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    labels = (rng.random(rows) < 0.25).astype(np.int64)
    # two decimals: only ~100 distinct scores, so most rows tie with many others across batches
    probabilities = np.clip(np.round(rng.random(rows) * 0.6 + labels * 0.2, 2), 0.01, 0.99)
    return labels, probabilities


def _feed(metrics: StreamingMetrics, labels: np.ndarray, probabilities: np.ndarray, rng: np.random.Generator) -> None:
    cuts = np.sort(rng.choice(np.arange(1, labels.size), size=12, replace=False))
    for y, p in zip(np.split(labels, cuts), np.split(probabilities, cuts)):
        metrics.update(y, p)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("compact_threshold", [1_000_000, 1, 257])
def test_streaming_matches_scikit_learn_over_uneven_batches(seed, compact_threshold):
    rng = np.random.default_rng(seed)
    labels, probabilities = _tied_predictions(rng, 5000)
    metrics = StreamingMetrics(compact_threshold=compact_threshold)
    _feed(metrics, labels, probabilities, rng)
    assert metrics.rows == labels.size
    assert metrics.auc() == pytest.approx(roc_auc_score(labels, probabilities), abs=1e-6)
    assert metrics.log_loss() == pytest.approx(sk_log_loss(labels, probabilities), abs=1e-6)
    assert metrics.summary() == {"auc": metrics.auc(), "log_loss": metrics.log_loss(), "rows": labels.size}


def test_reading_midway_then_continuing_stays_exact():
    rng = np.random.default_rng(7)
    labels, probabilities = _tied_predictions(rng, 4000)
    metrics = StreamingMetrics(compact_threshold=300)
    metrics.update(labels[:1500], probabilities[:1500])
    assert metrics.auc() == pytest.approx(roc_auc_score(labels[:1500], probabilities[:1500]), abs=1e-6)
    metrics.update(labels[1500:], probabilities[1500:])
    assert metrics.auc() == pytest.approx(roc_auc_score(labels, probabilities), abs=1e-6)
    assert metrics.log_loss() == pytest.approx(sk_log_loss(labels, probabilities), abs=1e-6)


def test_log_loss_clips_like_the_batch_metric():
    labels = np.array([1, 0, 1, 0, 1])
    probabilities = np.array([0.0, 1.0, 1.0, 0.0, 0.5])
    metrics = StreamingMetrics()
    metrics.update(labels, probabilities)
    assert metrics.log_loss() == pytest.approx(log_loss(labels, probabilities), rel=1e-12)


def test_batches_are_copied_so_reused_buffers_do_not_leak_in():
    labels = np.array([0.0, 1.0, 0.0, 1.0])
    probabilities = np.array([0.1, 0.9, 0.2, 0.8])
    metrics = StreamingMetrics()
    metrics.update(labels, probabilities)
    labels[:] = [1.0, 0.0, 1.0, 0.0]
    probabilities[:] = 0.5
    assert metrics.auc() == 1.0


def test_bad_input_raises():
    metrics = StreamingMetrics()
    with pytest.raises(ValueError, match="differ in length"):
        metrics.update(np.array([0, 1]), np.array([0.5]))
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        metrics.update(np.array([0, 2]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        metrics.update(np.array([0.5]), np.array([0.5]))
    with pytest.raises(ValueError, match="finite"):
        metrics.update(np.array([0, 1]), np.array([0.5, np.nan]))
    assert metrics.rows == 0
    with pytest.raises(ValueError, match="at least one row"):
        metrics.log_loss()
    metrics.update(np.ones(3), np.array([0.2, 0.4, 0.6]))
    with pytest.raises(ValueError, match="both positive and negative"):
        metrics.auc()
    with pytest.raises(ValueError, match="compact_threshold"):
        StreamingMetrics(compact_threshold=0)


@pytest.mark.parametrize("seed", range(4))
def test_rank_correlations_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 8, size=300).astype(np.float64)
    y = np.round(x * 0.3 + rng.normal(size=300), 1)
    assert kendall_tau(x, y) == pytest.approx(kendalltau(x, y).statistic, abs=1e-10)
    assert spearman_rho(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-10)


def test_rank_correlations_of_monotone_data():
    x = np.array([1.0, 2.0, 2.0, 5.0, 9.0])
    assert kendall_tau(x, x**3) == pytest.approx(1.0)
    assert spearman_rho(x, -x) == pytest.approx(-1.0)


@pytest.mark.parametrize("correlation", [kendall_tau, spearman_rho])
def test_rank_correlations_reject_bad_input(correlation):
    with pytest.raises(ValueError, match="differ in length"):
        correlation(np.arange(3), np.arange(4))
    with pytest.raises(ValueError, match="at least 2 points"):
        correlation(np.array([1.0]), np.array([2.0]))
    with pytest.raises(ValueError, match="constant"):
        correlation(np.arange(4), np.ones(4))


def test_bootstrap_interval_agrees_with_scipy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    ours = bootstrap_interval(kendall_tau, x, y, resamples=5000, seed=1)
    theirs = bootstrap(
        (x, y),
        lambda a, b: kendalltau(a, b).statistic,
        paired=True,
        vectorized=False,
        method="percentile",
        n_resamples=5000,
        rng=np.random.default_rng(2),
    ).confidence_interval
    assert ours[0] < kendall_tau(x, y) < ours[1]
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.03)  # two Monte Carlo estimates of one interval
    assert bootstrap_interval(kendall_tau, x, y, resamples=5000, seed=1) == ours  # seeded


def test_bootstrap_interval_of_a_perfect_ranking_is_a_point():
    x = np.arange(10.0)
    assert bootstrap_interval(spearman_rho, x, x**2, resamples=200) == pytest.approx((1.0, 1.0))


def test_bootstrap_interval_rejects_bad_input():
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(kendall_tau, np.arange(4.0), np.arange(4.0), confidence=1.0)
    with pytest.raises(ValueError, match="undefined on every resample"):
        bootstrap_interval(kendall_tau, np.arange(4.0), np.ones(4), resamples=50)

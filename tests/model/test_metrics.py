import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from model.metrics import log_loss, roc_auc


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_log_loss_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(2000) < 0.2).astype(np.float32)
    scores = np.round(rng.random(2000) * 0.5 + labels * 0.1, 2)  # rounding makes many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    probabilities = np.clip(scores, 0.01, 0.99)
    assert log_loss(labels, probabilities) == pytest.approx(sk_log_loss(labels, probabilities), abs=1e-9)


def test_auc_needs_both_classes_and_equal_lengths():
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc(np.ones(4), np.arange(4))
    with pytest.raises(ValueError, match="differ in length"):
        roc_auc(np.array([0, 1]), np.arange(3))

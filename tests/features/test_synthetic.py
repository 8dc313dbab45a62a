import numpy as np
import pytest

from features.synthetic import TeacherCTR
from model.metrics import roc_auc


def test_same_seeds_same_rows():
    a = TeacherCTR(3, (10, 50, 7), seed=1).sample(500, seed=2)
    b = TeacherCTR(3, (10, 50, 7), seed=1).sample(500, seed=2)
    c = TeacherCTR(3, (10, 50, 7), seed=1).sample(500, seed=3)
    assert all(np.array_equal(x, y) for x, y in ((a.dense, b.dense), (a.sparse, b.sparse), (a.label, b.label)))
    assert not np.array_equal(a.sparse, c.sparse)


def test_rows_have_the_schema_shape_and_range():
    data = TeacherCTR(4, (3, 1000), seed=0).sample(10_000, seed=0)
    assert data.dense.shape == (10_000, 4) and data.dense.dtype == np.float32 and (data.dense >= 0).all()
    assert data.sparse.dtype == np.int64 and (data.sparse.max(0) < [3, 1000]).all() and data.sparse.min() >= 0
    assert set(np.unique(data.label)) == {0.0, 1.0}


def test_labels_carry_a_learnable_signal():
    """The per-id click rate of one feature, estimated on one sample, ranks clicks in another."""
    teacher = TeacherCTR(2, (50, 50), seed=3)
    train, test = teacher.sample(50_000, seed=0), teacher.sample(20_000, seed=1)
    rate = np.array(
        [train.label[train.sparse[:, 0] == i].mean() if (train.sparse[:, 0] == i).any() else 0.0 for i in range(50)]
    )
    assert roc_auc(test.label, rate[test.sparse[:, 0]]) > 0.55
    assert 0.15 < test.label.mean() < 0.45


def test_bad_schema_is_rejected():
    with pytest.raises(ValueError, match="num_dense >= 1"):
        TeacherCTR(0, (3,))

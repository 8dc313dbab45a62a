"""Numbers read as categories (`bucket: log`): the bucketing, its vocabulary, its round trip and its errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.schema import Categorical, DatasetSchema, EventTime
from features.transform import Encoding, FeatureTransform, log_buckets


def test_log_buckets_follow_fuxictr_convert_to_bucket() -> None:
    values = ["", None, "0", "2", "2.9", "3", "100", "-1", "-2.5", "1e6"]
    # x > 2: floor(ln(x)^2); else int(x), truncated toward zero; missing stays missing
    nan = np.nan
    np.testing.assert_array_equal(log_buckets(values, "I1"), [nan, nan, 0, 2, 1, 1, 21, -1, -2, 190])
    np.testing.assert_array_equal(log_buckets(pd.Series([3.0, nan]), "I1"), [1, nan])


def test_a_value_that_is_no_number_is_an_error_naming_the_feature() -> None:
    with pytest.raises(ValueError, match=r"feature 'I7' \(bucket: log\): 'abc' is not a number"):
        log_buckets(["1", "abc"], "I7")


def schema(bucket: str = "log", min_count: int = 2) -> DatasetSchema:
    return DatasetSchema(
        name="t",
        label="label",
        dense=(),
        categorical=(Categorical("clicks", min_count=min_count, bucket=bucket), Categorical("site")),
        timestamp=EventTime("row_order"),
    )


def test_the_vocabulary_holds_buckets_seen_min_count_times_and_round_trips() -> None:
    frame = pd.DataFrame({"clicks": ["100", "105", "5", "0", "0", None], "site": ["a"] * 6})
    transform = FeatureTransform.fit(schema(), [frame])
    clicks = transform.categorical[0]
    assert (clicks.bucket, clicks.vocabulary) == ("log", ("0", "21"))  # 5 (bucket 2) was seen once
    assert FeatureTransform.from_dict(transform.to_dict()) == transform
    assert "bucket" not in transform.to_dict()["categorical"][1]  # files without buckets read as before
    np.testing.assert_array_equal(clicks.encode(["0", "104", "7", None, "-3"]), [1, 2, 0, 0, 0])
    assert Encoding("rare", (), bucket="log").encode(["5", None]).tolist() == [0, 0]  # no bucket seen often enough


def test_a_schema_refuses_an_unknown_bucketing_and_buckets_of_a_hash() -> None:
    with pytest.raises(ValueError, match="categorical 'clicks': bucket must be 'log' or absent, got 'sqrt'"):
        schema(bucket="sqrt")
    with pytest.raises(ValueError, match="categorical 'ids': bucket 'log' needs the vocab encoding"):
        Categorical("ids", encoding="hash", buckets=8, bucket="log")

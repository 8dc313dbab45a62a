"""A served request's transform (`transform_request`: raw dense values and categorical bytes in, as Triton hands
them over) gives the ids and values that training's transform gives the same events' text."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.transform import ByteColumn, Encoding, FeatureTransform, VocabularyTable

# NUL included: a value ending in NUL cannot be told from a shorter one as an integer, so it takes the dict
text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
vocabularies = st.lists(st.lists(text.filter(bool), unique=True, max_size=30), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(vocabularies=vocabularies, unseen=st.lists(text, max_size=10), picks=st.lists(st.integers(0, 200), max_size=60))
def test_request_bytes_get_the_ids_of_their_text(vocabularies, unseen, picks) -> None:
    transform = FeatureTransform("t", (), tuple(Encoding(f"c{j}", tuple(v)) for j, v in enumerate(vocabularies)))
    pool = [value for vocabulary in vocabularies for value in vocabulary] + [*unseen, ""]
    columns = {e.name: [pool[(k * (j + 1)) % len(pool)] for k in picks] for j, e in enumerate(transform.categorical)}
    expected = transform.transform({name: [v or None for v in values] for name, values in columns.items()})
    served = transform.transform_request(
        np.zeros((len(picks), 0), dtype=np.float32),
        {name: ByteColumn.of([v.encode() for v in values]) for name, values in columns.items()},
    )
    for got, want in zip(served, expected):
        np.testing.assert_array_equal(got, want)


def test_a_value_two_columns_share_gets_each_columns_own_id() -> None:
    table = VocabularyTable([("1", "2"), ("2", "1"), ("9" * 20, "1")])
    values = ByteColumn.of([b"1", b"2", b"1", b"2", b"9" * 20, b"1", b"3", b""])
    ids = table.ids_of(np.array([0, 0, 1, 1, 2, 2, 2, 2]), values)
    np.testing.assert_array_equal(ids, [1, 2, 2, 1, 1, 2, 0, 0])


def test_columns_over_one_shared_buffer_read_their_own_slices() -> None:
    transform = FeatureTransform("t", (), (Encoding("a", ("x", "yy")), Encoding("b", ("yy", "x"))))
    data = np.frombuffer(b"yyxzzx", dtype=np.uint8)
    a = ByteColumn(data, np.array([0, 2, 3]), np.array([2, 1, 2]))  # yy, x, zz
    b = ByteColumn(data, np.array([5, 0, 6]), np.array([1, 2, 0]))  # x, yy, missing
    _, sparse = transform.transform_request(np.zeros((3, 0), dtype=np.float32), {"a": a, "b": b})
    np.testing.assert_array_equal(sparse, [[2, 2], [1, 1], [0, 0]])


def test_a_request_transform_equals_trainings_on_dense_and_hashed_fields() -> None:
    transform = FeatureTransform(
        "t",
        dense=("price", "age"),
        categorical=(Encoding("site", vocabulary=("a", "bb")), Encoding("user", buckets=97)),
    )
    price = np.array([1.5, np.nan, -3.0, 1e6], dtype=np.float32)
    age = np.array([np.nan, 2.0, 0.0, 7.0], dtype=np.float32)
    sites, users = ["bb", None, "a", "zz"], ["u1", "u2", None, "u1"]
    training = transform.transform({"price": price, "age": age, "site": sites, "user": users})
    request = transform.transform_request(
        np.stack([price, age], axis=1),
        {
            "site": ByteColumn.of([(v or "").encode() for v in sites]),
            "user": ByteColumn.of([(v or "").encode() for v in users]),
        },
    )
    for got, want in zip(request, training):
        np.testing.assert_array_equal(got, want)
    assert training[1][1, 1] != 0 and training[1][2, 1] == 0  # a hashed value, and a missing one


def test_a_request_transform_equals_trainings_on_bucketed_fields() -> None:
    transform = FeatureTransform(
        "t", dense=(), categorical=(Encoding("clicks", ("0", "1", "21"), bucket="log"), Encoding("site", ("a",)))
    )
    clicks, sites = ["0", "", "100", "105", "1.5", "-7"], ["a", "a", None, "a", "b", "a"]
    training = transform.transform({"clicks": clicks, "site": sites})
    request = transform.transform_request(
        np.zeros((len(clicks), 0), dtype=np.float32),
        {
            "clicks": ByteColumn.of([v.encode() for v in clicks]),
            "site": ByteColumn.of([(v or "").encode() for v in sites]),
        },
    )
    for got, want in zip(request, training):
        np.testing.assert_array_equal(got, want)
    # 100 and 105 share bucket 21 (ln^2 in [21, 22)); -7 is bucket "-7", not in the vocabulary
    np.testing.assert_array_equal(training[1][:, 0], [1, 0, 3, 3, 2, 0])


def test_bad_text_in_a_bucketed_field_is_an_error_naming_it() -> None:
    transform = FeatureTransform("t", (), (Encoding("a", ("1",), bucket="log"), Encoding("b", ("1",), bucket="log")))
    good, bad = ByteColumn.of([b"1", b""]), ByteColumn.of([b"2", b"x1"])
    with pytest.raises(ValueError, match=r"feature 'b' \(bucket: log\): 'x1' is not a number"):
        transform.transform_request(np.zeros((2, 0), dtype=np.float32), {"a": good, "b": bad})
    with pytest.raises(ValueError, match=r"feature 'a': not UTF-8 text"):
        transform.transform_request(np.zeros((2, 0), dtype=np.float32), {"a": ByteColumn.of([b"\xff", b""]), "b": good})

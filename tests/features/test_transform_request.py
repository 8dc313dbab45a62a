"""A served request's transform (`transform_request`: bytes in, as Triton hands them over) gives the ids and
values that training's transform gives the same events' text."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from features.transform import Encoding, FeatureTransform

text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=10)


@settings(max_examples=200, deadline=None)
@given(
    vocabulary=st.lists(text.filter(bool), unique=True, max_size=30),
    unseen=st.lists(text, max_size=10),
    picks=st.lists(st.integers(0, 100), min_size=1, max_size=60),
    width=st.sampled_from([None, 4, 8]),
)
def test_request_bytes_get_the_ids_of_their_text(vocabulary, unseen, picks, width) -> None:
    encoding = Encoding("c", vocabulary=tuple(vocabulary))
    pool = [*vocabulary, *unseen, ""]
    values = [pool[k % len(pool)] for k in picks]
    if width:  # a fixed-width column, as the served model's parser reads one: values of one length or empty
        values = [v for v in values if len(v.encode()) in (0, width)] or [""]
        requested = np.array([v.encode() for v in values], dtype=f"S{width}")
    else:
        requested = [v.encode() for v in values]
    expected = encoding.encode([v or None for v in values])
    np.testing.assert_array_equal(encoding.encode_bytes(requested), expected)


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
        {
            "price": price,
            "age": age,
            "site": [(v or "").encode() for v in sites],
            "user": [(v or "").encode() for v in users],
        }
    )
    for got, want in zip(request, training):
        np.testing.assert_array_equal(got, want)
    assert training[1][1, 1] != 0 and training[1][2, 1] == 0  # a hashed value, and a missing one

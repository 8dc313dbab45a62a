"""The served Python model's own parts, outside Triton: its BYTES parser against the Python backend's."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.utils import serialize_byte_tensor

from serving.server import TritonRuntime


@pytest.fixture(scope="module")
def backend():
    """The Python backend's utilities (pure Python) from the serving runtime, and the served model module."""
    utilities = TritonRuntime.find().wheel / "backends" / "python"
    sys.path.insert(0, str(utilities))
    try:
        pb_utils = importlib.import_module("triton_python_backend_utils")
        yield pb_utils, importlib.import_module("serving.triton_model")
    finally:
        sys.path.remove(str(utilities))


values = st.one_of(
    st.lists(st.binary(max_size=12), max_size=40),  # any lengths, NUL bytes included
    st.integers(1, 9).flatmap(  # one length, or one length and empty values: the fixed-width path
        lambda width: st.lists(st.one_of(st.binary(min_size=width, max_size=width), st.just(b"")), max_size=80)
    ),
)


@settings(max_examples=300, deadline=None)
@given(elements=values)
def test_the_bytes_parser_equals_the_python_backends(backend, elements: list[bytes]) -> None:
    pb_utils, served = backend
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    buffer = np.frombuffer(serialize_byte_tensor(array).item() if elements else b"", dtype=np.uint8)
    parsed = served.parse_bytes_tensor(buffer)
    assert parsed.dtype.kind in "OS" and parsed.shape == (len(elements),)
    assert list(parsed) == list(pb_utils.deserialize_bytes_tensor(buffer)) == elements


def parsed(served, elements: list[bytes]) -> np.ndarray:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return served.parse_bytes_tensor(np.frombuffer(serialize_byte_tensor(array).item(), dtype=np.uint8))


def test_a_column_of_one_width_and_missing_values_is_read_as_a_fixed_width_array(backend) -> None:
    _, served = backend
    elements = [b"%08x" % k if k % 3 else b"" for k in range(512)]  # Criteo's hashed categories, a third missing
    column = parsed(served, elements)
    assert column.dtype == np.dtype("S8") and list(column) == elements
    for general in (
        [b"ab\x00"] * 64,  # a NUL in a value: numpy's fixed-width bytes would drop it
        [b"\x00\x00\x00\x00", b""] * 40,  # NULs that look like an empty value's prefix
        [b"a", b"bb"] * 40,  # two lengths
        [b"x" * 300] * 40,  # a length of two bytes
    ):
        column = parsed(served, general)
        assert column.dtype == object and list(column) == general

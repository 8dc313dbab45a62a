"""The served Python model's own parts, outside Triton: its BYTES reader against the Python backend's parser."""

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
    st.integers(1, 9).flatmap(  # one length, or one length and empty values: categories as a log holds them
        lambda width: st.lists(st.one_of(st.binary(min_size=width, max_size=width), st.just(b"")), max_size=80)
    ),
    st.lists(st.binary(min_size=250, max_size=300), max_size=3),  # lengths of two bytes
)


def serialized(served, elements: list[bytes]):
    """What the stub hands the model for a BYTES input of these elements: its buffer, kept (`keep_serialized`)."""
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    buffer = np.frombuffer(serialize_byte_tensor(array).item() if elements else b"", dtype=np.uint8)
    return served.keep_serialized(buffer.copy()).reshape([len(elements), 1]), buffer


@settings(max_examples=300, deadline=None)
@given(columns=st.lists(values, min_size=1, max_size=3), requests=st.integers(1, 3))
def test_the_bytes_reader_equals_the_python_backends_parser(backend, columns: list[list[bytes]], requests) -> None:
    """Several fields of several requests, read at once, give each field's values in request order."""
    pb_utils, served = backend
    rows = min(len(c) for c in columns)
    names = [f"f{k}" for k in range(len(columns))]
    batch = [  # request r holds rows r, r + requests, ... of each field
        {name: serialized(served, column[r:rows:requests])[0] for name, column in zip(names, columns)}
        for r in range(requests)
    ]
    read = served.byte_columns(names, batch, sum(len(request[names[0]]) for request in batch))
    for name, column in zip(names, columns):
        expected = [v for r in range(requests) for v in column[r:rows:requests]]
        backends = [
            v
            for r in range(requests)
            for v in pb_utils.deserialize_bytes_tensor(serialized(served, column[r:rows:requests])[1])
        ]
        assert read[name].values() == backends == expected


def test_a_served_bytes_input_keeps_its_shape_and_buffer(backend) -> None:
    _, served = backend
    kept, buffer = serialized(served, [b"a", b"", b"ccc"])
    assert kept.shape == (3, 1) and len(kept) == 3
    np.testing.assert_array_equal(kept.buffer, buffer)

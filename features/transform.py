"""The feature transform: fitted on the training split once, applied identically everywhere.

Dense: log(max(x, 0) + 1), missing -> 0. Categorical: id 0 means missing or unseen; a vocabulary maps
values seen at least `min_count` times in training to 1..V, hashing maps any value to 1..buckets-1. The
fitted transform is a versioned JSON artifact used by training, Feast lookups and the serving client.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.schema import DatasetSchema

FORMAT_VERSION = 1
LABEL = "label"  # the label column of model-ready splits
SMALL_INPUT = 2048  # rows up to which vocabulary lookups use a Python dict
PACKED_BYTES = 8  # request values up to this long are looked up as integers
HASH_KEY = "nasrec-features0"  # 16 bytes: a fixed key makes hashes equal across processes and machines


@dataclass(frozen=True)
class Encoding:
    name: str
    vocabulary: tuple[str, ...] = ()  # vocab encoding: value i -> id i + 1
    buckets: int = 0  # hash encoding

    @property
    def cardinality(self) -> int:
        return self.buckets if self.buckets else len(self.vocabulary) + 1

    def encode_bytes(self, values: Sequence[bytes]) -> np.ndarray:
        """A request's values as UTF-8 bytes (b"" for missing) -> the ids `encode` gives their text, with no
        decoding and no Arrow conversion: a fixed-width numpy array of values of up to 8 bytes is looked up as
        integers, all at once; other values one by one in a dict keyed by bytes."""
        if self.buckets:
            return self.encode([v.decode("utf-8", "replace") if v else None for v in values])
        if isinstance(values, np.ndarray) and values.dtype.kind == "S" and values.dtype.itemsize <= PACKED_BYTES:
            return self._packed_ids(values)
        return np.fromiter(map(self._byte_ids.get, values, repeat(0)), dtype=np.int64, count=len(values))

    def _packed_ids(self, values: np.ndarray) -> np.ndarray:
        keys, ids = self._packed_vocabulary
        packed = _packed(values)
        if not len(keys):
            return np.zeros(len(values), dtype=np.int64)
        at = np.searchsorted(keys, packed).clip(max=len(keys) - 1)
        return np.where(keys[at] == packed, ids[at], 0)

    def encode(self, values: Sequence) -> np.ndarray:
        """Values (any dtype; missing as None/NaN) -> int64 ids; 0 for missing or unseen."""
        strings = _as_strings(values)
        if self.buckets:
            valid = strings.is_valid()
            present = valid.to_numpy(zero_copy_only=False)
            ids = np.zeros(len(strings), dtype=np.int64)
            hashed = pd.util.hash_array(strings.filter(valid).to_numpy(zero_copy_only=False), hash_key=HASH_KEY)
            ids[present] = (hashed % np.uint64(self.buckets - 1)).astype(np.int64) + 1
            return ids
        if len(strings) <= SMALL_INPUT:  # online lookups: a dict beats rebuilding Arrow's hash table per call
            ids = self._ids
            return np.fromiter((ids.get(v, 0) for v in strings.to_pylist()), dtype=np.int64, count=len(strings))
        positions = pc.index_in(strings, value_set=self._value_set)  # null: missing or unseen
        return positions.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64) + 1

    @property
    def _value_set(self) -> pa.Array:
        return self._cached("_values", lambda: pa.array(self.vocabulary, type=pa.string()))

    @property
    def _ids(self) -> dict[str, int]:
        return self._cached("_id_of", lambda: {v: i + 1 for i, v in enumerate(self.vocabulary)})

    @property
    def _packed_vocabulary(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted integer keys of the vocabulary's values of 1 to 8 bytes, and their ids. A value ending in NUL
        is left out: as fixed-width bytes it reads as the same value without it (the dict still has it)."""

        def build() -> tuple[np.ndarray, np.ndarray]:
            short = [(v.encode(), i + 1) for i, v in enumerate(self.vocabulary)]
            short = [(b, i) for b, i in short if 0 < len(b) <= PACKED_BYTES and not b.endswith(b"\0")]
            values = np.array([b for b, _ in short] or [b""], dtype=f"S{PACKED_BYTES}")[: len(short)]
            keys, ids = _packed(values), np.array([i for _, i in short], dtype=np.int64)
            order = np.argsort(keys)
            return keys[order], ids[order]

        return self._cached("_packed", build)

    @property
    def _byte_ids(self) -> dict[bytes, int]:
        # b"" is a missing value, whatever the vocabulary holds
        return self._cached("_id_of_bytes", lambda: {v.encode(): i + 1 for i, v in enumerate(self.vocabulary) if v})

    def _cached(self, key: str, build):
        if key not in self.__dict__:
            object.__setattr__(self, key, build())
        return self.__dict__[key]


def _packed(values: np.ndarray) -> np.ndarray:
    """Fixed-width bytes of at most 8 bytes as little-endian integers, NUL-padded: equal values, equal integers."""
    width = values.dtype.itemsize
    padded = np.zeros((len(values), PACKED_BYTES), dtype=np.uint8)
    padded[:, :width] = np.ascontiguousarray(values).view(np.uint8).reshape(len(values), width)
    return padded.view("<u8")[:, 0]


def _floats(values: Sequence) -> np.ndarray:
    """A dense column as float32, NaN where missing (numeric arrays skip pandas' masked path)."""
    array = np.asarray(values)
    if array.dtype.kind != "f":
        array = pd.array(values, dtype="Float32").to_numpy(dtype=np.float32, na_value=np.nan)
    return array.astype(np.float32, copy=False)


def _as_strings(values: Sequence) -> pa.Array:
    """A column as an Arrow string array (Arrow-backed columns pass through without copies)."""
    arrow = getattr(getattr(values, "array", None), "__arrow_array__", None)
    array = arrow() if arrow is not None else pa.array(values, from_pandas=True)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.type == pa.string():
        return array
    if pa.types.is_floating(array.type):  # e.g. ids read as floats: 3.0 -> "3"
        array = pc.cast(array, pa.int64(), safe=False)
    return pc.cast(array, pa.string())


class _VocabularyCounter:
    """Streaming value counts in Arrow; compacted as it goes so memory follows distinct values."""

    def __init__(self) -> None:
        self.parts: list[pa.Table] = []

    def add(self, values: pd.Series) -> None:
        counts = pc.value_counts(_as_strings(values).drop_null())
        self.parts.append(pa.table({"value": counts.field("values"), "count": counts.field("counts")}))
        if len(self.parts) >= 16:
            self.parts = [self.total()]

    def total(self) -> pa.Table:
        if not self.parts:
            return pa.table({"value": pa.array([], pa.string()), "count": pa.array([], pa.int64())})
        merged = pa.concat_tables(self.parts).group_by("value").aggregate([("count", "sum")])
        return merged.rename_columns(["value", "count"])


@dataclass(frozen=True)
class FeatureTransform:
    schema_name: str
    dense: tuple[str, ...]
    categorical: tuple[Encoding, ...]

    @property
    def num_dense(self) -> int:
        """Dense columns the model gets: one all-zero column when the dataset has none."""
        return max(1, len(self.dense))

    @property
    def cardinalities(self) -> tuple[int, ...]:
        return tuple(e.cardinality for e in self.categorical)

    @classmethod
    def fit(cls, schema: DatasetSchema, frames: Iterable[pd.DataFrame]) -> FeatureTransform:
        """Fit on training rows only (an iterable of chunks, so data of any size streams through)."""
        counters = {c.name: _VocabularyCounter() for c in schema.categorical if c.encoding == "vocab"}
        for frame in frames:
            for name, counter in counters.items():
                counter.add(frame[name])
        encodings = []
        for spec in schema.categorical:
            if spec.encoding == "hash":
                encodings.append(Encoding(spec.name, buckets=spec.buckets))
                continue
            counts = counters[spec.name].total().filter(pc.field("count") >= spec.min_count)
            order = pc.sort_indices(counts, sort_keys=[("count", "descending"), ("value", "ascending")])
            vocabulary = counts.column("value").take(order).to_pylist()  # frequent first, deterministic
            encodings.append(Encoding(spec.name, vocabulary=tuple(vocabulary)))
        return cls(schema.name, tuple(schema.dense), tuple(encodings))

    def transform(self, columns: Mapping[str, Sequence]) -> tuple[np.ndarray, np.ndarray]:
        """Rows -> (dense float32 (n, num_dense), categorical ids int64 (n, n_categorical)), in schema order.

        `columns` is a DataFrame or a plain {name: values} mapping (cheaper for an online request).
        """
        return self._dense(columns), self._sparse(columns, Encoding.encode)

    def transform_request(self, columns: Mapping[str, Sequence]) -> tuple[np.ndarray, np.ndarray]:
        """`transform` for a served request: dense columns as float arrays (NaN for missing), categorical ones
        as UTF-8 bytes (b"" for missing), as Triton hands them over. The same ids and values as `transform`."""
        return self._dense(columns), self._sparse(columns, Encoding.encode_bytes)

    def _dense(self, columns: Mapping[str, Sequence]) -> np.ndarray:
        self._check_columns(columns)
        if not self.dense:  # the model's all-zero placeholder column
            return np.zeros((len(columns[self.categorical[0].name]), 1), dtype=np.float32)
        raw = np.stack([_floats(columns[name]) for name in self.dense], axis=1)
        np.nan_to_num(raw, copy=False, nan=0.0)  # missing -> 0
        return np.log1p(np.maximum(raw, 0.0, out=raw), out=raw)  # (B, num_dense)

    def _sparse(self, columns: Mapping[str, Sequence], encode) -> np.ndarray:
        sparse = np.empty((len(columns[self.categorical[0].name]), len(self.categorical)), dtype=np.int64)
        for j, encoding in enumerate(self.categorical):
            sparse[:, j] = encode(encoding, columns[encoding.name])
        return sparse  # (B, n_categorical)

    def _check_columns(self, columns: Mapping[str, Sequence]) -> None:
        missing = [c for c in (*self.dense, *(e.name for e in self.categorical)) if c not in columns]
        if missing:
            raise ValueError(f"feature transform ({self.schema_name}): input lacks columns {missing}")

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "schema": self.schema_name,
            "dense": list(self.dense),
            "categorical": [
                {"name": e.name, "buckets": e.buckets}
                if e.buckets
                else {"name": e.name, "vocabulary": list(e.vocabulary)}
                for e in self.categorical
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> FeatureTransform:
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"feature transform: format_version {data.get('format_version')!r} is not supported "
                f"(this version reads {FORMAT_VERSION})"
            )
        encodings = tuple(
            Encoding(c["name"], vocabulary=tuple(c.get("vocabulary", ())), buckets=c.get("buckets", 0))
            for c in data["categorical"]
        )
        return cls(data["schema"], tuple(data["dense"]), encodings)

    def sha256(self) -> str:
        """Digest of the fitted transform: a served model and its client must agree on it."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> FeatureTransform:
        return cls.from_dict(json.loads(Path(path).read_text()))


def dense_columns(transform: FeatureTransform) -> tuple[str, ...]:
    """Column names of the model's dense input: the dense features, or one all-zero placeholder."""
    return transform.dense or ("zero_dense",)

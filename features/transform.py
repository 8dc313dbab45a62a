"""The feature transform: fitted on the training split once, applied identically everywhere.

Dense: log(max(x, 0) + 1), missing -> 0. Categorical: id 0 means missing or unseen; a vocabulary maps
values seen at least `min_count` times in training to 1..V, hashing maps any value to 1..buckets-1; a numeric
column read as categories (`bucket: log`) is bucketed first. The fitted transform is a versioned JSON artifact
used by training, Feast lookups and the serving client.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features import compiled
from features.schema import DatasetSchema

FORMAT_VERSION = 1
LABEL = "label"  # the label column of model-ready splits
SMALL_INPUT = 2048  # rows up to which vocabulary lookups use a Python dict
HASH_KEY = "nasrec-features0"  # 16 bytes: a fixed key makes hashes equal across processes and machines


@dataclass(frozen=True)
class ByteColumn:
    """A categorical column as a served request carries it: value i is `data[starts[i] : starts[i] + lengths[i]]`,
    its UTF-8 text as the log holds it, empty when missing. No Python object per value, and the columns of a
    request may share one buffer."""

    data: np.ndarray  # uint8
    starts: np.ndarray  # int64, (n,)
    lengths: np.ndarray  # int64, (n,)

    @classmethod
    def of(cls, values: Sequence[bytes]) -> ByteColumn:
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        return cls(np.frombuffer(b"".join(values), dtype=np.uint8), np.cumsum(lengths) - lengths, lengths)

    def __len__(self) -> int:
        return len(self.starts)

    def values(self) -> list[bytes]:
        view = memoryview(self.data)
        return [bytes(view[s : s + n]) for s, n in zip(self.starts.tolist(), self.lengths.tolist())]

    def value(self, at: int) -> bytes:
        start = int(self.starts[at])
        return self.data[start : start + int(self.lengths[at])].tobytes()

    def to_arrow(self) -> pa.StringArray:
        """The values as an Arrow string array ("" when missing), gathered by numpy: no Python object per value."""
        offsets = np.zeros(len(self) + 1, dtype=np.int32)
        np.cumsum(self.lengths, out=offsets[1:])
        gather = np.arange(offsets[-1]) + np.repeat(self.starts - offsets[:-1], self.lengths)
        array = pa.StringArray.from_buffers(len(self), pa.py_buffer(offsets), pa.py_buffer(self.data[gather]))
        try:
            array.validate(full=True)
        except pa.ArrowInvalid as err:
            raise ValueError(f"not UTF-8 text: {err}") from None
        return array


def _joined(columns: Sequence[ByteColumn]) -> ByteColumn:
    """Columns as one, over one buffer (none copied when they share one)."""
    lengths = np.concatenate([c.lengths for c in columns])
    if all(c.data is columns[0].data for c in columns):
        return ByteColumn(columns[0].data, np.concatenate([c.starts for c in columns]), lengths)
    offsets = np.cumsum([0, *(len(c.data) for c in columns[:-1])])
    starts = np.concatenate([c.starts + offset for c, offset in zip(columns, offsets)])
    return ByteColumn(np.concatenate([c.data for c in columns]), starts, lengths)


class VocabularyTable:
    """Every vocabulary of a transform in one open-addressing hash table, so a served request's values of all
    columns are looked up in one compiled pass (`features.compiled`), whatever the batch.

    A value of one word (1 to 8 bytes, the last not NUL) is keyed by its bytes as an integer XOR a salt of its
    column; the table (linear probing, at most a quarter full) holds the key, the column and the id, and a lookup
    matches both, so a key that two columns share finds each column's own id. Other values go through a dict.
    """

    def __init__(self, vocabularies: Sequence[tuple[str, ...]]):
        entries = ByteColumn.of([v.encode() for vocabulary in vocabularies for v in vocabulary])
        column = np.repeat(np.arange(len(vocabularies)), [len(v) for v in vocabularies])
        ids = np.concatenate([np.arange(1, len(v) + 1) for v in vocabularies] or [np.zeros(0, np.int64)])
        # salts keep the columns' common values (such as "1") from crowding into one run of slots
        self.salts = np.random.default_rng(0).integers(0, 2**63, max(len(vocabularies), 1)).astype(np.uint64)
        keys, one_word = compiled.one_word_keys(entries.data, entries.starts, entries.lengths, column, self.salts)
        others = np.flatnonzero(~one_word & (entries.lengths > 0)).tolist()
        self.others = {(int(column[k]), entries.value(k)): int(ids[k]) for k in others}
        bits = max(4, int(np.ceil(np.log2(4 * max(int(one_word.sum()), 1)))))
        self.shift = np.uint64(64 - bits)
        self.keys = np.zeros(1 << bits, dtype=np.uint64)
        self.columns = np.full(1 << bits, -1, dtype=np.int64)
        self.ids = np.zeros(1 << bits, dtype=np.int64)  # 0: an empty slot
        self.longest_probe = compiled.insert(
            self.keys, self.columns, self.ids, keys[one_word], column[one_word], ids[one_word], self.shift
        )

    def ids_of(self, column: np.ndarray, values: ByteColumn) -> np.ndarray:
        """The id of each value of `values` in the vocabulary `column` names (0: missing or unseen)."""
        found = compiled.probe(
            values.data,
            values.starts,
            values.lengths,
            column,
            self.salts,
            self.keys,
            self.columns,
            self.ids,
            self.shift,
            self.longest_probe,
        )
        for at in np.flatnonzero(found == compiled.IN_DICT).tolist():
            found[at] = self.others.get((int(column[at]), values.value(at)), 0)
        return found


@dataclass(frozen=True)
class Encoding:
    name: str
    vocabulary: tuple[str, ...] = ()  # vocab encoding: value i -> id i + 1
    buckets: int = 0  # hash encoding
    bucket: str = ""  # "log": numbers, whose vocabulary is of their log buckets (`log_buckets`)

    @property
    def cardinality(self) -> int:
        return self.buckets if self.buckets else len(self.vocabulary) + 1

    @property
    def in_vocabulary_table(self) -> bool:
        """Whether a served request's raw bytes are looked up as they are (not hashed, not bucketed first)."""
        return not self.buckets and not self.bucket

    def encode(self, values: Sequence) -> np.ndarray:
        """Values (any dtype; missing as None/NaN) -> int64 ids; 0 for missing or unseen."""
        if self.bucket:
            return self.bucket_ids(log_buckets(values, self.name))
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

    def bucket_ids(self, buckets: np.ndarray) -> np.ndarray:
        """Log buckets (float, NaN where missing) -> ids, through an array over the buckets' range: no hashing."""
        low, table = self._bucket_table
        at = buckets - low
        known = (at >= 0) & (at < len(table))  # False for NaN
        ids = np.zeros(len(buckets), dtype=np.int64)
        ids[known] = table[at[known].astype(np.int64)]
        return ids

    @property
    def _bucket_table(self) -> tuple[int, np.ndarray]:
        def build() -> tuple[int, np.ndarray]:
            buckets = np.array([int(v) for v in self.vocabulary], dtype=np.int64)
            low = int(buckets.min()) if len(buckets) else 0
            table = np.zeros(int(buckets.max()) - low + 1 if len(buckets) else 0, dtype=np.int64)
            table[buckets - low] = np.arange(1, len(buckets) + 1)
            return low, table

        return self._cached("_buckets", build)

    @property
    def _value_set(self) -> pa.Array:
        return self._cached("_values", lambda: pa.array(self.vocabulary, type=pa.string()))

    @property
    def _ids(self) -> dict[str, int]:
        return self._cached("_id_of", lambda: {v: i + 1 for i, v in enumerate(self.vocabulary)})

    def _cached(self, key: str, build):
        if key not in self.__dict__:
            object.__setattr__(self, key, build())
        return self.__dict__[key]


def _log_dense(raw: np.ndarray | None, rows: int) -> np.ndarray:
    """Raw dense values (B, n) -> the model's dense input, in place: log(max(x, 0) + 1), missing (NaN) -> 0; the
    model's all-zero placeholder column (B, 1) when there are none."""
    if raw is None or not raw.shape[1]:
        return np.zeros((rows, 1), dtype=np.float32)
    np.nan_to_num(raw, copy=False, nan=0.0)
    return np.log1p(np.maximum(raw, 0.0, out=raw), out=raw)


def _floats(values: Sequence) -> np.ndarray:
    """A dense column as float32, NaN where missing (numeric arrays skip pandas' masked path)."""
    array = np.asarray(values)
    if array.dtype.kind != "f":
        array = pd.array(values, dtype="Float32").to_numpy(dtype=np.float32, na_value=np.nan)
    return array.astype(np.float32, copy=False)


def log_buckets(values: Sequence, name: str) -> np.ndarray:
    """Numbers (as text or numeric; missing as None/NaN/"") -> their log bucket, float64: floor(ln(x)^2) for
    x > 2, the integer part of x otherwise; NaN where missing. Text that is no number is an error naming it."""
    strings = _as_strings(values)
    try:
        numbers = pc.cast(pc.if_else(pc.equal(strings, ""), None, strings), pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        bad = next(v for v in strings.to_pylist() if v and not _is_number(v))
        raise ValueError(f"feature {name!r} (bucket: log): {bad!r} is not a number") from None
    x = numbers.to_numpy(zero_copy_only=False)  # NaN where missing
    with np.errstate(invalid="ignore"):
        return np.where(x > 2, np.floor(np.log(np.where(x > 2, x, 1.0)) ** 2), np.trunc(x))


def _bucket_text(buckets: np.ndarray) -> pa.Array:
    """Log buckets as the text a vocabulary holds ("21"), null where missing."""
    return pc.cast(pa.array(buckets, mask=np.isnan(buckets)).cast(pa.int64()), pa.string())


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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
        vocab = [c for c in schema.categorical if c.encoding == "vocab"]
        counters = {c.name: _VocabularyCounter() for c in vocab}
        for frame in frames:
            for spec in vocab:
                column = frame[spec.name]
                counters[spec.name].add(_bucket_text(log_buckets(column, spec.name)) if spec.bucket else column)
        encodings = []
        for spec in schema.categorical:
            if spec.encoding == "hash":
                encodings.append(Encoding(spec.name, buckets=spec.buckets))
                continue
            counts = counters[spec.name].total().filter(pc.field("count") >= spec.min_count)
            order = pc.sort_indices(counts, sort_keys=[("count", "descending"), ("value", "ascending")])
            vocabulary = counts.column("value").take(order).to_pylist()  # frequent first, deterministic
            encodings.append(Encoding(spec.name, vocabulary=tuple(vocabulary), bucket=spec.bucket))
        return cls(schema.name, tuple(schema.dense), tuple(encodings))

    def transform(self, columns: Mapping[str, Sequence]) -> tuple[np.ndarray, np.ndarray]:
        """Rows -> (dense float32 (n, num_dense), categorical ids int64 (n, n_categorical)), in schema order.

        `columns` is a DataFrame or a plain {name: values} mapping (cheaper for an online request).
        """
        return self._dense(columns), self._sparse(columns)

    def transform_request(
        self, dense: np.ndarray, categorical: Mapping[str, ByteColumn]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`transform` for a served request: `dense` the raw dense fields, float32 (B, len(self.dense)) in this
        transform's order with NaN for missing, and each categorical field's values as a ByteColumn. The same values
        and ids as `transform`; every vocabulary is looked up at once (`VocabularyTable`)."""
        missing = [e.name for e in self.categorical if e.name not in categorical]
        if missing or dense.ndim != 2 or dense.shape[1] != len(self.dense):
            raise ValueError(
                f"feature transform ({self.schema_name}): a request needs dense (B, {len(self.dense)}) and the "
                f"categorical fields; got dense {dense.shape}, missing {missing}"
            )
        rows = len(dense)
        sparse = np.empty((rows, len(self.categorical)), dtype=np.int64)
        vocabulary = [j for j, e in enumerate(self.categorical) if e.in_vocabulary_table]
        if vocabulary:
            values = _joined([categorical[self.categorical[j].name] for j in vocabulary])
            column = np.repeat(np.arange(len(vocabulary)), rows)
            sparse[:, vocabulary] = self.vocabulary_table.ids_of(column, values).reshape(len(vocabulary), rows).T
        bucketed = [j for j, e in enumerate(self.categorical) if e.bucket]
        if bucketed:
            for j, column in zip(
                bucketed, self._request_buckets([self.categorical[j].name for j in bucketed], categorical)
            ):
                sparse[:, j] = self.categorical[j].bucket_ids(column)
        for j, encoding in enumerate(self.categorical):
            if encoding.buckets:
                text = [v.decode("utf-8", "replace") if v else None for v in categorical[encoding.name].values()]
                sparse[:, j] = encoding.encode(text)
        return _log_dense(dense.astype(np.float32, copy=True), rows), sparse  # (B, num_dense), (B, n_categorical)

    @staticmethod
    def _request_buckets(names: list[str], categorical: Mapping[str, ByteColumn]) -> np.ndarray:
        """The log buckets of a request's numeric columns (len(names), B), every column's text parsed at once;
        on bad text, column by column, so the error names the column."""
        try:
            values = _joined([categorical[name] for name in names]).to_arrow()
            return log_buckets(values, "").reshape(len(names), -1)
        except ValueError:
            for name in names:
                try:
                    text = categorical[name].to_arrow()
                except ValueError as err:
                    raise ValueError(f"feature {name!r}: {err}") from None
                log_buckets(text, name)
            raise

    @cached_property
    def vocabulary_table(self) -> VocabularyTable:
        return VocabularyTable([e.vocabulary for e in self.categorical if e.in_vocabulary_table])

    def _dense(self, columns: Mapping[str, Sequence]) -> np.ndarray:
        self._check_columns(columns)
        rows = len(columns[self.categorical[0].name])
        raw = np.stack([_floats(columns[name]) for name in self.dense], axis=1) if self.dense else None
        return _log_dense(raw, rows)

    def _sparse(self, columns: Mapping[str, Sequence]) -> np.ndarray:
        sparse = np.empty((len(columns[self.categorical[0].name]), len(self.categorical)), dtype=np.int64)
        for j, encoding in enumerate(self.categorical):
            sparse[:, j] = encoding.encode(columns[encoding.name])
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
                (
                    {"name": e.name, "buckets": e.buckets}
                    if e.buckets
                    else {"name": e.name, "vocabulary": list(e.vocabulary)}
                )
                | ({"bucket": e.bucket} if e.bucket else {})
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
            Encoding(
                c["name"],
                vocabulary=tuple(c.get("vocabulary", ())),
                buckets=c.get("buckets", 0),
                bucket=c.get("bucket", ""),
            )
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

"""The feature transform: fitted on the training split once, applied identically everywhere.

Dense: log(max(x, 0) + 1), missing -> 0. Categorical: id 0 means missing or unseen; a vocabulary maps
values seen at least `min_count` times in training to 1..V, hashing maps any value to 1..buckets-1. The
fitted transform is a versioned JSON artifact used by training, Feast lookups and the serving client.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.schema import DatasetSchema

FORMAT_VERSION = 1
HASH_KEY = "nasrec-features0"  # 16 bytes: a fixed key makes hashes equal across processes and machines


@dataclass(frozen=True)
class Encoding:
    name: str
    vocabulary: tuple[str, ...] = ()  # vocab encoding: value i -> id i + 1
    buckets: int = 0  # hash encoding

    @property
    def cardinality(self) -> int:
        return self.buckets if self.buckets else len(self.vocabulary) + 1

    def encode(self, values: pd.Series) -> np.ndarray:
        if self.buckets:
            present = values.notna().to_numpy()
            ids = np.zeros(len(values), dtype=np.int64)
            hashed = pd.util.hash_array(values[present].astype(str).to_numpy(dtype=object), hash_key=HASH_KEY)
            ids[present] = (hashed % np.uint64(self.buckets - 1)).astype(np.int64) + 1
            return ids
        codes = pd.Categorical(values, categories=self._categories).codes  # -1: missing or unseen
        return codes.astype(np.int64) + 1

    @property
    def _categories(self) -> pd.Index:
        cached = self.__dict__.get("_index")
        if cached is None:
            cached = pd.Index(self.vocabulary, dtype=object)
            object.__setattr__(self, "_index", cached)
        return cached


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
        counts: dict[str, pd.Series] = {
            c.name: pd.Series(dtype=np.int64) for c in schema.categorical if c.encoding == "vocab"
        }
        for frame in frames:
            for name in counts:
                counts[name] = counts[name].add(frame[name].value_counts(), fill_value=0)
        encodings = []
        for spec in schema.categorical:
            if spec.encoding == "hash":
                encodings.append(Encoding(spec.name, buckets=spec.buckets))
                continue
            kept = counts[spec.name][counts[spec.name] >= spec.min_count]
            ordered = sorted(kept.items(), key=lambda kv: (-kv[1], str(kv[0])))  # frequent first, deterministic
            encodings.append(Encoding(spec.name, vocabulary=tuple(str(v) for v, _ in ordered)))
        return cls(schema.name, tuple(schema.dense), tuple(encodings))

    def transform(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Rows -> (dense float32 (n, num_dense), categorical ids int64 (n, n_categorical)), in schema order."""
        missing = [c for c in (*self.dense, *(e.name for e in self.categorical)) if c not in frame.columns]
        if missing:
            raise ValueError(f"feature transform ({self.schema_name}): input lacks columns {missing}")
        if self.dense:
            raw = frame[list(self.dense)].to_numpy(dtype=np.float32, na_value=np.nan)
            dense = np.log1p(np.maximum(np.nan_to_num(raw, nan=0.0), 0.0)).astype(np.float32)
        else:
            dense = np.zeros((len(frame), 1), dtype=np.float32)
        sparse = np.empty((len(frame), len(self.categorical)), dtype=np.int64)
        for j, encoding in enumerate(self.categorical):
            sparse[:, j] = encoding.encode(
                frame[encoding.name].astype(object).where(frame[encoding.name].notna(), None)
            )
        return dense, sparse

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

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> FeatureTransform:
        return cls.from_dict(json.loads(Path(path).read_text()))


def dense_columns(transform: FeatureTransform) -> tuple[str, ...]:
    """Column names of the model's dense input: the dense features, or one all-zero placeholder."""
    return transform.dense or ("zero_dense",)

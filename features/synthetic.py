"""Synthetic CTR data whose labels come from a fixed random "teacher" with planted feature interactions,
so that models have something real to learn and better models score measurably better.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.schema import DatasetSchema

LATENT_DIM = 4


@dataclass
class SyntheticBatch:
    dense: np.ndarray  # (n, num_dense) float32, already log(1 + x) transformed
    sparse: np.ndarray  # (n, num_sparse) int64 ids in [0, cardinality)
    label: np.ndarray  # (n,) float32 in {0, 1}


class TeacherCTR:
    """A fixed random teacher: per-id biases, planted pairwise categorical interactions and a dense term.

    Everything is drawn from `seed`; `sample(n, seed)` is deterministic given both seeds.
    """

    def __init__(
        self,
        num_dense: int,
        cardinalities: tuple[int, ...],
        seed: int = 0,
        interactions: int = 8,
        base_rate: float = 0.25,
    ):
        if num_dense < 1 or not cardinalities or min(cardinalities) < 1:
            raise ValueError(f"teacher: need num_dense >= 1 and cardinalities >= 1, got {num_dense}, {cardinalities}")
        rng = np.random.default_rng(seed)
        self.num_dense = num_dense
        self.cardinalities = tuple(cardinalities)
        self.id_bias = [rng.normal(0, 0.5, c) for c in cardinalities]
        self.id_latent = [rng.normal(0, 1.0, (c, LATENT_DIM)) for c in cardinalities]
        n = len(cardinalities)
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        chosen = rng.choice(len(pairs), size=min(interactions, len(pairs)), replace=False) if pairs else []
        self.pairs = [pairs[k] for k in chosen]
        self.dense_weight = rng.normal(0, 0.4, num_dense)
        self.dense_scale = rng.uniform(1, 500, num_dense)  # typical count magnitudes
        self.zipf_exponent = rng.uniform(1.05, 1.6, n)
        self.intercept = float(np.log(base_rate / (1 - base_rate)))

    def sample(self, rows: int, seed: int) -> SyntheticBatch:
        rng = np.random.default_rng(seed)
        counts = rng.exponential(self.dense_scale, (rows, self.num_dense)).round()
        dense = np.log1p(counts).astype(np.float32)
        sparse = np.stack([self._ids(rng, c, e, rows) for c, e in zip(self.cardinalities, self.zipf_exponent)], axis=1)
        logit = self.intercept + (dense - dense.mean(0)) @ self.dense_weight / np.sqrt(self.num_dense)
        for f, ids in enumerate(sparse.T):
            logit += self.id_bias[f][ids]
        for f, g in self.pairs:
            logit += (self.id_latent[f][sparse[:, f]] * self.id_latent[g][sparse[:, g]]).sum(1) / np.sqrt(LATENT_DIM)
        label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        return SyntheticBatch(dense, sparse.astype(np.int64), label)

    @staticmethod
    def _ids(rng: np.random.Generator, cardinality: int, exponent: float, rows: int) -> np.ndarray:
        """Zipf-like ids: a few values are frequent, most are rare, as in real categorical logs."""
        return (rng.zipf(exponent, rows) - 1) % cardinality


def write_synthetic_log(
    schema: DatasetSchema,
    path: Path,
    rows: int,
    seed: int = 0,
    cardinality: int = 10_000,
    chunk_rows: int = 100_000,
    hot_keys: Mapping[str, float] | None = None,
) -> Path:
    """Stream `rows` raw log rows: Parquet for a `.parquet` path, else the schema's text format (.gz allowed).

    Labels come from a fixed TeacherCTR over the ids, so the data is learnable; memory is bounded by
    `chunk_rows`, whatever `rows` is. Categorical values are written as 8-hex-digit tokens (as in Criteo) or, for
    `bucket` features, as numbers; dense values as non-negative counts with ~5% missing; event time one second
    per row. `hot_keys` skews a log as real ones are: {feature: fraction} gives that fraction of rows, at random,
    one value of the feature (e.g. {"device_id": 0.8}: one device key holds 80% of the rows).
    """
    unknown = sorted(set(hot_keys or {}) - set(schema.categorical_names))
    if unknown:
        raise ValueError(f"hot_keys: {unknown} are not categorical features of {schema.name!r}")
    num_dense = max(1, len(schema.dense))
    cards = tuple(min(cardinality, 2**31) for _ in schema.categorical)
    teacher = TeacherCTR(num_dense, cards, seed=seed)
    start = pd.Timestamp(schema.timestamp.start)
    writer = _LogWriter(schema, Path(path))
    try:
        for first in range(0, rows, chunk_rows):
            n = min(chunk_rows, rows - first)
            batch = teacher.sample(n, seed=seed * 1_000_003 + first)
            rng = np.random.default_rng(seed + first)
            data: dict[str, object] = {schema.label: batch.label.astype(np.int8).astype(str)}
            counts = np.expm1(batch.dense).round().astype(np.int64).astype(str).astype(object)
            for j, name in enumerate(schema.dense):
                column = counts[:, j].copy()
                column[rng.random(n) < 0.05] = None  # missing: empty in text, null in Parquet
                data[name] = column
            for j, spec in enumerate(schema.categorical):
                ids = batch.sparse[:, j]
                if spec.name in (hot_keys or {}):  # the hot value is id 0's
                    ids = np.where(rng.random(n) < hot_keys[spec.name], 0, ids)
                if spec.bucket:  # a number read as categories: the id itself, as a count
                    data[spec.name] = ids.astype(str).astype(object)
                else:
                    data[spec.name] = np.char.mod("%08x", (ids * 2654435761 + j) % 2**32).astype(object)
            if schema.timestamp.source == "column":
                data[schema.timestamp.column] = _format_times(
                    start + pd.to_timedelta(np.arange(first, first + n), "s"), schema.timestamp.parser
                )
            writer.write(pd.DataFrame(data))
    finally:
        writer.close()
    return Path(path)


def _format_times(times: pd.DatetimeIndex, parser: str) -> np.ndarray:
    if parser == "yymmddhh":
        return times.strftime("%y%m%d%H").to_numpy(dtype=object)
    if parser == "iso8601":
        return times.strftime("%Y-%m-%dT%H:%M:%S%z").to_numpy(dtype=object)
    return (times.asi8 // 10**9).astype(str).astype(object)


class _LogWriter:
    """Appends chunks in the schema's file format; columns in the schema's file order."""

    def __init__(self, schema: DatasetSchema, path: Path):
        self.schema = schema
        self.path = path
        self.columns = list(schema.columns or schema.required_columns)
        self._parquet = None
        self._text = None
        if not schema.is_parquet(path):
            self._text = gzip.open(path, "wt") if path.suffix == ".gz" else open(path, "w")  # noqa: SIM115
            if schema.header:
                self._text.write(schema.delimiter.join(self.columns) + "\n")

    def write(self, frame: pd.DataFrame) -> None:
        frame = frame.reindex(columns=self.columns, fill_value="")
        if self._text is not None:
            frame.to_csv(self._text, sep=self.schema.delimiter, header=False, index=False)
            return
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.path, table.schema)
        self._parquet.write_table(table)

    def close(self) -> None:
        if self._text is not None:
            self._text.close()
        if self._parquet is not None:
            self._parquet.close()

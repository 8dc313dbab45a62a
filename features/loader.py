"""Model-ready Parquet splits -> batches of (dense float32, categorical ids int64, label float32).

Reading runs a batch ahead in a background thread; shuffling permutes rows inside a buffer of
`shuffle_rows` rows and visits the file's record batches in a random order each epoch, so memory stays
bounded by the buffer, not the split.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features.prefetch import prefetch
from features.transform import LABEL, FeatureTransform, dense_columns


@dataclass
class ArrayBatch:
    dense: np.ndarray  # (B, num_dense) float32
    sparse: np.ndarray  # (B, num_categorical) int64
    label: np.ndarray  # (B,) float32


class SplitLoader:
    def __init__(
        self,
        path: str | Path,
        transform: FeatureTransform,
        batch_size: int = 512,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        shuffle_rows: int = 262_144,
    ):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such split (run ingestion first)")
        self.dense_columns = list(dense_columns(transform))
        self.sparse_columns = [e.name for e in transform.categorical]
        missing = [
            c
            for c in (*self.dense_columns, *self.sparse_columns, LABEL)
            if c not in pq.ParquetFile(self.path).schema_arrow.names
        ]
        if missing:
            raise ValueError(f"{self.path}: columns {missing} are missing: was it written with this transform?")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.shuffle_rows = shuffle_rows
        self.rng = np.random.default_rng(seed)
        self.rows = pq.ParquetFile(self.path).metadata.num_rows

    def __len__(self) -> int:
        full, rest = divmod(self.rows, self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    def __iter__(self) -> Iterator[ArrayBatch]:
        return prefetch(self._batches(np.random.default_rng(self.rng.integers(2**63))))

    def _batches(self, rng: np.random.Generator) -> Iterator[ArrayBatch]:
        carry: ArrayBatch | None = None
        for block in self._blocks(rng):
            if carry is not None:
                block = _concat(carry, block)
                carry = None
            full = len(block.label) // self.batch_size * self.batch_size
            for start in range(0, full, self.batch_size):
                yield _slice(block, start, start + self.batch_size)
            if full < len(block.label):
                carry = _slice(block, full, len(block.label))
        if carry is not None and not self.drop_last:
            yield carry

    def _blocks(self, rng: np.random.Generator) -> Iterator[ArrayBatch]:
        """Buffers of up to `shuffle_rows` rows, permuted when shuffling."""
        parquet = pq.ParquetFile(self.path)
        groups = list(range(parquet.num_row_groups))
        if self.shuffle:
            rng.shuffle(groups)
        columns = [*self.dense_columns, *self.sparse_columns, LABEL]
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        for group in groups:
            for batch in parquet.iter_batches(batch_size=65_536, row_groups=[group], columns=columns):
                pending.append(batch)
                pending_rows += batch.num_rows
                if pending_rows >= self.shuffle_rows:
                    yield self._arrays(pa.Table.from_batches(pending), rng)
                    pending, pending_rows = [], 0
        if pending:
            yield self._arrays(pa.Table.from_batches(pending), rng)

    def _arrays(self, table: pa.Table, rng: np.random.Generator) -> ArrayBatch:
        block = ArrayBatch(
            dense=np.column_stack([table[c].to_numpy() for c in self.dense_columns]).astype(np.float32, copy=False),
            sparse=np.column_stack([table[c].to_numpy() for c in self.sparse_columns]).astype(np.int64, copy=False),
            label=table[LABEL].to_numpy().astype(np.float32),  # a copy: Arrow's zero-copy view is read-only
        )
        if self.shuffle:
            order = rng.permutation(len(block.label))
            block = ArrayBatch(block.dense[order], block.sparse[order], block.label[order])
        return block


def _slice(b: ArrayBatch, start: int, stop: int) -> ArrayBatch:
    return ArrayBatch(b.dense[start:stop], b.sparse[start:stop], b.label[start:stop])


def _concat(a: ArrayBatch, b: ArrayBatch) -> ArrayBatch:
    return ArrayBatch(
        np.concatenate([a.dense, b.dense]), np.concatenate([a.sparse, b.sparse]), np.concatenate([a.label, b.label])
    )

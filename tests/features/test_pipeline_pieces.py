"""Synthetic logs, time splits, the loader and prefetching, on generated data (no shared data needed)."""

import gzip
import threading

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.ingest import SplitSpec, ingest
from features.loader import SplitLoader
from features.prefetch import prefetch
from features.readers import EVENT_ID, EVENT_TIMESTAMP, RawReader
from features.schema import builtin_schema
from features.synthetic import write_synthetic_log


@pytest.fixture(scope="module")
def synthetic_ingest(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    raw = write_synthetic_log(
        builtin_schema("criteo"), root / "log.txt.gz", rows=6000, seed=3, cardinality=300, chunk_rows=2500
    )
    return raw, ingest(builtin_schema("criteo"), [raw], root / "out", SplitSpec())


def test_synthetic_log_is_deterministic_and_in_the_schema_format(tmp_path):
    schema = builtin_schema("criteo")
    a = write_synthetic_log(schema, tmp_path / "a.txt", rows=300, seed=1, chunk_rows=128)
    b = write_synthetic_log(schema, tmp_path / "b.txt", rows=300, seed=1, chunk_rows=128)
    assert a.read_bytes() == b.read_bytes()
    lines = a.read_text().splitlines()
    assert len(lines) == 300 and all(len(line.split("\t")) == 40 for line in lines)
    avazu = write_synthetic_log(builtin_schema("avazu"), tmp_path / "a.csv", rows=50, seed=1)
    frame = pd.concat(RawReader(builtin_schema("avazu"), [avazu]).chunks())
    assert len(frame) == 50 and frame[EVENT_TIMESTAMP].is_monotonic_increasing


def test_time_split_puts_the_latest_rows_in_test(synthetic_ingest):
    _, result = synthetic_ingest
    splits = {n: pq.read_table(p).to_pandas() for n, p in result.splits.items()}
    assert [len(splits[n]) for n in ("train", "validation", "test")] == [4800, 600, 600]
    assert splits["train"][EVENT_TIMESTAMP].max() < splits["validation"][EVENT_TIMESTAMP].min()
    assert splits["validation"][EVENT_TIMESTAMP].max() < splits["test"][EVENT_TIMESTAMP].min()
    assert 0.1 < result.stats["label_rate"] < 0.5


def test_loader_yields_every_row_once_in_batches(synthetic_ingest):
    _, result = synthetic_ingest
    loader = SplitLoader(
        result.splits["train"], result.transform, batch_size=512, shuffle=True, seed=1, shuffle_rows=1000
    )
    batches = list(loader)
    assert len(batches) == len(loader) == 10  # 4800 rows: 9 full batches and one of 192
    assert [len(b.label) for b in batches][-1] == 4800 - 9 * 512
    assert batches[0].dense.dtype == np.float32 and batches[0].sparse.dtype == np.int64
    expected = pq.read_table(result.splits["train"]).to_pandas()
    got = np.sort(np.concatenate([b.sparse[:, 0] * 10 + b.label for b in batches]))
    first = result.transform.categorical[0].name
    np.testing.assert_array_equal(got, np.sort(expected[first].to_numpy() * 10 + expected["label"].to_numpy()))
    in_order = next(iter(SplitLoader(result.splits["train"], result.transform, batch_size=512)))
    fields = [e.name for e in result.transform.categorical]
    np.testing.assert_array_equal(in_order.sparse, expected[fields].to_numpy()[:512])
    assert not np.array_equal(batches[0].sparse, in_order.sparse)  # shuffled
    assert len(list(SplitLoader(result.splits["train"], result.transform, batch_size=512, drop_last=True))) == 9


def test_prefetch_keeps_order_and_reraises():
    assert list(prefetch(range(100), depth=3)) == list(range(100))

    def failing():
        yield 1
        raise ValueError("bad row 7")

    with pytest.raises(ValueError, match="bad row 7"):
        list(prefetch(failing()))
    before = threading.active_count()
    iterator = prefetch(iter(range(1000)), depth=2)
    next(iterator)
    iterator.close()  # a consumer that stops early does not leave the producer blocked
    assert threading.active_count() <= before


def test_gzip_input_reads_like_plain_text(synthetic_ingest, tmp_path):
    raw, _ = synthetic_ingest
    plain = tmp_path / "log.txt"
    plain.write_bytes(gzip.decompress(raw.read_bytes()))
    a = pd.concat(RawReader(builtin_schema("criteo"), [raw]).chunks())
    b = pd.concat(RawReader(builtin_schema("criteo"), [plain]).chunks())
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    assert a[EVENT_ID].tolist() == list(range(6000))


def test_synthetic_parquet_log_reads_like_the_text_log(tmp_path):
    schema = builtin_schema("criteo")
    parquet = write_synthetic_log(schema, tmp_path / "log.parquet", rows=3000, seed=1, chunk_rows=1000)
    text = write_synthetic_log(schema, tmp_path / "log.txt", rows=3000, seed=1, chunk_rows=1000)
    a = pd.concat(RawReader(schema, [parquet]).chunks()).reset_index(drop=True)
    b = pd.concat(RawReader(schema, [text]).chunks()).reset_index(drop=True)
    assert pq.ParquetFile(parquet).metadata.num_rows == 3000
    pd.testing.assert_frame_equal(a, b)

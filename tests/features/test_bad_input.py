"""Malformed raw input: each case is counted and reported with file, line and reason, or fails clearly,
and a failed ingestion leaves no partial output (and keeps what an earlier run wrote)."""

import csv
import gzip
import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from features.ingest import SplitSpec, ingest
from features.readers import IngestError, RawReader
from features.schema import DatasetSchema, builtin_schema

CRITEO = builtin_schema("criteo")


def criteo_line(i: int, label: str = "0", dense: str | None = None) -> str:
    dense_values = [dense if dense is not None and j == 4 else str((i * 7 + j) % 50) for j in range(13)]
    cats = [f"{(i * 31 + j) % 97:08x}" for j in range(26)]
    return "\t".join([label, *dense_values, *cats])


def write_criteo(path: Path, lines: list[str], gz: bool = False) -> Path:
    text = "\n".join(lines) + "\n"
    if gz:
        path = path.with_suffix(path.suffix + ".gz")
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def read_all(
    path: Path, tmp_path: Path, limit: float = 0.5, block_bytes: int = 1 << 20
) -> tuple[pd.DataFrame, list[dict], RawReader]:
    reader = RawReader(CRITEO, [path], tmp_path / "rejects.csv", max_reject_fraction=limit, block_bytes=block_bytes)
    frame = pd.concat(list(reader.chunks()))
    with open(tmp_path / "rejects.csv") as f:
        return frame, list(csv.DictReader(f)), reader


@pytest.mark.parametrize(("gz", "block_bytes"), [(False, 1 << 20), (True, 1 << 20), (False, 4096)])
def test_malformed_rows_are_counted_and_written_with_line_and_reason(tmp_path, gz, block_bytes):
    """block_bytes=4096 spreads the rows over many parse blocks: line numbers must still be exact."""
    lines = [criteo_line(i) for i in range(200)]
    lines[10] = "\t".join(lines[10].split("\t")[:30])  # truncated row
    lines[20] = criteo_line(20, dense="abc")  # non-numeric dense value
    lines[30] = lines[30] + "\textra\tfields"  # extra fields
    lines[40] = criteo_line(40, label="7")  # bad label
    path = write_criteo(tmp_path / "day_0.txt", lines, gz)
    frame, rejects, reader = read_all(path, tmp_path, block_bytes=block_bytes)
    assert len(frame) == 196 and reader.stats.rejected == 4
    by_line = {int(r["line"]): r for r in rejects}
    assert sorted(by_line) == [11, 21, 31, 41]  # 1-based file lines
    assert by_line[11]["reason"].startswith("field count: expected 40, got 30")
    assert by_line[21]["reason"] == "I5: not a number: 'abc'"
    assert by_line[31]["reason"].startswith("field count: expected 40, got 42")
    assert by_line[41]["reason"] == "label: must be 0 or 1, got '7'"
    assert all(r["file"] == str(path) for r in rejects)
    # rows keep their place: event ids are data-line indices, rejected lines leave gaps
    assert set(frame.event_id) == set(range(200)) - {10, 20, 30, 40}


def test_too_many_bad_rows_fail_the_ingestion_and_keep_earlier_outputs(tmp_path):
    good = write_criteo(tmp_path / "good.txt", [criteo_line(i, label=str(i % 2)) for i in range(1500)])
    out = tmp_path / "out"
    ingest(CRITEO, [good], out, SplitSpec())
    before = {p.name: p.read_bytes() for p in out.glob("*.parquet")}
    lines = [criteo_line(i, label=str(i % 2)) for i in range(1500)]
    for i in range(1, 1500, 20):  # 5% truncated rows
        lines[i] = lines[i][:20]
    bad = write_criteo(tmp_path / "bad.txt", lines)
    with pytest.raises(IngestError, match=r"bad\.txt: 75 of 1500 rows rejected \(5\.0%, limit 1\.0%\)"):
        ingest(CRITEO, [bad], out, SplitSpec(), max_reject_fraction=0.01)
    assert {p.name: p.read_bytes() for p in out.glob("*.parquet")} == before
    assert not (out / ".staging").exists()


def test_a_failure_after_reading_keeps_earlier_outputs_and_offline_store(tmp_path):
    good = write_criteo(tmp_path / "good.txt", [criteo_line(i, label=str(i % 2)) for i in range(1500)])
    out = tmp_path / "out"
    ingest(CRITEO, [good], out, SplitSpec())
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.parquet")}
    other = write_criteo(tmp_path / "other.txt", [criteo_line(i + 7, label=str(i % 2)) for i in range(1500)])
    with pytest.raises(IngestError, match="split 'validation' is empty"):
        ingest(CRITEO, [other], out, SplitSpec(validation_fraction=0.0))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*.parquet")} == before
    assert len(before) == 4  # three splits and the offline events


def test_empty_file_fails_clearly(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("")
    with pytest.raises(IngestError, match=r"empty\.txt: the file is empty"):
        read_all(path, tmp_path)


def test_schema_that_does_not_match_the_file_fails_before_writing(tmp_path):
    avazu_like = tmp_path / "avazu.csv"
    avazu_like.write_text("id,click,hour\n1,0,14102100\n")
    with pytest.raises(IngestError, match=r"expects 40 fields per row, the first row has 1"):
        read_all(avazu_like, tmp_path)
    criteo = write_criteo(tmp_path / "criteo.txt", [criteo_line(i) for i in range(5)])
    with pytest.raises(IngestError, match=r"header lacks columns \['click', 'hour'"):
        list(RawReader(builtin_schema("avazu"), [criteo]).chunks())
    out = tmp_path / "out"
    with pytest.raises(IngestError):
        ingest(CRITEO, [avazu_like], out)
    assert not any(out.glob("*.parquet"))


def test_missing_file_and_bad_schema_file(tmp_path):
    with pytest.raises(IngestError, match=r"nope\.txt: no such file"):
        RawReader(CRITEO, [tmp_path / "nope.txt"])
    bad = tmp_path / "schema.yaml"
    bad.write_text("name: x\nlabel: y\ncategorical: [a]\ntimestamp: {source: sometimes}\n")
    with pytest.raises(ValueError, match=r"schema.yaml: timestamp.source must be one of \['column', 'row_order'\]"):
        DatasetSchema.load(bad)


def test_user_parquet_logs_with_their_own_schema(tmp_path):
    schema = DatasetSchema.from_dict(
        {
            "name": "shop",
            "format": "parquet",
            "label": "clicked",
            "dense": ["price"],
            "categorical": ["user", {"name": "item", "encoding": "hash", "buckets": 64}],
            "timestamp": {"source": "column", "column": "ts", "parser": "unix_seconds"},
            "entities": [{"name": "user", "key": "user", "features": []}],
        }
    )
    frame = pd.DataFrame(
        {
            "clicked": [0, 1, 0, 1] * 50,
            "price": ["1.5", "2", None, "x"] * 50,
            "user": ["u1", "u2", "u3", "u1"] * 50,
            "item": ["a", "b", "c", None] * 50,
            "ts": [str(1_700_000_000 + i) for i in range(200)],
        }
    )
    path = tmp_path / "log.parquet"
    frame.to_parquet(path)
    reader = RawReader(schema, [path], tmp_path / "rejects.csv", max_reject_fraction=0.3)
    typed = pd.concat(list(reader.chunks()))
    assert len(typed) == 150 and reader.stats.reasons == {"price": 50}  # "x" is not a number
    assert typed["price"].isna().sum() == 50  # missing stays missing (transform maps it to 0)


def test_an_empty_line_is_rejected_as_such(tmp_path):
    path = write_criteo(tmp_path / "gap.txt", [criteo_line(0), "", criteo_line(2)])
    frame, rejects, _ = read_all(path, tmp_path, limit=0.9)
    assert frame.event_id.tolist() == [0, 2]
    assert [(r["line"], r["reason"]) for r in rejects] == [("2", "empty line")]


def test_an_offline_store_engine_that_cannot_run_fails_before_anything_is_read(tmp_path, monkeypatch):
    good = write_criteo(tmp_path / "good.txt", [criteo_line(i, label=str(i % 2)) for i in range(100)])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"engine 'tpu': known engines are \['duckdb', 'spark', 'spark-k8s'\]"):
        ingest(CRITEO, [good], out, SplitSpec(), engine="tpu")
    for variable in ("POD_NAMESPACE", "POD_NAME", "POD_IP", "SPARK_EXECUTOR_IMAGE"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ValueError, match=r"'spark-k8s' runs in the pipeline's ingest pod, which sets \['POD_NAMESPACE"):
        ingest(CRITEO, [good], out, SplitSpec(), engine="spark-k8s")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pyspark" else find_spec(name, *a)
    )
    with pytest.raises(ValueError, match=r"engine 'spark' needs pyspark: pip install 'nasrec-pipeline\[spark\]'"):
        ingest(CRITEO, [good], out, SplitSpec(), engine="spark")
    assert not out.exists()

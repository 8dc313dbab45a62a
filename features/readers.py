"""Streaming readers: raw logs (CSV/TSV, optionally gzip, or Parquet) -> typed chunks with event time.

Memory is bounded by the chunk size, not the file size. Malformed rows (wrong field count, non-numeric
dense value, bad label, empty line) are skipped, counted, and written with file, line and reason to a
rejects file; reading fails with `IngestError` once the rejected fraction exceeds the limit.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.schema import DatasetSchema

EVENT_ID = "event_id"
EVENT_TIMESTAMP = "event_timestamp"
BLOCK_BYTES = 8 << 20
MIN_ROWS_TO_JUDGE = 1000


class IngestError(ValueError):
    """Raw input that cannot be ingested; the message names the file and what is wrong."""


@dataclass
class ReadStats:
    rows: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        kind = reason.split(":")[0]
        self.reasons[kind] = self.reasons.get(kind, 0) + 1


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def count_data_rows(path: Path, header: bool) -> int:
    """Data lines in a (possibly gzip) text file, for row-order time; a fast byte scan."""
    lines, last = 0, b"\n"
    with _open_bytes(path) as f:
        while block := f.read(1 << 24):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"  # a last line without newline
    return max(lines - header, 0)


class RawReader:
    """Iterate typed chunks over one or more raw files of one schema.

    Each chunk is a DataFrame: event_id (int64, the data row's index over all files), event_timestamp
    (UTC), the label (int8), dense features (float32, NaN if missing), categorical features (string, None if
    missing).
    """

    def __init__(
        self,
        schema: DatasetSchema,
        paths: list[Path],
        rejects_path: Path | None = None,
        max_reject_fraction: float = 0.01,
        block_bytes: int = BLOCK_BYTES,
    ):
        if not paths:
            raise IngestError("no input files given")
        self.schema = schema
        self.paths = [Path(p) for p in paths]
        for path in self.paths:
            if not path.exists():
                raise IngestError(f"{path}: no such file")
        self.rejects_path = rejects_path
        self.max_reject_fraction = max_reject_fraction
        self.block_bytes = block_bytes
        self.stats = ReadStats()
        self._total_rows: int | None = None

    def chunks(self) -> Iterator[pd.DataFrame]:
        self.stats = ReadStats()
        rejects_file = open(self.rejects_path, "w", newline="") if self.rejects_path else None  # noqa: SIM115
        try:
            writer = csv.writer(rejects_file) if rejects_file else None
            if writer:
                writer.writerow(["file", "line", "reason", "text"])
            first_row = 0
            for path in self.paths:
                reader = self._parquet_chunks if self.schema.is_parquet(path) else self._delimited_chunks
                for chunk, rejects in reader(path, first_row):
                    for line, reason, text in rejects:
                        self.stats.reject(reason)
                        if writer:
                            writer.writerow([str(path), line, reason, text[:500]])
                    self.stats.rows += len(chunk)
                    self._check_reject_fraction(path)
                    if len(chunk):
                        yield chunk
                first_row = self._next_row
            if self.stats.rows == 0:
                raise IngestError(f"{', '.join(map(str, self.paths))}: no valid rows")
            self._check_reject_fraction(self.paths[-1], final=True)
        finally:
            if rejects_file:
                rejects_file.close()

    def _check_reject_fraction(self, path: Path, final: bool = False) -> None:
        """Fail once the rejected fraction exceeds the limit; judged from 1,000 rows on, or at the end."""
        seen = self.stats.rows + self.stats.rejected
        fraction = self.stats.rejected / max(seen, 1)
        if (seen >= MIN_ROWS_TO_JUDGE or final) and fraction > self.max_reject_fraction:
            raise IngestError(
                f"{path}: {self.stats.rejected} of {seen} rows rejected ({fraction:.1%}, limit "
                f"{self.max_reject_fraction:.1%}); reasons {self.stats.reasons}; see "
                f"{self.rejects_path or 'a rejects file (pass one to see each row)'}"
            )

    # --- delimited text -------------------------------------------------------------------------------

    def _delimited_chunks(self, path: Path, first_row: int) -> Iterator[tuple[pd.DataFrame, list]]:
        schema = self.schema
        if path.stat().st_size == 0:
            raise IngestError(f"{path}: the file is empty")
        columns = self._file_columns(path)
        skipped: list[tuple[int, str, str]] = []  # (file line, reason, text) of rows the parser skipped

        def on_invalid(row) -> str:
            skipped.append(
                (row.number, f"field count: expected {row.expected_columns}, got {row.actual_columns}", row.text)
            )
            return "skip"

        stream = pacsv.open_csv(
            pa.input_stream(str(path), compression="detect"),
            read_options=pacsv.ReadOptions(
                column_names=columns, skip_rows=int(schema.header), block_size=self.block_bytes, use_threads=False
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=schema.delimiter, invalid_row_handler=on_invalid, ignore_empty_lines=False, quote_char=False
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in columns},
                include_columns=list(schema.required_columns),
                null_values=[""],
                strings_can_be_null=True,
            ),
        )
        header_lines = int(schema.header)
        parsed = 0  # parsed (not skipped) rows so far in this file
        skipped_before = 0  # skipped lines already accounted for
        for batch in stream:
            # file line of each parsed row (1-based): its index + header + the skipped lines before it, i.e.
            # all skipped in earlier blocks, and those of this block that precede it
            skipped.sort()
            lines = np.arange(parsed, parsed + batch.num_rows) + header_lines + 1 + skipped_before
            for line, _, _ in skipped[skipped_before:]:
                lines[lines >= line] += 1
            rejects = skipped[skipped_before:]
            skipped_before = len(skipped)
            parsed += batch.num_rows
            table = pa.Table.from_batches([batch])
            chunk, bad = self._typed(table, lines - header_lines - 1 + first_row)
            rejects += [(int(lines[i]), reason, self._row_text(table, i)) for i, reason in bad]
            yield chunk, rejects
        if len(skipped) > skipped_before:  # invalid rows after the last batch
            yield pd.DataFrame(), skipped[skipped_before:]
        self._next_row = first_row + parsed + len(skipped)

    def _file_columns(self, path: Path) -> list[str]:
        schema = self.schema
        with _open_bytes(path) as f:
            first = f.readline().decode("utf-8", errors="replace").rstrip("\r\n")
        fields = first.split(schema.delimiter)
        if not schema.header:
            if len(fields) != len(schema.columns):
                raise IngestError(
                    f"{path}: schema {schema.name!r} expects {len(schema.columns)} fields per row, "
                    f"the first row has {len(fields)}: does the schema match the file?"
                )
            return list(schema.columns)
        missing = [c for c in schema.required_columns if c not in fields]
        if missing:
            raise IngestError(
                f"{path}: header lacks columns {missing} that schema {schema.name!r} needs; header: {fields[:30]}"
            )
        return fields

    @staticmethod
    def _row_text(table: pa.Table, i: int) -> str:
        return ",".join("" if v is None else str(v) for v in table.slice(i, 1).to_pylist()[0].values())

    # --- parquet ----------------------------------------------------------------------------------------

    def _parquet_chunks(self, path: Path, first_row: int) -> Iterator[tuple[pd.DataFrame, list]]:
        try:
            parquet = pq.ParquetFile(path)
        except pa.ArrowInvalid as err:
            raise IngestError(f"{path}: not a readable Parquet file: {err}") from None
        missing = [c for c in self.schema.required_columns if c not in parquet.schema_arrow.names]
        if missing:
            raise IngestError(f"{path}: columns {missing} that schema {self.schema.name!r} needs are missing")
        row = first_row
        for batch in parquet.iter_batches(batch_size=65536, columns=list(self.schema.required_columns)):
            table = pa.Table.from_batches([batch])
            table = table.cast(pa.schema([pa.field(n, pa.string()) for n in table.column_names]))
            chunk, bad = self._typed(table, np.arange(row, row + table.num_rows))
            yield chunk, [(int(row + i + 1), reason, self._row_text(table, i)) for i, reason in bad]
            row += table.num_rows
        self._next_row = row

    # --- typing -----------------------------------------------------------------------------------------

    def _typed(self, table: pa.Table, rows: np.ndarray) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
        """Cast one parsed block; return the valid rows and (block index, reason) of the others."""
        schema = self.schema
        bad: dict[int, str] = {}
        label = _numbers(table[schema.label], "label", bad)
        unlabelled = np.flatnonzero(np.isnan(label))  # an empty line is among these: check only them
        if unlabelled.size:
            rows_without_label = table.take(unlabelled)
            empty = np.ones(unlabelled.size, dtype=bool)
            for name in rows_without_label.column_names:
                empty &= rows_without_label[name].is_null().to_numpy(zero_copy_only=False)
            bad.update({int(i): "empty line" for i in unlabelled[empty]})
        ok_label = np.isin(label, (0.0, 1.0))
        for i in np.flatnonzero(~ok_label & ~np.isnan(label)):
            bad.setdefault(int(i), f"label: must be 0 or 1, got {table[schema.label][int(i)].as_py()!r}")
        for i in np.flatnonzero(np.isnan(label)):
            bad.setdefault(int(i), "label: missing")
        data = {EVENT_ID: rows.astype(np.int64), EVENT_TIMESTAMP: self._timestamps(table, rows, bad)}
        data[schema.label] = np.nan_to_num(label).astype(np.int8)
        for name in schema.dense:
            data[name] = _numbers(table[name], name, bad).astype(np.float32)
        for name in schema.bucketed_names:  # numbers read as categories: reject a row whose value is none
            _numbers(table[name], name, bad)
        for name in schema.categorical_names:  # kept as Arrow strings: no Python objects per value
            data[name] = pd.Series(pd.arrays.ArrowExtensionArray(table[name].combine_chunks()))
        chunk = pd.DataFrame(data)
        if bad:
            chunk = chunk.drop(index=list(bad)).reset_index(drop=True)
        return chunk, sorted(bad.items())

    def _timestamps(self, table: pa.Table, rows: np.ndarray, bad: dict[int, str]) -> pd.Series:
        spec = self.schema.timestamp
        if spec.source == "row_order":
            if self._total_rows is None:
                self._total_rows = sum(
                    pq.ParquetFile(p).metadata.num_rows
                    if self.schema.is_parquet(p)
                    else count_data_rows(p, self.schema.header)
                    for p in self.paths
                )
            start = pd.Timestamp(spec.start)
            offsets = (rows / max(self._total_rows, 1) * spec.span_days * 86400e6).astype(np.int64)
            return start + pd.to_timedelta(offsets, unit="us")
        raw = table[spec.column].to_pandas()
        if spec.parser == "yymmddhh":
            base = pd.to_datetime(raw, format="%y%m%d%H", errors="coerce", utc=True)
        elif spec.parser == "unix_seconds":
            base = pd.to_datetime(pd.to_numeric(raw, errors="coerce"), unit="s", errors="coerce", utc=True)
        else:
            base = pd.to_datetime(raw, errors="coerce", utc=True, format="ISO8601")
        for i in np.flatnonzero(base.isna().to_numpy()):
            bad.setdefault(int(i), f"{spec.column}: not a {spec.parser} time: {raw.iloc[int(i)]!r}")
        # rows of the same second/hour keep file order: add the row number in microseconds
        return base + pd.to_timedelta(rows % 1_000_000_000, unit="us")


def _numbers(column: pa.ChunkedArray, name: str, bad: dict[int, str]) -> np.ndarray:
    """Strings -> float64 (NaN where missing); unparsable values are recorded in `bad`."""
    try:
        return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raw = column.to_pandas()
        values = pd.to_numeric(raw, errors="coerce")
        for i in np.flatnonzero(values.isna().to_numpy() & raw.notna().to_numpy()):
            bad.setdefault(int(i), f"{name}: not a number: {raw.iloc[int(i)]!r}")
        return values.to_numpy(dtype=np.float64)


def raw_records(paths: list[Path], schema: DatasetSchema, event_ids: list[int]) -> dict[int, dict[str, str | None]]:
    """The raw text of the log rows with these event ids (data rows counted across the files in order, as
    ingestion numbers them), as {event id: {column: value or None where empty}}."""
    wanted, found = set(event_ids), {}
    first = 0
    for path in map(Path, paths):
        if schema.is_parquet(path):
            table = pq.read_table(path, columns=list(schema.required_columns))
            for row in wanted & set(range(first, first + table.num_rows)):
                values = table.slice(row - first, 1).to_pylist()[0]
                found[row] = {k: None if v is None or v == "" else str(v) for k, v in values.items()}
            first += table.num_rows
            if len(found) == len(wanted):
                return found
            continue
        with _open_bytes(path) as f:
            lines = (line.decode("utf-8", errors="replace").rstrip("\r\n") for line in f)
            columns = next(lines, "").split(schema.delimiter) if schema.header else list(schema.columns)
            for index, line in enumerate(lines, start=first):
                if index in wanted:
                    found[index] = {c: v or None for c, v in zip(columns, line.split(schema.delimiter))}
                first = index + 1
                if len(found) == len(wanted):
                    return found
    missing = sorted(wanted - set(found))
    if missing:
        raise IngestError(f"event ids {missing[:5]} are past the end of {[str(p) for p in paths]}")
    return found

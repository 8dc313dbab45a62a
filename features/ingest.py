"""Ingestion: raw logs -> Feast offline store -> point-in-time training splits, and online features.

    ingest(schema, raw files, out_dir)  ->  out_dir/
        offline/events.parquet   typed events: the Feast offline source
        rejects.csv              malformed rows: file, line, reason, text
        feature_repo/            feature_store.yaml (+ production variant), generated definitions.py, registry
        train|validation|test.parquet   model-ready rows from get_historical_features
        transform.json           the fitted feature transform
        schema.yaml              the dataset schema (for serving: raw column names and entities)
        stats.json               rows, rejects, label rates, cardinalities

Every step streams: the reader writes the event table in blocks, the point-in-time join runs in DuckDB behind
Feast's offline-store interface (`features.offline_store`) and writes its result to disk, and the transform is
fitted and applied batch by batch. Peak memory is one batch plus the vocabulary counts (which grow with the
distinct values, not the rows) plus DuckDB's `memory_limit`, beyond which it spills to disk.

Every output is written under a temporary name and moved into place only when all of them are complete,
so a failed run leaves the previous outputs untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureStore
from feast.infra.offline_stores.file_source import SavedDatasetFileStorage

from features.feast_repo import (
    LOCAL_CONFIG,
    PARQUET_QUERIES,
    apply_repo,
    feature_service_name,
    offline_engine,
    open_store,
    view_keys,
    write_repo,
)
from features.offline_store import duckdb_connection, sql_literal
from features.online import OnlineReader
from features.online_write import OnlineWriter, online_rows
from features.prefetch import prefetch
from features.readers import EVENT_ID, EVENT_TIMESTAMP, IngestError, RawReader
from features.schema import DatasetSchema
from features.transform import LABEL, FeatureTransform, dense_columns

SPLITS = ("train", "validation", "test")
SPLIT_COLUMN = "ingest_split"  # the entity rows' split, carried through the point-in-time join
BATCH_ROWS = 100_000  # rows per batch when fitting and applying the transform
INGEST_MEMORY_LIMIT = "512MB"  # DuckDB's, for ingest's own sorts of the joined rows


@dataclass(frozen=True)
class SplitSpec:
    """By time (the last `test_fraction` is test, the `validation_fraction` before it validation), or by a fold
    file (`row,fold` per data row, as ../shared/data/*/folds.csv): test = fold k, validation = fold k+1 mod n."""

    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    folds: Path | None = None
    fold: int = 0

    def check(self) -> None:
        """Fail on a split that cannot work, before any row is read."""
        if self.folds is None:
            for name in ("validation_fraction", "test_fraction"):
                if not 0 <= getattr(self, name) < 1:
                    raise IngestError(f"split: {name} must be in [0, 1), got {getattr(self, name)}")
            if self.validation_fraction + self.test_fraction >= 1:
                raise IngestError(
                    f"split: validation_fraction + test_fraction must leave training rows, got "
                    f"{self.validation_fraction} + {self.test_fraction}"
                )
            return
        if not Path(self.folds).is_file():
            raise IngestError(f"{self.folds}: no such fold file")
        with open(self.folds) as f:
            header = f.readline().strip().split(",")
        if header[:2] != ["row", "fold"]:
            raise IngestError(f"{self.folds}: expected columns row,fold; got {header}")
        with _duckdb() as con:
            try:
                low, count = con.execute(f"SELECT min(fold), max(fold) + 1 FROM {_folds_table(self.folds)}").fetchone()
            except duckdb.Error as error:
                raise IngestError(f"{self.folds}: not a row,fold table of integers: {error}") from None
        if low is None or low < 0:
            raise IngestError(f"{self.folds}: folds must be numbered 0..n-1, got {'none' if low is None else low}")
        if not 0 <= self.fold < count:
            raise IngestError(f"split: fold must be in 0..{count - 1} (the folds of {self.folds}), got {self.fold}")


@dataclass
class IngestResult:
    out_dir: Path
    splits: dict[str, Path]
    transform: FeatureTransform
    stats: dict

    @property
    def repo(self) -> Path:
        return self.out_dir / "feature_repo"


def ingest(
    schema: DatasetSchema,
    raw_paths: list[Path],
    out_dir: Path,
    split: SplitSpec = SplitSpec(),
    max_reject_fraction: float = 0.01,
    log=print,
    engine: str = "duckdb",
) -> IngestResult:
    """`engine` is the offline store that runs the point-in-time join and later materialisations: "duckdb" on this
    machine, "spark" for logs beyond one (features.feast_repo.OFFLINE_STORES)."""
    split.check()
    entity_rows_query = PARQUET_QUERIES[offline_engine(engine)["type"]]  # an engine that cannot run fails here
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        started = time.perf_counter()
        events_path = staging / "events.parquet"
        reader = RawReader(schema, list(raw_paths), staging / "rejects.csv", max_reject_fraction)
        rows = write_events(reader, events_path)
        read_seconds = time.perf_counter() - started
        log(f"read {rows:,} rows ({reader.stats.rejected:,} rejected) in {read_seconds:.1f} s")

        write_repo(schema, staging / "feature_repo", events_path, engine)
        store = apply_repo(staging / "feature_repo")
        entities, joined = staging / "entities.parquet", staging / "joined.parquet"
        with _duckdb() as con:
            con.execute(f"COPY ({spine_query(schema, events_path, split, rows)}) TO {sql_literal(entities)}")
        historical_features(store, schema, entity_rows_query.format(path=entities), joined)
        join_seconds = time.perf_counter() - started - read_seconds
        split_stats = _split_stats(joined, schema)
        log(f"point-in-time join of {rows:,} rows through Feast in {join_seconds:.1f} s")

        transform = FeatureTransform.fit(schema, joined_batches(joined, "train", ordered=False))
        split_paths = write_model_ready(joined, transform, schema, staging)
        transform.save(staging / "transform.json")
        schema.save(staging / "schema.yaml")
        stats = {
            "schema": schema.name,
            "rows": rows,
            "rejected": reader.stats.rejected,
            "reject_reasons": reader.stats.reasons,
            "label_rate": sum(s["rows"] * s["label_rate"] for s in split_stats.values()) / rows,
            "splits": split_stats,
            "cardinalities": dict(zip(schema.categorical_names, transform.cardinalities)),
            "read_seconds": round(read_seconds, 3),
            "join_seconds": round(join_seconds, 3),
            "total_seconds": round(time.perf_counter() - started, 3),
        }
        (staging / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        # everything is complete: move it into place, then point the repo's source at the final events
        final_events = out_dir / "offline" / "events.parquet"
        for path in (*split_paths.values(), *(staging / n for n in ("transform.json", "schema.yaml", "stats.json"))):
            _replace(path, out_dir / path.name)
        _replace(staging / "rejects.csv", out_dir / "rejects.csv")
        _replace(events_path, final_events)
        shutil.rmtree(out_dir / "feature_repo", ignore_errors=True)
        os.replace(staging / "feature_repo", out_dir / "feature_repo")
        write_repo(schema, out_dir / "feature_repo", final_events, engine)
        apply_repo(out_dir / "feature_repo")
        return IngestResult(out_dir, {n: out_dir / f"{n}.parquet" for n in SPLITS}, transform, stats)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)


def write_events(reader: RawReader, path: Path) -> int:
    """Stream the reader's chunks into one Parquet file (the offline source); returns the row count."""
    writer = None
    rows = 0
    try:
        for chunk in prefetch(reader.chunks()):  # parse the next block while this one is written
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if writer is None:  # microsecond times: what Spark and Feast's stores read (pandas gives nanoseconds)
                schema = table.schema.set(
                    table.schema.get_field_index(EVENT_TIMESTAMP), pa.field(EVENT_TIMESTAMP, pa.timestamp("us", "UTC"))
                )
                writer = pq.ParquetWriter(path, schema)
            writer.write_table(table.cast(writer.schema))
            rows += len(chunk)
    finally:
        if writer is not None:
            writer.close()
    return rows


def spine_query(schema: DatasetSchema, events_path: Path, split: SplitSpec, rows: int) -> str:
    """The entity rows of the point-in-time join, as a DuckDB query over the event table: event id, time, label,
    entity keys, and each row's split (SPLIT_COLUMN).

    By time, the split follows the order of (time, event id); by fold file, test is fold k and validation k+1.
    """
    keys = [e.key for e in schema.entities]
    columns = ", ".join(f'e."{c}"' for c in [EVENT_ID, EVENT_TIMESTAMP, schema.label, *keys])
    events = f"read_parquet({sql_literal(events_path)})"
    if split.folds is not None:
        with _duckdb() as con:
            count = con.execute(f"SELECT max(fold) + 1 FROM {_folds_table(split.folds)}").fetchone()[0]
            missing = con.execute(
                f"SELECT e.{EVENT_ID} FROM {events} e ANTI JOIN {_folds_table(split.folds)} f "
                f"ON f.row = e.{EVENT_ID} ORDER BY 1 LIMIT 5"
            ).fetchall()
        if missing:
            raise IngestError(f"{split.folds}: no fold for rows {[m[0] for m in missing]}")
        case = (
            f"CASE f.fold WHEN {split.fold} THEN 'test' WHEN {(split.fold + 1) % count} THEN 'validation' "
            "ELSE 'train' END"
        )
        return (
            f"SELECT {columns}, {case} AS {SPLIT_COLUMN} FROM {events} e JOIN {_folds_table(split.folds)} f "
            f"ON f.row = e.{EVENT_ID}"
        )
    test_start = rows - round(rows * split.test_fraction)
    validation_start = test_start - round(rows * split.validation_fraction)
    order = f"row_number() OVER (ORDER BY e.{EVENT_TIMESTAMP}, e.{EVENT_ID}) - 1"
    case = (
        f"CASE WHEN {order} >= {test_start} THEN 'test' WHEN {order} >= {validation_start} THEN 'validation' "
        "ELSE 'train' END"
    )
    return f"SELECT {columns}, {case} AS {SPLIT_COLUMN} FROM {events} e"


def historical_features(store: FeatureStore, schema: DatasetSchema, entity_rows: str, path: Path) -> None:
    """Point-in-time join: each entity row gets every feature as of its own timestamp, through Feast; the result
    goes to `path` (Parquet) without passing through Python's memory."""
    service = store.get_feature_service(feature_service_name(schema))
    job = store.get_historical_features(entity_df=entity_rows, features=service)
    job.persist(SavedDatasetFileStorage(path=str(path)), allow_overwrite=True)


def joined_batches(
    joined: Path, split: str | None = None, ordered: bool = True, batch_rows: int = BATCH_ROWS
) -> Iterator[pd.DataFrame]:
    """The joined rows of one split (all when None), in event-id order unless not `ordered`, `batch_rows` at a
    time."""
    where = f"WHERE {SPLIT_COLUMN} = {sql_literal(split)}" if split else ""
    order = f"ORDER BY {EVENT_ID}" if ordered else ""
    with _duckdb() as con:
        for batch in con.sql(f"SELECT * FROM {_parquet(joined)} {where} {order}").to_arrow_reader(batch_rows):
            yield batch.to_pandas()


def _split_stats(joined: Path, schema: DatasetSchema) -> dict[str, dict]:
    with _duckdb() as con:
        found = con.execute(
            f'SELECT {SPLIT_COLUMN}, count(*), avg("{schema.label}") FROM {_parquet(joined)} GROUP BY {SPLIT_COLUMN}'
        ).fetchall()
    stats = {name: {"rows": int(n), "label_rate": float(rate)} for name, n, rate in found}
    for name in SPLITS:
        if name not in stats:
            raise IngestError(f"split {name!r} is empty: check the fold file or the split fractions")
    return {name: stats[name] for name in SPLITS}


def write_model_ready(
    joined: Path, transform: FeatureTransform, schema: DatasetSchema, folder: Path
) -> dict[str, Path]:
    """Each split's rows, model-ready, to folder/<split>.parquet: label (float32), dense (float32, transformed)
    and categorical ids (int64), plus event id and time."""
    paths = {name: folder / f"{name}.parquet" for name in SPLITS}
    writers: dict[str, pq.ParquetWriter] = {}
    try:
        for frame in joined_batches(joined):
            for name, part in frame.groupby(SPLIT_COLUMN, sort=False):
                table = model_ready_table(part, transform, schema)
                if name not in writers:
                    writers[name] = pq.ParquetWriter(paths[name], table.schema)
                writers[name].write_table(table)
    finally:
        for writer in writers.values():
            writer.close()
    return paths


def model_ready_table(frame: pd.DataFrame, transform: FeatureTransform, schema: DatasetSchema) -> pa.Table:
    dense, sparse = transform.transform(frame)
    columns = {
        EVENT_ID: frame[EVENT_ID].to_numpy(),
        EVENT_TIMESTAMP: frame[EVENT_TIMESTAMP].to_numpy(),
        LABEL: frame[schema.label].to_numpy(dtype=np.float32),
    }
    columns |= {name: dense[:, j] for j, name in enumerate(dense_columns(transform))}
    columns |= {name: sparse[:, j] for j, name in enumerate(schema.categorical_names)}
    return pa.table(columns)


def _duckdb() -> AbstractContextManager[duckdb.DuckDBPyConnection]:
    """A DuckDB connection for ingest's own queries over its files."""
    return duckdb_connection(INGEST_MEMORY_LIMIT)


def _parquet(path: Path) -> str:
    """A Parquet file, or a folder of them (as Spark writes), for DuckDB."""
    return f"read_parquet({sql_literal(path / '*.parquet' if path.is_dir() else path)})"


def _folds_table(folds: Path) -> str:
    return f"read_csv({sql_literal(folds)}, header = true, columns = {{'row': 'BIGINT', 'fold': 'BIGINT'}})"


class OnlineFeatures:
    """Online lookups through Feast's online store, returned model-ready (the same transform as training), and
    materialisation into it. Reads go through `features.online.OnlineReader`: once per distinct key, and only for
    the views whose keys are given. `config` picks the repo's setting: LOCAL_CONFIG (SQLite), or PRODUCTION_CONFIG
    (Redis, and the registry under $FEAST_REGISTRY_ROOT).
    """

    def __init__(self, repo: Path, schema: DatasetSchema, transform: FeatureTransform, config: str = LOCAL_CONFIG):
        self.schema = schema
        self.transform = transform
        store = open_store(repo, config)
        service = store.get_feature_service(feature_service_name(schema))
        features = {p.name: [f.name for f in p.features] for p in service.feature_view_projections}
        # join key -> (its feature view, the features it unlocks)
        views = {key: (view, features[view]) for view, key in view_keys(schema).items()}
        self.reader = OnlineReader(store, schema, views)
        self.store = store

    @property
    def keys(self) -> tuple[str, ...]:
        """The join keys this store answers for: event_id, then each entity's key."""
        return tuple(self.reader.views)

    def materialize(self, start: datetime, end: datetime, entities_only: bool = False, batch_rows: int = 10_000) -> int:
        """Write each key's latest feature values in [start, end) to the online store; returns the keys written.

        `entities_only` skips the event-level view: a live request carries its own event fields.

        The latest row per key comes from one pass of the offline store over the source (ours: DuckDB here, Spark on
        a cluster) and is written `batch_rows` keys at a time (`features.online_write`), so a key with many rows is
        written once. (Feast's own `materialize` reads every row of the range into pandas and drops duplicates
        there: about 2,400 keys/s and all rows in memory on a 1M-row log.) The materialised range is recorded in
        the registry, as Feast does.
        """
        written = 0
        offline_store = self.reader.provider.offline_store
        for view_name, key in view_keys(self.schema).items():
            if entities_only and key == EVENT_ID:
                continue
            view = self.store.get_feature_view(view_name)
            join_keys = {c.name: c.dtype.to_value_type() for c in view.entity_columns}
            source = view.batch_source
            latest = offline_store.pull_latest_from_table_or_query(
                self.store.config, source, list(join_keys), [f.name for f in view.features],
                source.timestamp_field, source.created_timestamp_column or None, start, end,
            )  # fmt: skip
            with OnlineWriter(self.store, self.reader.provider, view) as writer:
                for batch in latest.record_batches(batch_rows):
                    writer.write(online_rows(batch, view, join_keys))
                    written += batch.num_rows
            self.store.registry.apply_materialization(view, self.store.project, start, end)
        return written

    def raw_features(self, keys: dict[str, list]) -> dict[str, list]:
        """Raw feature values {feature: one value per row} of the views keyed by `keys`; None where unknown."""
        unknown = [k for k in keys if k not in self.reader.views]
        if unknown:
            raise ValueError(f"online lookup: {unknown} are not join keys of {self.schema.name!r}; known: {self.keys}")
        found: dict[str, list] = {}
        for key, values in keys.items():
            found |= self.reader.read(key, values)
        return found

    def lookup(self, keys: dict[str, list], request: dict[str, list] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Features for the given entity keys (e.g. {"event_id": [...]} or {"device_id": [...], ...}).

        Features of views whose key is not given must come in `request` (raw values, e.g. the event-level
        fields of a live ad request). Returns (dense (n, num_dense) float32, ids (n, n_categorical) int64).
        """
        sizes = {len(v) for v in (*keys.values(), *(request or {}).values())}
        if len(sizes) != 1:
            raise ValueError(f"online lookup: keys and request fields must have equal lengths, got {sorted(sizes)}")
        return self.transform.transform({**self.raw_features(keys), **keys, **(request or {})})

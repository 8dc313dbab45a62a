"""Feast's DuckDB offline store, with point-in-time joins as DuckDB ASOF JOINs.

Feast's own DuckDB store (through ibis) pairs each entity row with every earlier feature row of its key and then
keeps the latest: its cost grows with the square of the rows per key (265 rows/s for the join on the Avazu sample,
where one device holds 87% of the rows; `bench.offline_engines`). An ASOF JOIN sorts both sides by key and time
once and walks them together, and DuckDB spills its sorts to disk under `memory_limit`, so the join's memory stays
bounded as the log grows.

Semantics are Feast's: each entity row gets, per feature view, the latest feature row of its join keys at or
before its event timestamp (within the view's ttl, when it has one); ties in time go to the row written last (the
greatest created timestamp, then the last in the file). The entity rows come as a DataFrame or as a DuckDB query,
and every entity column is passed through. A materialisation's read (`pull_latest_from_table_or_query`) is one
DuckDB pass too, and its result streams in batches (`DuckDBRetrievalJob.record_batches`); the rest is Feast's DuckDB
store.

In feature_store.yaml:

    offline_store:
      type: features.offline_store.AsofDuckDBOfflineStore
      memory_limit: 1GB        # DuckDB's limit before it spills to temp_directory
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import duckdb
import pandas as pd
import pyarrow as pa
from feast.data_source import DataSource
from feast.feature_view import FeatureView
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, DuckDBOfflineStoreConfig
from feast.infra.offline_stores.file_source import FileSource, SavedDatasetFileStorage
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig
from feast.saved_dataset import SavedDatasetStorage

TYPE = "features.offline_store.AsofDuckDBOfflineStore"
ENTITY_TIMESTAMP = "event_timestamp"  # Feast's default name for the entity rows' time
ENTITY_ROWS = "__ENTITY_ROWS__"  # where a query's entity rows go


class OfflineStoreError(ValueError):
    """A retrieval this store cannot run, named with what to change."""


class AsofDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    type: Literal["features.offline_store.AsofDuckDBOfflineStore"] = TYPE
    memory_limit: str = "1GB"  # DuckDB spills sorts and joins to temp_directory beyond this
    threads: int | None = None  # DuckDB's default: one per core
    temp_directory: str | None = None  # where spill folders go; default: the system's temporary directory


class AsofDuckDBOfflineStore(DuckDBOfflineStore):
    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        if filter_by_created_timestamp:
            raise OfflineStoreError("filter_by_created_timestamp is not supported by the ASOF DuckDB offline store")
        entity_columns = DuckDBRetrievalJob(config.offline_store, "", entity_df).describe_entity_rows()
        query = asof_query(entity_columns, feature_views, feature_refs, full_feature_names, repo_path_of(config))
        metadata = RetrievalMetadata(features=feature_refs, keys=[c for c in entity_columns if c != ENTITY_TIMESTAMP])
        return DuckDBRetrievalJob(config.offline_store, query, entity_df, full_feature_names, metadata)

    @staticmethod
    def pull_latest_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: datetime,
        end_date: datetime,
    ) -> RetrievalJob:
        """Each key's latest row in [start_date, end_date): what a materialisation writes, found in one DuckDB pass,
        so a key is written once however many rows it has."""
        query = latest_rows_query(
            data_source, join_key_columns, feature_name_columns, repo_path_of(config), start_date, end_date
        )
        return DuckDBRetrievalJob(config.offline_store, query)


class DuckDBRetrievalJob(RetrievalJob):
    """One DuckDB query, over the entity rows when it has them, on a connection of its own."""

    def __init__(
        self,
        store_config: AsofDuckDBOfflineStoreConfig,
        query: str,
        entity_df: pd.DataFrame | str | None = None,
        full_feature_names: bool = False,
        metadata: RetrievalMetadata | None = None,
    ):
        self._config = store_config
        self._entity_df = entity_df
        self._full_feature_names = full_feature_names
        self._metadata = metadata
        entity_rows = "SELECT * FROM __entity_df" if isinstance(entity_df, pd.DataFrame) else entity_df
        self._query = query.replace(ENTITY_ROWS, f"({entity_rows})") if entity_rows else query

    def describe_entity_rows(self) -> list[str]:
        if isinstance(self._entity_df, pd.DataFrame):
            return [str(c) for c in self._entity_df.columns]
        with self._connect() as con:
            try:
                return [row[0] for row in con.execute(f"DESCRIBE ({self._entity_df})").fetchall()]
            except duckdb.Error as error:
                raise OfflineStoreError(f"entity rows query failed: {error}") from None

    @contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        config = self._config
        with duckdb_connection(config.memory_limit, config.threads, config.temp_directory) as con:
            if isinstance(self._entity_df, pd.DataFrame):
                con.register("__entity_df", self._entity_df)
            yield con

    def record_batches(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """The result `batch_rows` rows at a time, streamed from DuckDB."""
        with self._connect() as con:
            yield from con.sql(self._query).to_arrow_reader(batch_rows)

    # --- Feast's RetrievalJob ------------------------------------------------------------------------------

    def to_sql(self) -> str:
        return self._query

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        with self._connect() as con:
            return con.sql(self._query).to_arrow_table()

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

    def persist(self, storage: SavedDatasetStorage, allow_overwrite: bool = False, timeout: int | None = None):
        """Write the result to a Parquet file straight from DuckDB: no copy of it in Python's memory."""
        if not isinstance(storage, SavedDatasetFileStorage):
            raise OfflineStoreError(f"persist writes Parquet files only (SavedDatasetFileStorage), not {storage}")
        path = Path(storage.file_options.uri)
        if path.exists() and not allow_overwrite:
            raise OfflineStoreError(f"{path} exists; pass allow_overwrite=True to replace it")
        with self._connect() as con:
            con.execute(f"COPY ({self._query}) TO {sql_literal(str(path))} (FORMAT parquet)")

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        return []

    @property
    def metadata(self) -> RetrievalMetadata | None:
        return self._metadata


def asof_query(
    entity_columns: list[str],
    feature_views: list[FeatureView],
    feature_refs: list[str],
    full_feature_names: bool,
    repo_path: Path,
) -> str:
    """The entity rows (ENTITY_ROWS in the query), ASOF-joined to each feature view's source in turn."""
    if ENTITY_TIMESTAMP not in entity_columns:
        raise OfflineStoreError(f"entity rows need an {ENTITY_TIMESTAMP!r} column; got {sorted(entity_columns)}")
    joins, selected, names = [], [], []
    for i, view in enumerate(feature_views):
        features = view_features(view, feature_refs)
        keys = view_join_keys(view)
        missing = [k for k in keys.values() if k not in entity_columns]
        if missing:
            raise OfflineStoreError(f"feature view {view.name!r}: the entity rows lack join keys {missing}")
        alias = f"fv{i}"
        joins.append(_asof_join(alias, view, features, keys, repo_path))
        prefix = f"{_view_name(view)}__" if full_feature_names else ""
        ttl = view.ttl if view.ttl and view.ttl > timedelta(0) else None
        for feature in features:
            column = f"{alias}.{_quote(feature)}"
            if ttl is not None:
                column = (
                    f"CASE WHEN entity.__entity_ts - {alias}.__feature_ts <= INTERVAL "
                    f"{int(ttl.total_seconds() * 1e6)} MICROSECONDS THEN {column} END"
                )
            selected.append(f"{column} AS {_quote(prefix + feature)}")
            names.append(prefix + feature)
    clash = set(entity_columns) & set(names)
    if clash:
        raise OfflineStoreError(f"entity rows hold columns named like features: {sorted(clash)}")
    return (
        f"SELECT {', '.join(['entity.' + _quote(c) for c in entity_columns] + selected)}\n"
        f"FROM (SELECT *, CAST({_quote(ENTITY_TIMESTAMP)} AS TIMESTAMPTZ) AS __entity_ts "
        f"FROM {ENTITY_ROWS}) AS entity\n" + "\n".join(joins)
    )


@contextmanager
def duckdb_connection(
    memory_limit: str, threads: int | None = None, temp_parent: str | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB connection that spills beyond `memory_limit` to a folder of its own, removed after."""
    with tempfile.TemporaryDirectory(prefix="duckdb-spill-", dir=temp_parent) as temp:
        settings: dict = {"memory_limit": memory_limit, "temp_directory": temp}
        if threads:
            settings["threads"] = int(threads)
        with duckdb.connect(config=settings) as con:
            con.execute("SET enable_progress_bar = false")
            yield con


def latest_rows_query(
    source: DataSource,
    keys: list[str],
    features: list[str],
    repo_path: Path,
    start: datetime | None = None,
    end: datetime | None = None,
) -> str:
    """A DuckDB query of each key's latest row in [start, end) (all time when not given) of a Parquet source: its
    keys, `features` and its timestamp column."""
    time = _source_time(source)
    window = [f"{time} >= {sql_literal(as_utc(start).isoformat())}::TIMESTAMPTZ"] if start is not None else []
    window += [f"{time} < {sql_literal(as_utc(end).isoformat())}::TIMESTAMPTZ"] if end is not None else []
    rows = _source_rows(source, keys, features, repo_path, per_time=False, where=" AND ".join(window))
    return f"SELECT * EXCLUDE (__feature_ts), __feature_ts AS {_quote(source.timestamp_field)} FROM ({rows})"


def _asof_join(alias: str, view: FeatureView, features: list[str], keys: dict[str, str], repo_path: Path) -> str:
    """`ASOF LEFT JOIN` of one view's source: its rows deduplicated to one per (keys, time), the last written."""
    rows = _source_rows(view.batch_source, list(keys), features, repo_path, per_time=True)
    on = [f"entity.{_quote(keys[k])} = {alias}.{_quote(k)}" for k in keys]
    on.append(f"entity.__entity_ts >= {alias}.__feature_ts")
    return f"ASOF LEFT JOIN ({rows}) AS {alias} ON {' AND '.join(on)}"


def _source_rows(
    source: DataSource, keys: list[str], features: list[str], repo_path: Path, per_time: bool, where: str = ""
) -> str:
    """A query over a Parquet source: its join keys and `features` under the view's names, and its time as
    `__feature_ts`; one row per key and time (`per_time`), or per key, the one written last."""
    if not isinstance(source, FileSource):
        raise OfflineStoreError(f"source {source.name!r}: only Parquet file sources are supported, not {source}")
    path = Path(source.path) if Path(source.path).is_absolute() else repo_path / source.path
    renamed = {v: k for k, v in source.field_mapping.items()}  # the view's name -> the source's column
    columns = [f"{_quote(renamed.get(c, c))} AS {_quote(c)}" for c in [*keys, *features]]
    if source.created_timestamp_column:
        columns.append(_quote(source.created_timestamp_column))
    time = _source_time(source)
    partition = [_quote(renamed.get(k, k)) for k in keys] + ([time] if per_time else [])
    last_written = [_quote(source.created_timestamp_column)] if source.created_timestamp_column else []
    last_written = [f"{c} DESC" for c in last_written + ([] if per_time else [time]) + ["file_row_number"]]
    conditions = [f"{_quote(renamed.get(k, k))} IS NOT NULL" for k in keys] + ([where] if where else [])
    return (
        f"SELECT {', '.join(columns)}, {time} AS __feature_ts "
        f"FROM read_parquet({sql_literal(str(path))}, file_row_number = true) WHERE {' AND '.join(conditions)} "
        f"QUALIFY row_number() OVER (PARTITION BY {', '.join(partition)} ORDER BY {', '.join(last_written)}) = 1"
    )


def _source_time(source: DataSource) -> str:
    return f"CAST({_quote(source.timestamp_field)} AS TIMESTAMPTZ)"


def view_features(view: FeatureView, feature_refs: list[str]) -> list[str]:
    """The features of `view` among Feast's "view:feature" references."""
    return [ref.split(":", 1)[1] for ref in feature_refs if ref.split(":", 1)[0] == _view_name(view)]


def view_join_keys(view: FeatureView) -> dict[str, str]:
    """The view's join keys in its source -> the entity rows' columns."""
    return view.projection.join_key_map or {c.name: c.name for c in view.entity_columns}


def as_utc(moment: datetime) -> pd.Timestamp:
    """A moment in UTC; a naive one is taken to be UTC already (as Feast takes it)."""
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def repo_path_of(config: RepoConfig) -> Path:
    """Where a repo's relative source paths start."""
    return Path(str(config.repo_path or "."))


def _view_name(view: FeatureView) -> str:
    return view.projection.name_to_use()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_literal(text: object) -> str:
    return "'" + str(text).replace("'", "''") + "'"

"""Feast's Spark offline store, with point-in-time joins that scale with skewed keys: for logs beyond one machine.

Feast's own Spark store joins each entity row to every earlier feature row of its key and keeps the latest (a
ROW_NUMBER over the pairs): like its DuckDB store, quadratic in the rows per key. Here each view's feature rows and
the entity rows are unioned, sorted per key by (time, feature rows first, order written), and each entity row
takes the last feature row before it (`last(..., ignorenulls)` over a running window): one sort per view.

Semantics are those of `features.offline_store`: the latest feature row at or before each entity row's time (within
the view's ttl, when it has one), ties going to the row written last. Feature views may read a plain `FileSource`
(Parquet), so one set of definitions runs on DuckDB locally and on Spark on a cluster; entity rows come as a
DataFrame or a Spark SQL query. Results persist to Parquet files (`SavedDatasetFileStorage`).

In feature_store.yaml:

    offline_store:
      type: features.spark_store.AsofSparkOfflineStore
      spark_conf: {spark.master: "local[*]", spark.sql.session.timeZone: UTC}
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
from feast.data_source import DataSource
from feast.feature_view import FeatureView
from feast.infra.offline_stores.contrib.spark_offline_store.spark import (
    SparkOfflineStore,
    SparkOfflineStoreConfig,
    SparkRetrievalJob,
    get_spark_session_or_start_new_with_repoconfig,
)
from feast.infra.offline_stores.file_source import FileSource, SavedDatasetFileStorage
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.registry.base_registry import BaseRegistry
from feast.repo_config import RepoConfig
from feast.saved_dataset import SavedDatasetStorage
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from features.offline_store import (
    ENTITY_TIMESTAMP,
    OfflineStoreError,
    as_utc,
    repo_path_of,
    view_features,
    view_join_keys,
)

TYPE = "features.spark_store.AsofSparkOfflineStore"


class AsofSparkOfflineStoreConfig(SparkOfflineStoreConfig):
    type: Literal["features.spark_store.AsofSparkOfflineStore"] = TYPE


class AsofSparkOfflineStore(SparkOfflineStore):
    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str | DataFrame,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
        **kwargs,
    ) -> RetrievalJob:
        if filter_by_created_timestamp:
            raise OfflineStoreError("filter_by_created_timestamp is not supported by the ASOF Spark offline store")
        spark = get_spark_session_or_start_new_with_repoconfig(config.offline_store)
        entities = _entity_rows(spark, entity_df)
        if ENTITY_TIMESTAMP not in entities.columns:
            raise OfflineStoreError(f"entity rows need an {ENTITY_TIMESTAMP!r} column; got {sorted(entities.columns)}")
        columns = list(entities.columns)
        joined = entities.withColumn("__row", F.monotonically_increasing_id()).withColumn(
            "__entity_ts", F.col(ENTITY_TIMESTAMP).cast("timestamp")
        )
        names: list[str] = []
        for view in feature_views:
            features = view_features(view, feature_refs)
            prefix = f"{view.projection.name_to_use()}__" if full_feature_names else ""
            joined = _asof_join(spark, joined, view, features, prefix, repo_path_of(config))
            names += [prefix + f for f in features]
        clash = set(columns) & set(names)
        if clash:
            raise OfflineStoreError(f"entity rows hold columns named like features: {sorted(clash)}")
        metadata = RetrievalMetadata(features=feature_refs, keys=[c for c in columns if c != ENTITY_TIMESTAMP])
        return AsofSparkRetrievalJob(spark, joined.select(*columns, *names), full_feature_names, config, metadata)

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
        """Each key's latest row in [start_date, end_date): what a materialisation writes."""
        if not isinstance(data_source, FileSource):
            return SparkOfflineStore.pull_latest_from_table_or_query(
                config, data_source, join_key_columns, feature_name_columns, timestamp_field,
                created_timestamp_column, start_date, end_date,
            )  # fmt: skip
        spark = get_spark_session_or_start_new_with_repoconfig(config.offline_store)
        rows = _source(spark, data_source, repo_path_of(config))
        time = F.col(timestamp_field).cast("timestamp")
        rows = rows.where(
            (time >= F.lit(as_utc(start_date).to_pydatetime())) & (time < F.lit(as_utc(end_date).to_pydatetime()))
        )
        for key in join_key_columns:
            rows = rows.where(F.col(key).isNotNull())
        newest = [F.col(created_timestamp_column).desc()] if created_timestamp_column else []
        order = Window.partitionBy(*join_key_columns).orderBy(time.desc(), *newest, F.col("__written").desc())
        columns = [*join_key_columns, *feature_name_columns, timestamp_field]
        columns += [created_timestamp_column] if created_timestamp_column else []
        latest = rows.withColumn("__n", F.row_number().over(order)).where("__n = 1").select(*columns)
        return AsofSparkRetrievalJob(spark, latest, False, config, None)


class AsofSparkRetrievalJob(SparkRetrievalJob):
    """Feast's Spark job over a DataFrame, persisting to Parquet files too, and read in batches."""

    def __init__(
        self,
        spark: SparkSession,
        frame: DataFrame,
        full_feature_names: bool,
        config: RepoConfig,
        metadata: RetrievalMetadata | None,
    ):
        view = f"feast_asof_{uuid.uuid4().hex}"
        frame.createOrReplaceTempView(view)
        super().__init__(spark, f"SELECT * FROM {view}", full_feature_names, config, metadata=metadata)

    def persist(self, storage: SavedDatasetStorage, allow_overwrite: bool | None = False, timeout: int | None = None):
        """A `SavedDatasetFileStorage` path becomes a folder of Parquet files; other storages as Feast's Spark job."""
        if not isinstance(storage, SavedDatasetFileStorage):
            return super().persist(storage, allow_overwrite, timeout)
        mode = "overwrite" if allow_overwrite else "error"
        self.to_spark_df().write.mode(mode).parquet(storage.file_options.uri)
        return None

    def record_batches(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """The result `batch_rows` rows at a time, through the driver."""
        table = self.to_spark_df().toArrow()
        yield from table.to_batches(max_chunksize=batch_rows)


def _entity_rows(spark: SparkSession, entity_df: pd.DataFrame | str | DataFrame) -> DataFrame:
    if isinstance(entity_df, DataFrame):
        return entity_df
    if isinstance(entity_df, str):
        return spark.sql(entity_df)
    return spark.createDataFrame(pa.Table.from_pandas(entity_df, preserve_index=False))


def _source(spark: SparkSession, source: DataSource, repo_path: Path) -> DataFrame:
    """A view's source rows with `__written`, their order in the source (what breaks ties in time)."""
    if not isinstance(source, FileSource):
        raise OfflineStoreError(f"source {source.name!r}: expected a Parquet FileSource, got {type(source).__name__}")
    path = Path(source.path) if Path(source.path).is_absolute() else repo_path / source.path
    rows = spark.read.parquet(str(path))
    for column, name in source.field_mapping.items():
        rows = rows.withColumnRenamed(column, name)
    return rows.withColumn("__written", F.monotonically_increasing_id())


def _asof_join(
    spark: SparkSession, entities: DataFrame, view: FeatureView, features: list[str], prefix: str, repo_path: Path
) -> DataFrame:
    """`entities` (with __row and __entity_ts) gains `features` of `view` as of each row's time."""
    source = view.batch_source
    keys = view_join_keys(view)
    missing = [k for k in keys.values() if k not in entities.columns]
    if missing:
        raise OfflineStoreError(f"feature view {view.name!r}: the entity rows lack join keys {missing}")
    rows = _source(spark, source, repo_path)
    for key in keys:
        rows = rows.where(F.col(key).isNotNull())
    value = F.struct(*[F.col(f) for f in features], F.col(source.timestamp_field).cast("timestamp").alias("__ts"))
    order = [F.col(source.created_timestamp_column)] if source.created_timestamp_column else []
    feature_side = rows.select(
        *[F.col(k).alias(f"__key{i}") for i, k in enumerate(keys)],
        F.col(source.timestamp_field).cast("timestamp").alias("__t"),
        F.lit(0).alias("__kind"),  # feature rows sort before entity rows of the same time: "at or before"
        F.struct(*order, F.col("__written")).alias("__order"),
        F.lit(None).cast("long").alias("__row"),
        value.alias("__value"),
    )
    entity_side = entities.select(
        *[F.col(e).alias(f"__key{i}") for i, e in enumerate(keys.values())],
        F.col("__entity_ts").alias("__t"),
        F.lit(1).alias("__kind"),
        F.lit(None).cast(feature_side.schema["__order"].dataType).alias("__order"),
        F.col("__row"),
        F.lit(None).cast(feature_side.schema["__value"].dataType).alias("__value"),
    )
    running = (
        Window.partitionBy(*[f"__key{i}" for i in range(len(keys))])
        .orderBy("__t", "__kind", "__order")
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    found = (
        entity_side.unionByName(feature_side)
        .withColumn("__value", F.last("__value", ignorenulls=True).over(running))
        .where("__kind = 1")
        .select("__row", "__value")
    )
    ttl = view.ttl if view.ttl and view.ttl > timedelta(0) else None
    joined = entities.join(found, "__row", "left")
    fresh = F.lit(True)
    if ttl is not None:
        micros = int(ttl.total_seconds() * 1e6)
        fresh = F.col("__value.__ts") >= F.expr(f"timestampadd(MICROSECOND, -{micros}, __entity_ts)")
    added = [F.when(fresh, F.col(f"__value.{f}")).alias(prefix + f) for f in features]
    return joined.select(*entities.columns, *added)

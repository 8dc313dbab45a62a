"""The ASOF DuckDB offline store answers what Feast's own DuckDB store and a pandas as-of join answer, and the rows a
materialisation writes are each key's latest, converted as Feast converts them."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType
from feast.infra.offline_stores.file_source import SavedDatasetFileStorage
from feast.types import Bool, Float32, Int64, String
from feast.utils import _convert_arrow_to_proto

from features.offline_store import TYPE, OfflineStoreError
from features.online_write import online_rows

START = pd.Timestamp("2026-01-01", tz="UTC")


def feature_log(path: Path, rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """Feature rows of five users at distinct, irregular times; some rows have no user."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "event_timestamp": START + pd.to_timedelta(np.cumsum(rng.integers(1, 600, rows)), unit="s"),
            "user": rng.choice(["u0", "u1", "u2", "u3", "u4", None], rows, p=[0.5, 0.2, 0.1, 0.1, 0.05, 0.05]),
            "colour": [f"c{i}" for i in range(rows)],
            "size": [f"s{i % 7}" for i in range(rows)],
        }
    )
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return frame


def store_over(folder: Path, events: Path, offline_store: dict) -> FeatureStore:
    """A store with two views of the users in `events`: every feature with no ttl, and one with a 90-minute ttl."""
    folder.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(
        project="t",
        registry=str(folder / "registry.db"),
        provider="local",
        offline_store=offline_store,
        online_store={"type": "sqlite", "path": str(folder / "online.db")},
        entity_key_serialization_version=3,
        repo_path=str(folder),
    )
    store = FeatureStore(config=config)
    user = Entity(name="user", join_keys=["user"], value_type=ValueType.STRING)
    source = FileSource(name="log", path=str(events), timestamp_field="event_timestamp")
    fields = [Field(name="colour", dtype=String), Field(name="size", dtype=String)]
    views = [
        FeatureView(name="user_fv", entities=[user], ttl=timedelta(0), schema=fields, source=source),
        FeatureView(name="recent_fv", entities=[user], ttl=timedelta(minutes=90), schema=fields[:1], source=source),
    ]
    store.apply([user, source, *views])
    return store


def entity_rows(rows: int = 300, seed: int = 1) -> pd.DataFrame:
    """Requests at random times, some before a user's first feature row, some of a user never seen."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "request_id": np.arange(rows),
            "event_timestamp": START + pd.to_timedelta(rng.integers(0, 400 * 300, rows), unit="s"),
            "user": rng.choice(["u0", "u1", "u2", "u3", "u4", "ghost"], rows),
        }
    )


FEATURES = ["user_fv:colour", "user_fv:size", "recent_fv:colour"]


def latest_rows(store: FeatureStore, start: datetime, end: datetime, batch_rows: int = 10_000) -> list[pa.RecordBatch]:
    """What a materialisation of user_fv in [start, end) reads: each user's latest row, through the store's
    interface, in batches."""
    source = store.get_feature_view("user_fv").batch_source
    job = store._get_provider().offline_store.pull_latest_from_table_or_query(
        store.config, source, ["user"], ["colour", "size"], "event_timestamp", None, start, end
    )
    return list(job.record_batches(batch_rows))


def retrieve(store: FeatureStore, entities: pd.DataFrame | str) -> pd.DataFrame:
    frame = store.get_historical_features(entity_df=entities, features=FEATURES, full_feature_names=True).to_df()
    frame["event_timestamp"] = frame["event_timestamp"].dt.as_unit("us").dt.tz_convert("UTC")
    return frame.sort_values("request_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[pd.DataFrame, FeatureStore, FeatureStore]:
    folder = tmp_path_factory.mktemp("offline_store")
    log = feature_log(folder / "log.parquet")
    ours = store_over(folder / "asof", folder / "log.parquet", {"type": TYPE, "memory_limit": "256MB"})
    feasts = store_over(folder / "feast", folder / "log.parquet", {"type": "duckdb"})
    return log, ours, feasts


def test_asof_join_equals_feasts_duckdb_store_and_a_pandas_asof_join(stores) -> None:
    log, ours, feasts = stores
    entities = entity_rows()
    got = retrieve(ours, entities)
    pd.testing.assert_frame_equal(got, retrieve(feasts, entities)[got.columns])
    # the reference: pandas' backward as-of join per user, on all rows and on the 90 minutes before each request
    reference = pd.merge_asof(
        entities.sort_values("event_timestamp"),
        log.dropna(subset=["user"]).rename(columns={"event_timestamp": "feature_ts"}),
        left_on="event_timestamp",
        right_on="feature_ts",
        by="user",
    ).sort_values("request_id")
    assert got["user_fv__colour"].fillna("-").tolist() == reference["colour"].fillna("-").tolist()
    recent = reference["colour"].where(reference["event_timestamp"] - reference["feature_ts"] <= timedelta(minutes=90))
    assert got["recent_fv__colour"].fillna("-").tolist() == recent.fillna("-").tolist()
    # the check has power: misses (before a first row, an unknown user) and ttl expiries both occur
    assert got["user_fv__colour"].isna().sum() > 20
    assert (got["user_fv__colour"].notna() & got["recent_fv__colour"].isna()).sum() > 20


def test_entity_rows_as_a_query_and_results_persisted_to_parquet(stores, tmp_path: Path) -> None:
    _, ours, _ = stores
    entities = entity_rows()
    pq.write_table(pa.Table.from_pandas(entities, preserve_index=False), tmp_path / "entities.parquet")
    query = f"SELECT * FROM read_parquet('{tmp_path / 'entities.parquet'}')"
    expected = retrieve(ours, entities)
    pd.testing.assert_frame_equal(retrieve(ours, query), expected)
    job = ours.get_historical_features(entity_df=query, features=FEATURES, full_feature_names=True)
    job.persist(SavedDatasetFileStorage(path=str(tmp_path / "joined.parquet")))
    persisted = pq.read_table(tmp_path / "joined.parquet").to_pandas().sort_values("request_id")
    pd.testing.assert_frame_equal(persisted.reset_index(drop=True), expected, check_dtype=False)
    with pytest.raises(OfflineStoreError, match=r"joined\.parquet exists; pass allow_overwrite=True"):
        job.persist(SavedDatasetFileStorage(path=str(tmp_path / "joined.parquet")))


def test_bad_entity_rows_are_named(stores) -> None:
    _, ours, _ = stores
    entities = entity_rows()
    with pytest.raises(
        OfflineStoreError, match=r"entity rows need an 'event_timestamp' column; got \['at', 'request_id', 'user'\]"
    ):
        ours.get_historical_features(
            entity_df=entities.rename(columns={"event_timestamp": "at"}), features=FEATURES[:2]
        )
    with pytest.raises(OfflineStoreError, match=r"feature view 'user_fv': the entity rows lack join keys \['user'\]"):
        ours.get_historical_features(entity_df=entities.drop(columns="user"), features=FEATURES[:2])
    with pytest.raises(OfflineStoreError, match=r"entity rows query failed: .*no_such_table"):
        ours.get_historical_features(entity_df="SELECT * FROM no_such_table", features=FEATURES[:2])


def test_rows_at_the_same_time_resolve_to_the_one_written_last(tmp_path: Path) -> None:
    times = [START, START, START + timedelta(hours=1), START + timedelta(hours=1)]
    frame = pd.DataFrame(
        {"event_timestamp": times, "user": ["u0"] * 4, "colour": ["first", "second", "third", "fourth"], "size": "s"}
    )
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "log.parquet")
    store = store_over(tmp_path / "repo", tmp_path / "log.parquet", {"type": TYPE})
    entities = pd.DataFrame({"request_id": [0, 1], "event_timestamp": [START, START + timedelta(hours=2)]})
    got = retrieve(store, entities.assign(user="u0"))
    assert got["user_fv__colour"].tolist() == ["second", "fourth"]
    latest = [b.to_pydict() for b in latest_rows(store, START, START + timedelta(minutes=30))]
    assert [row["colour"] for row in latest] == [["second"]]


def test_latest_rows_are_each_keys_last_row_in_the_window(stores) -> None:
    log, ours, _ = stores
    start, end = START + timedelta(hours=3), START + timedelta(hours=20)
    batches = latest_rows(ours, start, end, batch_rows=2)
    got = pd.concat(b.to_pandas() for b in batches).set_index("user").sort_index()
    window = log[(log.event_timestamp >= start) & (log.event_timestamp < end)].dropna(subset=["user"])
    expected = window.groupby("user").tail(1).set_index("user").sort_index()
    assert got["colour"].tolist() == expected["colour"].tolist() and len(got) == 5
    assert (got["event_timestamp"] == expected["event_timestamp"]).all()
    assert len(batches) == 3  # five keys, two at a time


def test_online_rows_are_what_feasts_own_conversion_gives() -> None:
    """features.ingest.online_rows, column-wise, against Feast's per-value conversion: strings, float32, int64 keys,
    nulls, and event and created times."""
    event = Entity(name="event", join_keys=["event_id"], value_type=ValueType.INT64)
    source = FileSource(name="s", path="unused.parquet", timestamp_field="ts", created_timestamp_column="created")
    fields = [Field(name="colour", dtype=String), Field(name="weight", dtype=Float32), Field(name="n", dtype=Int64)]
    view = FeatureView(name="v", entities=[event], schema=fields, source=source)
    times = pa.array([START.to_pydatetime() + timedelta(seconds=s) for s in (0, 1.5, 7)], pa.timestamp("us", "UTC"))
    batch = pa.RecordBatch.from_pydict(
        {
            "event_id": pa.array([3, 1, 2], pa.int64()),
            "colour": ["red", None, "é"],
            "weight": pa.array([0.1, float("nan"), None], pa.float32()),  # Feast writes NaN as a null
            "n": pa.array([None, 7, -1], pa.int64()),
            "ts": times.cast(pa.timestamp("ns", "UTC")),  # nanoseconds, as pandas writes them
            "created": times,
        }
    )
    join_keys = {"event_id": ValueType.INT64}
    assert online_rows(batch, view, join_keys) == _convert_arrow_to_proto(batch, view, join_keys)
    with pytest.raises(ValueError, match=r"'v'.*'flags': 'BOOL'"):
        bools = FeatureView(name="v", entities=[event], schema=[Field(name="flags", dtype=Bool)], source=source)
        online_rows(batch.append_column("flags", pa.array([True, False, True])), bools, join_keys)


def test_the_sqlite_writer_leaves_the_table_feasts_own_writer_leaves(tmp_path: Path) -> None:
    """features.online_write.OnlineWriter (one executemany per batch) against Feast's SQLite writer (a statement
    per value): the same rows, byte for byte, after a first write and after an upsert over it."""
    import sqlite3

    from features.online_write import OnlineWriter

    log = feature_log(tmp_path / "log.parquet")
    stores = [store_over(tmp_path / name, tmp_path / "log.parquet", {"type": TYPE}) for name in ("ours", "feasts")]
    view = stores[0].get_feature_view("user_fv")
    join_keys = {"user": ValueType.STRING}
    for start, end in ((START, START + timedelta(hours=10)), (START, START + timedelta(days=30))):
        rows = [row for batch in latest_rows(stores[0], start, end) for row in online_rows(batch, view, join_keys)]
        with OnlineWriter(stores[0], stores[0]._get_provider(), view) as ours:
            assert ours.sqlite is not None  # the layout it knows: it writes itself
            ours.write(rows)
        stores[1]._get_provider().online_write_batch(stores[1].config, view, rows, progress=None)
        tables = [
            sqlite3.connect(tmp_path / name / "online.db").execute('SELECT * FROM "t_user_fv" ORDER BY 1, 2').fetchall()
            for name in ("ours", "feasts")
        ]
        assert tables[0] == tables[1] and len(tables[0]) == 2 * len(rows) > 0
    assert len(rows) == log["user"].nunique()
    # a view's writes commit together: a failure part way leaves the table as it was
    earlier = [
        row
        for batch in latest_rows(stores[0], START, START + timedelta(hours=1))
        for row in online_rows(batch, view, join_keys)
    ]
    with pytest.raises(RuntimeError), OnlineWriter(stores[0], stores[0]._get_provider(), view) as ours:
        ours.write(earlier)
        raise RuntimeError("the next batch failed")
    table = (
        sqlite3.connect(tmp_path / "ours" / "online.db").execute('SELECT * FROM "t_user_fv" ORDER BY 1, 2').fetchall()
    )
    assert earlier and table == tables[0]

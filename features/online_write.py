"""Materialisation's writes into a Feast online store: each key's latest row, converted a column at a time.

On Feast's SQLite store the rows go in with one `executemany` per batch, into the table and columns Feast's own
writer fills (it runs one statement per feature value: most of a SQLite materialisation's time); other stores
(Redis) take them through the store's `online_write_batch`. A test checks both writers leave the same table.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

import pyarrow as pa
from feast import FeatureStore, FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.sqlite import SqliteOnlineStore
from feast.infra.provider import Provider
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.value_type import ValueType

from features.online import sqlite_database

OnlineRow = tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]
# the ValueProto field of each value type our feature views declare (features.feast_repo)
PROTO_FIELDS = {ValueType.STRING: "string_val", ValueType.FLOAT: "float_val", ValueType.INT64: "int64_val"}
# the columns of Feast's SQLite table (vectors and numeric values off, as our repos have them)
SQLITE_COLUMNS = ["entity_key", "feature_name", "value", "value_text", "vector_value", "event_ts", "created_ts"]
SQLITE_WRITTEN = ["entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts"]


def online_rows(batch: pa.RecordBatch, view: FeatureView, join_keys: dict[str, ValueType]) -> list[OnlineRow]:
    """A batch of each key's latest row as the online store's writer takes it, a column at a time.

    What feast.utils's private `_convert_arrow_to_proto` returns, for the value types our views declare, at a
    fraction of its cost (it checks every value's type one by one): half of materialisation's time went there.
    """
    columns = {**{f.name: f.dtype.to_value_type() for f in view.features}, **join_keys}
    unsupported = {name: kind.name for name, kind in columns.items() if kind not in PROTO_FIELDS}
    if unsupported:
        raise ValueError(f"materialise {view.name!r}: no online conversion for {unsupported}")
    protos = {name: _proto_values(batch.column(name), PROTO_FIELDS[kind]) for name, kind in columns.items()}
    names = [f.name for f in view.features]
    keys = [EntityKeyProto(join_keys=list(join_keys), entity_values=v) for v in zip(*(protos[k] for k in join_keys))]
    features = [dict(zip(names, values)) for values in zip(*(protos[name] for name in names))]
    source = view.batch_source
    event_times = _naive_utc(batch.column(source.timestamp_field))
    created = source.created_timestamp_column
    created_times = _naive_utc(batch.column(created)) if created else [None] * batch.num_rows
    return list(zip(keys, features, event_times, created_times))


class OnlineWriter:
    """Writes rows of one feature view into `store`'s online store, through `provider`; a context manager."""

    def __init__(self, store: FeatureStore, provider: Provider, view: FeatureView):
        self.store, self.provider, self.view = store, provider, view
        self.sqlite: sqlite3.Connection | None = None
        table = self.table.replace('"', '""')
        updates = ", ".join(f"{c} = excluded.{c}" for c in SQLITE_WRITTEN[2:])
        self.upsert = (
            f'INSERT INTO "{table}" ({", ".join(SQLITE_WRITTEN)}) VALUES ({", ".join("?" * len(SQLITE_WRITTEN))}) '
            f"ON CONFLICT(entity_key, feature_name) DO UPDATE SET {updates}"
        )
        if isinstance(provider.online_store, SqliteOnlineStore) and not getattr(
            store.config.online_store, "vector_enabled", False
        ):
            connection = sqlite3.connect(sqlite_database(store))
            try:  # a layout this writer does not know goes to Feast's writer
                known = _columns(connection, self.table) == SQLITE_COLUMNS
            except sqlite3.Error:
                known = False
            if known:
                self.sqlite = connection
            else:
                connection.close()

    def __enter__(self) -> OnlineWriter:
        return self

    def __exit__(self, kind: type | None, *exc: object) -> None:
        """A view's SQLite writes commit together, or not at all (one commit, not one per batch)."""
        if self.sqlite is not None:
            if kind is None:
                self.sqlite.commit()
            else:
                self.sqlite.rollback()
            self.sqlite.close()

    @property
    def table(self) -> str:
        return f"{self.store.project}_{self.view.name}"

    def write(self, rows: list[OnlineRow]) -> None:
        if self.sqlite is None:
            self.provider.online_write_batch(self.store.config, self.view, rows, progress=None)
            return
        version = self.store.config.entity_key_serialization_version
        records = []
        for entity_key, values, event_time, created_time in rows:
            key = serialize_entity_key(entity_key, entity_key_serialization_version=version)
            for name, value in values.items():
                records.append((key, name, value.SerializeToString(), _text(value), event_time, created_time))
        self.sqlite.executemany(self.upsert, records)  # in the transaction __exit__ commits


def _text(value: ValueProto) -> str | None:
    """The value_text column Feast writes beside each value: the string, a number's str, None for a null."""
    kind = value.WhichOneof("val")
    return None if kind is None else value.string_val if kind == "string_val" else str(getattr(value, kind))


def _columns(connection: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in connection.execute("SELECT * FROM pragma_table_info(?)", (table,))]


def _proto_values(column: pa.Array, field: str) -> list[ValueProto]:
    """One ValueProto per value; an empty one for a null or a NaN, as Feast writes them (strings as text)."""
    if field == "string_val" and column.type != pa.string():
        column = column.cast(pa.string())
    values = column.to_pylist()
    if field == "float_val":
        values = [None if v != v else v for v in values]  # NaN is the one value unequal to itself
    return [ValueProto() if v is None else ValueProto(**{field: v}) for v in values]


def _naive_utc(column: pa.Array) -> list[datetime]:
    """Times as naive UTC datetimes (microseconds: what datetime holds), as Feast hands them to the online store."""
    return column.cast(pa.timestamp("us")).to_pylist()

"""Online reads of a Feast feature repository: raw feature values by join key, from its online store (SQLite here,
Redis on a cluster), once per distinct key.

Shared by ingestion's online lookups and the served raw-event model, which copies this module beside itself and
runs it in the serving runtime with the Feast release pinned there (numpy < 2): so it imports only what both
releases have (the provider's `online_read`, the online stores' classes, `serialize_entity_key`, `_mmh3`) and the
schema. The SDK's `get_online_features` returns the same values (a test checks) and costs several times more for
a 512-row request (see bench/serving.py).
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from feast import FeatureStore, FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3
from feast.infra.online_stores.redis import RedisOnlineStore
from feast.infra.online_stores.sqlite import SqliteOnlineStore
from feast.infra.provider import get_provider
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.types import Int64

from features.schema import DatasetSchema, EntitySpec
from features.transform import ByteColumn


def sqlite_database(store: FeatureStore) -> Path:
    """The database file of `store`'s SQLite online store: its path, relative to the repo unless absolute."""
    path = Path(store.config.online_store.path)
    return (path if path.is_absolute() else Path(store.repo_path) / path).resolve()


def entity_view(schema: DatasetSchema, entity: EntitySpec) -> str:
    """The feature view of an entity's features, keyed by the entity's column."""
    return f"{schema.name}_{entity.name}_fv"


class OnlineReader:
    """Raw values of feature views by join key from the online store of `store`.

    `views` maps each join key to (feature view name, its features); by default each entity's view.

    On Feast's SQLite and Redis stores the rows are read with queries of their own, of what Feast writes (SQLite:
    a row per entity key and feature in `<project>_<view>`, read-only; Redis: a hash per entity key and project, a
    field per feature under its name's hash). Feast's `online_read` also builds an entity key proto per key and
    converts every row's timestamp (and on SQLite sorts the rows): a 512-key read of the skewed Avazu log's app view
    took 6.5 ms at p50 through it on SQLite, 3.6 ms this way, and its p99 on Redis went from 9.5 to 6 ms (this
    project's 2-core machine). Other stores are read through `online_read`; a test checks all three agree.
    """

    def __init__(
        self, store: FeatureStore, schema: DatasetSchema, views: dict[str, tuple[str, list[str]]] | None = None
    ):
        self.store = store
        self.provider = get_provider(self.store.config)
        views = views or {e.key: (entity_view(schema, e), list(e.features)) for e in schema.entities}
        self.views: dict[str, tuple[FeatureView, list[str]]] = {
            key: (self.store.get_feature_view(view), features) for key, (view, features) in views.items()
        }
        self._sqlite: sqlite3.Connection | None = None
        version = self.store.config.entity_key_serialization_version
        self._key_bytes = {key: _key_serializer(key, view, version) for key, (view, _) in self.views.items()}
        # settings that change where Feast keeps rows (versioned views) or how it reads Redis: its own reads then
        versioned = getattr(self.store.config.registry, "enable_online_feature_view_versioning", False)
        self._direct = not versioned and getattr(self.store.config.online_store, "client", "redis") != "glide"

    def read(self, key: str, values: Sequence) -> dict[str, list]:
        """{feature: one raw value per entry of `values`} for the view keyed by `key`; None where unknown."""
        view, features = self.views[key]
        distinct = list(dict.fromkeys(v for v in values if v is not None))
        store = self.provider.online_store
        if not distinct:
            found = {}
        elif self._direct and isinstance(store, SqliteOnlineStore):
            found = self._read_sqlite(view, [self._key_bytes[key](v) for v in distinct], distinct, features)
        elif self._direct and isinstance(store, RedisOnlineStore):
            found = self._read_redis(view, [self._key_bytes[key](v) for v in distinct], distinct, features)
        else:
            found = self._read_store(view, _entity_keys(key, view, distinct), distinct, features)
        unknown = [None] * len(features)
        rows = [found.get(v, unknown) for v in values]
        return {f: [row[i] for row in rows] for i, f in enumerate(features)}

    def _read_store(
        self, view: FeatureView, entity_keys: list[EntityKeyProto], values: list, features: list[str]
    ) -> dict[object, list]:
        """{value: its features' values} for the keys the store knows, through the store's `online_read`; each key's
        values converted once, then spread over the rows that ask for it."""
        # a copy of `features`: the Redis store appends its timestamp keys to the list it is given
        read = self.provider.online_read(self.store.config, view, entity_keys, list(features))
        return {v: [_python_value(got.get(f)) for f in features] for v, (_, got) in zip(values, read) if got}

    def _read_sqlite(
        self, view: FeatureView, serialized: list[bytes], values: list, features: list[str]
    ) -> dict[object, list]:
        """`_read_store` on Feast's SQLite store, by serialised entity key, in one query per SQLITE_KEYS keys."""
        by_bytes: dict[bytes, list] = {}  # values that serialise alike (123 and "123") share a key
        for key, value in zip(serialized, values):
            by_bytes.setdefault(key, []).append(value)
        column = {f: i for i, f in enumerate(features)}
        table = f"{self.store.project}_{view.name}".replace('"', '""')
        query = f'SELECT entity_key, feature_name, value FROM "{table}" WHERE entity_key IN '
        found: dict[bytes, list] = {}
        for start in range(0, len(serialized), SQLITE_KEYS):
            chunk = serialized[start : start + SQLITE_KEYS]
            rows = self._sqlite_connection().execute(f"{query}({','.join('?' * len(chunk))})", chunk)
            for entity_key, feature, value in rows:
                if feature in column:
                    row = found.setdefault(entity_key, [None] * len(features))
                    row[column[feature]] = _python_value(ValueProto.FromString(value))
        return {value: row for key, row in found.items() for value in by_bytes[key]}

    def _read_redis(
        self, view: FeatureView, serialized: list[bytes], values: list, features: list[str]
    ) -> dict[object, list]:
        """`_read_store` on Feast's Redis store: one HMGET per key (a hash under the serialised key and the project,
        a field per feature under its name's hash), pipelined."""
        client = self.provider.online_store._get_client(self.store.config.online_store)
        fields = [_mmh3(f"{view.name}:{f}") for f in features]
        project = self.store.project.encode()
        with client.pipeline(transaction=False) as pipe:
            for key in serialized:
                pipe.hmget(key + project, fields)
            replies = pipe.execute()
        return {
            v: [_python_value(ValueProto.FromString(b)) if b else None for b in reply]
            for v, reply in zip(values, replies)
            if any(reply)
        }

    def _sqlite_connection(self) -> sqlite3.Connection:
        """A read-only connection to the store's database, opened on first use (materialisation creates it)."""
        if self._sqlite is None:
            uri = f"{sqlite_database(self.store).as_uri()}?mode=ro"
            self._sqlite = sqlite3.connect(uri, uri=True, check_same_thread=False)
        return self._sqlite

    def read_bytes(self, key: str, keys: ByteColumn) -> dict[str, ByteColumn]:
        """`read` for a served request: keys and features as UTF-8 bytes, b"" for a missing key or an unknown one."""
        distinct, rows = np.unique(np.array(keys.values(), dtype=object), return_inverse=True)
        found = self.read(key, [k.decode("utf-8", "replace") if k else None for k in distinct])
        columns = {f: ByteColumn.of([b"" if v is None else str(v).encode() for v in got]) for f, got in found.items()}
        return {f: ByteColumn(c.data, c.starts[rows], c.lengths[rows]) for f, c in columns.items()}


# keys per SQLite query: well under SQLite's bound on a statement's parameters (32,766)
SQLITE_KEYS = 10_000


def _entity_keys(key: str, view: FeatureView, values: list) -> list[EntityKeyProto]:
    as_value = _int_value if _is_int_key(key, view) else _str_value
    return [EntityKeyProto(join_keys=[key], entity_values=[as_value(v)]) for v in values]


def _is_int_key(key: str, view: FeatureView) -> bool:
    return any(c.name == key and c.dtype == Int64 for c in view.entity_columns)


def _key_serializer(key: str, view: FeatureView, version: int) -> Callable[[object], bytes]:
    """How a value of join key `key` is stored: Feast's `serialize_entity_key` of its entity key.

    For a string key, Feast's bytes are a fixed prefix, the value's length (uint32, little-endian) and its UTF-8
    bytes: built directly, a fifth of the cost, once probes have shown them equal to Feast's own.
    """

    def feast(value: object) -> bytes:
        (entity_key,) = _entity_keys(key, view, [value])
        return serialize_entity_key(entity_key, entity_key_serialization_version=version)

    if _is_int_key(key, view):
        return feast
    prefix = feast("")[:-4]

    def direct(value: object) -> bytes:
        encoded = value if isinstance(value, bytes) else str(value).encode()
        return prefix + struct.pack("<I", len(encoded)) + encoded

    return direct if all(direct(p) == feast(p) for p in ("probe", "é", b"7", 7)) else feast


def _int_value(value: object) -> dict:
    return {"int64_val": int(value)}


def _str_value(value: object) -> dict:
    """An entity key as its view declares it (features.feast_repo: STRING), whatever type the caller holds it in:
    an entity key 123 is looked up as "123", b"123" as "123". (A dict: protobuf builds the message from it faster
    than it copies one in.)"""
    return {"string_val": value.decode() if isinstance(value, bytes) else str(value)}


def _python_value(value: ValueProto | None) -> object:
    kind = value.WhichOneof("val") if value is not None else None
    return getattr(value, kind) if kind and kind != "null_val" else None

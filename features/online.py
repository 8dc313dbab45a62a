"""Online reads of a Feast feature repository: raw feature values by join key, through the online store's own read
path (SQLite here, Redis on a cluster), once per distinct key.

Shared by ingestion's online lookups and the served raw-event model, which copies this module beside itself and
runs it in the serving runtime with the Feast release pinned there (numpy < 2): so it imports only Feast's public
read path and the schema, which both releases have. The SDK's `get_online_features` returns the same values and
costs several times more for a 512-row request (see bench/serving.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from feast import FeatureStore, FeatureView
from feast.infra.provider import get_provider
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.types import Int64

from features.schema import DatasetSchema, EntitySpec
from features.transform import ByteColumn


def entity_view(schema: DatasetSchema, entity: EntitySpec) -> str:
    """The feature view of an entity's features, keyed by the entity's column."""
    return f"{schema.name}_{entity.name}_fv"


class OnlineReader:
    """Raw values of feature views by join key from the online store of `store`.

    `views` maps each join key to (feature view name, its features); by default each entity's view.
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

    def read(self, key: str, values: Sequence) -> dict[str, list]:
        """{feature: one raw value per entry of `values`} for the view keyed by `key`; None where unknown."""
        view, features = self.views[key]
        distinct = list(dict.fromkeys(v for v in values if v is not None))
        as_value = _int_value if any(c.name == key and c.dtype == Int64 for c in view.entity_columns) else _str_value
        entity_keys = [EntityKeyProto(join_keys=[key], entity_values=[as_value(v)]) for v in distinct]
        # a copy: the Redis store appends its timestamp keys to the list it is given
        read = self.provider.online_read(self.store.config, view, entity_keys, list(features)) if distinct else []
        # each distinct key's values converted once, then spread over the rows that ask for it
        found = {v: [_python_value(got.get(f)) for f in features] for v, (_, got) in zip(distinct, read) if got}
        unknown = [None] * len(features)
        rows = [found.get(v, unknown) for v in values]
        return {f: [row[i] for row in rows] for i, f in enumerate(features)}

    def read_bytes(self, key: str, keys: ByteColumn) -> dict[str, ByteColumn]:
        """`read` for a served request: keys and features as UTF-8 bytes, b"" for a missing key or an unknown one."""
        distinct, rows = np.unique(np.array(keys.values(), dtype=object), return_inverse=True)
        found = self.read(key, [k.decode("utf-8", "replace") if k else None for k in distinct])
        columns = {f: ByteColumn.of([b"" if v is None else str(v).encode() for v in got]) for f, got in found.items()}
        return {f: ByteColumn(c.data, c.starts[rows], c.lengths[rows]) for f, c in columns.items()}


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

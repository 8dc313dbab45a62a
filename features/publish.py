"""An ingest published to a cluster's Feast: the repository and its event table on the shared data volume, the
registry that the feature server and Triton read, and the entities' latest features in the online store.

    <root>/<project>/            root: FEAST_REGISTRY_ROOT of the cluster's pods (/data/feast on nasrec-data)
        feature_repo/            the generated definitions and feature_store.yaml (the production setting)
        offline/events.parquet   the offline source, found relative to the definitions
        registry.db              the registry k8s/base/common/feature_store.yaml and the served models name

Each file is written aside and moved into place, so a reader sees the previous publication or this one, whole.

The features reach Redis through the feature server, since only it and Triton may reach Redis (the network
policies in k8s/). They are written as the latest row per entity key (`/write-to-online-store`) rather than
materialised by the server (`/materialize`): Feast records a materialisation in the registry, so the server
would rewrite the registry from its own cached copy, racing this step's replacement of it.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import yaml
from feast.infra.offline_stores.file_source import FileSource

from features.feast_repo import DEFINITIONS, LOCAL_CONFIG, PRODUCTION_CONFIG, apply_repo, production_config, write_repo
from features.offline_store import duckdb_connection, latest_rows_query
from features.online import entity_view
from features.readers import EVENT_TIMESTAMP
from features.schema import DatasetSchema

REGISTRY = "registry.db"
STAGED_CONFIG = "feature_store.publishing.yaml"  # the production setting with the registry written aside
PUBLISH_MEMORY_LIMIT = "1GB"  # DuckDB's, for the latest row of each key


class PublishError(RuntimeError):
    """The feature server refused or could not be reached."""


def publish_repo(schema: DatasetSchema, events: Path, root: Path) -> Path:
    """Copy `events` and the generated repository under `root`/<project> and register it; returns that folder."""
    folder = Path(root) / schema.name
    repo, target_events = folder / "feature_repo", folder / "offline" / "events.parquet"
    target_events.parent.mkdir(parents=True, exist_ok=True)
    staged_events = target_events.with_name(f".{target_events.name}.{os.getpid()}")
    shutil.copyfile(events, staged_events)
    os.replace(staged_events, target_events)

    staged_repo = folder / f".feature_repo.{os.getpid()}"
    shutil.rmtree(staged_repo, ignore_errors=True)
    staged_repo.mkdir(parents=True)
    write_repo(schema, staged_repo, target_events)
    os.replace(staged_repo / PRODUCTION_CONFIG, staged_repo / LOCAL_CONFIG)  # `feast` run there uses the cluster's
    staged_registry = folder / f".{REGISTRY}.{os.getpid()}"
    config = production_config(schema.name)
    config["registry"]["path"] = str(staged_registry)
    (staged_repo / STAGED_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        apply_repo(staged_repo, STAGED_CONFIG)  # no online-store call: nothing registered before is dropped
    finally:
        (staged_repo / STAGED_CONFIG).unlink()
    os.replace(staged_registry, folder / REGISTRY)
    # the definitions find the events from feature_repo/ wherever it is moved within `folder`
    shutil.rmtree(repo, ignore_errors=True)
    os.replace(staged_repo, repo)
    return folder


def latest_entity_rows(
    schema: DatasetSchema, events: Path, batch_rows: int = 10_000
) -> Iterator[tuple[str, pa.RecordBatch]]:
    """(entity view, a batch of its keys' latest rows): what a materialisation over all events writes, streamed
    from one DuckDB pass per entity (`features.offline_store`), so memory follows the batch."""
    source = FileSource(name="events", path=str(Path(events).resolve()), timestamp_field=EVENT_TIMESTAMP)
    for entity in schema.entities:
        query = latest_rows_query(source, [entity.key], list(entity.features), Path(events).parent)
        with duckdb_connection(PUBLISH_MEMORY_LIMIT) as con:
            for batch in con.sql(query).to_arrow_reader(batch_rows):
                yield entity_view(schema, entity), batch


def write_online(
    schema: DatasetSchema, events: Path, feature_server: str, batch_rows: int = 10_000, log: Callable = print
) -> int:
    """Write every entity's latest features into the online store through the feature server at `feature_server`
    (http://host:port); returns the rows written."""
    written: dict[str, int] = {}
    for view, batch in latest_entity_rows(schema, events, batch_rows):
        columns = {c: batch.column(c).to_pylist() for c in batch.schema.names if c != EVENT_TIMESTAMP}
        columns[EVENT_TIMESTAMP] = batch.column(EVENT_TIMESTAMP).to_pandas().astype(str).tolist()
        # the first batch of a view reads the registry afresh: this step has just replaced it
        body = {"feature_view_name": view, "df": columns, "allow_registry_cache": view in written}
        _post(feature_server, "/write-to-online-store", body, f"{view} rows {written.get(view, 0):,}+{len(batch):,}")
        written[view] = written.get(view, 0) + len(batch)
    for view, rows in written.items():
        log(f"wrote the latest features of {rows:,} {view} keys through {feature_server}")
    return sum(written.values())


def _post(server: str, path: str, body: dict, what: str, timeout: float = 300.0) -> None:
    request = urllib.request.Request(
        server.rstrip("/") + path, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as error:
        detail = error.read().decode("utf-8", "replace")[:2000]
        raise PublishError(f"feature server {server}{path} refused {what}: HTTP {error.code}: {detail}") from None
    except OSError as error:
        raise PublishError(f"feature server {server}{path} unreachable while writing {what}: {error}") from None


def publish(schema: DatasetSchema, events: Path, root: Path, feature_server: str, log: Callable = print) -> int:
    """Publish an ingest's event table to the cluster's Feast: the repository and registry under `root`, then the
    entity features through `feature_server`; returns the online rows written."""
    folder = publish_repo(schema, events, root)
    log(f"registered {schema.name!r} at {folder / REGISTRY} ({folder / 'feature_repo' / DEFINITIONS})")
    return write_online(schema, events, feature_server, log=log)

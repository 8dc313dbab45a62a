"""The Feast feature repository generated from a dataset schema.

One typed event table (the offline source) feeds one event-level feature view keyed by event_id, and one
feature view per entity (e.g. Avazu's device, site, app) keyed by the entity's column. `feature_store.yaml`
is the local default (SQLite online store); `feature_store.production.yaml` is the cluster setting for the same
definitions: the registry on the shared data volume and the Redis online store. Both run on the offline store
engine the repo was written for: DuckDB on one machine (`features.offline_store`), or Spark for logs beyond one
(`features.spark_store`); each reads the Parquet event table of the definitions.
k8s/base/common/feature_store.yaml is its serving part for any project. The definitions find the event table
relative to themselves, so a repo moved with its data (an artifact, a volume) still reads it.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import shutil
from pathlib import Path

import yaml
from feast import Entity, FeatureService, FeatureStore, FeatureView
from feast.data_source import DataSource

from features.online import entity_view
from features.readers import EVENT_ID, EVENT_TIMESTAMP
from features.schema import DatasetSchema

DEFINITIONS = "definitions.py"
SPARK_CONF = {  # any Spark: UTC, and Parquet times in microseconds, as DuckDB and pandas read them
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}
# Spark on Kubernetes: the ingest pod is Spark's driver (client mode) and starts executor pods beside it, from the
# pod template and with the rights of k8s/base/common/spark.yaml. The ${...} are the ingest pod's environment (the
# pipeline sets it; Feast expands them when it reads the file). Executors come and go with the work (dynamic
# allocation with shuffle tracking: no external shuffle service); they mount the data volume where the ingest step
# works (the pipeline's INGEST_WORK_ROOT).
SPARK_DRIVER_PORT, SPARK_BLOCK_MANAGER_PORT = 7078, 7079
SPARK_EXECUTOR_TEMPLATE = "/etc/nasrec/spark/executor-pod.yaml"
SPARK_EXECUTOR_VOLUME = ("nasrec-data", "/data")  # (claim, mount path): the pipeline's DATA_VOLUME
SPARK_ON_KUBERNETES = {
    "spark.master": "k8s://https://kubernetes.default.svc",
    "spark.submit.deployMode": "client",
    "spark.kubernetes.namespace": "${POD_NAMESPACE}",
    "spark.kubernetes.driver.pod.name": "${POD_NAME}",  # executors are owned by it, so they go when it does
    "spark.driver.host": "${POD_IP}",
    "spark.driver.bindAddress": "0.0.0.0",
    "spark.driver.port": str(SPARK_DRIVER_PORT),
    "spark.blockManager.port": str(SPARK_BLOCK_MANAGER_PORT),
    "spark.kubernetes.container.image": "${SPARK_EXECUTOR_IMAGE}",
    "spark.kubernetes.executor.podTemplateFile": SPARK_EXECUTOR_TEMPLATE,
    "spark.driver.memory": "8g",  # materialisation collects each view's latest rows here (the pod's limit: 16Gi)
    "spark.driver.maxResultSize": "4g",
    "spark.kubernetes.driver.ownPersistentVolumeClaim": "false",  # executors mount an existing claim: no claims
    "spark.kubernetes.driver.reusePersistentVolumeClaim": "false",  # of their own to list, create or reuse
    "spark.executor.cores": "2",
    "spark.executor.memory": "6g",
    "spark.kubernetes.executor.limit.cores": "2",
    "spark.dynamicAllocation.enabled": "true",
    "spark.dynamicAllocation.shuffleTracking.enabled": "true",
    "spark.dynamicAllocation.maxExecutors": "8",
    "spark.kubernetes.executor.volumes.persistentVolumeClaim.data.options.claimName": SPARK_EXECUTOR_VOLUME[0],
    "spark.kubernetes.executor.volumes.persistentVolumeClaim.data.mount.path": SPARK_EXECUTOR_VOLUME[1],
}
SPARK_ON_KUBERNETES_ENV = ("POD_NAMESPACE", "POD_NAME", "POD_IP", "SPARK_EXECUTOR_IMAGE")
SPARK_STORE = "features.spark_store.AsofSparkOfflineStore"
# The offline stores a repo can run on: each joins as of each event's time, and all read the same definitions.
OFFLINE_STORES = {
    "duckdb": {"type": "features.offline_store.AsofDuckDBOfflineStore"},  # one machine
    "spark": {  # Spark on this machine's cores (or the ingest pod's)
        "type": SPARK_STORE,
        "spark_conf": {
            "spark.master": "local[*]",
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            **SPARK_CONF,
        },
    },
    "spark-k8s": {"type": SPARK_STORE, "spark_conf": {**SPARK_ON_KUBERNETES, **SPARK_CONF}},  # executors as pods
}
# Each offline store's query of the entity rows in a Parquet file, by its type
PARQUET_QUERIES = {
    OFFLINE_STORES["duckdb"]["type"]: "SELECT * FROM read_parquet('{path}')",
    SPARK_STORE: "SELECT * FROM parquet.`{path}`",
}
LOCAL_CONFIG = "feature_store.yaml"
PRODUCTION_CONFIG = "feature_store.production.yaml"


def feature_service_name(schema: DatasetSchema) -> str:
    return f"{schema.name}_service_v1"


def view_keys(schema: DatasetSchema) -> dict[str, str]:
    """Feature view name -> its join key: the event-level view, then one view per entity."""
    return {f"{schema.name}_event_fv": EVENT_ID} | {entity_view(schema, e): e.key for e in schema.entities}


def offline_engine(name: str) -> dict:
    """The offline store block of engine `name`; fails, naming what to install, when the engine cannot run here."""
    if name not in OFFLINE_STORES:
        raise ValueError(f"offline store engine {name!r}: known engines are {sorted(OFFLINE_STORES)}")
    if name.startswith("spark") and importlib.util.find_spec("pyspark") is None:
        raise ValueError(f"offline store engine {name!r} needs pyspark: pip install 'nasrec-pipeline[spark]'")
    if name.startswith("spark") and shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise ValueError(f"offline store engine {name!r} needs a JDK (java on PATH or JAVA_HOME; Debian: default-jdk)")
    unset = [v for v in SPARK_ON_KUBERNETES_ENV if not os.environ.get(v)]
    if name == "spark-k8s" and unset:
        raise ValueError(f"offline store engine 'spark-k8s' runs in the pipeline's ingest pod, which sets {unset}")
    return OFFLINE_STORES[name]


def local_config(schema: DatasetSchema, engine: str = "duckdb") -> dict:
    """Paths are relative to the repo, so the repo can be moved (ingest builds it aside, then moves it)."""
    return {
        "project": schema.name,
        "registry": "data/registry.db",
        "provider": "local",
        "offline_store": offline_engine(engine),
        "online_store": {"type": "sqlite", "path": "data/online_store.db"},
        "entity_key_serialization_version": 3,
    }


def production_config(project: str, engine: str = "duckdb") -> dict:
    """Feast fills in ${...} from the environment of the pod that reads it (see k8s/)."""
    return {
        "project": project,
        "registry": {
            "registry_type": "file",
            "path": f"${{FEAST_REGISTRY_ROOT}}/{project}/registry.db",
            "cache_ttl_seconds": 60,
        },
        "provider": "local",
        "offline_store": offline_engine(engine),
        "online_store": {"type": "redis", "connection_string": "${REDIS_CONNECTION_STRING}"},
        "entity_key_serialization_version": 3,
    }


def serving_config(repo: Path, variant: str) -> dict:
    """The feature_store.yaml a served model reads entity features with: the registry and the online store alone
    (the serving runtime's Feast loads no offline store), at absolute paths of `repo` locally, or the production
    settings, which Feast fills in from the serving pod's environment."""
    local = yaml.safe_load((Path(repo) / LOCAL_CONFIG).read_text())
    if variant == "production":
        return {k: v for k, v in production_config(local["project"]).items() if k != "offline_store"}
    online = dict(local["online_store"])
    online["path"] = str((Path(repo) / online["path"]).resolve())
    return {
        "project": local["project"],
        "registry": str((Path(repo) / local["registry"]).resolve()),
        "provider": local["provider"],
        "online_store": online,
        "entity_key_serialization_version": local["entity_key_serialization_version"],
    }


def render_definitions(schema: DatasetSchema, source_path: Path) -> str:
    """Flat Feast definitions in dependency order: entities, source (`source_path`, relative to the repo), feature
    views, feature service."""
    name = schema.name
    dense = set(schema.dense)

    def fields(features) -> str:
        return ",\n        ".join(f'Field(name="{f}", dtype={"Float32" if f in dense else "String"})' for f in features)

    keys = {e.key for e in schema.entities}
    event_features = [f for f in schema.event_features if f not in keys]
    lines = [
        f"# Generated from dataset schema {name!r} by features.feast_repo: regenerate rather than edit.",
        "from datetime import timedelta",
        "",
        "from pathlib import Path",
        "",
        "from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType",
        "from feast.types import Float32, String",
        "",
        f'event = Entity(name="event", join_keys=["{EVENT_ID}"], value_type=ValueType.INT64)',
    ]
    lines += [
        f'{e.name} = Entity(name="{e.name}", join_keys=["{e.key}"], value_type=ValueType.STRING)'
        for e in schema.entities
    ]
    lines += [
        "",
        "# The event table, found beside this repo wherever the two are moved together",
        f'EVENTS = str((Path(__file__).parent / "{source_path.as_posix()}").resolve())',
        f'{name}_source = FileSource(name="{name}_source", path=EVENTS, timestamp_field="{EVENT_TIMESTAMP}")',
    ]
    entity_of = {EVENT_ID: "event"} | {e.key: e.name for e in schema.entities}
    features_of = {EVENT_ID: event_features} | {e.key: list(e.features) for e in schema.entities}
    for view, key in view_keys(schema).items():
        lines += [
            f"{view} = FeatureView(",
            f'    name="{view}",',
            f"    entities=[{entity_of[key]}],",
            "    ttl=timedelta(0),",
            f"    schema=[\n        {fields(features_of[key])},\n    ],",
            f"    source={name}_source,",
            ")",
        ]
    views = ", ".join(view_keys(schema))
    lines += [
        "",
        f'{feature_service_name(schema)} = FeatureService(name="{feature_service_name(schema)}", features=[{views}])',
        "",
    ]
    return "\n".join(lines)


def write_repo(schema: DatasetSchema, repo: Path, source_path: Path, engine: str = "duckdb") -> None:
    """Write feature_store.yaml, the production variant and the generated definitions into `repo`; `engine` is
    the offline store both settings run on (OFFLINE_STORES)."""
    (repo / "data").mkdir(parents=True, exist_ok=True)
    (repo / LOCAL_CONFIG).write_text(yaml.safe_dump(local_config(schema, engine), sort_keys=False))
    (repo / PRODUCTION_CONFIG).write_text(
        "# Cluster setting: the same definitions, the registry on the data volume, Redis online.\n"
        + yaml.safe_dump(production_config(schema.name, engine), sort_keys=False)
    )
    (repo / DEFINITIONS).write_text(render_definitions(schema, Path(os.path.relpath(source_path, repo))))
    (repo / ".feastignore").write_text("data/\n*.yaml\n")


def open_store(repo: Path, config: str = LOCAL_CONFIG) -> FeatureStore:
    """The repo's store as `config` (LOCAL_CONFIG or PRODUCTION_CONFIG) sets it up."""
    return FeatureStore(repo_path=str(repo), fs_yaml_file=Path(repo) / config)


def apply_repo(repo: Path, config: str = LOCAL_CONFIG) -> FeatureStore:
    """Register the repo's generated definitions (what `feast apply` in the repo does) and return the store.

    The file is executed by path rather than imported, so repos of several datasets in one process do not
    share a cached module.
    """
    store = open_store(repo, config)
    namespace = runpy.run_path(str(repo / DEFINITIONS))
    kinds = (Entity, DataSource, FeatureView, FeatureService)
    store.apply([obj for obj in namespace.values() if isinstance(obj, kinds)])
    return store

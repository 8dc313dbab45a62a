"""The point-in-time join of an entity log on each offline store Feast can run it on, side by side in one run:
seconds, rows/s, and the rows whose entity features differ from our DuckDB ASOF store's.

    python -m bench.offline_engines [--data FILE --schema avazu] [--json PATH]

Stores: ours on DuckDB (`features.offline_store`) and on Spark (`features.spark_store`); Feast's own DuckDB store
(ibis), Spark store (its SparkSource) and Ray store, each as Feast ships it. The default log is the shared Avazu
sample, where one device holds 87% of the rows: the case that makes a pairwise join quadratic. Each store joins the
same entity rows (event id, time, label, entity keys) to every entity view; Spark and Ray run locally on this
machine's cores, their start-up timed apart from the join.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from bench.common import add_json_argument, write_json
from features.feast_repo import LOCAL_CONFIG, OFFLINE_STORES, apply_repo, view_keys, write_repo
from features.ingest import write_events
from features.readers import EVENT_ID, EVENT_TIMESTAMP, RawReader
from features.schema import DatasetSchema, load_schema

SHARED_AVAZU = Path(__file__).resolve().parents[2] / "shared" / "data" / "avazu_10k" / "train.csv"
FEAST_STORES = {
    "feast_duckdb": {"type": "duckdb"},
    "feast_spark": {"type": "spark", "spark_conf": OFFLINE_STORES["spark"]["spark_conf"]},
    "feast_ray": {"type": "ray", "broadcast_join_threshold_mb": 100_000, "ray_conf": {"num_cpus": 2}},
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_AVAZU, help="a raw log with entities")
    parser.add_argument("--schema", default="avazu", help="its schema: a built-in name or a YAML file")
    parser.add_argument("--stores", nargs="+", default=["duckdb", "spark", *FEAST_STORES], help="stores to run")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench/offline_engines"))
    add_json_argument(parser)
    args = parser.parse_args(argv)
    if not args.data.exists():
        parser.error(f"{args.data}: no such file (the shared Avazu sample is ../shared/data/avazu_10k/train.csv)")
    schema = load_schema(args.schema)
    if not schema.entities:
        parser.error(f"schema {schema.name!r} has no entities: nothing to join as of each event")
    shutil.rmtree(args.work_dir, ignore_errors=True)
    events = args.work_dir / "events.parquet"
    events.parent.mkdir(parents=True)
    rows = write_events(RawReader(schema, [args.data]), events)
    entity_rows = pq.read_table(events, columns=[EVENT_ID, EVENT_TIMESTAMP, *(e.key for e in schema.entities)])
    figures: dict = {"data": str(args.data), "rows": rows, "stores": {}}
    reference = None
    for name in args.stores:
        store, started = open_engine(name, schema, events, args.work_dir / name)
        began = time.perf_counter()
        features = [f"{v}:{f}" for v, key in view_keys(schema).items() if key != EVENT_ID for f in _features(schema, v)]
        frame = store.get_historical_features(entity_df=entity_rows.to_pandas(), features=features).to_df()
        seconds = time.perf_counter() - began
        frame = frame.sort_values(EVENT_ID).set_index(EVENT_ID)[[f.split(":")[1] for f in features]]
        reference = frame if reference is None else reference
        missing = len(reference.index.difference(frame.index))  # entity rows a store dropped count as differing
        same_rows = frame.reindex(reference.index).fillna("")
        differ = int((same_rows != reference.fillna("")).any(axis=1).sum())
        figures["stores"][name] = {
            "start_seconds": started,
            "join_seconds": seconds,
            "rows_per_s": rows / seconds,
            "rows_differing_from_first": differ,
            "rows_missing": missing,
        }
        print(
            f"{name}: join {seconds:.1f} s ({rows / seconds:,.0f} rows/s), start {started:.1f} s; "
            f"{differ} rows differ, {missing} missing"
        )
    write_json(args.json, figures)
    return figures


def open_engine(name: str, schema: DatasetSchema, events: Path, repo: Path):
    """The repo of `events` on store `name`: ours by engine name, or one of Feast's own; returns it and the seconds
    its engine took to start."""
    write_repo(schema, repo, events, name if name in OFFLINE_STORES else "duckdb")
    if name in FEAST_STORES:
        config = yaml.safe_load((repo / LOCAL_CONFIG).read_text())
        config["offline_store"] = dict(FEAST_STORES[name])
        if name == "feast_ray":
            config["offline_store"]["storage_path"] = str(repo / "ray_storage")
        (repo / LOCAL_CONFIG).write_text(yaml.safe_dump(config))
    if name == "feast_spark":  # Feast's Spark store reads a SparkSource, not a FileSource
        definitions = (repo / "definitions.py").read_text()
        definitions = definitions.replace(
            "from feast import Entity,",
            "from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource\n"
            "from feast import Entity,",
        ).replace("FileSource(name=", 'SparkSource(file_format="parquet", name=')
        (repo / "definitions.py").write_text(definitions)
    began = time.perf_counter()
    store = apply_repo(repo)
    _warm_up(name, store)
    return store, time.perf_counter() - began


def _warm_up(name: str, store) -> None:
    """Start the engine (a JVM, a Ray cluster) outside the timed join."""
    if "spark" in name:
        from pyspark.sql import SparkSession

        SparkSession.builder.config(map=OFFLINE_STORES["spark"]["spark_conf"]).getOrCreate().range(1).count()
    elif name == "feast_ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)


def _features(schema: DatasetSchema, view: str) -> list[str]:
    return next(list(e.features) for e in schema.entities if view.endswith(f"_{e.name}_fv"))


if __name__ == "__main__":
    main()

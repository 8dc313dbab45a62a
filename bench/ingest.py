"""Ingestion at scale, side by side in one run, on synthetic logs:

- ingest (read, point-in-time join through Feast, transform, splits) of Criteo-format logs of each --rows size:
  rows/s and the peak RSS of the process that ran it, and each peak over the first size's;
- the skewed entity ingest: an Avazu-format log of --skewed-rows rows where one device key holds --hot-fraction of
  the rows (the case a pairwise point-in-time join makes quadratic);
- materialisation of that ingest's entity views into SQLite and into Redis (a local redis-server): log rows/s and
  keys written/s;
- online lookups of 1 and 512 entities' features per entity view, and of every view at once (what a served request
  of 512 rows reads), on both stores;
- the reader alone and reader + transform, in process, on the first Criteo log: the ingest's ceiling.

    python -m bench.ingest [--rows 1000000 10000000] [--skewed-rows 1000000] [--json PATH]

Each ingest runs in a fresh process, so its peak RSS is its own. Synthetic logs are inputs, not figures: they are
kept in --work-dir and reused across runs.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from bench.common import add_json_argument, percentiles, write_json
from features.feast_repo import LOCAL_CONFIG, PRODUCTION_CONFIG, apply_repo
from features.ingest import OnlineFeatures, SplitSpec, ingest
from features.local_redis import local_redis
from features.readers import EVENT_TIMESTAMP, RawReader
from features.schema import builtin_schema
from features.synthetic import write_synthetic_log
from features.transform import FeatureTransform

HOT_KEY = "device_id"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000], help="Criteo log sizes")
    parser.add_argument("--skewed-rows", type=int, default=1_000_000, help="rows of the skewed Avazu-format log")
    parser.add_argument("--hot-fraction", type=float, default=0.8, help="share of the rows given one device key")
    parser.add_argument(
        "--skewed-cardinality", type=int, default=300_000, help="values per feature of the skewed log (its keys)"
    )
    parser.add_argument("--lookups", type=int, default=500, help="timed lookups of one entity (half as many of 512)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench/ingest"), help="logs and outputs")
    parser.add_argument("--seed", type=int, default=0)
    add_json_argument(parser)
    args = parser.parse_args(argv)
    for name in ("rows", "skewed_rows", "skewed_cardinality", "lookups"):
        if min(np.atleast_1d(getattr(args, name))) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if not 0 < args.hot_fraction < 1:
        parser.error(f"--hot-fraction must be in (0, 1), got {args.hot_fraction}")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    figures: dict = {"cpu_count": os.cpu_count()}

    criteo = builtin_schema("criteo")
    logs = {rows: synthetic_log(args.work_dir, "criteo", rows, args.seed) for rows in args.rows}
    figures["read_transform"] = read_transform(criteo, logs[min(args.rows)])
    figures["criteo_ingest"] = {}
    for rows, log in logs.items():
        figures["criteo_ingest"][str(rows)] = run = ingest_in_child("criteo", log, args.work_dir / f"criteo_{rows}")
        print(f"criteo ingest, {rows:,} rows: {run['rows_per_s']:,.0f} rows/s, peak RSS {run['peak_rss_mib']:,.0f} MiB")
    first = figures["criteo_ingest"][str(args.rows[0])]["peak_rss_mib"]
    for run in figures["criteo_ingest"].values():
        run["peak_rss_over_first"] = run["peak_rss_mib"] / first

    skewed = synthetic_log(
        args.work_dir, "avazu", args.skewed_rows, args.seed, args.hot_fraction, args.skewed_cardinality
    )
    out = args.work_dir / f"avazu_skewed_{args.skewed_rows}"
    figures["skewed_ingest"] = run = ingest_in_child("avazu", skewed, out)
    run["hot_key_share"] = hot_key_share(out / "offline" / "events.parquet")
    print(
        f"skewed entity ingest, {args.skewed_rows:,} rows ({run['hot_key_share']:.1%} on one {HOT_KEY}): "
        f"{run['rows_per_s']:,.0f} rows/s, peak RSS {run['peak_rss_mib']:,.0f} MiB"
    )
    figures["online"] = online_stores(out, args.lookups, args.seed)
    write_json(args.json, figures)
    return figures


def synthetic_log(
    folder: Path, schema_name: str, rows: int, seed: int, hot_fraction: float = 0.0, cardinality: int = 10_000
) -> Path:
    schema = builtin_schema(schema_name)
    hot = {HOT_KEY: hot_fraction} if hot_fraction else None
    path = folder / f"{schema_name}_{rows}_seed{seed}_card{cardinality}{f'_hot{hot_fraction}' if hot else ''}.txt"
    if not path.exists():
        print(f"writing {rows:,} synthetic {schema_name} rows to {path} ...", flush=True)
        partial = path.with_name(path.name + ".partial")
        write_synthetic_log(schema, partial, rows, seed=seed, cardinality=cardinality, hot_keys=hot)
        partial.rename(path)
    return path


def read_transform(schema, log: Path) -> dict:
    """The reader alone, and reader + transform, in this process (no Feast): the ingest's ceiling."""
    reader = RawReader(schema, [log])
    start = time.perf_counter()
    chunks = [chunk for i, chunk in enumerate(reader.chunks()) if i < 10]  # fit on the first blocks
    rows = reader.stats.rows
    read_s = time.perf_counter() - start
    transform = FeatureTransform.fit(schema, chunks)
    start = time.perf_counter()
    for chunk in reader.chunks():
        transform.transform(chunk)
    figures = {
        "rows": rows,
        "read_rows_per_s": rows / read_s,
        "read_transform_rows_per_s": rows / (time.perf_counter() - start),
    }
    print(f"read: {figures['read_rows_per_s']:,.0f} rows/s; read+transform {figures['read_transform_rows_per_s']:,.0f}")
    return figures


def ingest_in_child(schema_name: str, log: Path, out: Path) -> dict:
    """`ingest` in a fresh process: its rows/s, stage times and peak RSS."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_ingest, (schema_name, log, out))


def _ingest(schema_name: str, log: Path, out: Path) -> dict:
    start = time.perf_counter()
    result = ingest(builtin_schema(schema_name), [log], out, SplitSpec(), log=lambda m: print("  " + m, flush=True))
    seconds = time.perf_counter() - start
    stats = result.stats
    return {
        "rows": stats["rows"],
        "seconds": seconds,
        "rows_per_s": stats["rows"] / seconds,
        "read_seconds": stats["read_seconds"],
        "join_seconds": stats["join_seconds"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
    }


def hot_key_share(events: Path) -> float:
    keys = pq.read_table(events, columns=[HOT_KEY])[HOT_KEY].value_counts()
    return max(keys.field("counts").to_pylist()) / sum(keys.field("counts").to_pylist())


def online_stores(out: Path, lookups_per_size: int, seed: int) -> dict:
    """Materialise the entity views into SQLite and Redis, then time lookups of 1 and 512 entities on each."""
    schema = builtin_schema("avazu")
    transform = FeatureTransform.load(out / "transform.json")
    events = out / "offline" / "events.parquet"
    times = pq.read_table(events, columns=[EVENT_TIMESTAMP])[EVENT_TIMESTAMP].to_pandas()
    start, end = times.min(), times.max() + pd.Timedelta(hours=1)
    keys = pq.read_table(events, columns=[e.key for e in schema.entities]).to_pandas()
    figures = {}
    redis_folder = out.parent.resolve() / "redis"
    with local_redis(redis_folder, "bench-only") as redis_url:
        os.environ["REDIS_CONNECTION_STRING"] = redis_url
        os.environ["FEAST_REGISTRY_ROOT"] = str(redis_folder / "registry")
        (redis_folder / "registry" / schema.name).mkdir(parents=True, exist_ok=True)
        apply_repo(out / "feature_repo", PRODUCTION_CONFIG)
        for store, config in (("sqlite", LOCAL_CONFIG), ("redis", PRODUCTION_CONFIG)):
            online = OnlineFeatures(out / "feature_repo", schema, transform, config)
            began = time.perf_counter()
            written = online.materialize(start, end, entities_only=True)
            seconds = time.perf_counter() - began
            figures[store] = {
                "materialized_log_rows": len(times),
                "keys_written": written,
                "materialize_seconds": seconds,
                "materialize_log_rows_per_s": len(times) / seconds,
                "materialize_keys_per_s": written / seconds,
            }
            print(
                f"materialise to {store}: {len(times) / seconds:,.0f} log rows/s, {written / seconds:,.0f} keys/s "
                f"({written:,} keys in {seconds:.1f} s)"
            )
            figures[store] |= lookups(online, keys, lookups_per_size, seed, store)
    return figures


def lookups(online: OnlineFeatures, keys: pd.DataFrame, repeats: int, seed: int, store: str) -> dict:
    """p50/p99 of reading the features of 1 and 512 entities of each entity view, and of all views at once (what a
    served request of 512 rows reads); keys drawn from the log's rows, so as skewed as its traffic."""
    rng = np.random.default_rng(seed)
    figures = {}
    gc.collect()
    gc.freeze()  # as the served model does once loaded: the collector then skips the long-lived heap
    for views in [[c] for c in keys.columns] + [list(keys.columns)]:
        name = views[0] if len(views) == 1 else "every_view"
        for n, times in ((1, repeats), (512, max(20, repeats // 2))):
            samples = []
            for _ in range(times):
                rows = keys.iloc[rng.integers(0, len(keys), n)]
                request = {column: rows[column].fillna("").tolist() for column in views}
                began = time.perf_counter()
                online.raw_features(request)
                samples.append(time.perf_counter() - began)
            figures[f"lookup_{name}_{n}"] = timing = percentiles(samples)
            print(f"  {store} lookup of {n} by {name}: p50 {timing['p50_ms']:.2f} ms, p99 {timing['p99_ms']:.2f} ms")
    return figures


if __name__ == "__main__":
    main()

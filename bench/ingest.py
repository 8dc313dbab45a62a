"""Ingestion throughput on a synthetic Criteo-format log: read+transform rows/s, Feast ingestion and
materialisation rows/s, online lookup latency (1 and 512 entities), and loader batches/s against the
training step rate.

    python -m bench.ingest [--rows 1000000] [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from bench.common import add_json_argument, percentiles, write_json
from features.ingest import OnlineFeatures, SplitSpec, ingest
from features.loader import SplitLoader
from features.prefetch import prefetch
from features.readers import EVENT_ID, EVENT_TIMESTAMP, RawReader
from features.schema import builtin_schema
from features.synthetic import write_synthetic_log
from features.transform import FeatureTransform
from model.network import InputSchema, NASRecNet
from model.sampling import ArchitectureSampler
from model.space import get_space
from model.training import Batch, SliceAdagrad, network_step


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic log (default 1M)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench/ingest"), help="where files go")
    parser.add_argument("--lookups", type=int, default=500, help="single-entity online lookups to time")
    parser.add_argument("--materialize-rows", type=int, default=100_000, help="events materialised (default 100k)")
    parser.add_argument("--seed", type=int, default=0)
    add_json_argument(parser)
    args = parser.parse_args(argv)
    schema = builtin_schema("criteo")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    raw = args.work_dir / f"criteo_synthetic_{args.rows}_seed{args.seed}.txt"
    if not raw.exists():  # the log is an input, not a figure: reuse it across runs
        print(f"writing {args.rows:,} synthetic rows to {raw} ...", flush=True)
        write_synthetic_log(schema, raw, args.rows, seed=args.seed)
    figures: dict = {"rows": args.rows, "raw_bytes": raw.stat().st_size}

    reader = RawReader(schema, [raw])
    start = time.perf_counter()
    fit_rows = []
    for chunk in prefetch(reader.chunks()):
        if sum(len(c) for c in fit_rows) < args.rows // 10:
            fit_rows.append(chunk)
    read_s = time.perf_counter() - start
    transform = FeatureTransform.fit(schema, fit_rows)
    start = time.perf_counter()
    for chunk in prefetch(reader.chunks()):
        transform.transform(chunk)
    read_transform_s = time.perf_counter() - start
    figures["read_rows_per_s"] = args.rows / read_s
    figures["read_transform_rows_per_s"] = args.rows / read_transform_s
    print(
        f"read: {figures['read_rows_per_s']:,.0f} rows/s; "
        f"read+transform: {figures['read_transform_rows_per_s']:,.0f} rows/s"
    )

    start = time.perf_counter()
    result = ingest(schema, [raw], args.work_dir / "out", SplitSpec(), log=lambda m: print("  " + m, flush=True))
    figures["ingest_rows_per_s"] = args.rows / (time.perf_counter() - start)
    print(
        f"ingest through Feast (offline store, point-in-time join, splits): {figures['ingest_rows_per_s']:,.0f} rows/s"
    )

    online = OnlineFeatures(result.repo, schema, result.transform)
    times = pq.read_table(result.out_dir / "offline" / "events.parquet", columns=[EVENT_TIMESTAMP])[EVENT_TIMESTAMP]
    materialized = min(args.materialize_rows, args.rows)  # Feast materialises in Python: slow, so a prefix
    start = time.perf_counter()
    online.materialize(times[0].as_py(), times[materialized - 1].as_py() + pd.Timedelta(microseconds=1))
    figures["materialized_rows"] = materialized
    figures["materialize_rows_per_s"] = materialized / (time.perf_counter() - start)
    print(f"materialise {materialized:,} rows to SQLite: {figures['materialize_rows_per_s']:,.0f} rows/s")

    rng = np.random.default_rng(args.seed)
    for n, repeats in ((1, args.lookups), (512, max(20, args.lookups // 10))):
        samples = []
        for _ in range(repeats):
            keys = rng.integers(0, materialized, n).tolist()
            t0 = time.perf_counter()
            online.lookup({EVENT_ID: keys})
            samples.append(time.perf_counter() - t0)
        figures[f"online_lookup_{n}"] = percentiles(samples)
        print(
            f"online lookup of {n}: p50 {figures[f'online_lookup_{n}']['p50_ms']:.2f} ms, "
            f"p99 {figures[f'online_lookup_{n}']['p99_ms']:.2f} ms (model-ready arrays)"
        )

    loader = SplitLoader(result.splits["train"], result.transform, batch_size=512, shuffle=True)
    start = time.perf_counter()
    batches = sum(1 for _ in loader)
    figures["loader_batches_per_s"] = batches / (time.perf_counter() - start)
    net = NASRecNet(
        ArchitectureSampler(get_space("demo"), args.seed).sample(),
        InputSchema(result.transform.num_dense, result.transform.cardinalities),
    )
    optimizer = SliceAdagrad(net.parameters(), lr=0.05)
    step_times = []
    for i, b in enumerate(loader):
        t0 = time.perf_counter()
        network_step(
            net, Batch(torch.from_numpy(b.dense), torch.from_numpy(b.sparse), torch.from_numpy(b.label)), optimizer
        )
        step_times.append(time.perf_counter() - t0)
        if i == 30:
            break
    figures["training_steps_per_s"] = 1 / statistics.median(step_times[1:])
    figures["loader_over_training_rate"] = figures["loader_batches_per_s"] / figures["training_steps_per_s"]
    print(
        f"loader: {figures['loader_batches_per_s']:,.0f} batches/s of 512; demo-space NASRecNet training step: "
        f"{figures['training_steps_per_s']:.1f} steps/s; loader/training = {figures['loader_over_training_rate']:.0f}x"
    )
    write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()

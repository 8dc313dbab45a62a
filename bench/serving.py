"""Serving figures for a NASRecNet trained by the product on the shared Criteo sample.

1. In process: ONNX Runtime against PyTorch eager, one thread each, at batch 1, 64, 512 and 4096.
2. The local Triton server over gRPC: p50/p99 latency at batch 1 and 512 (one client); requests/s at
   batch 1 with 1, 8 and 32 concurrent clients (one gRPC channel each, threads of one process); failures.
   Batch 512 is also timed with the batch run whole (`parallel_runs=1`) beside the default, which runs a
   large batch as two parts at once.
3. The client's own work on the shared Avazu sample (entities device, site and app): rows checked,
   entity features read from the Feast online store and transformed, at 1 and 512 rows, against the same
   lookup through Feast's SDK (`get_online_features`).

    python -m bench.serving [--json PATH] [--models WINNER_DIR ...]

The client shares the 2 cores with the server, as a sidecar would; the figures are of that setting.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
import tritonclient.grpc as grpcclient

from bench.common import add_json_argument, percentiles, write_json
from components.steps.finetune import FinetuneRun, finetune
from features.ingest import IngestResult, OnlineFeatures, SplitSpec, ingest
from features.loader import SplitLoader
from features.readers import EVENT_TIMESTAMP
from features.schema import builtin_schema
from model.sampling import ArchitectureSampler
from model.space import get_space
from model.trainer import load_model
from serving.client import ModelBundle, RequestFeatures, infer_inputs
from serving.export import CTRProbability, export_model, onnx_session
from serving.interface import DEFAULT_MODEL
from serving.repository import ServingConfig, add_version
from serving.server import TritonServer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RAW = {"criteo": SHARED / "criteo_kaggle_10k" / "train.txt", "avazu": SHARED / "avazu_10k" / "train.csv"}
IN_PROCESS_REPEATS = {1: 2000, 64: 500, 512: 200, 4096: 40}  # batch size -> timed calls
MODEL = DEFAULT_MODEL


def ingested(name: str, work: Path) -> IngestResult:
    raw = RAW[name]
    if not raw.exists():
        raise SystemExit(f"bench.serving needs the shared sample {raw}")
    return ingest(builtin_schema(name), [raw], work / name, SplitSpec(folds=raw.parent / "folds.csv", fold=0))


def trained_model(data: IngestResult, work: Path, seed: int) -> Path:
    """The `demo` architecture of sampler seed `seed`, trained by `finetune` for 3 epochs on the training folds."""
    arch = ArchitectureSampler(get_space("demo"), seed).sample()
    finetune([arch], data.out_dir, work / "model", FinetuneRun(epochs=3, progress=False), torch.device("cpu"))
    return work / "model" / "winner"


def timed(call: Callable[[], object], repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def in_process(model_dir: Path, onnx_path: Path, data_dir: Path, transform) -> dict:
    """ONNX Runtime and PyTorch eager on the same validation rows, one intra-op thread each."""
    torch.set_num_threads(1)
    served = CTRProbability(load_model(model_dir / "checkpoint.pt")).eval()
    session = onnx_session(onnx_path, threads=1)
    batch = next(iter(SplitLoader(data_dir / "validation.parquet", transform, 1024)))
    figures = {}
    for size, repeats in IN_PROCESS_REPEATS.items():
        dense = np.resize(batch.dense, (size, batch.dense.shape[1]))
        sparse = np.resize(batch.sparse, (size, batch.sparse.shape[1]))
        d, s = torch.from_numpy(dense), torch.from_numpy(sparse)

        def run_torch(d=d, s=s) -> None:
            with torch.inference_mode():
                served(d, s)

        def run_onnx(dense=dense, sparse=sparse) -> None:
            session.run(None, {"dense": dense, "sparse": sparse})

        for call in (run_torch, run_onnx):  # warm up
            timed(call, 5)
        row = {}
        for name, call in (("pytorch", run_torch), ("onnxruntime", run_onnx)):
            samples = timed(call, repeats)
            row[name] = {**percentiles(samples), "rows_per_s": size / float(np.median(samples))}
        row["onnxruntime_speedup"] = row["pytorch"]["p50_ms"] / row["onnxruntime"]["p50_ms"]
        figures[f"batch_{size}"] = row
        print(
            f"in process, batch {size:4d}: PyTorch p50 {row['pytorch']['p50_ms']:.3f} ms, ONNX Runtime "
            f"{row['onnxruntime']['p50_ms']:.3f} ms ({row['onnxruntime_speedup']:.1f}x); "
            f"{row['onnxruntime']['rows_per_s']:,.0f} rows/s",
            flush=True,
        )
    return figures


def grpc_latency(url: str, dense: np.ndarray, sparse: np.ndarray, requests: int) -> dict:
    with grpcclient.InferenceServerClient(url) as client:
        inputs = infer_inputs(dense, sparse)
        timed(lambda: client.infer(MODEL, inputs), 50)
        return percentiles(timed(lambda: client.infer(MODEL, inputs), requests))


def grpc_concurrency(url: str, dense: np.ndarray, sparse: np.ndarray, clients: int, seconds: float) -> dict:
    """Requests/s with `clients` requests always in flight (async gRPC on one channel, as perf_analyzer's
    --concurrency-range counts them): each answer sends that client's next request."""
    done, failed = [0], [0]
    lock, stop, drained = threading.Lock(), threading.Event(), threading.Semaphore(0)
    with grpcclient.InferenceServerClient(url) as client:
        inputs = infer_inputs(dense, sparse)

        def answered(result, error) -> None:
            try:
                probability = None if error is not None else result.as_numpy("probability")
                ok = probability is not None and probability.shape == (len(dense), 1)
            except Exception:  # a malformed answer is a failure, and the chain goes on
                ok = False
            with lock:
                done[0] += ok
                failed[0] += not ok
            if stop.is_set():
                drained.release()
            else:
                client.async_infer(MODEL, inputs, answered, client_timeout=10)

        started = time.perf_counter()
        for _ in range(clients):
            client.async_infer(MODEL, inputs, answered, client_timeout=10)
        time.sleep(seconds)
        stop.set()
        for _ in range(clients):
            drained.acquire()
        elapsed = time.perf_counter() - started
    return {"clients": clients, "requests_per_s": done[0] / elapsed, "requests": done[0], "failed": failed[0]}


def grpc_threads(url: str, dense: np.ndarray, sparse: np.ndarray, clients: int, seconds: float) -> dict:
    """Requests/s of `clients` threads, each with its own channel, sending batch-1 requests back to back."""
    done, failed = [0] * clients, [0] * clients
    start_line = threading.Barrier(clients + 1)
    stop = threading.Event()

    def worker(k: int) -> None:
        with grpcclient.InferenceServerClient(url) as client:
            inputs = infer_inputs(dense, sparse)
            client.infer(MODEL, inputs)
            start_line.wait()
            while not stop.is_set():
                try:
                    result = client.infer(MODEL, inputs, client_timeout=10)
                    ok = result.as_numpy("probability").shape == (len(dense), 1)
                except Exception:  # a failed request is a figure, not a crash
                    ok = False
                done[k] += ok
                failed[k] += not ok

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    start_line.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"clients": clients, "requests_per_s": sum(done) / elapsed, "requests": sum(done), "failed": sum(failed)}


def server_durations(metrics_port: int) -> dict[str, float]:
    """Triton's cumulative per-model counters (microseconds, counts) from its Prometheus endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    names = ("request_duration_us", "queue_duration_us", "compute_infer_duration_us", "request_success", "exec_count")
    figures = {}
    for name in names:
        found = re.search(rf'^nv_inference_{name}{{[^}}]*model="{MODEL}"[^}}]*}} (\S+)$', text, re.MULTILINE)
        figures[name] = float(found.group(1)) if found else float("nan")
    return figures


def server_latency(server: TritonServer, dense: np.ndarray, sparse: np.ndarray, requests: int, label: str) -> dict:
    """gRPC latency of one client, with the mean time each request spent in the server and in the model."""
    before = server_durations(server.metrics_port)
    row = grpc_latency(server.url, dense, sparse, requests)
    after = server_durations(server.metrics_port)
    count = after["request_success"] - before["request_success"]
    for name in ("request_duration_us", "queue_duration_us", "compute_infer_duration_us"):
        row[f"server_{name.removesuffix('_us')}_mean_ms"] = (after[name] - before[name]) / count / 1e3
    print(
        f"Triton gRPC {label}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms; in the server "
        f"{row['server_request_duration_mean_ms']:.2f} ms a request, of which the model "
        f"{row['server_compute_infer_duration_mean_ms']:.2f} ms",
        flush=True,
    )
    return row


def triton(export: Path, work: Path, dense: np.ndarray, sparse: np.ndarray, args: argparse.Namespace) -> dict:
    figures: dict = {}
    default = ServingConfig()
    with TritonServer(fresh_repository(export, work / "repository_whole", replace(default, parallel_runs=1))) as server:
        figures["latency_batch_512_whole"] = server_latency(
            server, dense, sparse, args.requests // 4, "batch 512, run whole"
        )
    with TritonServer(fresh_repository(export, work / "repository", default)) as server:
        for size, requests in ((1, args.requests), (512, args.requests // 4)):
            label = f"batch {size}" + (f", {default.parallel_runs} parts at once" if size == 512 else "")
            figures[f"latency_batch_{size}"] = server_latency(server, dense[:size], sparse[:size], requests, label)
        figures["batch_512_whole_over_parts_p50"] = (
            figures["latency_batch_512_whole"]["p50_ms"] / figures["latency_batch_512"]["p50_ms"]
        )
        for load, measure in (("concurrency", grpc_concurrency), ("threads", grpc_threads)):
            for clients in (1, 8, 32):
                row = measure(server.url, dense[:1], sparse[:1], clients, args.seconds)
                figures[f"batch_1_{load}_{clients}"] = row
                print(
                    f"Triton gRPC batch 1, {clients:2d} clients ({load}): {row['requests_per_s']:,.0f} requests/s, "
                    f"{row['failed']} failed",
                    flush=True,
                )
    figures["failed_requests"] = sum(v.get("failed", 0) for v in figures.values() if isinstance(v, dict))
    return figures


def client_features(data: IngestResult, requests: int) -> dict:
    """The client's work per request on Avazu: check rows, read entity features once per key, transform."""
    schema = builtin_schema("avazu")
    events = pq.read_table(data.out_dir / "offline" / "events.parquet").to_pandas()
    online = OnlineFeatures(data.repo, schema, data.transform)
    online.materialize(events[EVENT_TIMESTAMP].min(), events[EVENT_TIMESTAMP].max() + timedelta(hours=1))
    features = RequestFeatures(ModelBundle(data.transform, schema, data.repo, 0))
    raw = pd.read_csv(RAW["avazu"], dtype=str, keep_default_na=False)
    fields = features.rows.fields
    rows = [{f: r[f] or None for f in fields} for r in raw[list(fields)].to_dict("records")]
    refs = [f"{schema.name}_{e.name}_fv:{f}" for e in schema.entities for f in e.features]
    rng = random.Random(0)
    figures = {}
    for size in (1, 512):
        batches = [rng.sample(rows, size) for _ in range(requests if size == 1 else requests // 4)]

        def through_sdk(batch: list[dict]) -> None:
            keys = [{e.key: row[e.key] for e in schema.entities} for row in batch]
            found = online.store.get_online_features(features=refs, entity_rows=keys).to_dict()
            columns = {f: [row[f] for row in batch] for f in fields} | {f: found[f] for f in schema.entity_features}
            data.transform.transform(columns)

        client = percentiles([timed(lambda b=b: features(b), 1)[0] for b in batches])
        sdk = percentiles([timed(lambda b=b: through_sdk(b), 1)[0] for b in batches[: max(20, len(batches) // 4)]])
        distinct = float(np.mean([len({r["device_id"] for r in b}) for b in batches]))
        figures[f"rows_{size}"] = {
            "client": client,
            "feast_sdk": sdk,
            "distinct_devices": distinct,
            "sdk_over_client_p50": sdk["p50_ms"] / client["p50_ms"],
        }
        print(
            f"client features, {size:3d} rows: p50 {client['p50_ms']:.2f} ms, p99 {client['p99_ms']:.2f} ms "
            f"(through Feast's SDK: p50 {sdk['p50_ms']:.2f} ms, p99 {sdk['p99_ms']:.2f} ms)",
            flush=True,
        )
    return figures


def serve_architecture(model_dir: Path, criteo: IngestResult, work: Path, args: argparse.Namespace) -> dict:
    """Export one trained model, time it in process, then serve it from a fresh repository and time Triton."""
    export = export_model(model_dir, work / "export", criteo.out_dir)  # each model in turn
    net = load_model(model_dir / "checkpoint.pt")
    figures: dict = {
        "model": str(model_dir),
        "mflops": net.mflops(),
        "operators": sorted({op for b in net.blocks.values() for op in (*b.spec.dense_ops, *b.spec.sparse_ops)}),
        "parity": export.parity,
    }
    print(f"{model_dir}: {figures['mflops']:.3f} MFLOPs a row, operators {figures['operators']}", flush=True)
    figures["in_process"] = in_process(model_dir, export.model, criteo.out_dir, criteo.transform)
    batch = next(iter(SplitLoader(criteo.out_dir / "validation.parquet", criteo.transform, 512)))
    figures["triton"] = triton(export.out, work, batch.dense, batch.sparse, args)
    return figures


def fresh_repository(export: Path, repository: Path, config: ServingConfig) -> Path:
    shutil.rmtree(repository, ignore_errors=True)
    add_version(export, repository, MODEL, config)
    return repository


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench/serving"), help="where files go")
    parser.add_argument(
        "--models", type=Path, nargs="+", help="finetune winner/ folders trained on the Criteo sample (default: train)"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[1, 37],
        help="without --models: the `demo` architectures to train, by sampler seed (default: 1, an architecture with "
        "attention, 0.197 MFLOPs; 37, the cheapest of seeds 0-39, 0.051 MFLOPs, no attention)",
    )
    parser.add_argument("--requests", type=int, default=2000, help="timed batch-1 requests (default 2000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per throughput point (default 5)")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    work = args.work_dir
    criteo = ingested("criteo", work)
    models = args.models or [trained_model(criteo, work / f"seed_{seed}", seed) for seed in args.seeds]
    figures: dict = {"architectures": [serve_architecture(m, criteo, work, args) for m in models]}
    figures["client_features_avazu"] = client_features(ingested("avazu", work), args.requests // 4)
    write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()

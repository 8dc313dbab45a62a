"""Serving figures for NASRecNets trained by the product on the shared samples: raw events in beside model-ready
ids in, for the same model on the same rows, in one run.

1. In process: ONNX Runtime against PyTorch eager, one thread each, at batch 1, 64, 512 and 4096.
2. Criteo on the local Triton over gRPC, per architecture: p50/p99 latency at batch 1 and 512 of the raw-event
   endpoint (`nasrec_criteo`) and the ids endpoint (`nasrec_criteo_ids`) of the same version, with the time each
   request spent in the server and in the model (Triton's metrics); batch-1 requests/s with 1, 8 and 32 requests
   in flight on each; failed requests. The serving stack's own cost at batch 512: the ids endpoint's p50 and p99
   minus in-process ONNX Runtime's (run as the server runs it, two parts at once), for the same graph on the same
   rows, the calls alternating.
3. Avazu on the local Triton: raw events carrying only entity keys and request-time fields, the server reading
   the entity features from the Feast online store, at batch 1 and 512.
4. Entity lookups inside the server, the options side by side at 1 and 512 rows: the direct read through the
   Feast pinned in the serving runtime (what the served model does), Feast's own feature server (`feast serve`)
   called over HTTP, and Feast's SDK (`get_online_features`) in the project's environment; all return the same
   values. The third way to run Feast inside Triton, its `EXECUTION_ENV_PATH` pointed at the project's
   environment (Feast 0.67, numpy 2), is tried on both endpoints: whether each answers.

    python -m bench.serving [--json PATH] [--seeds 1 37] [--work-dir DIR]

Request inputs are built once per size, outside the timed calls, as perf_analyzer does. The client shares the 2
cores with the server, as a sidecar would; the figures are of that setting.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import tritonclient.grpc as grpcclient

from bench.common import add_json_argument, percentiles, write_json
from components.steps.finetune import FinetuneRun, finetune
from features.ingest import IngestResult, OnlineFeatures, SplitSpec, ingest
from features.loader import SplitLoader
from features.readers import EVENT_ID, EVENT_TIMESTAMP
from features.schema import builtin_schema
from features.transform import FeatureTransform
from model.sampling import ArchitectureSampler
from model.space import get_space
from model.trainer import load_model
from serving.client import CTRClient, infer_inputs, log_rows
from serving.export import CTRProbability, export_model, onnx_session
from serving.interface import OUTPUT, default_model_name
from serving.repository import ServingConfig, add_version, ids_model, read_config, write_config
from serving.server import TritonRuntime, TritonServer, free_port

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RAW = {"criteo": SHARED / "criteo_kaggle_10k" / "train.txt", "avazu": SHARED / "avazu_10k" / "train.csv"}
IN_PROCESS_REPEATS = {1: 2000, 64: 500, 512: 200, 4096: 40}  # batch size -> timed calls


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


def in_process(model_dir: Path, onnx_path: Path, dense: np.ndarray, sparse: np.ndarray) -> dict:
    """ONNX Runtime and PyTorch eager on the same validation rows, one intra-op thread each."""
    torch.set_num_threads(1)
    served = CTRProbability(load_model(model_dir / "checkpoint.pt")).eval()
    session = onnx_session(onnx_path, threads=1)
    figures = {}
    for size, repeats in IN_PROCESS_REPEATS.items():
        d, s = np.resize(dense, (size, dense.shape[1])), np.resize(sparse, (size, sparse.shape[1]))
        td, ts = torch.from_numpy(d), torch.from_numpy(s)

        def run_torch(td=td, ts=ts) -> None:
            with torch.inference_mode():
                served(td, ts)

        def run_onnx(d=d, s=s) -> None:
            session.run(None, {"dense": d, "sparse": s})

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
            f"{row['onnxruntime']['p50_ms']:.3f} ms ({row['onnxruntime_speedup']:.1f}x)",
            flush=True,
        )
    return figures


def _split(dense: np.ndarray, sparse: np.ndarray, parts: int) -> tuple[list, list]:
    return np.array_split(dense, parts), np.array_split(sparse, parts)


def serving_stack(url: str, model: str, onnx_path: Path, dense: np.ndarray, sparse: np.ndarray, requests: int) -> dict:
    """The serving stack's own cost at batch 512: the ids endpoint's latency against ONNX Runtime in process run as
    the local server runs it (two parts at once on two threads), for the same graph on the same rows. The calls
    alternate, so both meet the same load on the shared cores."""
    parts = ServingConfig().parallel_runs
    session = onnx_session(onnx_path, threads=1)
    inputs = infer_inputs(dense, sparse)
    local, served = [], []
    with ThreadPoolExecutor(parts) as pool, grpcclient.InferenceServerClient(url) as client:

        def run_parts() -> None:
            list(pool.map(lambda a, b: session.run(None, {"dense": a, "sparse": b}), *_split(dense, sparse, parts)))

        def ask() -> None:
            client.infer(model, inputs)

        timed(run_parts, 20), timed(ask, 20)  # warm-up
        for _ in range(requests):
            local.extend(timed(run_parts, 1))
            served.extend(timed(ask, 1))
    figures = {"in_process": percentiles(local), "server": percentiles(served)}
    for stat in ("p50_ms", "p99_ms"):
        figures[stat] = figures["server"][stat] - figures["in_process"][stat]
    print(
        f"the serving stack's cost at batch {len(dense)}, ids endpoint minus in-process ONNX Runtime ({parts} "
        f"parts): p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms",
        flush=True,
    )
    return figures


def grpc_latency(url: str, model: str, inputs: list, requests: int) -> dict:
    with grpcclient.InferenceServerClient(url) as client:
        timed(lambda: client.infer(model, inputs), 50)
        return percentiles(timed(lambda: client.infer(model, inputs), requests))


def grpc_concurrency(url: str, model: str, inputs: list, rows: int, clients: int, seconds: float) -> dict:
    """Requests/s with `clients` requests always in flight (async gRPC on one channel, as perf_analyzer's
    --concurrency-range counts them): each answer sends that client's next request."""
    done, failed = [0], [0]
    lock, stop, drained = threading.Lock(), threading.Event(), threading.Semaphore(0)
    with grpcclient.InferenceServerClient(url) as client:

        def answered(result, error) -> None:
            try:
                probability = None if error is not None else result.as_numpy(OUTPUT)
                ok = probability is not None and probability.shape == (rows, 1)
            except Exception:  # a malformed answer is a failure, and the chain goes on
                ok = False
            with lock:
                done[0] += ok
                failed[0] += not ok
            if stop.is_set():
                drained.release()
            else:
                client.async_infer(model, inputs, answered, client_timeout=10)

        started = time.perf_counter()
        for _ in range(clients):
            client.async_infer(model, inputs, answered, client_timeout=10)
        time.sleep(seconds)
        stop.set()
        for _ in range(clients):
            drained.acquire()
        elapsed = time.perf_counter() - started
    return {"clients": clients, "requests_per_s": done[0] / elapsed, "requests": done[0], "failed": failed[0]}


def server_durations(metrics_port: int, model: str) -> dict[str, float]:
    """Triton's cumulative per-model counters (microseconds, counts) from its Prometheus endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    names = ("request_duration_us", "queue_duration_us", "compute_infer_duration_us", "request_success")
    figures = {}
    for name in names:
        found = re.search(rf'^nv_inference_{name}{{[^}}]*model="{model}"[^}}]*}} (\S+)$', text, re.MULTILINE)
        figures[name] = float(found.group(1)) if found else float("nan")
    return figures


def server_latency(server: TritonServer, model: str, inputs: list, requests: int, label: str) -> dict:
    """gRPC latency of one client, with the mean time each request spent in the server and in the model."""
    before = server_durations(server.metrics_port, model)
    row = grpc_latency(server.url, model, inputs, requests)
    after = server_durations(server.metrics_port, model)
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


def criteo_triton(export: Path, work: Path, rows: list[dict], dense, sparse, args: argparse.Namespace) -> dict:
    """Both endpoints of one version on the same rows: latency at batch 1 and 512, batch-1 throughput."""
    model = default_model_name("criteo")
    repository = work / "repository"
    shutil.rmtree(repository, ignore_errors=True)
    add_version(export, repository, model, ServingConfig())
    figures: dict = {}
    with TritonServer(repository) as server, CTRClient(server.url, model) as client:
        for size in (1, 512):
            requests = args.requests if size == 1 else args.requests // 4
            endpoints = {
                "events": (model, client.inputs(rows[:size])),
                "ids": (ids_model(model), infer_inputs(dense[:size], sparse[:size])),
            }
            for endpoint, (name, inputs) in endpoints.items():
                label = f"{endpoint} in, batch {size}"
                figures[f"{endpoint}_batch_{size}"] = server_latency(server, name, inputs, requests, label)
            figures[f"events_over_ids_batch_{size}_p50_ms"] = (
                figures[f"events_batch_{size}"]["p50_ms"] - figures[f"ids_batch_{size}"]["p50_ms"]
            )
        figures["serving_stack_batch_512"] = serving_stack(
            server.url, ids_model(model), export / "model.onnx", dense[:512], sparse[:512], args.requests // 4
        )
        started = time.perf_counter()
        client.inputs(rows[:512])
        figures["client_inputs_512_rows_ms"] = (time.perf_counter() - started) * 1e3
        for endpoint, name, inputs in (
            ("events", model, client.inputs(rows[:1])),
            ("ids", ids_model(model), infer_inputs(dense[:1], sparse[:1])),
        ):
            for clients in (1, 8, 32):
                row = grpc_concurrency(server.url, name, inputs, 1, clients, args.seconds)
                figures[f"{endpoint}_batch_1_in_flight_{clients}"] = row
                print(
                    f"Triton gRPC {endpoint} in, batch 1, {clients:2d} in flight: {row['requests_per_s']:,.0f} "
                    f"requests/s, {row['failed']} failed",
                    flush=True,
                )
    figures["failed_requests"] = sum(v.get("failed", 0) for v in figures.values() if isinstance(v, dict))
    return figures


def criteo_architecture(model_dir: Path, data: IngestResult, work: Path, args: argparse.Namespace) -> dict:
    """Export one trained model, time it in process, then serve both its endpoints."""
    export = export_model(model_dir, work / "export", data.out_dir)
    net = load_model(model_dir / "checkpoint.pt")
    figures: dict = {
        "model": str(model_dir),
        "mflops": net.mflops(),
        "operators": sorted({op for b in net.blocks.values() for op in (*b.spec.dense_ops, *b.spec.sparse_ops)}),
        "parity": export.parity,
    }
    print(f"{model_dir}: {figures['mflops']:.3f} MFLOPs a row, operators {figures['operators']}", flush=True)
    batch = next(iter(SplitLoader(data.out_dir / "validation.parquet", data.transform, 512)))
    event_ids = pq.read_table(data.out_dir / "validation.parquet", columns=[EVENT_ID])[EVENT_ID].to_pylist()[:512]
    rows = log_rows([RAW["criteo"]], builtin_schema("criteo"), event_ids)
    figures["in_process"] = in_process(model_dir, export.model, batch.dense, batch.sparse)
    figures["triton"] = criteo_triton(export.out, work, rows, batch.dense, batch.sparse, args)
    return figures


def avazu_rows(data: IngestResult) -> tuple[list[dict], dict]:
    """Validation events as requests (entity keys and request-time fields), the entity features materialised."""
    schema = builtin_schema("avazu")
    online = OnlineFeatures(data.repo, schema, data.transform)
    times = pq.read_table(data.out_dir / "offline" / "events.parquet", columns=[EVENT_TIMESTAMP])[EVENT_TIMESTAMP]
    times = times.to_pandas()
    online.materialize(times.min(), times.max() + timedelta(hours=1), entities_only=True)
    ids = pq.read_table(data.out_dir / "validation.parquet", columns=[EVENT_ID])[EVENT_ID].to_pylist()[:512]
    rows = log_rows([RAW["avazu"]], schema, ids)
    return rows, {"distinct_devices_in_512": len({r["device_id"] for r in rows})}


def avazu_triton(data: IngestResult, work: Path, args: argparse.Namespace) -> dict:
    """Raw Avazu events, the server reading the entity features from the online store."""
    model_dir = trained_model(data, work / "avazu_model", args.seeds[-1])
    export = export_model(model_dir, work / "avazu_export", data.out_dir)
    rows, figures = avazu_rows(data)
    repository = work / "avazu_repository"
    shutil.rmtree(repository, ignore_errors=True)
    model = default_model_name("avazu")
    add_version(export.out, repository, model, ServingConfig())
    with TritonServer(repository) as server, CTRClient(server.url, model) as client:
        for size in (1, 512):
            requests = args.requests if size == 1 else args.requests // 4
            label = f"Avazu events in (entity lookups in the server), batch {size}"
            figures[f"events_batch_{size}"] = server_latency(server, model, client.inputs(rows[:size]), requests, label)
    figures["entity_lookups"] = entity_lookup_options(data, repository / model / "1", rows, args)
    figures["entity_lookups"]["execution_env"] = execution_env_option(repository, model, work, rows)
    return figures


def execution_env_option(repository: Path, model: str, work: Path, rows: list[dict]) -> dict:
    """The third option: both endpoints of the same version run by Triton in the project's own environment
    (`EXECUTION_ENV_PATH`: the Feast that writes the store, numpy 2) instead of the serving runtime. Each is asked
    for two rows once; the answer, or the error, is recorded."""
    copy = work / "execution_env_repository"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(repository, copy)
    for name in (model, ids_model(model)):
        config = read_config(copy / name / "config.pbtxt")
        config.parameters["EXECUTION_ENV_PATH"].string_value = sys.prefix
        write_config(copy / name / "config.pbtxt", config)
    categorical = len(FeatureTransform.load(copy / model / "1" / "transform.json").categorical)
    ids = infer_inputs(np.zeros((2, 1), np.float32), np.ones((2, categorical), np.int64))
    figures: dict = {}
    with (
        TritonServer(copy) as server,
        CTRClient(server.url, model) as client,
        grpcclient.InferenceServerClient(server.url) as plain,
    ):
        asks = {
            "events": lambda: client.predict(rows[:2]),
            "ids": lambda: plain.infer(ids_model(model), ids).as_numpy(OUTPUT).reshape(2, 1),
        }
        for endpoint, ask in asks.items():
            try:
                figures[endpoint] = {"answered": True, "probabilities": ask().ravel().tolist()}
            except Exception as error:  # the finding is the error itself
                figures[endpoint] = {"answered": False, "error": str(error)}
    shown = "; ".join(f"{e} {'answered' if f['answered'] else 'failed: ' + f['error']}" for e, f in figures.items())
    print(f"Triton's EXECUTION_ENV_PATH set to the project's environment ({sys.prefix}): {shown}", flush=True)
    return {"environment": sys.prefix, **figures}


def entity_lookup_options(data: IngestResult, version: Path, rows: list[dict], args: argparse.Namespace) -> dict:
    """The entity features of 1 and 512 requests read three ways; each must return what the SDK returns."""
    schema = builtin_schema("avazu")
    online = OnlineFeatures(data.repo, schema, data.transform)
    refs = [f"{schema.name}_{e.name}_fv:{f}" for e in schema.entities for f in e.features]
    figures: dict = {}
    sdk_values = {}
    for size in (1, 512):
        keys = [{e.key: row[e.key] for e in schema.entities} for row in rows[:size]]
        repeats = args.requests // 4 if size == 1 else args.requests // 20
        sdk_values[size] = online.store.get_online_features(features=refs, entity_rows=keys).to_dict()
        call = lambda keys=keys: online.store.get_online_features(features=refs, entity_rows=keys)  # noqa: E731
        figures[f"feast_sdk_{size}"] = percentiles(timed(call, repeats))
    figures |= runtime_direct_read(version, rows, sdk_values, args)
    figures |= feature_server(data.repo, schema, rows, refs, sdk_values, args)
    options = {"direct_read": "direct read in the serving runtime", "feature_server": "feast serve over HTTP"}
    for size in (1, 512):
        shown = [
            f"{label} {figures[f'{key}_{size}']['p50_ms']:.2f}/{figures[f'{key}_{size}']['p99_ms']:.2f} ms"
            for key, label in (*options.items(), ("feast_sdk", "the SDK"))
        ]
        print(f"entity features of {size:3d} requests, p50/p99: {'; '.join(shown)}", flush=True)
    return figures


DIRECT_READ = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from feast import FeatureStore
from features.online import OnlineReader
from features.schema import DatasetSchema
schema = DatasetSchema.load(sys.argv[1] + "/schema.yaml")
reader = OnlineReader(FeatureStore(repo_path=sys.argv[1] + "/feature_repo"), schema)
rows, repeats = json.loads(sys.stdin.read()), json.loads(sys.argv[2])
out = {}
for size, n in repeats.items():
    part = rows[: int(size)]
    read = lambda: {f: v for e in schema.entities for f, v in reader.read(e.key, [r[e.key] for r in part]).items()}
    values = read()
    samples = []
    for _ in range(n):
        start = time.perf_counter(); read(); samples.append(time.perf_counter() - start)
    out[size] = {"values": values, "samples": samples}
print(json.dumps(out))
"""


def runtime_direct_read(version: Path, rows: list[dict], sdk: dict, args: argparse.Namespace) -> dict:
    """What the served model does: OnlineReader with the serving runtime's Feast, in that runtime's Python."""
    runtime = TritonRuntime.find()
    repeats = {"1": args.requests // 4, "512": args.requests // 20}
    done = subprocess.run(
        [str(runtime.python), "-c", DIRECT_READ, str(version), json.dumps(repeats)],
        input=json.dumps(rows),
        capture_output=True,
        text=True,
        check=True,
        env=runtime.environment(),
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    figures = {}
    for size in (1, 512):
        got = result[str(size)]
        _same_values(got["values"], sdk[size], f"direct read, {size} rows")
        figures[f"direct_read_{size}"] = percentiles(got["samples"])
    return figures


def feature_server(repo: Path, schema, rows: list[dict], refs: list[str], sdk: dict, args) -> dict:
    """`feast serve` on the same repository, asked over HTTP as a preprocessing model would ask it."""
    port = free_port()
    feast = Path(sys.executable).with_name("feast")
    server = subprocess.Popen(
        [str(feast), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/get-online-features"
    figures = {}
    try:
        _wait_for_http(f"http://127.0.0.1:{port}/health", server)
        for size in (1, 512):
            entities = {e.key: [row[e.key] for row in rows[:size]] for e in schema.entities}
            body = json.dumps({"features": refs, "entities": entities}).encode()

            def ask(body=body) -> dict:
                request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
                return json.loads(urllib.request.urlopen(request, timeout=30).read())

            answer = ask()
            names = answer["metadata"]["feature_names"]
            values = {n: r["values"] for n, r in zip(names, answer["results"])}
            _same_values({f: values[f] for f in schema.entity_features}, sdk[size], f"feast serve, {size} rows")
            repeats = args.requests // 4 if size == 1 else args.requests // 20
            figures[f"feature_server_{size}"] = percentiles(timed(ask, repeats))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    return figures


def _wait_for_http(url: str, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"feast serve exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"feast serve not ready after {timeout_s:.0f} s")


def _same_values(got: dict, sdk: dict, what: str) -> None:
    different = [f for f in got if list(got[f]) != list(sdk[f])]
    if different:
        raise RuntimeError(f"{what}: features {different} differ from get_online_features")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench/serving"), help="where files go")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[1, 37],
        help="the `demo` architectures to train, by sampler seed (default: 1, an architecture with attention, 0.197 "
        "MFLOPs; 37, the cheapest of seeds 0-39, 0.051 MFLOPs; the last one also serves Avazu)",
    )
    parser.add_argument("--requests", type=int, default=2000, help="timed batch-1 requests (default 2000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per throughput point (default 5)")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    work = args.work_dir
    criteo = ingested("criteo", work)
    figures: dict = {
        "architectures": [
            criteo_architecture(trained_model(criteo, work / f"seed_{seed}", seed), criteo, work / f"seed_{seed}", args)
            for seed in args.seeds
        ]
    }
    figures["avazu"] = avazu_triton(ingested("avazu", work), work, args)
    write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()

"""deploy: an export becomes the next version of a served model, checked before any client can reach it.

The version is first written as the candidate models `<name>__candidate` (raw events in) and
`<name>__candidate_ids` inside the repository, and checked there: loaded into the server at `url` (on a cluster,
the Triton Deployment whose repository volume this step mounts) under those names, which no client asks for, or
into a local Triton started for the check. `check_rows` test events are sent to both endpoints over gRPC, raw
fields to one and model-ready ids to the other, and both answers must equal ONNX Runtime's on the version's own
transform of the same events (max abs diff <= 1e-5). Only then are the version folders renamed into the served
models (a rename inside the repository, so it works on a mounted volume) and, with `url`, the served models
reloaded, ids model first, on every server the url's name resolves to (on a cluster, the headless Service
nasrec-triton-replicas: each replica). A candidate that fails is discarded and the served version stays what it was.

A redeploy keeps the served config's tuned fields (instances and their kind, batch sizes) unless the run sets
them. The model is named after the schema unless `model_name` says otherwise: a model of other fields never
replaces one that clients send another schema's fields to.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from components.steps.common import StepConfig
from features.readers import EVENT_ID
from features.schema import DatasetSchema
from features.transform import FeatureTransform
from serving.client import CTRClient, infer_inputs, load_models
from serving.errors import ServingError
from serving.export import PARITY_TOLERANCE, onnx_session
from serving.interface import DENSE_INPUT, MODEL_FILE, OUTPUT, SPARSE_INPUT, default_model_name
from serving.repository import (
    Candidate,
    ServingConfig,
    discard,
    ids_model,
    promote,
    remove_version,
    served_config,
    write_candidate,
)
from serving.server import TritonServer

DEFAULT_BATCH_SIZES = {"preferred_batch_sizes": (64, 512), "warmup_batch_sizes": (1, 512)}
TUNABLE = ("instance_kind", "instances", "max_batch_size")  # None: the served config's


@dataclass(frozen=True)
class DeployRun(StepConfig):
    model_name: str = ""  # empty: nasrec_<schema>
    variant: str = "local"  # local: Python backend running ONNX Runtime; production: onnxruntime_onnx
    instance_kind: str | None = None  # None here and below: the served config's, else the default
    instances: int | None = None
    parallel_runs: int = 2  # local variant: parts a batch of >= 256 rows runs as at once
    max_batch_size: int | None = None
    max_queue_delay_us: int = 100
    tensorrt: bool = False
    url: str = ""  # a running Triton (gRPC HOST:PORT) to check and roll the version into; empty: a local one
    check_rows: int = 64  # test events answered over gRPC and compared with ONNX Runtime; 0: no check

    def __post_init__(self) -> None:
        if self.check_rows < 0:
            raise ValueError(f"check_rows: must be >= 0 (0: no check), got {self.check_rows}")

    def serving_config(self, served: mc.ModelConfig | None = None) -> ServingConfig:
        """The repository's config: the run's settings, the served config's tuned fields where the run sets none,
        the defaults for the rest (the default batch sizes fitted under `max_batch_size`)."""
        given = {k: v for k in TUNABLE if (v := getattr(self, k)) is not None}
        largest = given.get("max_batch_size", ServingConfig.max_batch_size)
        fitted = {name: tuple(min(b, largest) for b in sizes) for name, sizes in DEFAULT_BATCH_SIZES.items()}
        config = ServingConfig(
            variant=self.variant,
            parallel_runs=self.parallel_runs,
            max_queue_delay_us=self.max_queue_delay_us,
            tensorrt=self.tensorrt,
            **given,
            **fitted,
        )
        if served is None:
            return config
        if "max_batch_size" in given:  # the preferred sizes were fitted to it
            given["preferred_batch_sizes"] = config.preferred_batch_sizes
        return config.tuned_like(served, given)


def deploy(export_dir: Path, repository: Path, run: DeployRun, data_dir: Path | None = None) -> dict[str, Any]:
    """Check the export as a candidate, then make it the served version; returns what was done.

    `data_dir` (the ingestion folder; default: the one the export records) supplies the checked events.
    """
    export_dir, repository = Path(export_dir), Path(repository)
    name = run.model_name or default_model_name(DatasetSchema.load(export_dir / "schema.yaml").name)
    candidate = write_candidate(export_dir, repository, name, run.serving_config(served_config(repository, name)))
    print(f"wrote version {candidate.version} of {name} as the candidate {candidate.model}")
    record: dict[str, Any] = {
        "repository": str(repository.resolve()),
        "model": name,
        "ids_model": ids_model(name),
        "version": candidate.version,
        "url": run.url or None,
        "run": run.to_dict(),
    }
    try:
        if run.check_rows:
            record["check"] = check_candidate(candidate, run, Path(data_dir or _recorded_data_dir(export_dir)))
    except BaseException:
        discard(candidate)
        print(f"discarded the candidate: {name} stays as it was", file=sys.stderr)
        raise
    folder = promote(candidate)
    print(f"wrote {folder}")
    if run.url:
        record["replicas"] = roll_in(run.url, repository, name, candidate.version)
        print(f"loaded {name} version {candidate.version} into {len(record['replicas'])} replica(s) at {run.url}")
    return record


def check_candidate(candidate: Candidate, run: DeployRun, data_dir: Path) -> dict[str, Any]:
    """Score held-out events with both candidate endpoints over gRPC, on `run.url` or a local Triton."""
    folder = candidate.repository / candidate.model / str(candidate.version)
    transform = FeatureTransform.load(folder / "transform.json")
    rows, columns = held_out_events(data_dir, candidate.schema, run.check_rows)
    dense, sparse = transform.transform(columns)
    ids_folder = candidate.repository / ids_model(candidate.model) / str(candidate.version)
    expected = onnx_session(ids_folder / MODEL_FILE).run([OUTPUT], {DENSE_INPUT: dense, SPARSE_INPUT: sparse})[0]
    with contextlib.ExitStack() as stack:
        if run.url:
            load_models(run.url, candidate.models)
            stack.callback(load_models, run.url, candidate.models[::-1], unload=True)
            url = run.url
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nasrec-deploy-check-")))
            url = stack.enter_context(TritonServer(candidate.repository, candidate.models, work_dir=work)).url
        ids_check = check_served(url, ids_model(candidate.model), infer_inputs(dense, sparse), expected)
        with CTRClient(url, candidate.model) as client:
            events_check = check_served(url, candidate.model, client.inputs(rows), expected)
    for check in (ids_check, events_check):
        if check["served_version"] != candidate.version:
            raise ServingError(
                f"Triton at {url} answered with version {check['served_version']}, not the candidate's "
                f"{candidate.version}: was it loaded?"
            )
    print(
        f"checked over gRPC: {len(rows)} test events, raw and as ids, equal ONNX Runtime's to "
        f"{max(ids_check['max_abs_diff'], events_check['max_abs_diff']):.1e}"
    )
    return {"rows": len(rows), "ids": ids_check, "events": events_check}


def held_out_events(data_dir: Path, schema: DatasetSchema, count: int) -> tuple[list[dict], dict[str, list]]:
    """The first `count` test events: as request rows (the fields a client sends), and as the columns the
    transform takes (entity features as the online store serves them now, which the server will read)."""
    test_ids = pq.read_table(data_dir / "test.parquet", columns=[EVENT_ID])[EVENT_ID].to_pylist()[:count]
    fields = list(schema.event_features)
    events = pq.read_table(
        data_dir / "offline" / "events.parquet", columns=[EVENT_ID, *fields], filters=[(EVENT_ID, "in", test_ids)]
    )
    events = events.to_pandas().set_index(EVENT_ID).loc[test_ids]
    frame = events[fields].astype(object).where(events[fields].notna(), None)
    rows = frame.to_dict("records")
    columns = {f: frame[f].tolist() for f in fields}
    if schema.entities:
        from feast import FeatureStore  # only for schemas with entities

        from features.online import OnlineReader

        online = OnlineReader(FeatureStore(repo_path=str(data_dir / "feature_repo")), schema)
        for entity in schema.entities:
            columns |= online.read(entity.key, columns[entity.key])
    return rows, columns


def check_served(url: str, model: str, inputs: list, expected: np.ndarray) -> dict[str, Any]:
    """Send one request to `model`; raises unless its probabilities equal `expected`."""
    with grpcclient.InferenceServerClient(url) as client:
        started = time.perf_counter()
        try:
            result = client.infer(model, inputs, client_timeout=60)
        except InferenceServerException as error:
            raise ServingError(f"Triton at {url}, model {model!r}: {error.message()}") from None
        latency_ms = (time.perf_counter() - started) * 1e3
    served = result.as_numpy(OUTPUT)
    if served is None or served.shape != expected.shape:
        raise ServingError(f"Triton at {url}, model {model!r}: expected {expected.shape} probabilities, got {served}")
    worst = float(np.abs(served - expected).max())
    if not worst <= PARITY_TOLERANCE:
        raise ServingError(
            f"Triton at {url}, model {model!r}: answers differ from ONNX Runtime's by up to {worst:.3g} "
            f"(tolerance {PARITY_TOLERANCE:g})"
        )
    version = int(result.get_response().model_version or 0)
    return {"max_abs_diff": worst, "latency_ms": latency_ms, "served_version": version}


def replica_urls(url: str) -> list[str]:
    """The gRPC address of every server `url`'s host name resolves to: each replica behind a headless Service
    (k8s/base/triton's nasrec-triton-replicas), or the one server. IPv4 where the name has it."""
    host, _, port = url.rpartition(":")
    try:
        found = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError) as error:
        raise ServingError(f"Triton at {url}: cannot resolve it ({error})") from None
    addresses = sorted({a[4][0] for a in found if a[0] == socket.AF_INET}) or sorted({a[4][0] for a in found})
    return [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addresses]


def roll_in(url: str, repository: Path, name: str, version: int) -> list[str]:
    """Reload the served models (ids first: the events version calls its own) on every replica at `url` and see
    `version` ready on each; else take it out again and reload them all, so the version served before answers
    everywhere. Returns the replicas' addresses."""
    replicas = replica_urls(url)
    try:
        for replica in replicas:
            load_models(replica, (ids_model(name), name))
            with grpcclient.InferenceServerClient(replica) as client:
                ready = client.is_model_ready(name, str(version))
            if not ready:
                raise ServingError(f"Triton at {replica}: {name} version {version} is not ready after loading")
    except BaseException:
        remove_version(repository, name, version)
        for replica in replicas:
            with contextlib.suppress(ServingError):
                load_models(replica, (ids_model(name), name))
        print(f"took version {version} out again: the version served before stays the latest", file=sys.stderr)
        raise
    return replicas


def _recorded_data_dir(export_dir: Path) -> Path:
    return Path(json.loads((export_dir / "export.json").read_text())["data"])

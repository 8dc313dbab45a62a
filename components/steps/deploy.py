"""deploy: an export becomes the next version of a model in a Triton model repository, then is checked live.

With `url` (a running Triton in explicit model control: on a cluster, the Triton Deployment whose
repository volume this step mounts) the new version is loaded into it; without, the local Triton server is
started on the repository for the check and stopped after it. The check sends `check_rows` test rows over
gRPC and fails unless the new version answers them and equals ONNX Runtime's on the same rows (max abs diff
<= 1e-5). A version that fails its check is taken out again (and the server at `url` reloaded), so the
version served before stays the latest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from components.steps.common import StepConfig
from features.loader import SplitLoader
from features.transform import FeatureTransform
from serving.client import infer_inputs, load_model
from serving.errors import ServingError
from serving.export import PARITY_TOLERANCE, onnx_session
from serving.interface import DEFAULT_MODEL, DENSE_INPUT, MODEL_FILE, OUTPUT, SPARSE_INPUT
from serving.repository import ServingConfig, add_version, remove_version
from serving.server import TritonServer

DEFAULT_BATCH_SIZES = {"preferred_batch_sizes": (64, 512), "warmup_batch_sizes": (1, 512)}


@dataclass(frozen=True)
class DeployRun(StepConfig):
    model_name: str = DEFAULT_MODEL
    variant: str = "local"  # local: Python backend running ONNX Runtime; production: onnxruntime_onnx
    instance_kind: str = "cpu"
    instances: int = 1
    parallel_runs: int = 2  # local variant: parts a batch of >= 256 rows runs as at once
    max_batch_size: int = 4096
    max_queue_delay_us: int = 100
    tensorrt: bool = False
    url: str = ""  # a running Triton (gRPC HOST:PORT) to load the new version into; empty: start the local one
    check_rows: int = 64  # test rows answered over gRPC and compared with ONNX Runtime; 0: no check

    def serving_config(self) -> ServingConfig:
        """The repository's config; the default batch sizes are fitted under `max_batch_size`."""
        fitted = {
            name: tuple(min(b, self.max_batch_size) for b in sizes) for name, sizes in DEFAULT_BATCH_SIZES.items()
        }
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(ServingConfig) if hasattr(self, f.name)}
        return ServingConfig(**shared, **fitted)


def deploy(export_dir: Path, repository: Path, run: DeployRun, data_dir: Path | None = None) -> dict[str, Any]:
    """Add the export as a new version, load and check it; returns what was done (version, check figures).

    `data_dir` (the ingestion folder; default: the one the export records) supplies the checked rows.
    """
    folder = add_version(Path(export_dir), Path(repository), run.model_name, run.serving_config())
    print(f"wrote {folder}")
    record: dict[str, Any] = {
        "repository": str(Path(repository).resolve()),
        "model": run.model_name,
        "version": int(folder.name),
        "url": run.url or None,
        "run": run.to_dict(),
    }
    try:
        if run.url:
            load_model(run.url, run.model_name)
            print(f"loaded {run.model_name} version {folder.name} into {run.url}")
        if run.check_rows:
            record["check"] = check_version(folder, Path(repository), run, data_dir)
    except BaseException:
        try:
            remove_version(folder.parent, int(folder.name))
        finally:
            if run.url:
                with contextlib.suppress(ServingError):
                    load_model(run.url, run.model_name)  # back to the version served before
        print(f"took {folder} out again: the version served before stays the latest", file=sys.stderr)
        raise
    if run.check_rows:
        print(
            f"checked over gRPC: {record['check']['rows']} test rows equal ONNX Runtime's to "
            f"{record['check']['max_abs_diff']:.1e} ({record['check']['latency_ms']:.2f} ms)"
        )
    return record


def check_version(folder: Path, repository: Path, run: DeployRun, data_dir: Path | None) -> dict[str, Any]:
    """Score test rows with the new version over gRPC, on `run.url` or a local Triton started for it."""
    rows = held_out_rows(Path(data_dir or _recorded_data_dir(folder)), run.check_rows)
    expected = onnx_session(folder / MODEL_FILE).run([OUTPUT], dict(zip((DENSE_INPUT, SPARSE_INPUT), rows)))[0]
    with contextlib.ExitStack() as stack:
        url = run.url or stack.enter_context(TritonServer(repository, models=(run.model_name,))).url
        check = check_served(url, run.model_name, *rows, expected)
    if check["served_version"] != int(folder.name):
        raise ServingError(
            f"Triton at {url} answered with {run.model_name} version {check['served_version']}, not the new "
            f"version {folder.name}: was it loaded?"
        )
    return check


def held_out_rows(data_dir: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` rows of the test split, model-ready (dense, sparse)."""
    transform = FeatureTransform.load(data_dir / "transform.json")
    batch = next(iter(SplitLoader(data_dir / "test.parquet", transform, count)))
    return batch.dense, batch.sparse


def check_served(url: str, model: str, dense: np.ndarray, sparse: np.ndarray, expected: np.ndarray) -> dict:
    """Ask the server for `model`'s probabilities of these rows; raises unless they equal `expected`."""
    with grpcclient.InferenceServerClient(url) as client:
        started = time.perf_counter()
        try:
            result = client.infer(model, infer_inputs(dense, sparse), client_timeout=60)
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
    return {"rows": len(dense), "max_abs_diff": worst, "latency_ms": latency_ms, "served_version": version}


def _recorded_data_dir(version_dir: Path) -> Path:
    return Path(json.loads((version_dir / "export.json").read_text())["data"])

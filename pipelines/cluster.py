"""The pipeline on a Kubeflow Pipelines cluster: one run now (optionally followed to its end), or a recurring run
on a cron schedule.

Both upload the compiled package (`pipelines/nasrec_pipeline.yaml`) through the KFP API (`kfp.Client`), with the
project's images retagged to the build they should run (`image_tag`: the retrain workflow passes the commit) and
the code's digest: a code change is never answered from the cache. The data's digest is the pipeline's own first
step, taken in a pod that sees the raw files. The run uses the ServiceAccount that k8s/ creates for it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.images import REGISTRY
from pipelines import COMPILED_PIPELINE, DATA_VOLUME, DEPLOY_STEP, FEATURE_SERVER, MODEL_VOLUME
from pipelines.local import check_parameters, code_digest

DEFAULT_EXPERIMENT = "nasrec"
DEFAULT_JOB_NAME = "nasrec-retrain"
SERVICE_ACCOUNT = "nasrec-pipeline"  # k8s/base/common/pipeline.yaml
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}  # the label NVIDIA's GPU operator puts on GPU nodes
REQUIRED_ON_A_CLUSTER = {
    "raw_files": f"the raw log paths the ingest pod sees, under {DATA_VOLUME[1]}",
    "repository": f"the model repository Triton serves, {MODEL_VOLUME[1]} (the volume {MODEL_VOLUME[0]})",
    "triton_url": "Triton's replicas, nasrec-triton-replicas:8001: deploy loads the new version into each",
}
FINISHED = {"SUCCEEDED", "SKIPPED", "FAILED", "CANCELED"}
EXIT_GATE_REFUSED = 3  # as `nasrec evaluate`: the run went well, the model was not good enough to serve
EXIT_RUN_FAILED = 4
EXIT_TIMED_OUT = 5


def kfp_client(host: str):
    """A client of the KFP API at `host`, with the bearer token in $KFP_TOKEN where the endpoint needs one."""
    import kfp

    with warnings.catch_warnings():  # "only works with KFP v2 backends": what this project targets
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=host, existing_token=os.environ.get("KFP_TOKEN") or None)


def check_cluster_parameters(parameters: dict[str, Any]) -> None:
    check_parameters(parameters)
    missing = [f"{name} ({what})" for name, what in REQUIRED_ON_A_CLUSTER.items() if not parameters.get(name)]
    if missing:
        raise ValueError(f"a cluster run needs {'; '.join(missing)}: give them with --params or --set")
    outside = [str(p) for p in parameters["raw_files"] if not _under(p, DATA_VOLUME[1])]
    if outside:
        raise ValueError(
            f"raw_files {outside}: the ingest pod sees only the volume {DATA_VOLUME[0]} at {DATA_VOLUME[1]}"
        )
    if not _under(parameters["repository"], MODEL_VOLUME[1]):
        raise ValueError(
            f"repository {parameters['repository']!r}: evaluate and deploy see the model repository volume "
            f"{MODEL_VOLUME[0]} at {MODEL_VOLUME[1]}"
        )


def _under(path: str, folder: str) -> bool:
    return Path(path).is_relative_to(folder)


def cluster_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """`parameters`, checked, with the code's digest, k8s/'s feature server and, for a GPU run, the GPU node
    selector, each unless given."""
    check_cluster_parameters(parameters)
    given = dict(parameters)
    given["code_digest"] = given.get("code_digest") or code_digest()
    given["feature_server"] = given.get("feature_server") or FEATURE_SERVER
    if given.get("gpus") and "gpu_node_selector" not in given:
        given["gpu_node_selector"] = GPU_NODE_SELECTOR
    return given


def tagged_package(package: Path, image_tag: str | None, folder: Path) -> Path:
    """The package with the project's images (`<REGISTRY>:<version>-cpu|cuda`) retagged `<image_tag>-cpu|cuda`,
    written into `folder`; `package` itself when no tag is given."""
    if not image_tag:
        return package
    documents = list(yaml.safe_load_all(package.read_text()))
    for executor in documents[0]["deploymentSpec"]["executors"].values():
        container = executor["container"]
        repository, _, tag = container["image"].rpartition(":")
        if repository == REGISTRY:
            container["image"] = f"{REGISTRY}:{image_tag}-{tag.rsplit('-', 1)[-1]}"
    out = folder / package.name
    out.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return out


@dataclass(frozen=True)
class Submission:
    """Where a cluster run goes: the KFP API, the experiment and the package, and the images' tag."""

    host: str
    experiment: str = DEFAULT_EXPERIMENT
    package: Path = COMPILED_PIPELINE
    image_tag: str | None = None


def submit(submission: Submission, parameters: dict[str, Any], run_name: str | None = None) -> Any:
    """Start one run of the package; returns kfp's RunPipelineResult (its run_id)."""
    parameters = cluster_parameters(parameters)
    with tempfile.TemporaryDirectory() as folder:
        package = tagged_package(submission.package, submission.image_tag, Path(folder))
        return kfp_client(submission.host).create_run_from_pipeline_package(
            str(package),
            arguments=parameters,
            run_name=run_name,
            experiment_name=submission.experiment,
            service_account=SERVICE_ACCOUNT,
        )


def schedule(
    submission: Submission,
    cron: str,
    parameters: dict[str, Any],
    job_name: str = DEFAULT_JOB_NAME,
    max_concurrency: int = 1,
) -> Any:
    """A recurring run of the package on `cron`, at most `max_concurrency` at a time; returns the recurring run.
    Its steps are cached like a single run's: each run's fingerprint step reads the log as it is then."""
    parameters = cluster_parameters(parameters)
    client = kfp_client(submission.host)
    experiment_id = client.create_experiment(submission.experiment).experiment_id
    with tempfile.TemporaryDirectory() as folder:
        return client.create_recurring_run(
            experiment_id,
            job_name,
            cron_expression=cron_schedule(cron),
            max_concurrency=max_concurrency,
            params=parameters,
            pipeline_package_path=str(tagged_package(submission.package, submission.image_tag, Path(folder))),
            service_account=SERVICE_ACCOUNT,
        )


def cron_schedule(expression: str) -> str:
    """KFP's cron has a seconds field first: a standard 5-field expression runs at second 0."""
    fields = expression.split()
    if len(fields) == 5:
        return "0 " + expression.strip()
    if len(fields) == 6:
        return expression.strip()
    raise ValueError(
        f"--cron: expected 5 fields (minute hour day month weekday) or 6 (seconds first), got {expression!r}"
    )


def follow(host: str, run_id: str, timeout_s: float, poll_s: float = 15.0) -> int:
    """Print the run's state and each step's as they change until it ends; returns the exit code that says how
    it ended: 0 deployed, EXIT_GATE_REFUSED, EXIT_RUN_FAILED, or EXIT_TIMED_OUT."""
    client = kfp_client(host)
    deadline = time.monotonic() + timeout_s
    seen: dict[str, str] = {}
    while True:
        run = client.get_run(run_id)
        steps = {
            t.display_name: str(t.state) for t in (run.run_details.task_details if run.run_details else None) or []
        }
        for step, state in steps.items():
            if seen.get(step) != state:
                print(f"  {step}: {state}", flush=True)
        seen = steps
        state = str(run.state)
        if state in FINISHED:
            break
        if time.monotonic() > deadline:
            print(f"run {run_id} is still {state} after {timeout_s:.0f} s; it goes on", file=sys.stderr)
            return EXIT_TIMED_OUT
        time.sleep(poll_s)
    if state != "SUCCEEDED":
        message = run.error.message if run.error and run.error.message else "see its failed step's log in the KFP UI"
        print(f"run {run_id} {state}: {message}", file=sys.stderr)
        return EXIT_RUN_FAILED
    if seen.get(DEPLOY_STEP) != "SUCCEEDED":
        print(f"run {run_id} succeeded, but the quality gate kept the model from Triton", file=sys.stderr)
        return EXIT_GATE_REFUSED
    print(f"run {run_id} succeeded: the new version is served")
    return 0

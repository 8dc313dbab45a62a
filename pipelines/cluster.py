"""The pipeline on a Kubeflow Pipelines cluster: one run now, or a recurring run on a cron schedule.

Both upload the compiled package (`pipelines/nasrec_pipeline.yaml`) through the KFP API (`kfp.Client`). A run
on a cluster needs its raw files, the served repository and the Triton to load into named: without them it
would fail only at its last step, after the training.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from pipelines import COMPILED_PIPELINE
from pipelines.local import check_parameters

DEFAULT_EXPERIMENT = "nasrec"
DEFAULT_JOB_NAME = "nasrec-retrain"
REQUIRED_ON_A_CLUSTER = {
    "raw_files": "the raw log paths the ingest pod sees",
    "repository": "the model repository on the volume Triton serves from, mounted into evaluate and deploy",
    "triton_url": "the Triton gRPC service deploy loads the new version into",
}


def kfp_client(host: str):
    import kfp

    with warnings.catch_warnings():  # "only works with KFP v2 backends": what this project targets
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=host)


def check_cluster_parameters(parameters: dict[str, Any]) -> None:
    check_parameters(parameters)
    missing = [f"{name} ({what})" for name, what in REQUIRED_ON_A_CLUSTER.items() if not parameters.get(name)]
    if missing:
        raise ValueError(f"a cluster run needs {'; '.join(missing)}: give them with --params or --set")


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


def submit(
    host: str,
    parameters: dict[str, Any],
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    package: Path = COMPILED_PIPELINE,
) -> Any:
    """Start one run of the package in `experiment`; returns kfp's RunPipelineResult (its run_id).

    Steps are cached by their inputs: files rewritten at the same paths need a new `data_digest`."""
    check_cluster_parameters(parameters)
    return kfp_client(host).create_run_from_pipeline_package(
        str(package), arguments=parameters, run_name=run_name, experiment_name=experiment
    )


def schedule(
    host: str,
    cron: str,
    parameters: dict[str, Any],
    experiment: str = DEFAULT_EXPERIMENT,
    job_name: str = DEFAULT_JOB_NAME,
    package: Path = COMPILED_PIPELINE,
    max_concurrency: int = 1,
) -> Any:
    """A recurring run of the package on `cron`, at most `max_concurrency` at a time; returns the recurring run.

    Caching is off for it: each run reads the log as it is then, usually at the same paths as the last."""
    check_cluster_parameters(parameters)
    client = kfp_client(host)
    experiment_id = client.create_experiment(experiment).experiment_id
    return client.create_recurring_run(
        experiment_id,
        job_name,
        cron_expression=cron_schedule(cron),
        max_concurrency=max_concurrency,
        params=parameters,
        pipeline_package_path=str(package),
        enable_caching=False,
    )

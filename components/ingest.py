"""Kubeflow component: raw logs -> Feast -> train/validation/test splits and the fitted transform."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest(
    raw_files: list,
    schema: str,
    folds: str,
    fold: int,
    data_digest: str,
    code_digest: str,
    feature_server: str,
    feast_root: str,
    engine: str,
    work_root: str,
    data: Output[Dataset],
    metrics: Output[Metrics],
):
    """Ingest raw log files through Feast. `folds` (a row,fold file; empty: split by time) picks the split.
    `data_digest` (the fingerprint step's) makes changed files a new cache key, and `code_digest` (of the
    project's source) makes a code change a new cache key. `feature_server` (a cluster's; empty: none) is where
    a schema's entity features are published, with the repository registered under `feast_root`. `engine` is the
    offline store that joins and materialises: duckdb, spark (on the pod's cores), or spark-k8s (Spark executors
    as pods of their own, which see the step's files under `work_root`, a folder of the data volume)."""
    from pathlib import Path

    from components.artifacts import log_metrics, step_log

    with step_log("ingest"):
        from components.steps.ingest import IngestRun
        from components.steps.ingest import ingest as ingest_step

        run = IngestRun.from_dict(
            {"schema": schema, "folds": folds or None, "fold": fold, "feature_server": feature_server}
            | {"feast_root": feast_root or None, "engine": engine}
            | {"shared_work_root": work_root if engine == "spark-k8s" else None}
        )
        log_metrics(metrics, ingest_step([Path(f) for f in raw_files], Path(data.path), run))

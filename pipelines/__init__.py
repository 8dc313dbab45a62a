"""Kubeflow pipeline definitions, local runs, cluster runs, and the `nasrec` command line."""

from pathlib import Path

COMPILED_PIPELINE = Path(__file__).with_name("nasrec_pipeline.yaml")  # the compiled package, beside its source
DATA_VOLUME = ("nasrec-data", "/data")  # (claim, mount path) on a cluster (k8s/base/common): the raw logs
FEAST_ROOT = f"{DATA_VOLUME[1]}/feast"  # Feast's registries on it, as k8s/ sets FEAST_REGISTRY_ROOT
INGEST_WORK_ROOT = f"{DATA_VOLUME[1]}/ingest-work"  # ingest_engine=spark-k8s: its files, seen by Spark's executors
FEATURE_SERVER = "http://nasrec-feature-server.nasrec.svc:6566"  # k8s/base/common: where ingest publishes
MODEL_VOLUME = ("nasrec-model-repository", "/models")  # the Triton model repository
DEPLOY_STEP = "Deploy to Triton"  # its state tells a cluster run's follower what the quality gate decided

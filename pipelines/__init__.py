"""Kubeflow pipeline definitions, local runs, cluster runs, and the `nasrec` command line."""

from pathlib import Path

COMPILED_PIPELINE = Path(__file__).with_name("nasrec_pipeline.yaml")  # the compiled package, beside its source
DATA_VOLUME = ("nasrec-data", "/data")  # (claim, mount path) on a cluster (k8s/base/common): the raw logs
MODEL_VOLUME = ("nasrec-model-repository", "/models")  # the Triton model repository
DEPLOY_STEP = "Deploy to Triton"  # its state tells a cluster run's follower what the quality gate decided

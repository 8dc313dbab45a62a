"""Kubeflow pipeline definitions, local runs, cluster runs, and the `nasrec` command line."""

from pathlib import Path

COMPILED_PIPELINE = Path(__file__).with_name("nasrec_pipeline.yaml")  # the compiled package, beside its source

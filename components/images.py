"""The project's images the components run in, built by the Dockerfile from pyproject.toml; tags are pinned."""

REGISTRY = "ghcr.io/nasrec-pipeline/nasrec-pipeline"
VERSION = "0.1.0"
CPU_IMAGE = f"{REGISTRY}:{VERSION}-cpu"  # ingest, evaluate, export, deploy
CUDA_IMAGE = f"{REGISTRY}:{VERSION}-cuda"  # the training steps; runs on CPUs too when no GPU is given

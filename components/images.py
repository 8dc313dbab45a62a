"""The project's images the components run in, built by the Dockerfile from pyproject.toml; tags are pinned."""

REGISTRY = "ghcr.io/nasrec-pipeline/nasrec-pipeline"
VERSION = "0.1.0"
CPU_IMAGE = f"{REGISTRY}:{VERSION}-cpu"  # ingest, evaluate, export, deploy
CUDA_IMAGE = f"{REGISTRY}:{VERSION}-cuda"  # the training steps; runs on CPUs too when no GPU is given
# ingest_engine=spark-k8s: Spark's executors run Apache's image of the Spark release the CPU image's pyspark is
# pinned to (Dockerfile SPARK_VERSION), as driver and executors must match
SPARK_VERSION = "4.1.3"
SPARK_EXECUTOR_IMAGE = f"apache/spark:{SPARK_VERSION}"

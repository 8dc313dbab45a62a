# The image every pipeline step runs in, built from pyproject.toml. Two variants, tagged as components/images.py
# pins them (VERSION = pyproject's version):
#   docker build --build-arg VARIANT=cpu  -t ghcr.io/nasrec-pipeline/nasrec-pipeline:0.1.0-cpu .
#   docker build --build-arg VARIANT=cuda -t ghcr.io/nasrec-pipeline/nasrec-pipeline:0.1.0-cuda .
# cpu: PyTorch's CPU wheel (ingest, evaluate, export, deploy); cuda: PyPI's CUDA build of the same PyTorch (the
# training steps; it runs on CPUs too when the pod gets no GPU).
# SPARK=1 (the default for cpu, which runs ingest) adds a Java runtime and the `spark` extra, with pyspark pinned
# to SPARK_VERSION, the release of the apache/spark image that ingest_engine=spark-k8s runs executors in
# (components/images.py); SPARK=0 leaves both out.
FROM python:3.11.11-slim-bookworm

ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG SPARK=1
ARG SPARK_VERSION=4.1.3

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, pinned: a plain requirement would pull whichever build pip finds first
RUN case "$VARIANT" in \
      cpu)  pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu ;; \
      cuda) pip install "torch==${TORCH_VERSION}" ;; \
      *)    echo "VARIANT must be cpu or cuda, got $VARIANT" >&2; exit 1 ;; \
    esac

WORKDIR /opt/nasrec
COPY pyproject.toml README.md ./
COPY model ./model
COPY features ./features
COPY serving ./serving
COPY components ./components
COPY pipelines ./pipelines
RUN if [ "$VARIANT" = cpu ] && [ "$SPARK" = 1 ]; then \
      apt-get update && apt-get install --yes --no-install-recommends default-jre-headless && \
      rm -rf /var/lib/apt/lists/* && pip install ".[spark]" "pyspark==${SPARK_VERSION}"; \
    else \
      pip install .; \
    fi && useradd --create-home --uid 10001 nasrec

USER 10001
WORKDIR /home/nasrec
ENTRYPOINT []
CMD ["nasrec", "--help"]

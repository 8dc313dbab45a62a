"""A network's serving cost measured where it is served: its ONNX graph timed with ONNX Runtime on this machine,
one intra-op thread (the serving runtime's setting per instance: it scales by instances, not threads), at a batch
size. The search uses it to keep candidates within a latency budget, and the benchmarks report it beside AUC.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from model.network import BlockNetwork, InputSchema
from model.ops import EMBEDDING_DIM
from serving.export import export_onnx, onnx_session
from serving.interface import DENSE_INPUT, SPARSE_INPUT


@dataclass(frozen=True)
class LatencyBudget:
    """The most a served request may take: p99 in milliseconds, for a request of `batch_size` rows."""

    p99_ms: float
    batch_size: int = 512

    def __post_init__(self) -> None:
        if isinstance(self.p99_ms, bool) or not self.p99_ms > 0:
            raise ValueError(f"latency budget: p99_ms must be > 0, got {self.p99_ms!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"latency budget: batch_size must be a positive integer, got {self.batch_size!r}")


@dataclass(frozen=True)
class Latency:
    batch_size: int
    p50_ms: float
    p99_ms: float
    runs: int

    def within(self, budget: LatencyBudget) -> bool:
        if budget.batch_size != self.batch_size:
            raise ValueError(f"latency measured at batch {self.batch_size}, budget given at {budget.batch_size}")
        return self.p99_ms <= budget.p99_ms


def example_inputs(schema: InputSchema, batch_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A request's inputs: normal dense values and ids drawn within each feature's vocabulary (the timing reads
    the same number of embedding rows whatever the values)."""
    generator = np.random.default_rng(seed)
    dense = generator.standard_normal((batch_size, schema.num_dense), dtype=np.float32)
    sparse = np.stack([generator.integers(0, c, batch_size) for c in schema.cardinalities], axis=1).astype(np.int64)
    return dense, sparse


def onnx_latency(path: Path, dense: np.ndarray, sparse: np.ndarray, runs: int = 200, warmup: int = 20) -> Latency:
    """p50 and p99 of `runs` ONNX Runtime calls of the exported graph at `path` on one request."""
    if runs < 1:
        raise ValueError(f"runs: must be >= 1, got {runs}")
    session = onnx_session(path, threads=1)
    feeds = {DENSE_INPUT: dense, SPARSE_INPUT: sparse}
    for _ in range(warmup):
        session.run(None, feeds)
    samples = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        samples[i] = time.perf_counter() - start
    ms = samples * 1e3
    return Latency(len(dense), float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), runs)


def measure_latency(net: nn.Module, schema: InputSchema, batch_size: int = 512, runs: int = 200) -> Latency:
    """Export `net` (a NASRecNet or a baseline, reading `schema`; as served, with its sigmoid) and time it on one
    `batch_size`-row request."""
    dense, sparse = example_inputs(schema, batch_size)
    with tempfile.TemporaryDirectory(prefix="nasrec-latency-") as folder:
        path = export_onnx(net, Path(folder) / "model.onnx", {}, (torch.from_numpy(dense), torch.from_numpy(sparse)))
        return onnx_latency(path, dense, sparse, runs)


# What an architecture's served latency grows with, per live block: attention tokens (small-head attention is many
# small kernels per token), and the elements each block's inputs concatenate (memory traffic). MFLOPs alone
# predicts it worse: the work is not in multiply-adds (bench/results/latency_model/FINDINGS.md).
LATENCY_FEATURES = ("constant", "attention_tokens", "input_elements")


def latency_features(net: BlockNetwork) -> np.ndarray:
    """The features of LATENCY_FEATURES for `net` (a shape-only network is enough: built on the meta device)."""
    attention_tokens = input_elements = 0
    for block in net.blocks.values():
        spec, inputs = block.spec, next(iter(block.dense_ops.values())).inputs
        attention_tokens += spec.sparse_tokens * spec.sparse_ops.count("attention")
        input_elements += inputs.dense + inputs.sparse * EMBEDDING_DIM
    return np.array([1.0, attention_tokens / 100, input_elements / 1000])


@dataclass(frozen=True)
class LatencyModel:
    """p99 (ms) = weights . latency_features, non-negative weights fitted to measured networks on one machine at
    one batch size; `error` is its leave-one-out mean relative error on those measurements."""

    weights: tuple[float, ...]
    batch_size: int
    error: float

    @classmethod
    def fit(cls, features: np.ndarray, p99_ms: np.ndarray, batch_size: int) -> LatencyModel:
        if len(p99_ms) < features.shape[1] + 2:
            raise ValueError(f"a latency model needs at least {features.shape[1] + 2} measured networks")
        errors = []
        for held_out in range(len(p99_ms)):
            rest = np.arange(len(p99_ms)) != held_out
            weights = nnls(features[rest], p99_ms[rest])[0]
            errors.append(abs(features[held_out] @ weights - p99_ms[held_out]) / p99_ms[held_out])
        return cls(tuple(nnls(features, p99_ms)[0].tolist()), batch_size, float(np.mean(errors)))

    def predict(self, net: BlockNetwork) -> float:
        return float(latency_features(net) @ np.array(self.weights))

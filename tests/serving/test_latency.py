"""Serving latency as the search and the benchmarks measure it: a network's ONNX graph in ONNX Runtime."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from model.arch import Architecture
from model.baselines import build_baseline
from model.network import InputSchema, NASRecNet
from model.sampling import ArchitectureSampler
from model.space import get_space
from serving.latency import (
    Latency,
    LatencyBudget,
    LatencyModel,
    example_inputs,
    latency_features,
    measure_latency,
)

SCHEMA = InputSchema(3, (5, 70, 1))


def test_example_requests_read_every_feature_within_its_vocabulary() -> None:
    dense, sparse = example_inputs(SCHEMA, 300)
    assert dense.shape == (300, 3) and dense.dtype == np.float32
    assert sparse.shape == (300, 3) and sparse.dtype == np.int64
    assert (sparse >= 0).all() and (sparse < np.array(SCHEMA.cardinalities)).all()
    assert len(np.unique(sparse[:, 1])) > 30  # spread over the vocabulary, not one row read again and again


@pytest.mark.parametrize("kind", ["nasrecnet", "deepfm"])
def test_a_network_is_timed_as_served(kind: str) -> None:
    if kind == "nasrecnet":
        net = NASRecNet(ArchitectureSampler(get_space("demo"), seed=3).sample(), SCHEMA)
    else:
        net = build_baseline(kind, SCHEMA)
    latency = measure_latency(net.eval(), SCHEMA, batch_size=64, runs=20)
    assert latency.batch_size == 64 and latency.runs == 20
    assert 0 < latency.p50_ms <= latency.p99_ms


def test_a_budget_is_checked_and_compared_at_its_own_batch_size() -> None:
    measured = Latency(batch_size=512, p50_ms=3.0, p99_ms=4.5, runs=200)
    assert measured.within(LatencyBudget(5.0)) and not measured.within(LatencyBudget(4.0))
    with pytest.raises(ValueError, match=r"measured at batch 512, budget given at 1"):
        measured.within(LatencyBudget(5.0, batch_size=1))
    for wrong in (0, -1.0, True):
        with pytest.raises(ValueError, match=r"latency budget: p99_ms must be > 0"):
            LatencyBudget(wrong)
    with pytest.raises(ValueError, match=r"latency budget: batch_size must be a positive integer, got 0"):
        LatencyBudget(5.0, batch_size=0)


def test_the_latency_model_counts_attention_tokens_and_input_elements_of_live_blocks() -> None:
    arch = ArchitectureSampler(get_space("demo"), seed=5).sample()
    efc_only = Architecture(tuple(replace(b, sparse_op="efc") for b in arch.blocks))
    all_attention = Architecture(tuple(replace(b, sparse_op="attention") for b in arch.blocks))
    with torch.device("meta"):
        nets = [NASRecNet(a, SCHEMA) for a in (efc_only, all_attention)]
    (constant, none, elements), (_, tokens, same_elements) = (latency_features(n) for n in nets)
    assert constant == 1.0 and none == 0.0 and elements == same_elements > 0
    assert tokens * 100 == sum(nets[1].blocks[b].spec.sparse_tokens for b in nets[1].blocks)


def test_a_fitted_latency_model_recovers_a_linear_cost_and_says_how_well_it_predicts() -> None:
    features = np.column_stack([np.ones(12), np.arange(12) % 5, np.arange(12) / 3])
    exact = LatencyModel.fit(features, features @ np.array([2.0, 3.0, 0.5]), batch_size=512)
    assert np.allclose(exact.weights, [2.0, 3.0, 0.5]) and exact.error < 1e-9
    noisy = features @ np.array([2.0, 3.0, 0.5]) * (1 + 0.2 * (-1) ** np.arange(12))
    assert LatencyModel.fit(features, noisy, batch_size=512).error > 0.1  # the held-out error shows the noise
    with pytest.raises(ValueError, match=r"a latency model needs at least 5 measured networks"):
        LatencyModel.fit(features[:4], noisy[:4], batch_size=512)

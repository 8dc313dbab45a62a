"""Synthetic CTR data whose labels come from a fixed random "teacher" with planted feature interactions,
so that models have something real to learn and better models score measurably better.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LATENT_DIM = 4


@dataclass
class SyntheticBatch:
    dense: np.ndarray  # (n, num_dense) float32, already log(1 + x) transformed
    sparse: np.ndarray  # (n, num_sparse) int64 ids in [0, cardinality)
    label: np.ndarray  # (n,) float32 in {0, 1}


class TeacherCTR:
    """A fixed random teacher: per-id biases, planted pairwise categorical interactions and a dense term.

    Everything is drawn from `seed`; `sample(n, seed)` is deterministic given both seeds.
    """

    def __init__(
        self,
        num_dense: int,
        cardinalities: tuple[int, ...],
        seed: int = 0,
        interactions: int = 8,
        base_rate: float = 0.25,
    ):
        if num_dense < 1 or not cardinalities or min(cardinalities) < 1:
            raise ValueError(f"teacher: need num_dense >= 1 and cardinalities >= 1, got {num_dense}, {cardinalities}")
        rng = np.random.default_rng(seed)
        self.num_dense = num_dense
        self.cardinalities = tuple(cardinalities)
        self.id_bias = [rng.normal(0, 0.5, c) for c in cardinalities]
        self.id_latent = [rng.normal(0, 1.0, (c, LATENT_DIM)) for c in cardinalities]
        n = len(cardinalities)
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        chosen = rng.choice(len(pairs), size=min(interactions, len(pairs)), replace=False) if pairs else []
        self.pairs = [pairs[k] for k in chosen]
        self.dense_weight = rng.normal(0, 0.4, num_dense)
        self.dense_scale = rng.uniform(1, 500, num_dense)  # typical count magnitudes
        self.zipf_exponent = rng.uniform(1.05, 1.6, n)
        self.intercept = float(np.log(base_rate / (1 - base_rate)))

    def sample(self, rows: int, seed: int) -> SyntheticBatch:
        rng = np.random.default_rng(seed)
        counts = rng.exponential(self.dense_scale, (rows, self.num_dense)).round()
        dense = np.log1p(counts).astype(np.float32)
        sparse = np.stack([self._ids(rng, c, e, rows) for c, e in zip(self.cardinalities, self.zipf_exponent)], axis=1)
        logit = self.intercept + (dense - dense.mean(0)) @ self.dense_weight / np.sqrt(self.num_dense)
        for f, ids in enumerate(sparse.T):
            logit += self.id_bias[f][ids]
        for f, g in self.pairs:
            logit += (self.id_latent[f][sparse[:, f]] * self.id_latent[g][sparse[:, g]]).sum(1) / np.sqrt(LATENT_DIM)
        label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        return SyntheticBatch(dense, sparse.astype(np.int64), label)

    @staticmethod
    def _ids(rng: np.random.Generator, cardinality: int, exponent: float, rows: int) -> np.ndarray:
        """Zipf-like ids: a few values are frequent, most are rare, as in real categorical logs."""
        return (rng.zipf(exponent, rows) - 1) % cardinality

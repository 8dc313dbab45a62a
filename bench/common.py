"""Helpers every benchmark shares: synthetic Criteo-shaped batches, timing, and the --json convention."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from model.network import InputSchema
from model.training import Batch

# Criteo Kaggle's categorical cardinalities, capped at 100k rows per table.
CRITEO_CARDINALITIES = tuple(
    min(c, 100_000)
    for c in (
        1460,
        583,
        10131227,
        2202608,
        305,
        24,
        12517,
        633,
        3,
        93145,
        5683,
        8351593,
        3194,
        27,
        14992,
        5461306,
        10,
        5652,
        2173,
        4,
        7046547,
        18,
        15,
        286181,
        105,
        142572,
    )
)
CRITEO_SCHEMA = InputSchema(num_dense=13, cardinalities=CRITEO_CARDINALITIES)


def synthetic_batch(schema: InputSchema, batch_size: int, generator: torch.Generator, device: str = "cpu") -> Batch:
    """Log-transformed heavy-tailed dense values, skewed categorical ids, ~25% positives."""
    dense = torch.log1p(torch.empty(batch_size, schema.num_dense).exponential_(0.01, generator=generator))
    uniform = torch.rand(batch_size, schema.num_sparse, generator=generator)
    cards = torch.tensor(schema.cardinalities, dtype=torch.float64)
    sparse = (cards ** uniform.double() - 1).long().clamp_max(cards.long() - 1)  # log-uniform: small ids frequent
    label = (torch.rand(batch_size, generator=generator) < 0.25).float()
    return Batch(dense, sparse, label).to(device)


def median_seconds(fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> list[float]:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float], batch_size: int) -> dict[str, float]:
    median = statistics.median(times)
    return {"median_step_ms": median * 1e3, "samples_per_s": batch_size / median, "steps": len(times)}


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 and p99 of durations in seconds, in milliseconds."""
    ms = np.array(samples) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(samples)}


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every figure to this JSON file")


def write_json(path: Path | None, figures: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures written to {path}")


def write_teacher_splits(folder: Path, rows: int, cardinality: int, seed: int = 0) -> Path:
    """Model-ready train/validation/test splits (8:1:1) of teacher-labelled Criteo-shaped rows.

    The ingestion folder format without going through Feast: benchmarks of model quality on large
    synthetic data need neither the raw-log parsing nor the point-in-time join (bench/ingest.py
    measures those), and the GPU machine has no Feast.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features.synthetic import TeacherCTR
    from features.transform import LABEL, Encoding, FeatureTransform

    folder.mkdir(parents=True, exist_ok=True)
    dense_names = tuple(f"I{i + 1}" for i in range(13))
    sparse_names = tuple(f"C{i + 1}" for i in range(26))
    transform = FeatureTransform("teacher", dense_names, tuple(Encoding(n, buckets=cardinality) for n in sparse_names))
    teacher = TeacherCTR(13, (cardinality,) * 26, seed=seed)
    bounds = {
        "train": (0, rows * 8 // 10),
        "validation": (rows * 8 // 10, rows * 9 // 10),
        "test": (rows * 9 // 10, rows),
    }
    for split, (start, stop) in bounds.items():
        data = teacher.sample(stop - start, seed=seed * 1000 + start)
        columns = {n: data.dense[:, i] for i, n in enumerate(dense_names)}
        columns |= {n: data.sparse[:, i] for i, n in enumerate(sparse_names)}
        columns[LABEL] = data.label
        pq.write_table(pa.table(columns), folder / f"{split}.parquet", row_group_size=65_536)
    transform.save(folder / "transform.json")
    return folder

"""Fixtures shared by the tests: the shared real samples, and a small synthetic Criteo-format log ingested."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from components.steps.search import SearchRun
from model.search import FitnessConfig, SearchConfig

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RAW = {"criteo": SHARED_DATA / "criteo_kaggle_10k" / "train.txt", "avazu": SHARED_DATA / "avazu_10k" / "train.csv"}


def shared(name: str) -> Path:
    """The raw file of a shared sample; skips the test, with the reason, when ../shared/data lacks it."""
    path = RAW[name]
    if not path.exists():
        pytest.skip(f"shared data sample {path} is absent")
    return path


@pytest.fixture(scope="session")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 teacher-labelled rows (50 values per categorical feature), split 8:1:1 by time."""
    from features.ingest import SplitSpec, ingest  # Feast: imported only by the tests that ingest
    from features.schema import builtin_schema
    from features.synthetic import write_synthetic_log

    folder = tmp_path_factory.mktemp("ingested")
    schema = builtin_schema("criteo")
    raw = write_synthetic_log(schema, folder / "raw.txt", rows=20_000, seed=3, cardinality=50)
    ingest(schema, [raw], folder / "data", SplitSpec())
    return folder / "data"


@pytest.fixture(scope="session")
def ingest_shared(tmp_path_factory: pytest.TempPathFactory):
    """`ingest_shared(name)` -> (raw file, IngestResult): a shared sample ingested through Feast with fold 0 of
    the fixed protocol, once per session. `criteo_dense`: Criteo
    under `criteo_dense_schema`."""
    from features.ingest import SplitSpec, ingest
    from features.schema import builtin_schema

    done = {}

    def get(name: str):
        if name not in done:
            schema = criteo_dense_schema() if name == "criteo_dense" else builtin_schema(name)
            raw = shared(schema.name)
            out = tmp_path_factory.mktemp(f"shared_{name}")
            split = SplitSpec(folds=raw.parent / "folds.csv", fold=0)
            done[name] = raw, ingest(schema, [raw], out, split)
        return done[name]

    return get


def criteo_dense_schema():
    """Criteo with its integer features as dense inputs (the built-in schema reads them as log buckets), as a
    user's own schema with numbers would have them: the tests of served FP32 fields use it."""
    from features.schema import builtin_schema

    schema = builtin_schema("criteo")
    integers = tuple(c.name for c in schema.categorical if c.bucket)
    return replace(schema, dense=integers, categorical=tuple(c for c in schema.categorical if not c.bucket))


CPU = torch.device("cpu")
TINY_SEARCH = SearchRun(
    search=SearchConfig(
        population=6, generations=3, sample_size=3, children=2, fitness=FitnessConfig(40, 0.04, 4), seed=1
    ),
    finetune_batches=3,
    eval_batches=2,
    batch_size=256,
    top_k=3,
)
TINY_SUBNET_FITNESS = FitnessConfig(finetune_steps=10, finetune_lr=0.05, finetune_warmup_steps=1, method="subnet")
TINY_SUBNET_SEARCH = replace(TINY_SEARCH, search=replace(TINY_SEARCH.search, fitness=TINY_SUBNET_FITNESS))


@pytest.fixture(scope="session")
def supernet_dir(ingested: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo-space supernet trained 300 steps on `ingested`."""
    from components.steps.train_supernet import SupernetRun, train_supernet

    out = tmp_path_factory.mktemp("supernet")
    run = SupernetRun(space="demo", steps=300, batch_size=128, lr=0.05, checkpoint_every=100, progress=False)
    train_supernet(ingested, out, run, CPU)
    return out

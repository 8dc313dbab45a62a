"""Trained NASRecNets on the shared samples, exported for serving: the fixtures of the serving tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from components.steps.finetune import FinetuneRun, finetune
from features.ingest import IngestResult
from model.arch import Architecture
from model.network import NASRecNet
from model.sampling import ArchitectureSampler
from model.space import get_space
from model.trainer import load_model
from serving.export import export_model


@dataclass(frozen=True)
class Exported:
    """Two versions of one architecture trained on the same data (seeds 0 and 1), each exported."""

    data: IngestResult
    models: tuple[Path, Path]  # finetune winner/ folders
    exports: tuple[Path, Path]

    def net(self, version: int) -> NASRecNet:
        return load_model(self.models[version - 1] / "checkpoint.pt").eval()


def architecture_with(operator: str, seed: int = 0) -> Architecture:
    """The first `ctr` architecture (the space of every operator; from `seed` on) whose served network runs
    `operator`."""
    space = get_space("ctr")
    for s in range(seed, seed + 200):
        arch = ArchitectureSampler(space, s).sample()
        with torch.device("meta"):
            net = NASRecNet(arch, _tiny_schema())
        if any(operator in (block.spec.dense_ops + block.spec.sparse_ops) for block in net.blocks.values()):
            return arch
    raise LookupError(f"no ctr architecture with {operator} in 200 seeds")


def _tiny_schema():
    from model.network import InputSchema

    return InputSchema(13, (10,) * 26)


def train_and_export(data: IngestResult, folder: Path) -> Exported:
    arch = architecture_with("dot_product")  # its pair indices are a buffer: export must carry them
    models, exports = [], []
    for version, seed in ((1, 0), (2, 1)):
        run = FinetuneRun(steps=60, batch_size=256, lr=0.05, eval_every=60, seed=seed, progress=False)
        finetune([arch], data.out_dir, folder / f"model_v{version}", run, torch.device("cpu"))
        models.append(folder / f"model_v{version}" / "winner")
        exports.append(export_model(models[-1], folder / f"export_v{version}").out)
    return Exported(data, tuple(models), tuple(exports))


@pytest.fixture(scope="session")
def criteo_exported(ingest_shared, tmp_path_factory) -> Exported:
    _, data = ingest_shared("criteo_dense")  # served FP32 fields; the pipeline's tests serve the built-in schema
    return train_and_export(data, tmp_path_factory.mktemp("criteo_served"))


@pytest.fixture(scope="session")
def criteo_retrained(tmp_path_factory) -> Exported:
    """The same architecture trained on another fold's training split: another fitted feature transform."""
    from features.ingest import SplitSpec, ingest
    from tests.conftest import criteo_dense_schema, shared

    raw = shared("criteo")
    folder = tmp_path_factory.mktemp("criteo_retrained")
    data = ingest(criteo_dense_schema(), [raw], folder / "data", SplitSpec(folds=raw.parent / "folds.csv", fold=1))
    return train_and_export(data, folder)


@pytest.fixture(scope="session")
def avazu_exported(ingest_shared, tmp_path_factory) -> Exported:
    _, data = ingest_shared("avazu")
    return train_and_export(data, tmp_path_factory.mktemp("avazu_served"))

"""finetune: train the search's top architectures, keep the best on validation (the winner, a NASRecNet)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.steps.common import StepConfig, steps_for, write_json
from components.steps.data import IngestedData
from model.arch import Architecture
from model.network import NASRecNet
from model.search import architecture_cost, spawn_pool
from model.supernet import Supernet
from model.trainer import TrainConfig, Trainer, TrainResult, describe, evaluate, load_model


@dataclass(frozen=True)
class FinetuneRun(StepConfig):
    epochs: float = 1.0
    steps: int | None = None  # overrides epochs
    batch_size: int = 256
    lr: float = 0.1
    optimizer: str = "adagrad"
    eval_every: int = 0  # steps; 0: once per epoch
    patience: int = 0  # validations without a better AUC before stopping; 0: train every step
    warm_start: bool = False  # start from the inherited supernet weights instead of scratch
    seed: int = 0
    progress: bool = True


def train_network(
    net: nn.Module,
    metadata: dict[str, Any],
    data: IngestedData,
    run: FinetuneRun,
    device: torch.device,
    out: Path | None,
) -> TrainResult:
    """Train a standalone network with validation-AUC early stopping: it ends holding its best weights."""
    steps = run.steps or steps_for(data, run.batch_size, run.epochs)
    eval_every = run.eval_every or max(1, steps_for(data, run.batch_size, 1.0))
    config = TrainConfig(
        steps=steps,
        lr=run.lr,
        optimizer=run.optimizer,
        eval_every=eval_every,
        patience=run.patience,
        seed=run.seed,
        progress=run.progress,
    )

    def validate(model: nn.Module) -> dict:
        return evaluate(model, data.batches("validation"), device)

    trainer = Trainer(net, config, device, out, metadata=metadata, validate=validate)
    trainer.resume()
    return trainer.fit(data.train_stream(run.batch_size, run.seed))


@dataclass(frozen=True)
class TrainingJob:
    """One architecture to train under `run`, from the initialisation `init_seed` draws (or, with
    run.warm_start, from its inherited supernet weights); checkpoints go to `out` when given."""

    arch: Architecture
    run: FinetuneRun
    init_seed: int
    out: Path | None = None


def train_architectures(
    jobs: list[TrainingJob],
    data_dir: Path,
    device: torch.device,
    workers: int = 1,
    supernet_path: Path | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Train every job; yields (job index, best validation point) as each one ends.

    With `workers` above 1 the jobs run in that many processes, which share the CPU cores (or the GPU):
    small networks leave most of either idle when trained one at a time.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    workers = min(workers, len(jobs))  # no idle processes, none at all for no jobs
    if workers <= 1:
        trainer = _ArchitectureTrainer(data_dir, device, supernet_path)
        for index, job in enumerate(jobs):
            yield index, trainer(job)
        return
    with spawn_pool(workers, _init_training_worker, (data_dir, str(device), supernet_path)) as pool:
        quiet = [(index, replace(job, run=replace(job.run, progress=False))) for index, job in enumerate(jobs)]
        yield from pool.imap_unordered(_train_in_worker, quiet, chunksize=1)


class _ArchitectureTrainer:
    """Trains jobs over one loaded dataset (and, for warm starts, one loaded supernet)."""

    def __init__(self, data_dir: Path, device: torch.device, supernet_path: Path | None):
        self.data = IngestedData(data_dir)
        self.device = device
        self.supernet_path = supernet_path
        self._supernet: Supernet | None = None

    def __call__(self, job: TrainingJob) -> dict[str, Any]:
        torch.manual_seed(job.init_seed)
        net = (
            self.supernet().extract(job.arch)
            if job.run.warm_start
            else NASRecNet.to_train(job.arch, self.data.input_schema)
        )
        return train_network(net, describe(net), self.data, job.run, self.device, job.out).best

    def supernet(self) -> Supernet:
        """Loaded on first use: only warm-started jobs need it."""
        if self._supernet is None:
            supernet = load_model(self.supernet_path, self.device)
            if not isinstance(supernet, Supernet):
                raise ValueError(f"{self.supernet_path}: holds a {type(supernet).__name__}, not a supernet")
            self._supernet = supernet
        return self._supernet


_worker_trainer: _ArchitectureTrainer | None = None


def _init_training_worker(data_dir: Path, device: str, supernet_path: Path | None) -> None:
    global _worker_trainer
    _worker_trainer = _ArchitectureTrainer(data_dir, torch.device(device), supernet_path)


def _train_in_worker(indexed: tuple[int, TrainingJob]) -> tuple[int, dict[str, Any]]:
    index, job = indexed
    return index, _worker_trainer(job)


def finetune(
    architectures: list[Architecture],
    data_dir: Path,
    out: Path,
    run: FinetuneRun,
    device: torch.device,
    supernet_path: Path | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Train each architecture (in `workers` processes) and keep the best on validation AUC in `out/winner`.

    The test split is left to the evaluate step, so that it is read once, by the step that decides deployment.
    """
    if not architectures:
        raise ValueError("finetune needs at least one architecture")
    if run.warm_start and supernet_path is None:
        raise ValueError("--warm-start needs --supernet (the weights to inherit)")
    data = IngestedData(data_dir)
    out = Path(out)
    jobs = [TrainingJob(arch, run, run.seed, out / f"candidate_{rank:02d}") for rank, arch in enumerate(architectures)]
    candidates = []
    for rank, best in train_architectures(jobs, data_dir, device, workers, supernet_path):
        candidates.append({"rank": rank, "architecture": architectures[rank].to_dict(), "validation": best})
        print(f"candidate {rank}: validation AUC {best['auc']:.4f}, log loss {best['log_loss']:.4f}", flush=True)
    candidates.sort(key=lambda c: c["rank"])
    winner = max(candidates, key=lambda c: c["validation"]["auc"])
    winner_dir = out / "winner"
    winner_dir.mkdir(parents=True, exist_ok=True)
    # the candidate's best validation weights
    (out / f"candidate_{winner['rank']:02d}" / "checkpoint.pt").replace(winner_dir / "checkpoint.pt")
    arch = architectures[winner["rank"]]
    arch.save(winner_dir / "architecture.json")
    mflops, parameters = architecture_cost(arch, data.input_schema)
    metrics = {
        "winner": {**winner, "mflops": mflops, "parameters": parameters},
        "candidates": candidates,
        "run": run.to_dict(),
        "device": str(device),
        "data": str(Path(data_dir).resolve()),  # what export checks the model on by default
    }
    write_json(winner_dir / "metrics.json", metrics)
    validation = winner["validation"]
    print(f"winner: candidate {winner['rank']}: validation AUC {validation['auc']:.4f}, {mflops:.3f} MFLOPs")
    return metrics


def read_architectures(path: Path, limit: int | None = None) -> list[Architecture]:
    """Architectures from a search's top_k.json, or a single architecture JSON file."""
    text = path.read_text()
    data = json.loads(text)
    if isinstance(data, list):
        archs = [Architecture.from_dict(r["architecture"]) for r in data]
    else:
        archs = [Architecture.from_json(text, source=str(path))]
    return archs[:limit] if limit else archs

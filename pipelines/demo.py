"""The local demo, until the Kubeflow pipeline lands: synthetic Criteo-format log -> Feast ingestion ->
a short supernet training from the training split -> one sampled subnet evaluated on validation."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from features.ingest import SplitSpec, ingest
from features.loader import ArrayBatch, SplitLoader
from features.schema import builtin_schema
from features.synthetic import write_synthetic_log
from model.metrics import log_loss, roc_auc
from model.network import InputSchema
from model.sampling import ArchitectureSampler
from model.space import get_space
from model.supernet import Supernet
from model.training import Batch, SliceAdagrad, learning_rate, supernet_step


@dataclass(frozen=True)
class DemoConfig:
    space: str = "demo"
    steps: int = 1500
    warmup_steps: int = 300
    batch_size: int = 512
    lr: float = 0.12
    rows: int = 300_000
    cardinality: int = 1000
    seed: int = 0
    out: Path = Path("runs/demo")
    device: str = "cuda" if torch.cuda.is_available() else "cpu"


def to_batch(arrays: ArrayBatch, device: str) -> Batch:
    tensors = (torch.from_numpy(arrays.dense), torch.from_numpy(arrays.sparse), torch.from_numpy(arrays.label))
    return Batch(*tensors).to(device, non_blocking=True)


@torch.no_grad()
def predict(model, loader: SplitLoader, device: str) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = [], []
    for arrays in loader:
        batch = to_batch(arrays, device)
        scores.append(torch.sigmoid(model(batch.dense, batch.sparse)).float().cpu().numpy())
        labels.append(arrays.label)
    return np.concatenate(labels), np.concatenate(scores)


def run_demo(config: DemoConfig) -> dict:
    torch.manual_seed(config.seed)
    schema = builtin_schema("criteo")
    config.out.mkdir(parents=True, exist_ok=True)
    raw = config.out / f"synthetic_criteo_{config.rows}_seed{config.seed}.txt"
    if not raw.exists():
        print(f"writing {config.rows:,} synthetic Criteo-format rows (teacher labels) to {raw}", flush=True)
        write_synthetic_log(schema, raw, config.rows, seed=config.seed, cardinality=config.cardinality)
    data = ingest(schema, [raw], config.out / "data", SplitSpec())
    transform = data.transform
    loader = SplitLoader(data.splits["train"], transform, config.batch_size, shuffle=True, seed=config.seed)
    space = get_space(config.space)
    supernet = Supernet(space, InputSchema(transform.num_dense, transform.cardinalities)).to(config.device)
    optimizer = SliceAdagrad(supernet.parameters(), lr=config.lr)
    sampler = ArchitectureSampler(space, seed=config.seed)
    print(
        f"supernet over search space {space.name!r}: {supernet.network.num_parameters():,} shared weights; "
        f"{config.steps} steps of {config.batch_size} rows from {data.splits['train']} on {config.device}"
    )
    batches = itertools.chain.from_iterable(itertools.repeat(loader))  # epochs, reshuffled each time
    start = time.perf_counter()
    progress = tqdm(range(config.steps), desc="supernet", unit="step", mininterval=1.0)
    for step, arrays in zip(progress, batches):
        optimizer.lr = learning_rate(step, config.steps, config.lr)
        arch = sampler.sample_for_step(step, config.warmup_steps)
        loss = supernet_step(supernet, arch, to_batch(arrays, config.device), optimizer)
        elapsed = time.perf_counter() - start
        progress.set_postfix(
            loss=f"{loss.item():.4f}",
            samples_s=f"{(step + 1) * config.batch_size / elapsed:,.0f}",
            path="full" if arch is None else "subnet",
            refresh=False,
        )
    train_seconds = time.perf_counter() - start
    validation = SplitLoader(data.splits["validation"], transform, batch_size=4096)
    labels, full_path = predict(supernet, validation, config.device)
    arch = ArchitectureSampler(space, seed=config.seed + 1).sample()
    net = supernet.extract(arch).eval()
    _, probabilities = predict(net, validation, config.device)
    metrics = {
        "space": space.name,
        "steps": config.steps,
        "train_seconds": round(train_seconds, 2),
        "validation_rows": len(labels),
        "validation_label_rate": float(labels.mean()),
        "full_path_validation_auc": roc_auc(labels, full_path),
        "subnet_validation_auc": roc_auc(labels, probabilities),
        "subnet_validation_logloss": log_loss(labels, probabilities),
        "constant_predictor_logloss": log_loss(labels, np.full_like(probabilities, labels.mean())),
        "subnet_mflops": net.mflops(),
        "subnet_parameters": net.num_parameters(),
    }
    arch.save(config.out / "subnet_architecture.json")
    (config.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(
        f"full path: validation AUC {metrics['full_path_validation_auc']:.4f}\n"
        f"sampled subnet (inherited weights, no fine-tuning): {metrics['subnet_mflops']:.3f} MFLOPs/sample, "
        f"{metrics['subnet_parameters']:,} parameters; validation AUC {metrics['subnet_validation_auc']:.4f}, "
        f"log loss {metrics['subnet_validation_logloss']:.4f} "
        f"(constant predictor: {metrics['constant_predictor_logloss']:.4f})"
    )
    print(f"wrote {config.out / 'subnet_architecture.json'} and {config.out / 'metrics.json'}")
    return metrics

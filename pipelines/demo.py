"""The local demo: train a supernet briefly on synthetic teacher data, then evaluate one sampled subnet."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from features.synthetic import TeacherCTR
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
    validation_rows: int = 10_000
    num_dense: int = 13
    num_sparse: int = 26
    cardinality: int = 1000
    seed: int = 0
    out: Path = Path("runs/demo")
    device: str = "cuda" if torch.cuda.is_available() else "cpu"


def to_batch(data, device: str) -> Batch:
    return Batch(torch.from_numpy(data.dense), torch.from_numpy(data.sparse), torch.from_numpy(data.label)).to(device)


@torch.no_grad()
def predict(model, batch: Batch, arch=None, chunk: int = 4096) -> np.ndarray:
    logits = [
        model(batch.dense[i : i + chunk], batch.sparse[i : i + chunk], *([arch] if arch else []))
        for i in range(0, len(batch.label), chunk)
    ]
    return torch.sigmoid(torch.cat(logits)).float().cpu().numpy()


def run_demo(config: DemoConfig) -> dict:
    torch.manual_seed(config.seed)
    space = get_space(config.space)
    schema = InputSchema(config.num_dense, (config.cardinality,) * config.num_sparse)
    teacher = TeacherCTR(schema.num_dense, schema.cardinalities, seed=config.seed)
    validation = to_batch(teacher.sample(config.validation_rows, seed=config.seed + 1), config.device)
    supernet = Supernet(space, schema).to(config.device)
    optimizer = SliceAdagrad(supernet.parameters(), lr=config.lr)
    sampler = ArchitectureSampler(space, seed=config.seed)
    print(
        f"supernet over search space {space.name!r}: {supernet.network.num_parameters():,} shared weights, "
        f"{config.steps} steps of {config.batch_size} synthetic rows on {config.device}"
    )
    start = time.perf_counter()
    progress = tqdm(range(config.steps), desc="supernet", unit="step", mininterval=1.0)
    for step in progress:
        batch = to_batch(teacher.sample(config.batch_size, seed=config.seed + 100 + step), config.device)
        optimizer.lr = learning_rate(step, config.steps, config.lr)
        arch = sampler.sample_for_step(step, config.warmup_steps)
        loss = supernet_step(supernet, arch, batch, optimizer)
        elapsed = time.perf_counter() - start
        progress.set_postfix(
            loss=f"{loss.item():.4f}",
            samples_s=f"{(step + 1) * config.batch_size / elapsed:,.0f}",
            path="full" if arch is None else "subnet",
            refresh=False,
        )
    labels = validation.label.cpu().numpy()
    full_path = predict(supernet, validation)
    arch = ArchitectureSampler(space, seed=config.seed + 1).sample()
    net = supernet.extract(arch).eval()
    probabilities = predict(net, validation)
    metrics = {
        "space": space.name,
        "steps": config.steps,
        "train_seconds": round(time.perf_counter() - start, 2),
        "validation_label_rate": float(labels.mean()),
        "full_path_validation_auc": roc_auc(labels, full_path),
        "subnet_validation_auc": roc_auc(labels, probabilities),
        "subnet_validation_logloss": log_loss(labels, probabilities),
        "constant_predictor_logloss": log_loss(labels, np.full_like(probabilities, labels.mean())),
        "subnet_mflops": net.mflops(),
        "subnet_parameters": net.num_parameters(),
    }
    config.out.mkdir(parents=True, exist_ok=True)
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

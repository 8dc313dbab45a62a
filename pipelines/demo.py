"""The local demo, until the Kubeflow pipeline lands: synthetic Criteo-format log -> Feast ingestion ->
a short supernet training from the training split -> one sampled subnet evaluated on validation."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from components.steps.data import IngestedData
from components.steps.train_supernet import SupernetRun, train_supernet
from features.ingest import SplitSpec, ingest
from features.schema import builtin_schema
from features.synthetic import write_synthetic_log
from model.metrics import log_loss
from model.sampling import ArchitectureSampler
from model.trainer import evaluate, load_model


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


def run_demo(config: DemoConfig) -> dict:
    schema = builtin_schema("criteo")
    config.out.mkdir(parents=True, exist_ok=True)
    raw = config.out / f"synthetic_criteo_{config.rows}_seed{config.seed}.txt"
    if not raw.exists():
        print(f"writing {config.rows:,} synthetic Criteo-format rows (teacher labels) to {raw}", flush=True)
        write_synthetic_log(schema, raw, config.rows, seed=config.seed, cardinality=config.cardinality)
    ingest(schema, [raw], config.out / "data", SplitSpec())
    run = SupernetRun(
        space=config.space,
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        full_path_warmup_fraction=config.warmup_steps / config.steps,
        seed=config.seed,
    )
    device = torch.device(config.device)
    shutil.rmtree(config.out / "supernet", ignore_errors=True)  # a fresh run, not a resumed one
    print(f"supernet over search space {config.space!r}: {config.steps} steps of {config.batch_size} rows on {device}")
    trained = train_supernet(config.out / "data", config.out / "supernet", run, device)
    data = IngestedData(config.out / "data")
    supernet = load_model(config.out / "supernet" / "checkpoint.pt", device)
    arch = ArchitectureSampler(supernet.space, seed=config.seed + 1).sample()
    net = supernet.extract(arch).eval()
    subnet = evaluate(net, data.batches("validation"), device)
    labels = np.concatenate([b.label.numpy() for b in data.batches("validation")])
    metrics = {
        "space": config.space,
        "steps": config.steps,
        "train_seconds": round(trained["training"]["seconds"], 2),
        "samples_per_second": round(trained["training"]["samples_per_second"]),
        "validation_rows": len(labels),
        "validation_label_rate": float(labels.mean()),
        "full_path_validation_auc": trained["validation_after"]["full_path"]["auc"],
        "subnet_validation_auc": subnet["auc"],
        "subnet_validation_logloss": subnet["log_loss"],
        "constant_predictor_logloss": log_loss(labels, np.full_like(labels, labels.mean())),
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

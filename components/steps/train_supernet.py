"""train_supernet: a weight-sharing supernet trained on the training split (resumes from its checkpoint), in this
process (or the processes torchrun starts), or on a cluster by a distributed job of several pods.

    torchrun ... -m components.steps.train_supernet DATA OUT RUN_JSON DEVICE     (what each job process runs)
"""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from components.steps.cluster_training import SHARED_VOLUME, KubernetesAPI, TrainingJob, own_pod, run_job
from components.steps.common import StepConfig, steps_for, write_json
from components.steps.data import IngestedData
from model.distributed import init_from_environment, local_device, shutdown
from model.sampling import ArchitectureSampler
from model.space import get_space
from model.supernet import Supernet
from model.trainer import TrainConfig, Trainer, describe, evaluate

# Each step trains one uniformly sampled subnet, so a subnet's weights see a sliver of the steps: on the 8k
# training rows of the shared Avazu and Criteo folds, sampled subnets scored a mean validation AUC of 0.57 and
# 0.54 with inherited weights after 188 steps, 0.68 after 1,250. Fewer steps say little about the subnets.
MIN_SUPERNET_STEPS = 1000


@dataclass(frozen=True)
class SupernetRun(StepConfig):
    space: str = "ctr"
    epochs: float = 1.0
    steps: int | None = None  # overrides epochs
    batch_size: int = 512
    lr: float = 0.12
    optimizer: str = "adagrad"
    full_path_warmup_fraction: float = 0.2  # of the steps (the reference: 15,000 of ~72,000 on Criteo)
    checkpoint_every: int = 500
    use_layernorm: bool = True
    seed: int = 0
    progress: bool = True


def train_supernet(data_dir: Path, out: Path, run: SupernetRun, device: torch.device) -> dict[str, Any]:
    """Train a supernet on the training split; resumes from `out/checkpoint.pt` when present."""
    world = init_from_environment(device)
    device = local_device(device)
    try:
        data = IngestedData(data_dir)
        torch.manual_seed(run.seed)
        supernet = Supernet(get_space(run.space), data.input_schema, run.use_layernorm)
        steps = run.steps or steps_for(data, run.batch_size * world.size, run.epochs)
        config = TrainConfig(
            steps=steps,
            lr=run.lr,
            optimizer=run.optimizer,
            full_path_warmup_steps=round(steps * run.full_path_warmup_fraction),
            checkpoint_every=run.checkpoint_every,
            seed=run.seed,
            progress=run.progress,
        )
        if steps < MIN_SUPERNET_STEPS and world.is_main:
            print(
                f"warning: {steps} supernet steps; sampled subnets need about {MIN_SUPERNET_STEPS} or more to be "
                "ranked usefully: raise --epochs or --steps",
                file=sys.stderr,
                flush=True,
            )
        trainer = Trainer(supernet, config, device, out, world, describe(supernet))
        if trainer.resume() and world.is_main:
            print(f"resuming from {trainer.checkpoint_path} at step {trainer.step} of {steps}")
        before = _subnet_losses(supernet, data, run, device) if world.is_main else None
        result = trainer.fit(data.train_stream(run.batch_size, run.seed))
        if not world.is_main:
            return {}
        metrics = {
            "run": run.to_dict(),
            "device": str(device),
            "world_size": world.size,
            "training": asdict(result),
            "validation_before": before,
            "validation_after": _subnet_losses(supernet, data, run, device),
            "checkpoint": str(trainer.checkpoint_path),
        }
        write_json(out / "metrics.json", metrics)
        return metrics
    finally:
        shutdown(world)


def train_on_cluster(
    data_dir: Path,
    out: Path,
    run: SupernetRun,
    nodes: int,
    gpus: int,
    kind: str,
    api: KubernetesAPI,
    node_selector: dict[str, str] | None = None,
    shared: Path = Path(SHARED_VOLUME[1]),
    timeout_s: float = 48 * 3600,
) -> dict[str, Any]:
    """Train on `nodes` pods (`gpus` each, 0: CPUs; on nodes matching `node_selector`) as a `kind` job running
    this pod's own image; the data and the supernet pass through `shared` (the nasrec-data volume, mounted in this
    pod and the job's)."""
    namespace, image = own_pod(api)
    name = f"nasrec-supernet-{uuid.uuid4().hex[:8]}"
    work = shared / "jobs" / name
    shutil.copytree(data_dir, work / "data")
    try:
        device = "cuda" if gpus else "cpu"
        command = ("-m", __name__, str(work / "data"), str(work / "supernet"), json.dumps(run.to_dict()), device)
        job = TrainingJob(name, image, command, nodes, gpus, kind, namespace, node_selector=node_selector or {})
        run_job(api, job, timeout_s)
        shutil.copytree(work / "supernet", out, dirs_exist_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return json.loads((out / "metrics.json").read_text())


def _subnet_losses(supernet: Supernet, data: IngestedData, run: SupernetRun, device: torch.device) -> dict:
    """Validation log loss of the full path and the mean over 4 fixed sampled subnets (inherited weights)."""
    sampler = ArchitectureSampler(supernet.space, seed=10_000 + run.seed, use_layernorm=run.use_layernorm)
    archs = [sampler.sample() for _ in range(4)]
    full = evaluate(supernet, data.batches("validation"), device)
    subnets = [evaluate(lambda d, s, a=a: supernet(d, s, a), data.batches("validation"), device) for a in archs]
    return {
        "full_path": full,
        "subnet_mean_log_loss": sum(m["log_loss"] for m in subnets) / len(subnets),
        "subnet_mean_auc": sum(m["auc"] for m in subnets) / len(subnets),
    }


if __name__ == "__main__":  # one process of a distributed job (train_on_cluster)
    data, out, run_json, device = sys.argv[1:]
    train_supernet(Path(data), Path(out), SupernetRun.from_dict(json.loads(run_json)), torch.device(device))

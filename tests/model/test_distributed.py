"""Data-parallel supernet training: two gloo processes under torchrun end with equal weights, and
with the weights of one process training on both ranks' batches together."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from model.space import get_space
from model.supernet import Supernet
from model.trainer import TrainConfig, Trainer
from model.training import Batch
from tests.model.test_trainer import SCHEMA, stream


def pairs():
    """Batches 2k and 2k+1 of the stream as one batch: what ranks 0 and 1 see together at step k."""
    batches = stream()
    while True:
        a, b = next(batches), next(batches)
        yield Batch(*(torch.cat([x, y]) for x, y in zip((a.dense, a.sparse, a.label), (b.dense, b.sparse, b.label))))


def test_two_process_ddp_run_ends_with_equal_weights(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(root / "tests" / "model" / "ddp_worker.py"), str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), name
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 8

    torch.manual_seed(0)  # rank 0's initialisation, which the trainer broadcast
    alone = Supernet(get_space("demo"), SCHEMA)
    initial = {k: v.clone() for k, v in alone.state_dict().items()}
    config = TrainConfig(steps=8, lr=0.05, full_path_warmup_steps=3, progress=False)
    Trainer(alone, config, torch.device("cpu")).fit(pairs())
    assert any(not torch.equal(initial[name], value) for name, value in rank0.items())
    for name, value in alone.state_dict().items():
        assert torch.allclose(value, rank0[name], atol=1e-5), name

"""The same training loop on CUDA: bf16 autocast with float32 weights, exact resume, CPU-equal subnets.
Skipped without a CUDA device (CI has none; bench/gpu_check.sh runs these on a GPU machine)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from model.sampling import ArchitectureSampler
from model.space import get_space
from model.supernet import Supernet
from model.trainer import TrainConfig, Trainer, evaluate
from tests.model.test_trainer import SCHEMA, stream

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")


def supernet() -> Supernet:
    torch.manual_seed(0)
    return Supernet(get_space("demo"), SCHEMA)


def config(**changes) -> TrainConfig:
    return TrainConfig(**{"steps": 40, "lr": 0.02, "full_path_warmup_steps": 8, "progress": False, **changes})


def test_bf16_training_keeps_float32_weights_and_learns() -> None:
    model = supernet()
    validation = list(itertools.islice(stream(seed=9, batch=256), 4))
    before = evaluate(model.to(CUDA), validation, CUDA)["log_loss"]
    result = Trainer(model, config(steps=150, lr=0.05), CUDA).fit(stream())
    assert all(p.dtype == torch.float32 and p.is_cuda for p in model.parameters())
    assert evaluate(model, validation, CUDA)["log_loss"] < before
    assert result.samples_per_second > 0


def test_resume_on_cuda_reaches_the_same_weights(tmp_path: Path) -> None:
    whole = Trainer(supernet(), config(), CUDA)
    whole.fit(stream())
    first = Trainer(supernet(), config(checkpoint_every=10), CUDA, tmp_path)
    with pytest.raises(ValueError, match="ended after 15"):
        first.fit(itertools.islice(stream(), 15))
    resumed = Trainer(supernet(), config(checkpoint_every=10), CUDA, tmp_path)
    assert resumed.resume() and resumed.step == 10
    resumed.fit(stream())
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), f"{name}: max difference {(a - b).abs().max().item()}"


def test_subnets_compute_the_same_on_cuda_and_cpu() -> None:
    model = supernet()
    batch = next(stream(seed=5, batch=128))
    sampler = ArchitectureSampler(model.space, 3)
    for _ in range(5):
        arch = sampler.sample()
        with torch.no_grad():
            on_cpu = model.cpu()(batch.dense, batch.sparse, arch)
            on_gpu = model.to(CUDA)(batch.dense.to(CUDA), batch.sparse.to(CUDA), arch).cpu()
        assert torch.allclose(on_cpu, on_gpu, atol=1e-4, rtol=1e-4)

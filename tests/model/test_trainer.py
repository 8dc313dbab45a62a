"""The training loop: schedules, checkpoints and exact resume, the NaN guard, early stopping."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from model.network import InputSchema, NASRecNet
from model.sampling import ArchitectureSampler
from model.space import get_space
from model.supernet import Supernet
from model.trainer import (
    TrainConfig,
    Trainer,
    TrainingDiverged,
    build_model,
    describe,
    evaluate,
    load_checkpoint,
    load_model,
)
from model.training import Batch

SCHEMA = InputSchema(3, (20, 30, 10))
CPU = torch.device("cpu")


def stream(seed: int = 0, batch: int = 32):
    """An endless, seeded stream of batches with a learnable label."""
    rng = np.random.default_rng(seed)
    while True:
        sparse = rng.integers(0, [20, 30, 10], size=(batch, 3))
        dense = rng.normal(size=(batch, 3)).astype(np.float32)
        label = ((sparse[:, 0] % 2 == 0) ^ (dense[:, 0] > 0.5)).astype(np.float32)
        yield Batch(torch.from_numpy(dense), torch.from_numpy(sparse), torch.from_numpy(label))


def supernet() -> Supernet:
    torch.manual_seed(0)
    return Supernet(get_space("demo"), SCHEMA)


def config(**changes) -> TrainConfig:
    return TrainConfig(**{"steps": 12, "lr": 0.02, "full_path_warmup_steps": 4, "progress": False, **changes})


def as_format_1(path: Path) -> None:
    """Rewrite a checkpoint as written before optimisers were selectable: bare Adagrad sums."""
    state = torch.load(path, weights_only=False)
    state["adagrad_sums"] = [sums for (sums,) in state.pop("optimizer")["tensors"]]
    del state["config"]["optimizer"]
    torch.save({**state, "format_version": 1}, path)


@pytest.mark.parametrize("optimizer,old_format", [("adagrad", False), ("adam", False), ("adagrad", True)])
def test_resume_from_a_checkpoint_reaches_the_same_weights(tmp_path: Path, optimizer: str, old_format: bool) -> None:
    whole = Trainer(supernet(), config(optimizer=optimizer), CPU)
    whole.fit(stream())
    first = Trainer(supernet(), config(checkpoint_every=5, optimizer=optimizer), CPU, tmp_path)
    with pytest.raises(ValueError, match="ended after 7"):  # interrupted at step 7: the checkpoint of step 5 remains
        first.fit(itertools.islice(stream(), 7))
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 5
    if old_format:
        as_format_1(tmp_path / "checkpoint.pt")
    resumed = Trainer(supernet(), config(checkpoint_every=5, optimizer=optimizer), CPU, tmp_path)
    assert resumed.resume() and resumed.step == 5
    resumed.fit(stream())
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_stream_running_dry_is_an_error() -> None:
    with pytest.raises(ValueError, match="ended after 3 of 12 steps"):
        Trainer(supernet(), config(), CPU).fit(itertools.islice(stream(), 3))


def test_resume_rejects_a_checkpoint_of_another_run(tmp_path: Path) -> None:
    Trainer(supernet(), config(steps=3), CPU, tmp_path).fit(stream())
    with pytest.raises(ValueError, match="steps=3"):
        Trainer(supernet(), config(steps=5), CPU, tmp_path).resume()
    with pytest.raises(ValueError, match="optimizer state of 'adagrad' cannot resume 'adam'"):
        Trainer(supernet(), config(steps=3, optimizer="adam"), CPU, tmp_path).resume()


def test_unknown_optimizer_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"optimizer: unknown 'sgd'; known: \['adagrad', 'adam'\]"):
        config(optimizer="sgd")


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    def poisoned():
        for step, batch in enumerate(stream()):
            if step == 7:
                batch.dense[0, 0] = float("nan")
            yield batch

    trainer = Trainer(supernet(), config(checkpoint_every=3), CPU, tmp_path)
    with pytest.raises(TrainingDiverged, match=r"step 8: the loss is nan.*checkpoint\.pt"):
        trainer.fit(poisoned())
    kept = load_checkpoint(tmp_path / "checkpoint.pt")
    assert kept["step"] == 6
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the bad step changed nothing


def test_early_stopping_keeps_the_best_validation_weights() -> None:
    validation = list(itertools.islice(stream(seed=9), 4))
    net = NASRecNet(ArchitectureSampler(get_space("demo"), 0).sample(), SCHEMA)
    seen = []

    def validate(model):
        metrics = evaluate(model, validation, CPU)
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return metrics

    result = Trainer(net, config(steps=20, eval_every=4), CPU, validate=validate).fit(stream())
    assert [p["step"] for p in result.validation_curve] == [4, 8, 12, 16, 20]
    best = max(range(5), key=lambda i: result.validation_curve[i]["auc"])
    assert result.best == result.validation_curve[best]
    for name, value in net.state_dict().items():
        assert torch.equal(value, seen[best][name]), name


def test_patience_stops_training_and_a_stopped_run_stays_stopped(tmp_path: Path) -> None:
    aucs = iter([0.6, 0.7, 0.65, 0.69, 0.5, 0.9])  # best at the 2nd validation, then 2 without a better AUC

    def validate(model):
        return {"auc": next(aucs), "log_loss": 0.5}

    net = NASRecNet(ArchitectureSampler(get_space("demo"), 0).sample(), SCHEMA)
    run = config(steps=24, eval_every=4, patience=2)
    result = Trainer(net, run, CPU, tmp_path, validate=validate).fit(stream())
    assert result.steps == 16 and [p["step"] for p in result.validation_curve] == [4, 8, 12, 16]
    assert result.best["step"] == 8
    again = Trainer(NASRecNet(net.arch, SCHEMA), run, CPU, tmp_path, validate=validate)
    assert again.resume() and again.fit(stream()).steps == 16  # nothing more trained, no validation drawn
    assert next(aucs) == 0.5


def test_evaluate_matches_scikit_learn() -> None:
    batches = list(itertools.islice(stream(seed=4, batch=97), 5))
    net = NASRecNet(ArchitectureSampler(get_space("demo"), 2).sample(), SCHEMA).eval()
    metrics = evaluate(net, batches, CPU)
    with torch.no_grad():
        scores = torch.cat([torch.sigmoid(net(b.dense, b.sparse)) for b in batches]).numpy()
    labels = torch.cat([b.label for b in batches]).numpy()
    assert metrics["rows"] == 485
    assert abs(metrics["auc"] - roc_auc_score(labels, scores)) < 1e-6
    assert abs(metrics["log_loss"] - sk_log_loss(labels, scores)) < 1e-6


def test_checkpoints_rebuild_their_model(tmp_path: Path) -> None:
    for model in (supernet(), NASRecNet(ArchitectureSampler(get_space("demo"), 5).sample(), SCHEMA)):
        Trainer(model, config(steps=2), CPU, tmp_path, metadata=describe(model)).fit(stream())
        loaded = load_model(tmp_path / "checkpoint.pt")
        assert type(loaded) is type(model)
        for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
            assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model({"kind": "transformer", "schema": {"num_dense": 1, "cardinalities": [2]}})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_train_supernet_resumes_after_a_kill(ingested: Path, tmp_path: Path) -> None:
    """Kill -9 the CLI mid-run, run it again: the weights equal an uninterrupted run's."""
    command = [sys.executable, "-m", "pipelines.cli", "train-supernet", "--data", str(ingested), "--steps", "40"]
    command += ["--batch-size", "64", "--lr", "0.03", "--checkpoint-every", "5", "--device", "cpu"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([*command, "--out", str(tmp_path / "whole")], check=True, env=env, capture_output=True)
    killed = subprocess.Popen([*command, "--out", str(tmp_path / "killed")], env=env, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    step = load_checkpoint(checkpoint)["step"]
    assert 5 <= step < 40, "the kill should land mid-run"
    subprocess.run([*command, "--out", str(tmp_path / "killed")], check=True, env=env, capture_output=True)
    whole = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["model"]
    resumed = load_checkpoint(checkpoint)["model"]
    for name, value in whole.items():
        assert torch.equal(value, resumed[name]), name

"""One training loop for supernets and standalone networks (NASRecNets, baselines).

Adagrad (eps 1e-2; Adam as an option), linear warm-up then cosine, gradient-norm clip, BCE-with-logits; for supernets
single-operator any-connection sampling with the full-path warm-up (NASREC.md section 5). CUDA runs
under bf16 autocast with pinned, non-blocking copies; CPU in float32.

Checkpoints hold everything the next step depends on (weights, optimiser state, sampler and torch RNG
states, the step), and the data stream is replayed up to that step on resume, so a resumed run
reaches the same weights as an uninterrupted one. A NaN/inf loss stops the run before the weights
change and leaves the last good checkpoint in place.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from model.arch import Architecture
from model.baselines import BaselineConfig, build_baseline
from model.distributed import World, average_updates, broadcast_parameters, check_in_sync
from model.metrics import StreamingMetrics
from model.network import InputSchema, NASRecNet
from model.sampling import ArchitectureSampler
from model.space import SearchSpace
from model.supernet import Supernet
from model.training import (
    OPTIMIZERS,
    Batch,
    NonFiniteLoss,
    apply_updates,
    autocast,
    build_optimizer,
    learning_rate,
    network_gradients,
    supernet_gradients,
)

CHECKPOINT_FORMAT = 2
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    lr: float = 0.12
    optimizer: str = "adagrad"  # the paper's; "adam" (lazy on embedding rows) often suits small data better
    warmup_fraction: float = 0.1  # of `steps`, for the learning rate
    max_grad_norm: float = 5.0
    full_path_warmup_steps: int = 0  # supernets: full path with probability 1 - t / T before step T
    checkpoint_every: int = 0  # 0: only at the end
    log_every: int = 50
    eval_every: int = 0  # with a `validate` function: evaluate this often and keep the best weights (by AUC)
    patience: int = 0  # stop after this many validations without a better AUC (0: train all steps)
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps: must be >= 1, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: unknown {self.optimizer!r}; known: {sorted(OPTIMIZERS)}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction: must be in [0, 1), got {self.warmup_fraction}")
        if min(self.checkpoint_every, self.full_path_warmup_steps, self.eval_every, self.patience) < 0:
            raise ValueError("checkpoint_every, full_path_warmup_steps, eval_every and patience must be >= 0")


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the checkpoint kept."""


@dataclass
class TrainResult:
    steps: int
    seconds: float
    samples_per_second: float
    loss_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss over the last interval)
    resumed_from: int = 0
    validation_curve: list[dict] = field(default_factory=list)  # {"step", "auc", "log_loss", "rows"}
    best: dict | None = None  # the validation point whose weights the model holds at the end


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Trainer:
    """Trains `model` (a Supernet or any (dense, sparse) -> logits module) in place."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        device: torch.device,
        checkpoint_dir: Path | None = None,
        world: World | None = None,
        metadata: dict[str, Any] | None = None,
        validate: Callable[[nn.Module], dict] | None = None,
    ):
        self.model = model.to(device)
        self.config = config
        self.device = device
        self.checkpoint_dir = checkpoint_dir
        self.world = world or World()
        self.metadata = metadata or {}  # stored in every checkpoint (e.g. space, schema, architecture)
        self.optimizer = build_optimizer(config.optimizer, model.parameters(), config.lr)
        self.sampler = (
            ArchitectureSampler(model.space, config.seed, model.use_layernorm) if isinstance(model, Supernet) else None
        )
        self.validate = validate
        self.step = 0
        self.loss_curve: list[tuple[int, float]] = []
        self.validation_curve: list[dict] = []
        self.best: tuple[dict, dict] | None = None  # (metrics, CPU copy of the weights)
        broadcast_parameters(model, self.world)

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.checkpoint_dir is None else self.checkpoint_dir / CHECKPOINT_NAME

    def fit(self, batches: Iterable[Batch]) -> TrainResult:
        """Train for `config.steps` steps from an endless, seeded stream of CPU batches.

        The stream must be the same on every run (and every rank) for resume and data parallelism
        to be exact: rank r takes batches r, r + W, r + 2W, ... and a resumed run skips those used.
        """
        resumed_from = self.step
        stream = itertools.islice(batches, self.step * self.world.size + self.world.rank, None, self.world.size)
        start, window, samples = time.perf_counter(), [], 0
        progress = self._progress_bar()
        remaining = itertools.islice(stream, 0 if self.stopped_early else self.config.steps - self.step)
        for batch in _to_device(remaining, self.device):
            loss = self._train_step(batch)
            self.step += 1
            window.append(loss)
            samples += batch.label.shape[0] * self.world.size
            rate = samples / (time.perf_counter() - start)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.4f}", samples_s=f"{rate:,.0f}", refresh=False)
            if self.step % self.config.log_every == 0 or self.step == self.config.steps:
                self.loss_curve.append((self.step, sum(window) / len(window)))
                window = []
            validated = self._due(self.config.eval_every) and self.validate is not None
            if validated:
                self._validate()
            if self._due(self.config.checkpoint_every):
                self.save_checkpoint()
            if validated and self.stopped_early:  # only a validation can end the patience
                break
        if progress is not None:
            progress.close()
        if self.step < self.config.steps and not self.stopped_early:
            raise ValueError(f"the batch stream ended after {self.step} of {self.config.steps} steps")
        if self.validate is not None and (not self.validation_curve or self.validation_curve[-1]["step"] != self.step):
            self._validate()
        check_in_sync(self.model, self.world)
        if self.best is not None:
            self.model.load_state_dict(self.best[1])
        self.save_checkpoint()
        seconds = time.perf_counter() - start
        return TrainResult(
            self.step,
            seconds,
            samples / max(seconds, 1e-9),
            list(self.loss_curve),
            resumed_from,
            list(self.validation_curve),
            None if self.best is None else self.best[0],
        )

    @property
    def stopped_early(self) -> bool:
        """`patience` validations in a row brought no better AUC (every rank sees the same curve)."""
        if not self.config.patience or self.best is None:
            return False
        best_step = self.best[0]["step"]
        return sum(point["step"] > best_step for point in self.validation_curve) >= self.config.patience

    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0 and self.step < self.config.steps

    def _validate(self) -> None:
        """Evaluate; remember the weights of the best validation AUC so far (early stopping)."""
        self.model.eval()  # no dropout while validating
        try:
            metrics = {"step": self.step, **self.validate(self.model)}
        finally:
            self.model.train()
        self.validation_curve.append(metrics)
        if self.best is None or metrics["auc"] > self.best[0]["auc"]:
            self.best = (metrics, {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()})

    def _train_step(self, batch: Batch) -> float:
        config = self.config
        self.optimizer.lr = learning_rate(self.step, config.steps, config.lr, config.warmup_fraction)
        if self.sampler is None:
            loss, updates = network_gradients(self.model, batch)
        else:
            arch = self.sampler.sample_for_step(self.step, config.full_path_warmup_steps)
            loss, updates = supernet_gradients(self.model, arch, batch)
        try:
            return apply_updates(self.optimizer, loss, average_updates(updates, self.world), config.max_grad_norm)[0]
        except NonFiniteLoss as error:
            kept = self.checkpoint_path if self.checkpoint_path and self.checkpoint_path.exists() else None
            raise TrainingDiverged(
                f"step {self.step + 1}: {error}; weights left as after step {self.step}; "
                + (f"last good checkpoint: {kept}" if kept else "no checkpoint was written yet")
                + " (try a lower --lr)"
            ) from error

    def _progress_bar(self) -> tqdm | None:
        if not (self.config.progress and self.world.is_main):
            return None
        name = "supernet" if self.sampler is not None else "train"
        return tqdm(total=self.config.steps, initial=self.step, desc=name, unit="step", mininterval=1.0)

    def save_checkpoint(self) -> None:
        """Atomically replace the checkpoint (rank 0 only): a kill mid-write keeps the previous one."""
        if self.checkpoint_path is None or not self.world.is_main:
            return
        state = {
            "format_version": CHECKPOINT_FORMAT,
            "step": self.step,
            "config": asdict(self.config),
            "metadata": self.metadata,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler_state": None if self.sampler is None else self.sampler.rng.getstate(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "python_rng": random.getstate(),
            "loss_curve": self.loss_curve,
            "validation_curve": self.validation_curve,
            "best": self.best,
        }
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        partial = self.checkpoint_path.with_suffix(".partial")
        torch.save(state, partial)
        os.replace(partial, self.checkpoint_path)

    def resume(self) -> bool:
        """Continue from the checkpoint in `checkpoint_dir` if there is one. Returns whether it resumed."""
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return False
        state = load_checkpoint(self.checkpoint_path, self.device)
        if state["config"]["steps"] != self.config.steps or state["config"]["seed"] != self.config.seed:
            raise ValueError(
                f"{self.checkpoint_path}: written for steps={state['config']['steps']}, seed={state['config']['seed']}"
                f"; this run has steps={self.config.steps}, seed={self.config.seed} (use another --out to start over)"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.sampler is not None:
            self.sampler.rng.setstate(state["sampler_state"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        random.setstate(state["python_rng"])
        self.step = state["step"]
        self.loss_curve = [tuple(point) for point in state["loss_curve"]]
        self.validation_curve = state["validation_curve"]
        self.best = state["best"]
        return True


def _schema_dict(schema: InputSchema) -> dict[str, Any]:
    return {"num_dense": schema.num_dense, "cardinalities": list(schema.cardinalities)}


def describe(model: Supernet | NASRecNet) -> dict[str, Any]:
    """What `build_model` needs to rebuild `model` (stored as checkpoint metadata)."""
    schema = _schema_dict(model.schema)
    if isinstance(model, Supernet):
        return {
            "kind": "supernet",
            "space": model.space.to_dict(),
            "schema": schema,
            "use_layernorm": model.use_layernorm,
        }
    return {"kind": "nasrecnet", "architecture": model.arch.to_dict(), "schema": schema}


def describe_baseline(name: str, schema: InputSchema, config: BaselineConfig) -> dict[str, Any]:
    return {"kind": "baseline", "name": name, "config": asdict(config), "schema": _schema_dict(schema)}


def build_model(metadata: dict[str, Any]) -> nn.Module:
    """A freshly initialised model of the kind `describe` recorded."""
    schema = InputSchema(**metadata["schema"])
    kind = metadata.get("kind")
    if kind == "supernet":
        return Supernet(SearchSpace.from_dict(metadata["space"]), schema, metadata["use_layernorm"])
    if kind == "nasrecnet":
        return NASRecNet(Architecture.from_dict(metadata["architecture"]), schema)
    if kind == "baseline":
        config = BaselineConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in metadata["config"].items()})
        return build_baseline(metadata["name"], schema, config)
    raise ValueError(f"unknown model kind {kind!r} (supernet, nasrecnet or baseline)")


def load_model(path: Path, device: torch.device | str = "cpu") -> nn.Module:
    """The trained model a checkpoint holds."""
    state = load_checkpoint(path, device)
    model = build_model(state["metadata"]).to(device)
    model.load_state_dict(state["model"])
    return model


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `Trainer`, with a clear error for anything else."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as error:
        raise ValueError(f"{path}: not a readable checkpoint ({error})") from error
    version = state.get("format_version") if isinstance(state, dict) else None
    if version == 1:  # Adagrad-only checkpoints: their sums are the Adagrad state of format 2
        state["optimizer"] = {"name": "adagrad", "tensors": [[sums] for sums in state.pop("adagrad_sums")]}
        state["config"].setdefault("optimizer", "adagrad")
    elif version != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a checkpoint of format 1 or {CHECKPOINT_FORMAT}")
    return state


def _to_device(batches: Iterator[Batch], device: torch.device) -> Iterator[Batch]:
    """Pinned memory and non-blocking copies on CUDA, the batch one step ahead of its use."""
    if device.type != "cuda":
        yield from (b.to(device) for b in batches)
        return
    pending = None
    for batch in batches:
        pinned = Batch(*(t.pin_memory() for t in (batch.dense, batch.sparse, batch.label)))
        ready, pending = pending, pinned.to(device, non_blocking=True)
        if ready is not None:
            yield ready
    if pending is not None:
        yield pending


@torch.no_grad()
def evaluate(predict: Callable[[Tensor, Tensor], Tensor], batches: Iterable[Batch], device: torch.device) -> dict:
    """Exact AUC and log loss of `predict(dense, sparse) -> logits` over a stream of batches."""
    metrics = StreamingMetrics()
    for batch in _to_device(iter(batches), device):
        with autocast(device):
            logits = predict(batch.dense, batch.sparse)
        metrics.update(batch.label.cpu().numpy(), torch.sigmoid(logits.float()).cpu().numpy())
    return metrics.summary()

"""Regularised (aging) evolution over a trained supernet (NASREC.md section 7).

Fitness scores a candidate from the supernet's weights, two ways (FitnessConfig.method):
- "head", the paper's post-training fine-tuning: with the supernet's weights fixed, only the subnet's
  final linear head is trained, then validation log loss is measured on a fixed set of batches (the
  same for every candidate). The body's outputs do not change while the head trains, so they are
  computed once per batch and the head steps run on those features.
- "subnet": a copy of the whole subnet is trained from its inherited weights for a few hundred steps
  on distinct training batches, then scored the same way. About as costly as that many training
  steps, but it repairs the wirings whose shared block weights the supernet serves badly, which the
  head alone cannot (bench/results/rank_corr_teacher_1m/FINDINGS.md).

The search is a pure function of (seed, fitness values): every evaluation is appended to a JSON-lines
history, and a resumed search replays the same decisions, reading fitness from the history instead
of evaluating again.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import multiprocessing.pool
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model.arch import Architecture
from model.metrics import log_loss, roc_auc
from model.network import InputSchema, NASRecNet
from model.sampling import ArchitectureSampler, mutate, mutations_per_child
from model.space import SearchSpace
from model.supernet import Supernet
from model.trainer import TrainConfig, Trainer, TrainingDiverged, load_model
from model.trainer import evaluate as evaluate_network
from model.training import Batch, SliceAdagrad, autocast, learning_rate

_MAX_DRAWS = 300  # per candidate, before a too-tight MFLOPs budget is reported


FITNESS_METHODS = ("head", "subnet")


@dataclass(frozen=True)
class FitnessConfig:
    """How candidates are fine-tuned before scoring; `for_method` gives each method's defaults."""

    finetune_steps: int = 500
    finetune_lr: float = 0.04  # peak Adagrad lr: linear warm-up, then cosine decay
    finetune_warmup_steps: int = 50
    method: str = "head"  # "head": the final linear layer alone; "subnet": the whole subnet, from inherited weights

    def __post_init__(self) -> None:
        if self.method not in FITNESS_METHODS:
            raise ValueError(f"fitness method: {self.method!r} is not one of {', '.join(FITNESS_METHODS)}")
        if self.finetune_steps < 1:
            raise ValueError(f"finetune_steps: must be >= 1, got {self.finetune_steps}")
        if self.finetune_lr <= 0:
            raise ValueError(f"finetune_lr: must be > 0, got {self.finetune_lr}")
        if not 0 <= self.finetune_warmup_steps < self.finetune_steps:
            raise ValueError(
                f"finetune_warmup_steps: must be in [0, finetune_steps={self.finetune_steps}), "
                f"got {self.finetune_warmup_steps}"
            )

    @classmethod
    def for_method(cls, method: str) -> FitnessConfig:
        """Each method's defaults, measured on the rank-correlation study (FINDINGS.md): the head is near
        convergence after 500 steps; 600 subnet steps at the training lr (0.12) ranked best of 300, 600 and 1,000."""
        if method == "subnet":
            return cls(finetune_steps=600, finetune_lr=0.12, finetune_warmup_steps=60, method="subnet")
        return cls(method=method)

    @property
    def warmup_fraction(self) -> float:
        return self.finetune_warmup_steps / self.finetune_steps


@dataclass(frozen=True)
class SearchConfig:
    population: int = 128
    generations: int = 240
    sample_size: int = 64
    children: int = 8
    max_mflops: float | None = None  # reject architectures that cost more per sample
    seed: int = 0
    fitness: FitnessConfig = field(default_factory=FitnessConfig)

    def __post_init__(self) -> None:
        for name in ("population", "sample_size", "children"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.generations < 0:
            raise ValueError(f"generations: must be >= 0, got {self.generations}")
        if self.children > self.population:
            raise ValueError(f"children ({self.children}) cannot exceed the population ({self.population})")

    @property
    def evaluations(self) -> int:
        return self.population + self.generations * self.children


def architecture_cost(arch: Architecture, schema: InputSchema) -> tuple[float, int]:
    """(MFLOPs per sample, non-embedding parameters), from a shape-only network."""
    with torch.device("meta"):
        net = NASRecNet(arch, schema)
    return net.mflops(), net.num_parameters()


class HeadFinetuneFitness:
    """Scores architectures with the supernet's weights: validation log loss after head-only fine-tuning."""

    def __init__(
        self,
        supernet: Supernet,
        finetune_batches: list[Batch],
        eval_batches: list[Batch],
        config: FitnessConfig,
        device: torch.device,
    ):
        if not finetune_batches or not eval_batches:
            raise ValueError("fitness needs at least one fine-tuning batch and one evaluation batch")
        self.supernet = supernet.to(device).eval()
        self.finetune_batches = [b.to(device) for b in finetune_batches]
        self.eval_batches = [b.to(device) for b in eval_batches]
        self.eval_labels = torch.cat([b.label for b in eval_batches]).numpy()
        self.config = config
        self.device = device

    def __call__(self, arch: Architecture) -> dict[str, Any]:
        start = time.perf_counter()
        weights = self.supernet.subnet_weights(arch)
        head_weight = weights["head.weight"].detach().float().clone()  # (1, F)
        head_bias = weights["head.bias"].detach().float().clone()  # (1,)
        train_features = self._features(arch, self.finetune_batches)
        eval_inputs, eval_offsets = (torch.cat(parts) for parts in zip(*self._features(arch, self.eval_batches)))
        eval_features = (eval_inputs, eval_offsets)  # (N, F), (N,)
        inherited = self._score(eval_features, head_weight, head_bias)
        tuned = self._score(eval_features, *self._train_head(train_features, head_weight, head_bias))
        return _fitness_record(arch, self.supernet.schema, inherited, tuned, start)

    @torch.no_grad()
    def _features(self, arch: Architecture, batches: list[Batch]) -> list[tuple[Tensor, Tensor]]:
        """Per batch, what the head reads (B, F) and the fixed rest of the logit (B,), e.g. a first-order term."""
        with autocast(self.device):
            pairs = [self.supernet.subnet_head_inputs(arch, b.dense, b.sparse) for b in batches]
        return [(inputs.float(), offset.float()) for inputs, offset in pairs]

    def _train_head(self, features: list[tuple[Tensor, Tensor]], weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        config = self.config
        weight, bias = weight.requires_grad_(), bias.requires_grad_()
        optimizer = SliceAdagrad([weight, bias], lr=config.finetune_lr)
        for step in range(config.finetune_steps):
            k = step % len(features)
            optimizer.lr = learning_rate(step, config.finetune_steps, config.finetune_lr, config.warmup_fraction)
            inputs, offset = features[k]
            logits = (inputs @ weight.T).squeeze(-1) + bias + offset
            loss = F.binary_cross_entropy_with_logits(logits, self.finetune_batches[k].label)
            weight_grad, bias_grad = torch.autograd.grad(loss, [weight, bias])
            optimizer.apply([(weight, None, weight_grad), (bias, None, bias_grad)])
        return weight.detach(), bias.detach()

    @torch.no_grad()
    def _score(self, features: tuple[Tensor, Tensor], weight: Tensor, bias: Tensor) -> dict[str, float]:
        inputs, offset = features
        probabilities = torch.sigmoid((inputs @ weight.T).squeeze(-1) + bias + offset).cpu().numpy()
        if not np.isfinite(probabilities).all():
            return {"log_loss": math.inf, "auc": 0.5}
        return {"log_loss": log_loss(self.eval_labels, probabilities), "auc": roc_auc(self.eval_labels, probabilities)}


class SubnetFinetuneFitness:
    """Scores architectures by training a copy of each subnet from its inherited weights, then scoring it.

    Every candidate trains on the same `finetune_steps` distinct training batches, one step each, under
    the same schedule, so scores differ only by architecture. The supernet is never changed.
    """

    def __init__(
        self,
        supernet: Supernet,
        train_batches: list[Batch],
        eval_batches: list[Batch],
        config: FitnessConfig,
        device: torch.device,
    ):
        if len(train_batches) < config.finetune_steps:
            raise ValueError(
                f"subnet fitness: {config.finetune_steps} steps need as many training batches, got {len(train_batches)}"
            )
        if not eval_batches:
            raise ValueError("fitness needs at least one evaluation batch")
        self.supernet = supernet.to(device).eval()
        self.train_batches = train_batches[: config.finetune_steps]  # on the CPU: the trainer moves each in turn
        self.eval_batches = eval_batches
        self.train_config = TrainConfig(
            steps=config.finetune_steps,
            lr=config.finetune_lr,
            warmup_fraction=config.warmup_fraction,
            progress=False,
        )
        self.device = device

    def __call__(self, arch: Architecture) -> dict[str, Any]:
        start = time.perf_counter()
        net = self.supernet.extract(arch)  # a copy: training it leaves the supernet as it was
        inherited = evaluate_network(net.eval(), self.eval_batches, self.device)
        try:
            Trainer(net, self.train_config, self.device).fit(self.train_batches)
            tuned = evaluate_network(net.eval(), self.eval_batches, self.device)
        except TrainingDiverged:  # a candidate that diverges is the worst, not the end of the search
            tuned = {"log_loss": math.inf, "auc": 0.5}
        return _fitness_record(arch, self.supernet.schema, inherited, tuned, start)


def _fitness_record(
    arch: Architecture, schema: InputSchema, inherited: dict[str, float], tuned: dict[str, float], start: float
) -> dict[str, Any]:
    """A history record: scores with the inherited and the fine-tuned weights, cost, and seconds since `start`."""
    mflops, parameters = architecture_cost(arch, schema)
    return {
        "architecture": arch.to_dict(),
        "val_logloss": tuned["log_loss"],
        "val_auc": tuned["auc"],
        "supernet_logloss": inherited["log_loss"],
        "supernet_auc": inherited["auc"],
        "mflops": mflops,
        "parameters": parameters,
        "seconds": round(time.perf_counter() - start, 3),
    }


Fitness = HeadFinetuneFitness | SubnetFinetuneFitness


def build_fitness(
    supernet: Supernet,
    finetune_batches: list[Batch],
    eval_batches: list[Batch],
    config: FitnessConfig,
    device: torch.device,
) -> Fitness:
    """The fitness `config.method` names, over the fixed fine-tuning and evaluation batches."""
    kind = SubnetFinetuneFitness if config.method == "subnet" else HeadFinetuneFitness
    return kind(supernet, finetune_batches, eval_batches, config, device)


class SearchHistory:
    """The JSON-lines history: one record per evaluated architecture, appended and flushed as it comes."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[Architecture, dict[str, Any]] = {}
        if path.exists():
            lines = path.read_text().splitlines()
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    arch = Architecture.from_dict(record["architecture"])
                except (ValueError, KeyError) as error:
                    if number == len(lines):  # the last line, cut short by a kill: evaluated again
                        break
                    raise ValueError(f"{path}, line {number}: not a search record ({error})") from error
                self.records[arch] = record
            self._rewrite()

    def _rewrite(self) -> None:
        """Drop a torn last line so that appends start on a fresh line."""
        partial = self.path.with_suffix(".partial")
        partial.write_text("".join(json.dumps(r) + "\n" for r in self.records.values()))
        os.replace(partial, self.path)

    def append(self, arch: Architecture, record: dict[str, Any]) -> None:
        self.records[arch] = record
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


Evaluator = Callable[[list[Architecture]], list[dict[str, Any]]]


def regularized_evolution(
    space: SearchSpace,
    schema: InputSchema,
    evaluate: Evaluator,
    config: SearchConfig,
    history: SearchHistory,
    use_layernorm: bool = True,
    progress: Callable[[int, int], None] | None = None,
    admissible: Callable[[Architecture], bool] | None = None,
    seeds: Iterable[Architecture] = (),
) -> list[dict[str, Any]]:
    """Run the search; returns every evaluated record in evaluation order (best = lowest val_logloss).
    `admissible`, when given, is a further constraint every candidate meets (the serving-latency budget).
    The first population holds the `seeds` within the budgets (in their order, at most a population),
    then sampled architectures."""
    rng = random.Random(config.seed)
    sampler = ArchitectureSampler(space, config.seed, use_layernorm)
    seen: set[Architecture] = set()
    done: list[dict[str, Any]] = []

    def affordable(arch: Architecture) -> bool:
        within_mflops = config.max_mflops is None or architecture_cost(arch, schema)[0] <= config.max_mflops
        return within_mflops and (admissible is None or admissible(arch))

    def run(archs: list[Architecture], generation: int) -> list[dict[str, Any]]:
        new = [a for a in archs if a not in history.records]
        for arch, record in zip(new, evaluate(new) if new else []):
            history.append(arch, {**record, "generation": generation, "index": len(history.records)})
        records = [history.records[a] for a in archs]
        done.extend(records)
        if progress is not None:
            progress(len(done), config.evaluations)
        return records

    def new_child(parent: Architecture, mutations: int) -> Architecture:
        child = mutate(parent, space, rng, mutations)
        for _ in range(_MAX_DRAWS):
            if child in seen:  # mutated again, as in the paper
                child = mutate(child, space, rng, 1)
            elif not affordable(child):
                child = mutate(parent, space, rng, mutations)
            else:
                seen.add(child)
                return child
        raise _budget_error(config.max_mflops)

    def new_member() -> Architecture:
        for _ in range(_MAX_DRAWS):
            arch = sampler.sample()
            if arch not in seen and affordable(arch):
                seen.add(arch)
                return arch
        raise _budget_error(config.max_mflops)

    first = [a for a in dict.fromkeys(seeds) if affordable(a)][: config.population]
    seen.update(first)
    first += [new_member() for _ in range(config.population - len(first))]
    population = deque(run(first, -1))
    for generation in range(config.generations):
        contenders = rng.sample(list(population), min(config.sample_size, len(population)))
        parent = Architecture.from_dict(min(contenders, key=lambda r: r["val_logloss"])["architecture"])
        mutations = mutations_per_child(generation, config.generations)
        population.extend(run([new_child(parent, mutations) for _ in range(config.children)], generation))
        for _ in range(config.children):
            population.popleft()
    return done


def _budget_error(budget: float | None) -> ValueError:
    return ValueError(
        f"no new architecture within the budget (--max-mflops {budget}, and the latency budget if given) after "
        f"{_MAX_DRAWS} draws; raise the budget"
    )


def architecture_key(architecture: dict[str, Any]) -> str:
    """An architecture's JSON as one text, whatever the order of its keys: the identity of a search record."""
    return json.dumps(architecture, sort_keys=True)


def top_k(records: Iterable[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The k distinct architectures with the lowest validation log loss."""
    best: dict[str, dict[str, Any]] = {}
    for record in records:
        key = architecture_key(record["architecture"])
        if key not in best or record["val_logloss"] < best[key]["val_logloss"]:
            best[key] = record
    return sorted(best.values(), key=lambda r: r["val_logloss"])[:k]


def spawn_pool(workers: int, initializer: Callable[..., None], initargs: tuple) -> multiprocessing.pool.Pool:
    """`workers` spawned processes (safe with CUDA and OpenMP thread pools) sharing the CPU cores evenly,
    each set up by `initializer(*initargs)`."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    return context.Pool(workers, initializer=_init_process, initargs=(threads, initializer, initargs))


def _init_process(threads: int, initializer: Callable[..., None], initargs: tuple) -> None:
    torch.set_num_threads(threads)
    initializer(*initargs)


# Parallel evaluation: each worker process loads the supernet and the fixed batches once.
_worker_fitness: Fitness | None = None


def _init_worker(checkpoint: Path, batches: Path, config: FitnessConfig, device: str) -> None:
    global _worker_fitness
    data = torch.load(batches, weights_only=False)
    supernet = load_model(checkpoint, device)
    _worker_fitness = build_fitness(supernet, data["finetune"], data["eval"], config, torch.device(device))


def _evaluate_in_worker(arch_dict: dict[str, Any]) -> dict[str, Any]:
    return _worker_fitness(Architecture.from_dict(arch_dict))


class WorkerPool:
    """`workers` processes evaluating candidates in parallel; results come back in submission order."""

    def __init__(self, checkpoint: Path, batches: Path, config: FitnessConfig, device: torch.device, workers: int):
        self.pool = spawn_pool(workers, _init_worker, (checkpoint, batches, config, str(device)))

    def imap(self, archs: Iterable[Architecture]) -> Iterator[dict[str, Any]]:
        """Each result as soon as it and those before it are done."""
        return self.pool.imap(_evaluate_in_worker, [a.to_dict() for a in archs], chunksize=1)

    def close(self) -> None:
        self.pool.close()
        self.pool.join()

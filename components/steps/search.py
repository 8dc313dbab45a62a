"""search: regularised evolution over a trained supernet, each candidate scored with inherited weights."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.steps.common import StepConfig, architecture_progress, write_json
from components.steps.data import IngestedData
from components.steps.plots import plot_auc_vs_mflops, plot_search_trajectory
from model.arch import Architecture
from model.network import InputSchema, NASRecNet
from model.sampling import ArchitectureSampler
from model.search import (
    FitnessConfig,
    SearchConfig,
    SearchHistory,
    WorkerPool,
    architecture_key,
    build_fitness,
    regularized_evolution,
    top_k,
)
from model.supernet import Supernet
from model.trainer import load_model
from model.training import Batch
from model.zoo import seed_architectures
from serving.latency import LatencyBudget, LatencyModel, latency_features, measure_latency

FINETUNE_SPLITS = ("train", "validation")


@dataclass(frozen=True)
class SearchRun(StepConfig):
    search: SearchConfig = field(default_factory=SearchConfig)
    finetune_batches: int = 16  # distinct batches the head fine-tuning cycles through (the subnet takes one per step)
    eval_batches: int = 8  # fixed validation batches every candidate is scored on
    batch_size: int = 512
    top_k: int = 15
    workers: int = 1
    # "validation": fine-tune on the validation batches after the scored ones. A supernet trained for
    # many epochs has memorised its training rows, and a head fitted to their features over-trusts them.
    finetune_split: str = "train"
    max_latency_ms: float = 0.0  # p99 as served (ONNX Runtime, one thread, this machine); 0: no budget
    latency_batch: int = 512  # rows of the request the budget is for
    latency_calibration: int = 16  # networks measured to fit the latency model that pre-filters candidates

    @classmethod
    def for_budget(
        cls,
        population: int,
        generations: int,
        top_k: int,
        max_mflops: float,
        fitness_steps: int,
        seed: int,
        max_latency_ms: float = 0.0,
        latency_batch: int = 512,
    ) -> SearchRun:
        """The search a pipeline budget describes: half the population drawn to pick each parent, a quarter
        of it new children a generation, `fitness_steps` of head fine-tuning with a tenth as warm-up;
        `max_mflops` and `max_latency_ms` 0 mean no limit."""
        evolution = {
            "population": population,
            "generations": generations,
            "sample_size": max(2, population // 2),
            "children": max(1, population // 4),
            "max_mflops": max_mflops or None,
            "seed": seed,
            "fitness": {"finetune_steps": fitness_steps, "finetune_warmup_steps": fitness_steps // 10},
        }
        latency = {"max_latency_ms": max_latency_ms, "latency_batch": latency_batch}
        return cls.from_dict({"search": evolution, "top_k": top_k} | latency)

    def __post_init__(self) -> None:
        if self.finetune_split not in FINETUNE_SPLITS:
            raise ValueError(f"finetune_split: {self.finetune_split!r} is not one of {', '.join(FINETUNE_SPLITS)}")
        if self.search.fitness.method == "subnet" and self.finetune_split != "train":
            raise ValueError(
                "the subnet fitness trains whole subnets, on training rows only: use finetune_split 'train'"
            )
        if self.max_latency_ms:
            LatencyBudget(self.max_latency_ms, self.latency_batch)  # checks both
        if self.latency_calibration < 5:
            raise ValueError(f"latency_calibration: at least 5 networks, got {self.latency_calibration}")

    @property
    def latency_budget(self) -> LatencyBudget | None:
        return LatencyBudget(self.max_latency_ms, self.latency_batch) if self.max_latency_ms else None


def fixed_batches(data: IngestedData, run: SearchRun, seed: int) -> tuple[list[Batch], list[Batch]]:
    """The same fine-tuning batches (a seeded shuffle of train, or validation batches after the scored
    ones; for the subnet fitness, one training batch per step) and evaluation batches (the first
    validation batches) for every candidate."""
    validation = data.batches("validation", run.batch_size)
    evaluation = [b for _, b in zip(range(run.eval_batches), validation)]
    if run.finetune_split == "validation":
        finetune = [b for _, b in zip(range(run.finetune_batches), validation)]
        if not finetune:
            raise ValueError(
                f"fine-tuning on validation: no validation rows are left after the {run.eval_batches} scored "
                f"batches of {run.batch_size}; lower --eval-batches or fine-tune on train"
            )
        return finetune, evaluation
    fitness = run.search.fitness
    count = fitness.finetune_steps if fitness.method == "subnet" else run.finetune_batches
    stream = data.train_stream(run.batch_size, seed)
    return [next(stream) for _ in range(count)], evaluation


def search_identity(options: dict[str, Any]) -> dict[str, Any]:
    """What decides a search's history: any number of workers makes the same search; top-k only reads it."""
    return {k: v for k, v in options.items() if k not in ("workers", "top_k")}


def _with_defaults(defaults: dict[str, Any], recorded: dict[str, Any]) -> dict[str, Any]:
    """`recorded` with the options it lacks, at any depth, taken from `defaults`."""
    merged = dict(defaults)
    for key, value in recorded.items():
        nested = isinstance(value, dict) and isinstance(defaults.get(key), dict)
        merged[key] = _with_defaults(defaults[key], value) if nested else value
    return merged


def search(supernet_path: Path, data_dir: Path, out: Path, run: SearchRun, device: torch.device) -> dict[str, Any]:
    """Regularised evolution; writes history.jsonl, top_k.json (the final round: the top-k by fitness, then the
    seed architectures), two plots and summary.json into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    data = IngestedData(data_dir)
    supernet = load_model(supernet_path, device)
    if not isinstance(supernet, Supernet):
        raise ValueError(f"{supernet_path}: holds a {type(supernet).__name__}, not a supernet")
    if supernet.schema != data.input_schema:
        raise ValueError(f"{supernet_path}: trained on other features than {data_dir} provides")
    identity = search_identity(
        {"supernet": str(Path(supernet_path).resolve()), "data": str(Path(data_dir).resolve()), **run.to_dict()}
    )
    if (out / "search.json").exists():
        # options added since a search was recorded take their defaults, so older searches still resume
        recorded = search_identity(_with_defaults(SearchRun().to_dict(), json.loads((out / "search.json").read_text())))
        if recorded != identity:
            raise ValueError(f"{out}: holds a search with other inputs or options (search.json); use another --out")
    write_json(out / "search.json", identity)
    batches = fixed_batches(data, run, run.search.seed)
    history = SearchHistory(out / "history.jsonl")
    if history.records:
        print(f"resuming: {len(history.records)} evaluations in {history.path} are reused")
    budget = run.latency_budget
    admissible = None
    if budget is not None:
        admissible = latency_prefilter(latency_model(supernet, run, out), budget, supernet.schema)
    seeds = dict(zip(supernet.space.seed_architectures, seed_architectures(supernet.space, supernet.use_layernorm)))
    with fitness_scores(supernet_path, supernet, batches, run.search.fitness, device, run.workers, out) as score:
        records = regularized_evolution(
            supernet.space,
            supernet.schema,
            lambda archs: list(score(archs)),
            run.search,
            history,
            supernet.use_layernorm,
            progress=architecture_progress("search"),
            admissible=admissible,
            seeds=seeds.values(),
        )
    best = top_k(records, run.top_k) if budget is None else measured_top_k(records, run.top_k, budget, supernet.schema)
    best += seed_records(records, seeds, best, budget, supernet.schema)
    write_json(out / "top_k.json", best)
    plot_search_trajectory(records, out / "search_trajectory.png")
    plot_auc_vs_mflops(records, out / "auc_vs_mflops.png")
    summary = {
        "evaluations": len(records),
        "best": best[0],
        "config": run.to_dict(),
        "device": str(device),
        "artifacts": ["history.jsonl", "top_k.json", "search_trajectory.png", "auc_vs_mflops.png"],
    }
    write_json(out / "summary.json", summary)
    return summary


def latency_model(supernet: Supernet, run: SearchRun, out: Path) -> LatencyModel:
    """The latency model the candidates are pre-filtered with: fitted to `run.latency_calibration` networks of
    the space measured as served, or read from OUT/latency_model.json, so a resumed search decides the same."""
    path = out / "latency_model.json"
    if path.exists():
        fields = json.loads(path.read_text())
        recorded = LatencyModel(tuple(fields["weights"]), fields["batch_size"], fields["error"])
        if recorded.batch_size == run.latency_batch:
            return recorded
    sampler = ArchitectureSampler(supernet.space, seed=run.search.seed + 1, use_layernorm=supernet.use_layernorm)
    features, p99 = [], []
    for i in range(run.latency_calibration):
        net = NASRecNet(sampler.sample(), supernet.schema).eval()
        p99.append(measure_latency(net, supernet.schema, run.latency_batch).p99_ms)
        features.append(latency_features(net))
        print(f"latency calibration {i + 1}/{run.latency_calibration}: p99 {p99[-1]:.2f} ms", flush=True)
    model = LatencyModel.fit(np.array(features), np.array(p99), run.latency_batch)
    print(f"latency model: leave-one-out mean relative error {model.error:.2f} over {len(p99)} networks", flush=True)
    write_json(path, asdict(model))
    return model


def latency_prefilter(model: LatencyModel, budget: LatencyBudget, schema: InputSchema) -> Callable[..., bool]:
    """Whether a candidate may be within `budget`: its predicted p99 within the budget widened by the model's
    error (the top candidates are measured afterwards, so the filter only drops the clearly too slow)."""
    limit = budget.p99_ms * (1 + model.error)

    def admissible(arch: Architecture) -> bool:
        with torch.device("meta"):
            return model.predict(NASRecNet(arch, schema)) <= limit

    return admissible


def measured_top_k(
    records: list[dict[str, Any]], k: int, budget: LatencyBudget, schema: InputSchema
) -> list[dict[str, Any]]:
    """The k best distinct architectures whose measured p99 meets `budget`, each with its latency; candidates
    are measured best first, at most 3k + 5 of them."""
    chosen, slowest = [], []
    for record in top_k(records, 3 * k + 5):
        net = NASRecNet(Architecture.from_dict(record["architecture"]), schema).eval()
        latency = measure_latency(net, schema, budget.batch_size)
        measured = {**record, "latency_p50_ms": latency.p50_ms, "latency_p99_ms": latency.p99_ms}
        (chosen if latency.within(budget) else slowest).append(measured)
        if len(chosen) == k:
            break
    if not chosen:
        fastest = min(r["latency_p99_ms"] for r in slowest)
        raise ValueError(
            f"none of the {len(slowest)} best architectures meets the latency budget of {budget.p99_ms} ms p99 at "
            f"batch {budget.batch_size} (the fastest measured {fastest:.2f} ms): raise the budget, or search a "
            "space with cheaper operators"
        )
    print(f"latency: {len(chosen)} of the {len(chosen) + len(slowest)} best measured meet {budget.p99_ms} ms p99")
    return chosen


def seed_records(
    records: list[dict[str, Any]],
    seeds: dict[str, Architecture],
    best: list[dict[str, Any]],
    budget: LatencyBudget | None,
    schema: InputSchema,
) -> list[dict[str, Any]]:
    """The seed architectures' own records (as the search scored them, each marked with its name), for those not
    among `best` and within the budgets: the final round trains them beside the top-k, so a search never
    answers with a model that validates worse than the hand-designed ones it started from. With a fitness of
    Kendall tau 0.3 on small data, the seeds often rank far below the top-k (bench/results/quality/FINDINGS.md)."""
    chosen = {architecture_key(r["architecture"]) for r in best}
    scored = {architecture_key(r["architecture"]): r for r in records}  # unaffordable seeds are absent
    extra = []
    for name, arch in seeds.items():
        key = architecture_key(arch.to_dict())
        if key in chosen or key not in scored:
            continue
        record = {**scored[key], "seed": name}
        if budget is not None:
            latency = measure_latency(NASRecNet(arch, schema).eval(), schema, budget.batch_size)
            if not latency.within(budget):
                continue
            record |= {"latency_p50_ms": latency.p50_ms, "latency_p99_ms": latency.p99_ms}
        extra.append(record)
    return extra


@contextlib.contextmanager
def fitness_scores(
    supernet_path: Path,
    supernet: Supernet,
    batches: tuple[list[Batch], list[Batch]],
    config: FitnessConfig,
    device: torch.device,
    workers: int,
    out: Path,
) -> Iterator[Callable[[list[Architecture]], Iterator[dict[str, Any]]]]:
    """A function scoring architectures in order: in this process, or in `workers` processes that each
    load the supernet and the fixed batches (passed through OUT/fitness_batches.pt, removed after) once."""
    if workers <= 1:
        fitness = build_fitness(supernet, *batches, config, device)
        yield lambda archs: map(fitness, archs)
        return
    batches_path = out / "fitness_batches.pt"
    torch.save({"finetune": batches[0], "eval": batches[1]}, batches_path)
    pool = WorkerPool(supernet_path, batches_path, config, device, workers)
    try:
        yield pool.imap
    finally:
        pool.close()
        batches_path.unlink()  # the subnet fitness's batches run to 100 MB; the workers have read them

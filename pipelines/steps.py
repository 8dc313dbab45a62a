"""The model steps of the pipeline over ingested data: train_supernet, search, finetune, rank_corr.

Each step reads an ingestion folder (`nasrec ingest`) and artifacts of earlier steps, and writes its
own artifacts into an output folder. The CLI and the Kubeflow components are thin wrappers over these.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import fmean
from typing import Any

import torch
from torch import nn

from model.arch import Architecture
from model.baselines import BaselineConfig, build_baseline
from model.distributed import init_from_environment, local_device, shutdown
from model.metrics import average_ranks, bootstrap_interval, kendall_tau, spearman_rho
from model.network import NASRecNet
from model.sampling import ArchitectureSampler
from model.search import (
    FitnessConfig,
    SearchConfig,
    SearchHistory,
    WorkerPool,
    architecture_cost,
    build_fitness,
    regularized_evolution,
    spawn_pool,
    top_k,
)
from model.space import get_space
from model.supernet import Supernet
from model.trainer import (
    TrainConfig,
    Trainer,
    TrainResult,
    describe,
    describe_baseline,
    evaluate,
    load_model,
)
from model.training import Batch
from pipelines.data import IngestedData
from pipelines.plots import plot_auc_vs_mflops, plot_search_trajectory


def write_json(path: Path, data: Any) -> Path:
    """Write JSON atomically (a kill mid-write keeps the previous file)."""
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)
    return path


def steps_for(data: IngestedData, batch_size: int, epochs: float) -> int:
    return max(1, math.ceil(data.rows("train") * epochs / batch_size))


# ---- train_supernet ---------------------------------------------------------------------------------

# Each step trains one uniformly sampled subnet, so a subnet's weights see a sliver of the steps: on the 8k
# training rows of the shared Avazu and Criteo folds, sampled subnets scored a mean validation AUC of 0.57 and
# 0.54 with inherited weights after 188 steps, 0.68 after 1,250. Fewer steps say little about the subnets.
MIN_SUPERNET_STEPS = 1000


@dataclass(frozen=True)
class SupernetRun:
    space: str = "demo"
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
            "run": asdict(run),
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


# ---- search -------------------------------------------------------------------------------------------


FINETUNE_SPLITS = ("train", "validation")


@dataclass(frozen=True)
class SearchRun:
    search: SearchConfig = field(default_factory=SearchConfig)
    finetune_batches: int = 16  # distinct batches the head fine-tuning cycles through (the subnet takes one per step)
    eval_batches: int = 8  # fixed validation batches every candidate is scored on
    batch_size: int = 512
    top_k: int = 15
    workers: int = 1
    # "validation": fine-tune on the validation batches after the scored ones. A supernet trained for
    # many epochs has memorised its training rows, and a head fitted to their features over-trusts them.
    finetune_split: str = "train"

    def __post_init__(self) -> None:
        if self.finetune_split not in FINETUNE_SPLITS:
            raise ValueError(f"finetune_split: {self.finetune_split!r} is not one of {', '.join(FINETUNE_SPLITS)}")
        if self.search.fitness.method == "subnet" and self.finetune_split != "train":
            raise ValueError(
                "the subnet fitness trains whole subnets, on training rows only: use finetune_split 'train'"
            )


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


def _search_identity(options: dict[str, Any]) -> dict[str, Any]:
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
    """Regularised evolution; writes history.jsonl, top_k.json, two plots and summary.json into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    data = IngestedData(data_dir)
    supernet = load_model(supernet_path, device)
    if not isinstance(supernet, Supernet):
        raise ValueError(f"{supernet_path}: holds a {type(supernet).__name__}, not a supernet")
    if supernet.schema != data.input_schema:
        raise ValueError(f"{supernet_path}: trained on other features than {data_dir} provides")
    identity = _search_identity(
        {"supernet": str(Path(supernet_path).resolve()), "data": str(Path(data_dir).resolve()), **asdict(run)}
    )
    if (out / "search.json").exists():
        # options added since a search was recorded take their defaults, so older searches still resume
        recorded = _search_identity(_with_defaults(asdict(SearchRun()), json.loads((out / "search.json").read_text())))
        if recorded != identity:
            raise ValueError(f"{out}: holds a search with other inputs or options (search.json); use another --out")
    write_json(out / "search.json", identity)
    batches = fixed_batches(data, run, run.search.seed)
    history = SearchHistory(out / "history.jsonl")
    if history.records:
        print(f"resuming: {len(history.records)} evaluations in {history.path} are reused")
    with _fitness_scores(supernet_path, supernet, batches, run.search.fitness, device, run.workers, out) as score:
        records = regularized_evolution(
            supernet.space,
            supernet.schema,
            lambda archs: list(score(archs)),
            run.search,
            history,
            supernet.use_layernorm,
            progress=_progress_printer("search"),
        )
    best = top_k(records, run.top_k)
    write_json(out / "top_k.json", best)
    plot_search_trajectory(records, out / "search_trajectory.png")
    plot_auc_vs_mflops(records, out / "auc_vs_mflops.png")
    summary = {
        "evaluations": len(records),
        "best": best[0],
        "config": asdict(run),
        "artifacts": ["history.jsonl", "top_k.json", "search_trajectory.png", "auc_vs_mflops.png"],
    }
    write_json(out / "summary.json", summary)
    return summary


@contextlib.contextmanager
def _fitness_scores(
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


def _progress_printer(name: str):
    def report(done: int, total: int) -> None:
        if done == total or done % max(1, total // 20) == 0:
            print(f"{name}: {done}/{total} architectures evaluated", flush=True)

    return report


# ---- finetune ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinetuneRun:
    epochs: float = 1.0
    steps: int | None = None  # overrides epochs
    batch_size: int = 256
    lr: float = 0.1
    optimizer: str = "adagrad"
    eval_every: int = 0  # steps; 0: once per epoch
    patience: int = 0  # validations without a better AUC before stopping; 0: train every step
    warm_start: bool = False  # start from the inherited supernet weights instead of scratch
    seed: int = 0
    progress: bool = True


def train_network(
    net: nn.Module,
    metadata: dict[str, Any],
    data: IngestedData,
    run: FinetuneRun,
    device: torch.device,
    out: Path | None,
) -> TrainResult:
    """Train a standalone network with validation-AUC early stopping: it ends holding its best weights."""
    steps = run.steps or steps_for(data, run.batch_size, run.epochs)
    eval_every = run.eval_every or max(1, steps_for(data, run.batch_size, 1.0))
    config = TrainConfig(
        steps=steps,
        lr=run.lr,
        optimizer=run.optimizer,
        eval_every=eval_every,
        patience=run.patience,
        seed=run.seed,
        progress=run.progress,
    )

    def validate(model: nn.Module) -> dict:
        return evaluate(model, data.batches("validation"), device)

    trainer = Trainer(net, config, device, out, metadata=metadata, validate=validate)
    trainer.resume()
    return trainer.fit(data.train_stream(run.batch_size, run.seed))


@dataclass(frozen=True)
class TrainingJob:
    """One architecture to train under `run`, from the initialisation `init_seed` draws (or, with
    run.warm_start, from its inherited supernet weights); checkpoints go to `out` when given."""

    arch: Architecture
    run: FinetuneRun
    init_seed: int
    out: Path | None = None


def train_architectures(
    jobs: list[TrainingJob],
    data_dir: Path,
    device: torch.device,
    workers: int = 1,
    supernet_path: Path | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Train every job; yields (job index, best validation point) as each one ends.

    With `workers` above 1 the jobs run in that many processes, which share the CPU cores (or the GPU):
    small networks leave most of either idle when trained one at a time.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    workers = min(workers, len(jobs))  # no idle processes, none at all for no jobs
    if workers <= 1:
        trainer = _ArchitectureTrainer(data_dir, device, supernet_path)
        for index, job in enumerate(jobs):
            yield index, trainer(job)
        return
    with spawn_pool(workers, _init_training_worker, (data_dir, str(device), supernet_path)) as pool:
        quiet = [(index, replace(job, run=replace(job.run, progress=False))) for index, job in enumerate(jobs)]
        yield from pool.imap_unordered(_train_in_worker, quiet, chunksize=1)


class _ArchitectureTrainer:
    """Trains jobs over one loaded dataset (and, for warm starts, one loaded supernet)."""

    def __init__(self, data_dir: Path, device: torch.device, supernet_path: Path | None):
        self.data = IngestedData(data_dir)
        self.device = device
        self.supernet_path = supernet_path
        self._supernet: Supernet | None = None

    def __call__(self, job: TrainingJob) -> dict[str, Any]:
        torch.manual_seed(job.init_seed)
        net = self.supernet().extract(job.arch) if job.run.warm_start else NASRecNet(job.arch, self.data.input_schema)
        return train_network(net, describe(net), self.data, job.run, self.device, job.out).best

    def supernet(self) -> Supernet:
        """Loaded on first use: only warm-started jobs need it."""
        if self._supernet is None:
            supernet = load_model(self.supernet_path, self.device)
            if not isinstance(supernet, Supernet):
                raise ValueError(f"{self.supernet_path}: holds a {type(supernet).__name__}, not a supernet")
            self._supernet = supernet
        return self._supernet


_worker_trainer: _ArchitectureTrainer | None = None


def _init_training_worker(data_dir: Path, device: str, supernet_path: Path | None) -> None:
    global _worker_trainer
    _worker_trainer = _ArchitectureTrainer(data_dir, torch.device(device), supernet_path)


def _train_in_worker(indexed: tuple[int, TrainingJob]) -> tuple[int, dict[str, Any]]:
    index, job = indexed
    return index, _worker_trainer(job)


def finetune(
    architectures: list[Architecture],
    data_dir: Path,
    out: Path,
    run: FinetuneRun,
    device: torch.device,
    supernet_path: Path | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Train each architecture (in `workers` processes), keep the best on validation AUC, report its test metrics."""
    if not architectures:
        raise ValueError("finetune needs at least one architecture")
    if run.warm_start and supernet_path is None:
        raise ValueError("--warm-start needs --supernet (the weights to inherit)")
    data = IngestedData(data_dir)
    jobs = [TrainingJob(arch, run, run.seed, out / f"candidate_{rank:02d}") for rank, arch in enumerate(architectures)]
    candidates = []
    for rank, best in train_architectures(jobs, data_dir, device, workers, supernet_path):
        candidates.append({"rank": rank, "architecture": architectures[rank].to_dict(), "validation": best})
        print(f"candidate {rank}: validation AUC {best['auc']:.4f}, log loss {best['log_loss']:.4f}", flush=True)
    candidates.sort(key=lambda c: c["rank"])
    winner = max(candidates, key=lambda c: c["validation"]["auc"])
    winner_dir = out / "winner"
    winner_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = (out / f"candidate_{winner['rank']:02d}" / "checkpoint.pt").replace(winner_dir / "checkpoint.pt")
    net = load_model(checkpoint, device)  # the candidate's best validation weights
    test = evaluate(net, data.batches("test"), device)
    net.arch.save(winner_dir / "architecture.json")
    mflops, parameters = architecture_cost(net.arch, data.input_schema)
    metrics = {
        "winner": {**winner, "test": test, "mflops": mflops, "parameters": parameters},
        "candidates": candidates,
        "run": asdict(run),
        "data": str(Path(data_dir).resolve()),  # what export checks the model on by default
    }
    write_json(winner_dir / "metrics.json", metrics)
    print(f"winner: candidate {winner['rank']}: test AUC {test['auc']:.4f}, log loss {test['log_loss']:.4f}")
    return metrics


def read_architectures(path: Path, limit: int | None = None) -> list[Architecture]:
    """Architectures from a search's top_k.json, or a single architecture JSON file."""
    text = path.read_text()
    data = json.loads(text)
    if isinstance(data, list):
        archs = [Architecture.from_dict(r["architecture"]) for r in data]
    else:
        archs = [Architecture.from_json(text, source=str(path))]
    return archs[:limit] if limit else archs


def train_baseline(name: str, data_dir: Path, out: Path | None, run: FinetuneRun, device: torch.device) -> dict:
    """A hand-designed baseline on the same data path and loop; test metrics of its best validation point."""
    data = IngestedData(data_dir)
    torch.manual_seed(run.seed)
    config = BaselineConfig()
    net = build_baseline(name, data.input_schema, config)
    result = train_network(net, describe_baseline(name, data.input_schema, config), data, run, device, out)
    return {"validation": result.best, "test": evaluate(net.eval(), data.batches("test"), device)}


# ---- rank correlation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankCorrRun:
    architectures: int = 20
    search: SearchRun = field(default_factory=SearchRun)
    train: FinetuneRun = field(default_factory=FinetuneRun)
    truth_runs: int = 1  # from-scratch runs per architecture, run k seeded seed + k; the truth is their mean
    max_mflops: float | None = None
    seed: int = 0
    workers: int = 1  # processes scoring architectures, then training them from scratch

    def __post_init__(self) -> None:
        if self.truth_runs < 1:
            raise ValueError(f"truth_runs must be at least 1, got {self.truth_runs}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")


def rank_corr(supernet_path: Path, data_dir: Path, out: Path, run: RankCorrRun, device: torch.device) -> dict:
    """Kendall tau / Spearman rho between supernet scores (with and without head fine-tuning) and
    the validation log loss of the same architectures trained from scratch (the mean over truth runs).

    Two references come with it: ranking by MFLOPs alone, which a useful score must beat, and, with
    two or more truth runs, how well one from-scratch run ranks another: the ceiling any score can
    reach against a single run's truth.
    """
    out.mkdir(parents=True, exist_ok=True)
    data = IngestedData(data_dir)
    supernet = load_model(supernet_path, device)
    archs = _distinct_architectures(supernet, run)
    fingerprint = data.fingerprint()  # hashes every split: once, not once per truth run
    scores = _score_architectures(supernet_path, supernet, data, archs, run, fingerprint, device, out)
    truths = [_TruthRun(out, fingerprint, run, k) for k in range(run.truth_runs)]
    _train_truths(truths, archs, data_dir, device, run.workers)
    rows = []
    for arch, score in zip(archs, scores):
        standalone = [truth.results.records[arch]["standalone"] for truth in truths]
        rows.append({**score, "standalone": standalone, "truth_log_loss": fmean(s["log_loss"] for s in standalone)})
    write_json(out / "rank_corr_rows.json", rows)
    truth = [r["truth_log_loss"] for r in rows]
    finetuned = [r["val_logloss"] for r in rows]
    result = {
        "architectures": len(rows),
        "truth_runs": run.truth_runs,
        "without_finetuning": _study_correlations([r["supernet_logloss"] for r in rows], truth),
        "with_finetuning": _study_correlations(finetuned, truth),
        # what ranking by cost alone (more MFLOPs, better) reaches: a score worth having beats it
        "mflops_only": _study_correlations([-r["mflops"] for r in rows], truth),
        "truth_repeatability": _repeatability(rows, run.truth_runs),
        "most_misranked": _most_misranked(finetuned, truth),
        "run": asdict(run),
    }
    write_json(out / "rank_corr.json", result)
    return result


def _score_architectures(
    supernet_path: Path,
    supernet: Supernet,
    data: IngestedData,
    archs: list[Architecture],
    run: RankCorrRun,
    fingerprint: str,
    device: torch.device,
    out: Path,
) -> list[dict[str, Any]]:
    """The supernet's score of each architecture, kept in `OUT/scores_{digest}.jsonl` as it comes.

    The subnet fitness takes minutes an architecture, so scores are reused like the from-scratch runs:
    a killed study resumes and a larger one extends a smaller one. The file is named by a digest of all
    a score depends on (supernet weights, data, fitness options, seed), so another supernet or fitness
    scores into a file of its own, next to the earlier ones.
    """
    with Path(supernet_path).open("rb") as f:
        weights = hashlib.file_digest(f, "sha256").hexdigest()
    key = {
        "supernet": weights,
        "data": fingerprint,
        "search": _search_identity(asdict(run.search)),
        "seed": run.seed,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache = SearchHistory(out / f"scores_{digest}.jsonl")
    pending = [(i, a) for i, a in enumerate(archs) if a not in cache.records]
    if len(pending) < len(archs):
        print(f"{len(archs) - len(pending)} of {len(archs)} scores are reused from {cache.path}", flush=True)
    if pending:
        fitness = run.search.search.fitness
        batches = fixed_batches(data, run.search, run.seed)
        with _fitness_scores(supernet_path, supernet, batches, fitness, device, run.workers, out) as score:
            for (i, arch), record in zip(pending, score([a for _, a in pending])):
                cache.append(arch, {**record, "key": key})
                print(
                    f"architecture {i + 1}/{len(archs)}: supernet {record['supernet_logloss']:.4f}, "
                    f"fine-tuned {fitness.method} {record['val_logloss']:.4f} ({record['seconds']:.0f} s)",
                    flush=True,
                )
    return [{k: v for k, v in cache.records[a].items() if k != "key"} for a in archs]


class _TruthRun:
    """One from-scratch run of each architecture, kept in `OUT/standalone_run{k}.jsonl`.

    Training from scratch is the study's costly part: a rerun into the same folder reuses it, so a
    killed study resumes, a larger one (more architectures or truth runs, the same seed) extends a
    smaller one, and another supernet is compared against the same truth at the cost of scoring alone.
    """

    def __init__(self, out: Path, fingerprint: str, run: RankCorrRun, k: int):
        self.k = k
        self.train = replace(run.train, progress=False, seed=run.train.seed + k)
        self.init_seed = run.seed + k
        self.key = {"data": fingerprint, "train": asdict(self.train), "init_seed": self.init_seed}
        path = out / f"standalone_run{k}.jsonl"
        self.results = SearchHistory(path)
        for record in self.results.records.values():
            earlier = {name: record.get(name) for name in self.key}
            if earlier != self.key:
                raise ValueError(
                    f"{path} holds architectures trained with other settings or data ({earlier}, now {self.key}); "
                    "choose another --out, or delete the file to train them again"
                )

    def job(self, arch: Architecture) -> TrainingJob:
        return TrainingJob(arch, self.train, self.init_seed)

    def record(self, arch: Architecture, best: dict[str, Any]) -> None:
        self.results.append(arch, {**self.key, "architecture": arch.to_dict(), "standalone": best})


def _train_truths(
    truths: list[_TruthRun], archs: list[Architecture], data_dir: Path, device: torch.device, workers: int
) -> None:
    """Train from scratch every (run, architecture) pair the truth files lack, recording each as it ends."""
    pending = [(truth, i, a) for truth in truths for i, a in enumerate(archs) if a not in truth.results.records]
    reused = len(truths) * len(archs) - len(pending)
    if not pending:
        print(f"all {reused} from-scratch runs were trained earlier: reusing them", flush=True)
        return
    print(
        f"training {len(pending)} networks from scratch in {min(workers, len(pending))} process(es)"
        + (f"; {reused} trained earlier are reused" if reused else ""),
        flush=True,
    )
    jobs = [truth.job(arch) for truth, _, arch in pending]
    for done, (index, best) in enumerate(train_architectures(jobs, data_dir, device, workers), 1):
        truth, i, arch = pending[index]
        truth.record(arch, best)
        print(
            f"from scratch {done}/{len(jobs)}: architecture {i + 1}, run {truth.k}: "
            f"validation log loss {best['log_loss']:.4f}",
            flush=True,
        )


def _repeatability(rows: list[dict[str, Any]], truth_runs: int) -> dict[str, float] | None:
    """Mean correlation between the rankings of two from-scratch runs, over every pair of runs."""
    if truth_runs < 2:
        return None
    pairs = [
        _correlations([r["standalone"][a]["log_loss"] for r in rows], [r["standalone"][b]["log_loss"] for r in rows])
        for a in range(truth_runs)
        for b in range(a + 1, truth_runs)
    ]
    return {name: fmean(p[name] for p in pairs) for name in pairs[0]}


def _correlations(scores: list[float], truth: list[float]) -> dict[str, float]:
    return {"kendall_tau": kendall_tau(scores, truth), "spearman_rho": spearman_rho(scores, truth)}


def _study_correlations(scores: list[float], truth: list[float]) -> dict[str, Any]:
    """The correlations, and tau's 95% bootstrap interval over architectures: how much another draw could move it."""
    interval = bootstrap_interval(kendall_tau, scores, truth)
    return {**_correlations(scores, truth), "kendall_tau_interval": list(interval)}


def _most_misranked(scores: list[float], truth: list[float], count: int = 5) -> list[dict[str, Any]]:
    """The architectures (1-based, as printed) whose fine-tuned rank is furthest from their rank from scratch.

    Tau counts pairs, so a few architectures the supernet misjudges badly can cost more than many small slips;
    these are the ones to look at first.
    """
    score_rank, truth_rank = average_ranks(scores).tolist(), average_ranks(truth).tolist()  # 1 = lowest loss
    worst = sorted(range(len(scores)), key=lambda i: -abs(score_rank[i] - truth_rank[i]))[:count]
    return [
        {
            "architecture": i + 1,
            "score_rank": score_rank[i],
            "truth_rank": truth_rank[i],
            "fine_tuned_log_loss": scores[i],
            "truth_log_loss": truth[i],
        }
        for i in worst
    ]


def _distinct_architectures(supernet: Supernet, run: RankCorrRun) -> list[Architecture]:
    sampler = ArchitectureSampler(supernet.space, seed=run.seed, use_layernorm=supernet.use_layernorm)
    archs: list[Architecture] = []
    draws = 0
    while len(archs) < run.architectures:
        draws += 1
        if draws > 1000 * run.architectures:
            raise ValueError(f"could not draw {run.architectures} distinct architectures within the MFLOPs budget")
        arch = sampler.sample()
        over = run.max_mflops is not None and architecture_cost(arch, supernet.schema)[0] > run.max_mflops
        if arch not in archs and not over:
            archs.append(arch)
    return archs

"""Studies beside the pipeline: the rank-correlation study of supernet scores, and hand-designed baselines
trained through the same loop (for `bench.quality`). Neither is a pipeline step."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import fmean
from typing import Any

import torch

from components.steps.common import StepConfig, write_json
from components.steps.data import IngestedData
from components.steps.finetune import FinetuneRun, TrainingJob, train_architectures, train_network
from components.steps.search import SearchRun, fitness_scores, fixed_batches, search_identity
from model.arch import Architecture
from model.baselines import BaselineConfig, build_baseline
from model.metrics import average_ranks, bootstrap_interval, kendall_tau, spearman_rho
from model.sampling import ArchitectureSampler
from model.search import SearchHistory, architecture_cost
from model.supernet import Supernet
from model.trainer import describe_baseline, evaluate, load_model


def train_baseline(name: str, data_dir: Path, out: Path | None, run: FinetuneRun, device: torch.device) -> dict:
    """A hand-designed baseline on the same data path and loop; test metrics of its best validation point."""
    data = IngestedData(data_dir)
    torch.manual_seed(run.seed)
    config = BaselineConfig()
    net = build_baseline(name, data.input_schema, config)
    result = train_network(net, describe_baseline(name, data.input_schema, config), data, run, device, out)
    return {"validation": result.best, "test": evaluate(net.eval(), data.batches("test"), device)}


@dataclass(frozen=True)
class RankCorrRun(StepConfig):
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
        "run": run.to_dict(),
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
        "search": search_identity(run.search.to_dict()),
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
        with fitness_scores(supernet_path, supernet, batches, fitness, device, run.workers, out) as score:
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
        self.key = {"data": fingerprint, "train": self.train.to_dict(), "init_seed": self.init_seed}
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

"""Searched NASRecNet against hand-designed baselines on the 10-fold protocol of ../shared/data/README.md.

Per fold k (test = fold k, validation = fold k+1, train = the rest), everything through the product's
own steps: Feast ingestion, supernet training, regularised evolution with head fine-tuning, and
training the search's final round (its top-k by fitness and the seed architectures, the hand-designed models
as the space expresses them); the baselines go through the same data path and training loop.
Every model (each architecture of the final round, each baseline) is trained at each point of the same small
optimiser/learning-rate grid with early stopping on validation AUC; the best validation point is the
one tested. Nothing looks at the test fold before that. Each fold records the winning architecture, its MFLOPs,
and every model's serving latency: p50/p99 of its ONNX graph in ONNX Runtime (one thread, as served) on one
request of `--latency-batch` rows, on this machine (serving/latency.py).

The supernet trains for `--supernet-epochs` of the training rows (10: 313 steps of 256 on an 8k-row fold).
On Criteo fold 0 that ranks 24 `ctr` architectures at Kendall tau 0.29 [0.03, 0.52] against training them
from scratch, where one from-scratch run ranks another at 0.44 (bench/results/rank_corr_criteo_fold0/).

    python -m bench.quality --data criteo --json runs/bench/quality_criteo.json
    python -m bench.quality --data avazu
    python -m bench.quality --data FILE --schema SCHEMA.yaml --folds FOLDS.csv
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path

import torch

from bench.common import add_json_argument, write_json
from components.steps.data import IngestedData
from components.steps.finetune import FinetuneRun, train_network
from components.steps.search import SearchRun, search
from components.steps.train_supernet import SupernetRun, train_supernet
from features.schema import DatasetSchema, builtin_schema
from model.arch import Architecture
from model.baselines import BASELINES, build_baseline
from model.network import NASRecNet
from model.search import FitnessConfig, SearchConfig
from model.trainer import default_device, describe, evaluate
from model.training import OPTIMIZERS
from pipelines.studies import train_baseline
from serving.latency import measure_latency

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_GRID = ("adagrad:0.03", "adagrad:0.1", "adam:0.001", "adam:0.003", "adam:0.01")
RECORDED = ("test", "validation", "optimizer", "lr", "latency", "architecture", "architecture_rank", "seed", "mflops")
BUILTIN = {"criteo": SHARED / "criteo_kaggle_10k" / "train.txt", "avazu": SHARED / "avazu_10k" / "train.csv"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--space", default="ctr", help="search space (default: ctr)")
    parser.add_argument(
        "--supernet-epochs",
        type=float,
        default=10,
        help="supernet epochs of the training split, in steps of 256 rows (default: 10)",
    )
    parser.add_argument("--population", type=int, default=24, help="search population (default: 24)")
    parser.add_argument("--generations", type=int, default=8, help="search generations (default: 8)")
    parser.add_argument("--head-steps", type=int, default=100, help="head fine-tuning steps (default: 100)")
    parser.add_argument(
        "--top-k",
        type=int,
        default=2,
        help="architectures by fitness trained from scratch, beside the seeds (default: 2)",
    )
    add_training_arguments(parser)
    parser.add_argument("--baselines", nargs="+", default=sorted(BASELINES), help="default: all")
    parser.add_argument(
        "--latency-batch", type=int, default=512, help="rows of the request each model's p99 is measured on"
    )
    parser.add_argument(
        "--max-latency-ms", type=float, default=0.0, help="the search's serving-latency budget, p99 (default: none)"
    )
    parser.add_argument("--device", help="default: cuda when available")
    parser.add_argument("--jobs", type=int, default=1, help="folds run in parallel processes (default: 1)")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    add_json_argument(parser)
    return parser.parse_args()


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The dataset and its folds (read by `dataset`)."""
    parser.add_argument("--data", required=True, help="criteo, avazu (the shared samples) or a raw log file")
    parser.add_argument("--schema", type=Path, help="schema YAML for a raw log file (see `nasrec ingest`)")
    parser.add_argument("--folds", type=Path, help="fold file (row,fold) for a raw log file")
    parser.add_argument("--fold-count", type=int, default=10, help="folds to run, from fold 0 (default: all 10)")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """How every model is trained (read by `training_run` and `best_over_grid`)."""
    parser.add_argument(
        "--epochs",
        type=float,
        default=20,
        help="most epochs per model (default: 20; early stopping ends deep models after one or two, while LR "
        "gained 0.0075 AUC on Criteo from 6 to 20)",
    )
    parser.add_argument(
        "--grid",
        type=grid_point,
        nargs="+",
        default=[grid_point(p) for p in DEFAULT_GRID],
        help=f"OPTIMIZER:LR points every model is trained at (default: {' '.join(DEFAULT_GRID)})",
    )
    parser.add_argument(
        "--patience", type=int, default=8, help="validations (every quarter epoch) without gain to stop (default: 8)"
    )


def grid_point(text: str) -> tuple[str, float]:
    optimizer, _, lr = text.partition(":")
    try:
        value = float(lr)
    except ValueError:
        value = 0.0
    if optimizer not in OPTIMIZERS or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected OPTIMIZER:LR, LR > 0, OPTIMIZER in {sorted(OPTIMIZERS)}")
    return optimizer, value


def dataset(args: argparse.Namespace) -> tuple[DatasetSchema, Path, Path]:
    if args.data in BUILTIN:
        raw = BUILTIN[args.data]
        return builtin_schema(args.data), raw, raw.parent / "folds.csv"
    if args.schema is None or args.folds is None:
        raise SystemExit("bench.quality: a raw log file needs --schema and --folds")
    return DatasetSchema.load(args.schema), Path(args.data), args.folds


def best_over_grid(train, grid: list[tuple[str, float]]) -> dict:
    """Train at each grid point; keep the best validation AUC (its test metrics ride along)."""
    results = [{"optimizer": optimizer, "lr": lr, **train(optimizer, lr)} for optimizer, lr in grid]
    return max(results, key=lambda r: r["validation"]["auc"])


def ingest_fold(k: int, schema: DatasetSchema, raw: Path, folds: Path, work: Path) -> Path:
    """Fold k's splits, ingested through Feast into `work`/data unless they already are (e.g. on another
    machine)."""
    data = work / "data"
    if not (data / "transform.json").exists():
        from features.ingest import SplitSpec, ingest  # Feast: only where folds still need ingesting

        if not raw.exists():
            raise SystemExit(f"bench: {raw} is absent (the shared samples are not beside this checkout)")
        ingest(schema, [raw], data, SplitSpec(folds=folds, fold=k), log=lambda *_: None)
    return data


def training_run(data: IngestedData, args: argparse.Namespace, k: int) -> FinetuneRun:
    """How every model is trained: early stopping on validation AUC every quarter epoch (deep models peak
    early on small data); the grid sets optimizer and lr."""
    quarter_epoch = max(1, data.rows("train") // 256 // 4)
    return FinetuneRun(
        epochs=args.epochs, batch_size=256, eval_every=quarter_epoch, patience=args.patience, seed=k, progress=False
    )


def run_fold(k: int, schema: DatasetSchema, raw: Path, folds: Path, args, device: torch.device) -> dict:
    """Fold k: `models` (each model's metrics) and `seconds` (each phase's wall time)."""
    work = args.work / f"fold{k}"
    data = ingest_fold(k, schema, raw, folds, work)
    seconds = {}
    clock = time.perf_counter()
    supernet_run = SupernetRun(
        space=args.space, epochs=args.supernet_epochs, batch_size=256, lr=0.1, seed=k, progress=False
    )
    train_supernet(data, work / "supernet", supernet_run, device)
    seconds["supernet"], clock = time.perf_counter() - clock, time.perf_counter()
    search_config = SearchConfig(
        population=args.population,
        generations=args.generations,
        sample_size=max(2, args.population // 4),
        children=max(1, args.population // 8),
        seed=k,
        fitness=FitnessConfig(finetune_steps=args.head_steps, finetune_warmup_steps=args.head_steps // 10),
    )
    data_dir = IngestedData(data)
    search_run = SearchRun(
        search=search_config,
        finetune_batches=16,
        eval_batches=math.ceil(data_dir.rows("validation") / 512),  # every candidate is scored on all validation rows
        top_k=args.top_k,
        max_latency_ms=args.max_latency_ms,
        latency_batch=args.latency_batch,
    )
    search(work / "supernet" / "checkpoint.pt", data, work / "search", search_run, device)
    seconds["search"], clock = time.perf_counter() - clock, time.perf_counter()
    final_round = json.loads((work / "search" / "top_k.json").read_text())  # the top-k by fitness, then the seeds
    archs = [Architecture.from_dict(r["architecture"]) for r in final_round]
    base = training_run(data_dir, args, k)

    def nasrec(optimizer: str, lr: float) -> dict:
        per_arch = []
        for i, arch in enumerate(archs):
            torch.manual_seed(k)
            net = NASRecNet.to_train(arch, data_dir.input_schema)
            run = replace(base, optimizer=optimizer, lr=lr)
            result = train_network(net, describe(net), data_dir, run, device, None)
            per_arch.append({"rank": i, "validation": result.best, "net": net})
        best = max(per_arch, key=lambda r: r["validation"]["auc"])
        test = evaluate(best["net"], data_dir.batches("test"), device)
        return {"validation": best["validation"], "test": test, "architecture_rank": best["rank"], "net": best["net"]}

    winner = best_over_grid(nasrec, args.grid)
    net = winner.pop("net")
    seed = final_round[winner["architecture_rank"]].get("seed")  # the winner's hand-designed name, if a seed
    models = {"nasrecnet": winner | {"architecture": net.arch.to_dict(), "mflops": net.mflops(), "seed": seed}}
    seconds["nasrecnet_training"], clock = time.perf_counter() - clock, time.perf_counter()
    for name in args.baselines:

        def baseline(optimizer: str, lr: float, name: str = name) -> dict:
            return train_baseline(name, data, None, replace(base, optimizer=optimizer, lr=lr), device)

        models[name] = best_over_grid(baseline, args.grid)
    seconds["baselines_training"] = time.perf_counter() - clock
    # serving cost, as served (ONNX Runtime, one thread, on this machine); a baseline's does not depend on weights
    nets = {"nasrecnet": net} | {name: build_baseline(name, data_dir.input_schema) for name in args.baselines}
    for name, model in nets.items():
        models[name]["latency"] = asdict(measure_latency(model.eval(), data_dir.input_schema, args.latency_batch))
    line = ", ".join(f"{n} {m['test']['auc']:.4f}" for n, m in models.items())
    phases = ", ".join(f"{n} {v:.0f} s" for n, v in seconds.items())
    print(f"fold {k}: test AUC {line}; {phases}", flush=True)
    print(
        f"fold {k}: winner {net.mflops():.3f} MFLOPs, p99 {models['nasrecnet']['latency']['p99_ms']:.2f} ms at "
        f"batch {args.latency_batch}: {json.dumps(models['nasrecnet']['architecture'])}",
        flush=True,
    )
    return {"models": models, "seconds": seconds}


def summarise(folds: list[dict]) -> dict:
    names = list(folds[0])
    table = {}
    for name in names:
        auc = [f[name]["test"]["auc"] for f in folds]
        loss = [f[name]["test"]["log_loss"] for f in folds]
        table[name] = {
            "auc_mean": statistics.fmean(auc),
            "auc_std": statistics.stdev(auc) if len(auc) > 1 else 0.0,
            "log_loss_mean": statistics.fmean(loss),
            "log_loss_std": statistics.stdev(loss) if len(loss) > 1 else 0.0,
            "latency_p99_ms_mean": statistics.fmean(f[name]["latency"]["p99_ms"] for f in folds),
        }
        if name != "nasrecnet":
            diff = [f["nasrecnet"]["test"]["auc"] - f[name]["test"]["auc"] for f in folds]
            table[name]["nasrecnet_minus_this_auc_mean"] = statistics.fmean(diff)
            table[name]["nasrecnet_minus_this_auc_std"] = statistics.stdev(diff) if len(diff) > 1 else 0.0
    return table


SEARCH_PATH = ("supernet", "search", "nasrecnet_training")


def cost_ratio(folds: list[dict]) -> float:
    """Wall time of the whole search path (supernet, search, training the top-k over the grid) over that of
    training every baseline over the grid, summed over folds."""
    search_path = sum(f["seconds"][phase] for f in folds for phase in SEARCH_PATH)
    return search_path / sum(f["seconds"]["baselines_training"] for f in folds)


def report(schema: DatasetSchema, args: argparse.Namespace, results: dict[int, dict], seconds: float) -> None:
    """Print the table and write the JSON over the folds done so far (a cut-short run keeps its folds)."""
    folds = [results[k] for k in sorted(results)]
    table = summarise([f["models"] for f in folds])
    ratio = cost_ratio(folds)
    print(f"\n{schema.name}: test AUC and log loss over {len(folds)} folds (mean ± std), paired AUC difference")
    for name, row in table.items():
        paired = ""
        if name != "nasrecnet":
            diff, spread = row["nasrecnet_minus_this_auc_mean"], row["nasrecnet_minus_this_auc_std"]
            paired = f"   NASRecNet - {name}: {diff:+.4f} ± {spread:.4f}"
        print(
            f"  {name:10s} AUC {row['auc_mean']:.4f} ± {row['auc_std']:.4f}   "
            f"log loss {row['log_loss_mean']:.4f} ± {row['log_loss_std']:.4f}   "
            f"p99 {row['latency_p99_ms_mean']:.2f} ms{paired}",
            flush=True,
        )
    print(f"  the search path cost {ratio:.2f}x the baselines' training (wall time)", flush=True)
    write_json(
        args.json,
        {
            "dataset": schema.name,
            "folds": sorted(results),
            "space": args.space,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "seconds": round(seconds, 1),
            "search_path_over_baselines_seconds": round(ratio, 3),
            "table": table,
            "per_fold": {
                k: {
                    "seconds": {phase: round(v, 1) for phase, v in f["seconds"].items()},
                    **{n: {key: m[key] for key in RECORDED if key in m} for n, m in f["models"].items()},
                }
                for k, f in results.items()
            },
        },
    )


def main() -> None:
    args = parse_args()
    schema, raw, folds = dataset(args)
    args.work = args.work or Path(tempfile.mkdtemp(prefix=f"quality_{schema.name}_"))
    device = torch.device(args.device) if args.device else default_device()
    start = time.perf_counter()
    results: dict[int, dict] = {}
    if args.jobs > 1:
        context = multiprocessing.get_context("spawn")
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        with ProcessPoolExecutor(
            args.jobs, mp_context=context, initializer=torch.set_num_threads, initargs=(threads,)
        ) as pool:
            futures = {pool.submit(run_fold, k, schema, raw, folds, args, device): k for k in range(args.fold_count)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                report(schema, args, results, time.perf_counter() - start)
    else:
        for k in range(args.fold_count):
            results[k] = run_fold(k, schema, raw, folds, args, device)
            report(schema, args, results, time.perf_counter() - start)


if __name__ == "__main__":
    main()

"""The method's key quality figure: do supernet scores rank architectures as training them does?

Trains a supernet (8 epochs by default), samples N architectures, scores each with the supernet
without and with fine-tuning (--fitness head, the paper's, or subnet: a short training of the whole subnet
from its inherited weights), trains each from scratch --truth-runs times (seeds 0, 1, ...),
and reports Kendall tau (with its 95% bootstrap interval) and Spearman rho against the mean, next to
two references: ranking by MFLOPs alone, and one from-scratch run against another (the ceiling for any
score against a single run).
A rerun into the same --out reuses the supernet, the from-scratch results and the scores (one file per
supernet and fitness), so comparing the two fitness kinds costs one study and the scoring of the second,
and a study extended to more architectures scores and trains only the new ones.

Measured figures, and each fix tried for the misranked wiring: bench/results/rank_corr_teacher_1m/FINDINGS.md.

bench/results/rank_corr_teacher_1m/ holds from-scratch runs of this study (1M teacher rows, cardinality
1000, default seeds; each file lists the architectures it covers). Copy its files into OUT/rank_corr/
and a study on that data trains only the runs they lack. Each record carries the data's fingerprint (a
hash of the parquet files, so the same pyarrow must write them) and the training settings; the study
refuses records that do not match. The records do not name the network design: after a change to the
networks, start from an empty folder.

    python -m bench.rank_corr --data DIR            # an ingestion folder (`nasrec ingest --out`)
    python -m bench.rank_corr --teacher-rows 1000000  # or a synthetic teacher dataset, written first
    python -m bench.rank_corr --data DIR --fitness subnet --workers 2   # the same study, scored by subnet training
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from bench.common import add_json_argument, write_json, write_teacher_splits
from components.steps.finetune import FinetuneRun
from components.steps.search import FINETUNE_SPLITS, SearchRun
from components.steps.train_supernet import SupernetRun, train_supernet
from model.search import SearchConfig
from model.trainer import default_device
from pipelines.cli import add_fitness_options, fitness_config
from pipelines.studies import RankCorrRun, rank_corr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="ingestion output folder")
    source.add_argument("--teacher-rows", type=int, help="rows of synthetic teacher data to generate")
    parser.add_argument("--cardinality", type=int, default=1000, help="teacher: values per feature (default 1000)")
    parser.add_argument("--space", default="demo", help="search space (default: demo)")
    parser.add_argument(
        "--architectures",
        type=int,
        default=32,
        help="architectures sampled (default: 32; with 16, tau's noise is ~0.18)",
    )
    parser.add_argument(
        "--truth-runs",
        type=int,
        default=2,
        help="from-scratch runs per architecture, seeds 0, 1, ...; the truth is their mean, and with 2 or more "
        "the study reports how well one run ranks another, the ceiling against a one-run truth (default: 2)",
    )
    parser.add_argument("--supernet-epochs", type=float, default=8.0, help="supernet epochs (default: 8)")
    parser.add_argument("--train-epochs", type=float, default=1.0, help="from-scratch epochs each (default: 1)")
    parser.add_argument("--batch-size", type=int, default=512, help="training batch (default: 512)")
    parser.add_argument("--lr", type=float, default=0.12, help="supernet and from-scratch peak lr (default: 0.12)")
    add_fitness_options(parser)
    parser.add_argument("--eval-batches", type=int, default=64, help="validation batches for scores (default: 64)")
    parser.add_argument(
        "--finetune-batches", type=int, default=64, help="batches the head cycles through (default: 64)"
    )
    parser.add_argument(
        "--finetune-split",
        choices=FINETUNE_SPLITS,
        default="validation",
        help="rows the head is fine-tuned on (default: validation, the batches after the scored ones; "
        "train as in the paper, for a supernet that saw its rows once); the subnet fitness always trains on train",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes scoring, then training from scratch, at once (default: 1)"
    )
    parser.add_argument("--device", help="default: cuda when available")
    parser.add_argument(
        "--out", type=Path, help="work folder (default: a temporary one); a rerun into it resumes or extends the study"
    )
    add_json_argument(parser)
    args = parser.parse_args()
    device = torch.device(args.device) if args.device else default_device()
    out = args.out or Path(tempfile.mkdtemp(prefix="rank_corr_"))
    start = time.perf_counter()
    data = args.data
    if data is None:
        data = write_teacher_splits(out / "data", args.teacher_rows, args.cardinality)
        print(f"wrote {args.teacher_rows:,} teacher rows in {time.perf_counter() - start:.1f} s", flush=True)
    supernet_run = SupernetRun(space=args.space, epochs=args.supernet_epochs, batch_size=args.batch_size, lr=args.lr)
    training = train_supernet(data, out / "supernet", supernet_run, device)["training"]
    fitness = fitness_config(args)
    search = SearchRun(
        search=SearchConfig(fitness=fitness),
        eval_batches=args.eval_batches,
        finetune_batches=args.finetune_batches,
        batch_size=args.batch_size,
        finetune_split="train" if fitness.method == "subnet" else args.finetune_split,
    )
    train = FinetuneRun(epochs=args.train_epochs, batch_size=args.batch_size, lr=args.lr, progress=False)
    run = RankCorrRun(
        architectures=args.architectures, search=search, train=train, truth_runs=args.truth_runs, workers=args.workers
    )
    result = rank_corr(out / "supernet" / "checkpoint.pt", data, out / "rank_corr", run, device)
    figures = {
        "data": str(args.data) if args.data else f"teacher {args.teacher_rows:,} rows, cardinality {args.cardinality}",
        "space": args.space,
        "fitness": asdict(fitness),
        "device": str(device),
        # None: the supernet in --out was already trained, so this run measured no training speed
        "supernet_samples_per_second": training["samples_per_second"]
        if training["resumed_from"] < training["steps"]
        else None,
        "architectures": result["architectures"],
        "truth_runs": result["truth_runs"],
        "mflops_only": result["mflops_only"],
        "truth_repeatability": result["truth_repeatability"],
        "without_finetuning": result["without_finetuning"],
        "with_finetuning": result["with_finetuning"],
        "most_misranked": result["most_misranked"],
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(f"rank correlation over {result['architectures']} architectures (tau's 95% bootstrap interval):")
    for name, label in (
        ("without_finetuning", "without fine-tuning"),
        ("with_finetuning", f"{fitness.method} fine-tuning"),
    ):
        print(f"  {label}: {_describe(result[name])}")
    print(f"  ranking by MFLOPs alone: {_describe(result['mflops_only'])}")
    if result["truth_repeatability"] is not None:
        print(
            f"one from-scratch run against another: tau {result['truth_repeatability']['kendall_tau']:.3f} "
            f"rho {result['truth_repeatability']['spearman_rho']:.3f}"
        )
    print("most misranked after fine-tuning (architecture: rank by score, rank from scratch):")
    worst = result["most_misranked"]
    print("  " + ", ".join(f"{m['architecture']}: {m['score_rank']:g} vs {m['truth_rank']:g}" for m in worst))
    write_json(args.json, figures)


def _describe(correlations: dict) -> str:
    low, high = correlations["kendall_tau_interval"]
    return f"tau {correlations['kendall_tau']:.3f} [{low:.2f}, {high:.2f}], rho {correlations['spearman_rho']:.3f}"


if __name__ == "__main__":
    main()

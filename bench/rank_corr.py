"""The method's key quality figure: do supernet scores rank architectures as training them does?

Trains a supernet (8 epochs by default), samples N architectures, scores each with the supernet
without and with head-only fine-tuning, trains each from scratch --truth-runs times (seeds 0, 1, ...),
and reports Kendall tau (with its 95% bootstrap interval) and Spearman rho against the mean, next to
two references: ranking by MFLOPs alone, and one from-scratch run against another (the ceiling for any
score against a single run).
A rerun into the same --out reuses the supernet and the from-scratch results.

On 1M teacher rows, 32 architectures, 64 fine-tuning and 64 scoring batches (2026-11-29): tau with
head fine-tuning on validation rows 0.387 after 8 supernet epochs (0.403 after 16, 0.21 after 3),
MFLOPs alone 0.379, one from-scratch run against another 0.609. The head is fine-tuned on validation
rows by default: after 16 epochs the supernet has memorised its training rows, and fine-tuning on
them dropped tau to 0.19.
Extended to 48 architectures (8 epochs): tau 0.415 [0.23, 0.58] with fine-tuning, 0.410 without,
MFLOPs alone 0.197, one run against another 0.665.
The supernet's misjudgement is systematic, not seed noise: a second supernet (seed 1) ranks the first 32
architectures as the first does (tau 0.843 between their fine-tuned scores, against 0.665 between two
from-scratch runs of 48), both put the stem-alone wirings last, and averaging the two supernets' scores does not
raise tau (0.331 against 0.347 and 0.335 alone, truth = run 0).
The misjudged wiring is the last block's sparse operator reading the stem alone: changing only those inputs
to (0, 1), (0, 3), (3,) or all four moves the two misranked architectures' fine-tuned scores from 0.467 to
0.396-0.406. Without them tau (truth = run 0) is 0.494. Fine-tuning the LayerNorm gains or the whole subnet
with the head (500 steps) leaves them at 0.456 or worse. Layer-normalising the stem's tokens in supernet
and standalone networks alike (an experiment, not in the code) raised tau to 0.435 [0.18, 0.65] against
that design's own run 0 (0.399 without fine-tuning), with the same 0.494 without the two.
Training the supernet with input counts drawn uniformly from 1 to 4 instead of 1 + Binomial(3, 0.5), which
doubles how often a block reads one input alone (an experiment, not in the code), did not help: tau 0.331
with fine-tuning and 0.347 without (truth = run 0); the two stem-alone architectures still rank 32nd and 30th.
A longer truth does not explain the misjudgement either. Twelve of the 32 (the most misranked and a spread)
trained for 3 epochs (best validation point, patience 1; a scratch experiment) reach log loss 0.361-0.437
against 0.386-0.476 after one epoch, ranked as one epoch ranks them (tau 0.727 between the two truths);
architecture 26 ranks 2nd of the 12 after 3 epochs, and the fine-tuned score's tau on the 12 falls from
0.242 against one epoch to 0.091 against three, while MFLOPs alone reaches 0.758.

bench/results/rank_corr_teacher_1m/ holds from-scratch runs of this study (1M teacher rows, cardinality
1000, default seeds; each file lists the architectures it covers). Copy its files into OUT/rank_corr/
and a study on that data trains only the runs they lack. Each record carries the data's fingerprint (a
hash of the parquet files, so the same pyarrow must write them) and the training settings; the study
refuses records that do not match. The records do not name the network design: after a change to the
networks, start from an empty folder.

    python -m bench.rank_corr --data DIR            # an ingestion folder (`nasrec ingest --out`)
    python -m bench.rank_corr --teacher-rows 1000000  # or a synthetic teacher dataset, written first
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.common import add_json_argument, write_json, write_teacher_splits
from model.search import FitnessConfig, SearchConfig
from model.trainer import default_device
from pipelines import steps


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
    parser.add_argument("--finetune-steps", type=int, default=500, help="head fine-tuning steps (default: 500)")
    parser.add_argument("--eval-batches", type=int, default=64, help="validation batches for scores (default: 64)")
    parser.add_argument(
        "--finetune-batches", type=int, default=64, help="batches the head cycles through (default: 64)"
    )
    parser.add_argument(
        "--finetune-split",
        choices=steps.FINETUNE_SPLITS,
        default="validation",
        help="rows the head is fine-tuned on (default: validation, the batches after the scored ones; "
        "train as in the paper, for a supernet that saw its rows once)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes training from scratch at once (default: 1)")
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
    supernet_run = steps.SupernetRun(
        space=args.space, epochs=args.supernet_epochs, batch_size=args.batch_size, lr=args.lr
    )
    training = steps.train_supernet(data, out / "supernet", supernet_run, device)["training"]
    search = steps.SearchRun(
        search=SearchConfig(fitness=FitnessConfig(finetune_steps=args.finetune_steps)),
        eval_batches=args.eval_batches,
        finetune_batches=args.finetune_batches,
        batch_size=args.batch_size,
        finetune_split=args.finetune_split,
    )
    train = steps.FinetuneRun(epochs=args.train_epochs, batch_size=args.batch_size, lr=args.lr, progress=False)
    run = steps.RankCorrRun(
        architectures=args.architectures, search=search, train=train, truth_runs=args.truth_runs, workers=args.workers
    )
    result = steps.rank_corr(out / "supernet" / "checkpoint.pt", data, out / "rank_corr", run, device)
    figures = {
        "data": str(args.data) if args.data else f"teacher {args.teacher_rows:,} rows, cardinality {args.cardinality}",
        "space": args.space,
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
    for name, label in (("without_finetuning", "without fine-tuning"), ("with_finetuning", "with fine-tuning")):
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

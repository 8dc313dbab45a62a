"""Training architectures in parallel processes (`finetune` / `rank-corr --workers N`) against one at a time.

Trains the same sampled architectures from scratch with one process, then with N, through
train_architectures (validation at the end of each), and prints the wall time of each and
their ratio. Small networks leave most cores, or a GPU, idle when trained one at a time: on a 2-core
CPU, 2 processes trained 4 `demo` architectures (300 steps each, 1M teacher rows) 1.27x as fast (2026-11-29).

    python -m bench.training_workers --data DIR              # an ingestion folder (`nasrec ingest --out`)
    python -m bench.training_workers --teacher-rows 200000   # or synthetic teacher data, written first
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from bench.common import add_json_argument, write_json, write_teacher_splits
from components.steps.finetune import FinetuneRun, TrainingJob, train_architectures
from model.sampling import ArchitectureSampler
from model.space import get_space
from model.trainer import default_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="ingestion output folder")
    source.add_argument("--teacher-rows", type=int, help="rows of synthetic teacher data to generate")
    parser.add_argument("--space", default="demo", help="search space the architectures come from (default: demo)")
    parser.add_argument("--architectures", type=int, default=4, help="architectures trained (default: 4)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of each (default: 300)")
    parser.add_argument("--batch-size", type=int, default=512, help="rows per step (default: 512)")
    parser.add_argument("--workers", type=int, default=2, help="processes to compare with one (default: 2)")
    parser.add_argument("--device", help="default: cuda when available")
    add_json_argument(parser)
    args = parser.parse_args()
    device = torch.device(args.device) if args.device else default_device()
    data = args.data or write_teacher_splits(Path(tempfile.mkdtemp(prefix="workers_")), args.teacher_rows, 1000)
    sampler = ArchitectureSampler(get_space(args.space), seed=0)
    run = FinetuneRun(steps=args.steps, batch_size=args.batch_size, eval_every=args.steps, progress=False)
    jobs = [TrainingJob(sampler.sample(), run, init_seed=0) for _ in range(args.architectures)]
    seconds = {}
    for workers in (1, args.workers):
        start = time.perf_counter()
        losses = [best["log_loss"] for _, best in train_architectures(jobs, data, device, workers)]
        seconds[workers] = time.perf_counter() - start
        print(
            f"{workers} process(es): {len(jobs)} architectures x {args.steps} steps in {seconds[workers]:.1f} s "
            f"(mean validation log loss {sum(losses) / len(losses):.4f})",
            flush=True,
        )
    speedup = seconds[1] / seconds[args.workers]
    print(f"{args.workers} processes train {speedup:.2f}x as fast as one", flush=True)
    write_json(
        args.json,
        {
            "device": str(device),
            "cpu_count": os.cpu_count(),
            "architectures": len(jobs),
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seconds": {str(w): s for w, s in seconds.items()},
            "speedup": speedup,
        },
    )


if __name__ == "__main__":
    main()

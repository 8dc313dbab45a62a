"""The pipeline's model steps at the `demo` preset's sizes, timed one by one, on whatever device is given.

train_supernet -> search -> finetune -> evaluate -> export, through the step library (`components.steps`), on
teacher-labelled Criteo-shaped splits written without Feast (the GPU machine has none), then the ONNX parity
check on the CPU. Ingest and deploy are left out: they need Feast and Triton, and no GPU.

    python -m bench.pipeline_steps --device cuda --json PATH

The preset's figures on the 2-core CPU machine come from `make run` (README); this bench is how a GPU run of the
same steps is measured.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.common import add_json_argument, write_json, write_teacher_splits
from components.steps.common import resolve_device
from components.steps.evaluate import EvaluateRun, evaluate
from components.steps.export import ExportRun, export
from components.steps.finetune import FinetuneRun, finetune, read_architectures
from components.steps.search import SearchRun, search
from components.steps.train_supernet import SupernetRun, train_supernet
from features.schema import builtin_schema


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--rows", type=int, default=100_000, help="teacher rows, split 8:1:1 (default: 100000)")
    parser.add_argument("--supernet-steps", type=int, default=1500, help="(default: 1500, the demo preset's)")
    parser.add_argument("--population", type=int, default=24, help="(default: 24)")
    parser.add_argument("--generations", type=int, default=6, help="(default: 6)")
    parser.add_argument("--fitness-steps", type=int, default=200, help="(default: 200)")
    parser.add_argument("--top-k", type=int, default=3, help="(default: 3)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench/pipeline_steps"), help="where files go")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    work = args.work_dir
    data = write_teacher_splits(work / "data", args.rows, cardinality=1000)
    builtin_schema("criteo").save(data / "schema.yaml")  # the raw columns are Criteo's: export records them
    seconds: dict[str, float] = {}

    def timed(step: str, call):
        started = time.perf_counter()
        result = call()
        seconds[step] = time.perf_counter() - started
        print(f"{step}: {seconds[step]:.1f} s on {device}", flush=True)
        return result

    supernet = SupernetRun(steps=args.supernet_steps, progress=False)
    trained = timed("train_supernet", lambda: train_supernet(data, work / "supernet", supernet, device))
    run = SearchRun.for_budget(
        args.population, args.generations, args.top_k, max_mflops=0.0, fitness_steps=args.fitness_steps, seed=0
    )
    checkpoint = work / "supernet" / "checkpoint.pt"
    summary = timed("search", lambda: search(checkpoint, data, work / "search", run, device))
    archs = read_architectures(work / "search" / "top_k.json", args.top_k)
    tuned = timed("finetune", lambda: finetune(archs, data, work / "finetune", FinetuneRun(progress=False), device))
    winner = work / "finetune" / "winner"
    evaluation = timed("evaluate", lambda: evaluate(winner, data, work / "evaluate", EvaluateRun(), device))
    exported = timed(
        "export", lambda: export(winner, data, work / "export", ExportRun(), work / "evaluate" / "evaluation.json")
    )
    figures = {
        "device": str(device),
        "seconds": seconds,
        "supernet_samples_per_second": trained["training"]["samples_per_second"],
        "search_evaluations": summary["evaluations"],
        "winner_validation_auc": tuned["winner"]["validation"]["auc"],
        "test": evaluation["test"],
        "parity": exported["parity"],
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "work_dir")},
    }
    write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()

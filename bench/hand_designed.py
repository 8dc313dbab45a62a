"""Each hand-designed baseline against its architecture in the `ctr` space (model/architectures/), paired by
fold on the 10-fold protocol of ../shared/data/README.md: does the space really contain the models it must beat?

Both are trained the same way as in bench.quality (the same grid, early stopping on validation AUC, the
best validation point tested), from the same data path.

    python -m bench.hand_designed --data criteo --json bench/results/hand_designed/criteo.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.common import add_json_argument, write_json
from bench.quality import (
    add_data_arguments,
    add_training_arguments,
    best_over_grid,
    dataset,
    ingest_fold,
    training_run,
)
from components.steps.data import IngestedData
from components.steps.finetune import train_network
from model.arch import Architecture
from model.network import NASRecNet
from model.trainer import default_device, describe, evaluate
from model.zoo import HAND_DESIGNED, hand_designed
from pipelines.studies import train_baseline


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--models", nargs="+", default=list(HAND_DESIGNED), choices=HAND_DESIGNED)
    add_training_arguments(parser)
    parser.add_argument("--device", help="default: cuda when available")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    add_json_argument(parser)
    return parser.parse_args()


def run_fold(k: int, data_dir: Path, args: argparse.Namespace, device: torch.device) -> dict:
    data = IngestedData(data_dir)
    base = training_run(data, args, k)
    results = {}
    for name in args.models:
        arch = hand_designed(name)

        def in_space(optimizer: str, lr: float, arch: Architecture = arch) -> dict:
            torch.manual_seed(k)
            net = NASRecNet.to_train(arch, data.input_schema)
            result = train_network(net, describe(net), data, replace(base, optimizer=optimizer, lr=lr), device, None)
            return {"validation": result.best, "test": evaluate(net.eval(), data.batches("test"), device)}

        def baseline(optimizer: str, lr: float, name: str = name) -> dict:
            return train_baseline(name, data_dir, None, replace(base, optimizer=optimizer, lr=lr), device)

        clock = time.perf_counter()
        results[name] = best_over_grid(baseline, args.grid)
        results[f"{name}_in_space"] = best_over_grid(in_space, args.grid)
        results[f"{name}_seconds"] = round(time.perf_counter() - clock, 1)
        print(
            f"fold {k} {name}: baseline {results[name]['test']['auc']:.4f}, "
            f"in the space {results[f'{name}_in_space']['test']['auc']:.4f}",
            flush=True,
        )
    return results


def summarise(folds: dict[int, dict], models: list[str]) -> dict:
    table = {}
    for name in models:
        pairs = [(f[f"{name}_in_space"]["test"]["auc"], f[name]["test"]["auc"]) for f in folds.values()]
        diff = [a - b for a, b in pairs]
        table[name] = {
            "baseline_auc_mean": statistics.fmean(b for _, b in pairs),
            "in_space_auc_mean": statistics.fmean(a for a, _ in pairs),
            "in_space_minus_baseline_mean": statistics.fmean(diff),
            "in_space_minus_baseline_std": statistics.stdev(diff) if len(diff) > 1 else 0.0,
        }
    return table


def main() -> None:
    args = parse_args()
    schema, raw, folds = dataset(args)
    args.work = args.work or Path(tempfile.mkdtemp(prefix=f"hand_designed_{schema.name}_"))
    device = torch.device(args.device) if args.device else default_device()
    results: dict[int, dict] = {}
    for k in range(args.fold_count):
        data_dir = ingest_fold(k, schema, raw, folds, args.work / f"fold{k}")
        results[k] = run_fold(k, data_dir, args, device)
        table = summarise(results, args.models)
        for name, row in table.items():
            print(
                f"  {name:7s} baseline {row['baseline_auc_mean']:.4f}, in the space {row['in_space_auc_mean']:.4f}: "
                f"{row['in_space_minus_baseline_mean']:+.4f} ± {row['in_space_minus_baseline_std']:.4f} "
                f"over {len(results)} folds",
                flush=True,
            )
        write_json(
            args.json,
            {
                "dataset": schema.name,
                "folds": sorted(results),
                "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "table": table,
                "per_fold": results,
            },
        )


if __name__ == "__main__":
    main()

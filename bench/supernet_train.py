"""Supernet training throughput through the real training loop (sampling, full-path warm-up, clipping,
Adagrad, bf16 autocast and pinned copies on CUDA) on synthetic Criteo-shaped batches.

    python -m bench.supernet_train [--space nasrec-full] [--steps 300] [--device cuda] [--json PATH]
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from bench.common import CRITEO_SCHEMA, add_json_argument, synthetic_batch, write_json
from model.space import get_space
from model.supernet import Supernet
from model.trainer import TrainConfig, Trainer, default_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="nasrec-full", help="search space (default: nasrec-full)")
    parser.add_argument("--steps", type=int, default=300, help="training steps (default: 300)")
    parser.add_argument("--batch-size", type=int, default=512, help="rows per step (default: 512)")
    parser.add_argument("--full-path-warmup", type=float, default=0.2, help="fraction of steps (default: 0.2)")
    parser.add_argument("--device", help="default: cuda when available")
    add_json_argument(parser)
    args = parser.parse_args()
    device = torch.device(args.device) if args.device else default_device()
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    pool = [synthetic_batch(CRITEO_SCHEMA, args.batch_size, generator) for _ in range(32)]  # CPU, as a loader gives
    supernet = Supernet(get_space(args.space), CRITEO_SCHEMA)
    config = TrainConfig(
        steps=args.steps,
        full_path_warmup_steps=round(args.steps * args.full_path_warmup),
        log_every=max(args.steps // 10, 1),  # the last loss-curve point: the mean over about the last tenth
    )
    start = time.perf_counter()
    result = Trainer(supernet, config, device).fit(itertools.cycle(pool))
    if device.type == "cuda":
        torch.cuda.synchronize()
    figures = {
        "space": args.space,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": "bf16 autocast" if device.type == "cuda" else "float32",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "full_path_warmup_steps": config.full_path_warmup_steps,
        "supernet_parameters_non_embedding": supernet.network.num_parameters(),
        "seconds": round(time.perf_counter() - start, 2),
        "samples_per_second": round(result.samples_per_second),
        "mean_loss_last_tenth": result.loss_curve[-1][1],
    }
    if device.type == "cuda":
        figures["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    print(
        f"{args.space} supernet on {figures['device']}: {figures['samples_per_second']:,} samples/s "
        f"({args.steps} steps of {args.batch_size}, {figures['seconds']} s, "
        f"mean loss over the last tenth {figures['mean_loss_last_tenth']:.4f})"
    )
    write_json(args.json, figures)


if __name__ == "__main__":
    main()

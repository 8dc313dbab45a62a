"""How well a model of an architecture's shape predicts its served latency, against MFLOPs alone.

Samples `--architectures` networks of a search space (seeded), measures each one's p50/p99 as served (its ONNX
graph in ONNX Runtime, one thread, one request of `--batch` rows; serving/latency.py) on this machine, and fits
p99 on LATENCY_FEATURES and, for comparison, on MFLOPs; each fit's error is leave-one-out.

    python -m bench.latency_model --space demo --architectures 40 --json bench/results/latency_model/demo.json
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bench.common import add_json_argument, write_json
from model.network import InputSchema, NASRecNet
from model.sampling import ArchitectureSampler
from model.space import get_space
from serving.latency import LATENCY_FEATURES, LatencyModel, latency_features, measure_latency

CRITEO_LIKE = InputSchema(13, (5000,) * 26)  # the widths the latency depends on; vocabulary sizes barely matter


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="demo", help="search space (default: demo)")
    parser.add_argument("--architectures", type=int, default=40, help="networks sampled and measured (default: 40)")
    parser.add_argument("--batch", type=int, default=512, help="rows of the timed request (default: 512)")
    parser.add_argument("--runs", type=int, default=100, help="timed requests per network (default: 100)")
    parser.add_argument("--seed", type=int, default=11, help="sampling seed (default: 11)")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sampler = ArchitectureSampler(get_space(args.space), seed=args.seed)
    measured = []
    for i in range(args.architectures):
        arch = sampler.sample()
        net = NASRecNet(arch, CRITEO_LIKE).eval()
        latency = measure_latency(net, CRITEO_LIKE, args.batch, args.runs)
        measured.append(
            {
                "architecture": arch.to_dict(),
                "mflops": net.mflops(),
                "features": latency_features(net).tolist(),
                "p50_ms": latency.p50_ms,
                "p99_ms": latency.p99_ms,
            }
        )
        print(
            f"{i:3d}: {net.mflops():.3f} MFLOPs, p50 {latency.p50_ms:6.2f} ms, p99 {latency.p99_ms:6.2f} ms", flush=True
        )
    p99 = np.array([m["p99_ms"] for m in measured])
    shape_model = LatencyModel.fit(np.array([m["features"] for m in measured]), p99, args.batch)
    mflops_model = LatencyModel.fit(np.array([[1.0, m["mflops"]] for m in measured]), p99, args.batch)
    correlation = float(np.corrcoef([m["mflops"] for m in measured], p99)[0, 1])
    print(
        f"p99 over {len(p99)} networks: {p99.min():.2f} to {p99.max():.2f} ms (median {np.median(p99):.2f}); "
        f"leave-one-out mean relative error: {LATENCY_FEATURES} {shape_model.error:.2f}, MFLOPs alone "
        f"{mflops_model.error:.2f} (correlation of MFLOPs with p99: {correlation:.2f})",
        flush=True,
    )
    figures = {
        "space": args.space,
        "batch": args.batch,
        "runs": args.runs,
        "features": list(LATENCY_FEATURES),
        "shape_model": {"weights": shape_model.weights, "loo_mean_relative_error": shape_model.error},
        "mflops_model": {"weights": mflops_model.weights, "loo_mean_relative_error": mflops_model.error},
        "mflops_p99_correlation": correlation,
        "measured": measured,
    }
    write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()

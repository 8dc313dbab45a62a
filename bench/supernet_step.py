"""Training-step cost of weight sharing: (a) supernet steps with sampled subnets, (b) the same subnets as
standalone NASRecNets, (c) full-path steps. Prints medians, samples/s and the a/b ratio per space.

    python -m bench.supernet_step [--spaces demo nasrec-full] [--subnets 12] [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.common import CRITEO_SCHEMA, add_json_argument, summary, synthetic_batch, write_json
from model.network import NASRecNet
from model.sampling import ArchitectureSampler
from model.space import get_space
from model.supernet import Supernet
from model.training import SliceAdagrad, network_step, supernet_step


def measure_space(name: str, subnets: int, full_steps: int, batch_size: int, seed: int, device: str) -> dict:
    space = get_space(name)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    batches = [synthetic_batch(CRITEO_SCHEMA, batch_size, generator, device) for _ in range(4)]
    supernet = Supernet(space, CRITEO_SCHEMA).to(device)
    optimizer = SliceAdagrad(supernet.parameters(), lr=0.05)
    sampler = ArchitectureSampler(space, seed)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def timed(step, *args) -> float:
        sync()
        start = time.perf_counter()
        step(*args)
        sync()
        return time.perf_counter() - start

    supernet_step(supernet, sampler.sample(), batches[0], optimizer)  # warm-up: allocator, kernels
    supernet_times, standalone_times, ratios, mflops = [], [], [], []
    for i in range(subnets):
        arch = sampler.sample()  # a fresh subnet each step, as in supernet training
        batch = batches[i % len(batches)]
        supernet_times.append(timed(supernet_step, supernet, arch, batch, optimizer))
        net = NASRecNet(arch, CRITEO_SCHEMA).to(device)
        net_optimizer = SliceAdagrad(net.parameters(), lr=0.05)
        network_step(net, batch, net_optimizer)  # warm-up of this network
        standalone_times.append(statistics.median(timed(network_step, net, batch, net_optimizer) for _ in range(3)))
        ratios.append(supernet_times[-1] / standalone_times[-1])  # paired: the same subnet, the same batch
        mflops.append(net.mflops())
        print(
            f"  {name} subnet {i + 1}/{subnets}: {net.mflops():7.3f} MFLOPs"
            f"  supernet {supernet_times[-1] * 1e3:8.1f} ms"
            f"  standalone {standalone_times[-1] * 1e3:8.1f} ms  ratio {ratios[-1]:.2f}",
            flush=True,
        )
    full_times = [timed(supernet_step, supernet, None, batches[k % len(batches)], optimizer) for k in range(full_steps)]
    a, b = summary(supernet_times, batch_size), summary(standalone_times, batch_size)
    return {
        "space": name,
        "batch_size": batch_size,
        "subnets": subnets,
        "subnet_mflops_median": statistics.median(mflops),
        "supernet_params": sum(p.numel() for n, p in supernet.named_parameters() if not n.startswith("network.stem")),
        "a_supernet_subnet_steps": a,
        "b_standalone_steps": b,
        "c_full_path_steps": summary(full_times, batch_size),
        "ratio_a_over_b": a["median_step_ms"] / b["median_step_ms"],
        "ratio_a_over_b_total_time": sum(supernet_times) / sum(standalone_times),
        "ratio_a_over_b_per_subnet_median": statistics.median(ratios),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spaces", nargs="+", default=["demo", "nasrec-full"], help="search spaces to measure")
    parser.add_argument(
        "--subnets", type=int, default=40, help="sampled subnets per space (one supernet step each, as in training)"
    )
    parser.add_argument("--full-steps", type=int, default=3, help="timed full-path steps per space")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    results = {"device": args.device, "torch_threads": torch.get_num_threads(), "spaces": {}}
    for name in args.spaces:
        r = measure_space(name, args.subnets, args.full_steps, args.batch_size, args.seed, args.device)
        results["spaces"][name] = r
        a, b, c = (r[k] for k in ("a_supernet_subnet_steps", "b_standalone_steps", "c_full_path_steps"))
        print(
            f"{name}: median step (a) supernet {a['median_step_ms']:.1f} ms ({a['samples_per_s']:.0f} samples/s), "
            f"(b) standalone {b['median_step_ms']:.1f} ms ({b['samples_per_s']:.0f} samples/s), "
            f"(c) full path {c['median_step_ms']:.1f} ms ({c['samples_per_s']:.0f} samples/s); "
            f"a/b = {r['ratio_a_over_b']:.2f} (medians), {r['ratio_a_over_b_total_time']:.2f} (total time), "
            f"{r['ratio_a_over_b_per_subnet_median']:.2f} (median of paired ratios)"
        )
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()

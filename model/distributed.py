"""Data-parallel training across processes started by `torchrun` (gloo on CPU, nccl on CUDA).

Every rank samples the same subnet (same sampler seed), reads its own share of the batches and
averages gradients before the (identical) optimiser step, so the ranks' weights stay equal. Gradients
are exchanged as `Update`s because a supernet step trains slices, which torch's DDP wrapper cannot
express; embedding gradients are sparse and are gathered rather than reduced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from model.training import Update


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_environment(device: torch.device) -> World:
    """Join the process group `torchrun` describes in the environment; a single process otherwise."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return World()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def local_device(device: torch.device) -> torch.device:
    """On CUDA each rank drives the GPU `torchrun` gave it (LOCAL_RANK)."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def broadcast_parameters(module: nn.Module, world: World) -> None:
    """Start every rank from rank 0's weights."""
    if world.size == 1:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor, src=0)


def average_updates(updates: list[Update], world: World) -> list[Update]:
    """Mean of every rank's gradients (dense ones all-reduced in one buffer, sparse ones gathered)."""
    if world.size == 1:
        return updates
    dense = [u for u in updates if not u[2].is_sparse]
    if dense:
        flat = torch.cat([g.reshape(-1) for _, _, g in dense])
        dist.all_reduce(flat)
        flat /= world.size
        sizes = [g.numel() for _, _, g in dense]
        dense = [(p, i, part.view_as(g)) for (p, i, g), part in zip(dense, flat.split(sizes))]
    sparse = [(p, i, _gather_sparse(g, world)) for p, i, g in updates if g.is_sparse]
    return dense + sparse


def _gather_sparse(grad: Tensor, world: World) -> Tensor:
    """Concatenate every rank's rows of a sparse (rows x dim) gradient, divided by the world size."""
    grad = grad.coalesce()
    rows, values = grad.indices()[0], grad.values()
    count = torch.tensor([rows.numel()], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world.size)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded_rows = torch.zeros(longest, dtype=rows.dtype, device=rows.device)
    padded_values = torch.zeros(longest, values.shape[1], dtype=values.dtype, device=values.device)
    padded_rows[: rows.numel()] = rows
    padded_values[: rows.numel()] = values
    all_rows = [torch.empty_like(padded_rows) for _ in range(world.size)]
    all_values = [torch.empty_like(padded_values) for _ in range(world.size)]
    dist.all_gather(all_rows, padded_rows)
    dist.all_gather(all_values, padded_values)
    keep = [slice(0, int(c.item())) for c in counts]
    indices = torch.cat([r[k] for r, k in zip(all_rows, keep)]).unsqueeze(0)
    merged = torch.cat([v[k] for v, k in zip(all_values, keep)]) / world.size
    return torch.sparse_coo_tensor(indices, merged, grad.shape).coalesce()


def check_in_sync(module: nn.Module, world: World) -> None:
    """Raise if the ranks' weights differ (a broken data-parallel step), comparing a checksum per tensor."""
    if world.size == 1:
        return
    with torch.no_grad():
        sums = torch.stack([p.detach().double().sum() for p in module.parameters()])
        low, high = sums.clone(), sums.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        names = [n for (n, _), same in zip(module.named_parameters(), (low == high).tolist()) if not same]
        raise RuntimeError(f"rank {world.rank}: weights differ between ranks in {names[:5]}")


def shutdown(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()

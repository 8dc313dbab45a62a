"""Training steps shared by supernets and standalone networks, with optimisers that update slices.

A supernet step trains one subnet. Its weights are taken as leaves (views or copies of supernet
slices), so backward costs what the subnet costs; the optimiser then updates only those slices of
the supernet and of its accumulators. That is exactly a dense Adagrad step whose gradient is zero
outside the slices (Adagrad leaves such entries unchanged), without touching the rest.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.arch import Architecture
from model.supernet import Index, Supernet

Update = tuple[nn.Parameter, "Index | None", Tensor]  # parameter, the slice trained (None: all), its gradient


@dataclass
class Batch:
    dense: Tensor  # (B, n_dense) float32
    sparse: Tensor  # (B, n_sparse) int64
    label: Tensor  # (B,) float32 in {0, 1}

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in (self.dense, self.sparse, self.label)))


class SliceAdagrad:
    """Adagrad (torch.optim.Adagrad semantics, no lr decay or weight decay) over slices of parameters."""

    name = "adagrad"

    def __init__(self, params: Iterable[nn.Parameter], lr: float, eps: float = 1e-2):
        self.lr = lr
        self.eps = eps
        self.state_sums = {p: torch.zeros_like(p) for p in params}

    @torch.no_grad()
    def apply(self, updates: Iterable[Update]) -> None:
        sums_in_place: list[Tensor] = []  # whole tensors and views, updated together below
        weights_in_place: list[Tensor] = []
        grads_in_place: list[Tensor] = []
        for param, index, grad in updates:
            state = self.state_sums[param]
            if grad.is_sparse:  # embedding rows
                grad = grad.coalesce()
                rows, values = grad.indices()[0], grad.values()
                sums = state.index_select(0, rows).addcmul_(values, values)
                state.index_copy_(0, rows, sums)
                param.index_add_(0, rows, values / sums.sqrt().add_(self.eps), alpha=-self.lr)
            elif index is None or _is_view(index):
                sums_in_place.append(state if index is None else state[index])
                weights_in_place.append(param if index is None else param[index])
                grads_in_place.append(grad)
            else:  # a gathered copy, not a view: update it, then write it back
                sums = state[index].addcmul_(grad, grad)
                state[index] = sums
                param[index] = param[index].addcdiv_(grad, sums.sqrt().add_(self.eps), value=-self.lr)
        if grads_in_place:  # multi-tensor kernels: a few launches in all, not a few per tensor (on GPU)
            torch._foreach_addcmul_(sums_in_place, grads_in_place, grads_in_place)
            denominators = torch._foreach_sqrt(sums_in_place)
            torch._foreach_add_(denominators, self.eps)
            torch._foreach_addcdiv_(weights_in_place, grads_in_place, denominators, value=-self.lr)

    def state_dict(self) -> dict:
        return {"name": self.name, "tensors": [[s] for s in self.state_sums.values()]}

    def load_state_dict(self, state: dict) -> None:
        _load_tensors(self, state, [(s,) for s in self.state_sums.values()])


class SliceAdam:
    """Adam over slices of parameters; embedding rows are updated lazily, only where a batch has them.

    Lazy sparse updates (as torch.optim.SparseAdam) keep a step's cost proportional to the rows it
    touches; a supernet slice is updated as if the gradient outside it were absent, not zero. Bias
    correction counts optimiser steps.
    """

    name = "adam"

    def __init__(
        self, params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ):
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.steps = 0
        self.moments = {p: (torch.zeros_like(p), torch.zeros_like(p)) for p in params}

    @torch.no_grad()
    def apply(self, updates: Iterable[Update]) -> None:
        self.steps += 1
        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1**self.steps)
        root_correction = math.sqrt(1 - beta2**self.steps)

        def moved(mean: Tensor, square: Tensor, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            mean.mul_(beta1).add_(grad, alpha=1 - beta1)
            square.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            return mean, square, mean / square.sqrt().div_(root_correction).add_(self.eps)

        for param, index, grad in updates:
            mean, square = self.moments[param]
            if grad.is_sparse:  # embedding rows
                grad = grad.coalesce()
                rows = grad.indices()[0]
                row_mean, row_square = mean.index_select(0, rows), square.index_select(0, rows)
                row_mean, row_square, step = moved(row_mean, row_square, grad.values())
                mean.index_copy_(0, rows, row_mean)
                square.index_copy_(0, rows, row_square)
                param.index_add_(0, rows, step, alpha=-step_size)
            elif index is None:
                param.add_(moved(mean, square, grad)[2], alpha=-step_size)
            else:
                slice_mean, slice_square, step = moved(mean[index], square[index], grad)
                weights = param[index].add_(step, alpha=-step_size)
                if not _is_view(index):  # gathered copies, not views: write back
                    mean[index], square[index], param[index] = slice_mean, slice_square, weights

    def state_dict(self) -> dict:
        return {"name": self.name, "steps": self.steps, "tensors": [list(m) for m in self.moments.values()]}

    def load_state_dict(self, state: dict) -> None:
        _load_tensors(self, state, self.moments.values())
        self.steps = state["steps"]


Optimizer = SliceAdagrad | SliceAdam
OPTIMIZERS: dict[str, type[Optimizer]] = {"adagrad": SliceAdagrad, "adam": SliceAdam}


def build_optimizer(name: str, params: Iterable[nn.Parameter], lr: float) -> Optimizer:
    """An optimiser by name; unknown names fail with the known ones."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr=lr)


def _is_view(index: Index) -> bool:
    return all(isinstance(i, slice) for i in index)


def _load_tensors(optimizer: Optimizer, state: dict, own: Iterable[tuple[Tensor, ...]]) -> None:
    if state.get("name") != optimizer.name:
        raise ValueError(f"optimizer state of {state.get('name')!r} cannot resume {optimizer.name!r}")
    for mine, saved in zip(own, state["tensors"], strict=True):
        for tensor, value in zip(mine, saved, strict=True):
            tensor.copy_(value)


def clip_gradients(updates: list[Update], max_norm: float) -> tuple[list[Update], float]:
    """Scale all gradients together so their global L2 norm is at most `max_norm` (sparse ones included)."""
    grads = [g.coalesce().values() if g.is_sparse else g for _, _, g in updates]
    if not grads:
        return updates, 0.0
    # One read of the total: a float() per tensor would make the host wait for the GPU once per tensor.
    total = math.sqrt(float(torch.stack([g.float().pow(2).sum() for g in grads]).double().sum()))
    scale = max_norm / (total + 1e-6)
    if scale >= 1.0:
        return updates, total
    return [(p, i, g * scale) for p, i, g in updates], total


class NonFiniteLoss(FloatingPointError):
    """A step produced a NaN or infinite loss or gradient; the weights were not updated."""


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (weights and optimiser state stay float32); nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _take_gradients(params: Iterable[nn.Parameter]) -> list[Update]:
    updates = [(p, None, p.grad) for p in params if p.grad is not None]
    for p in params:
        p.grad = None
    return updates


def _loss(logits: Tensor, label: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), label)


def network_gradients(net: nn.Module, batch: Batch) -> tuple[Tensor, list[Update]]:
    """Loss and gradients of a whole network (a NASRecNet, a baseline, or a supernet's full path)."""
    with autocast(batch.dense.device):
        logits = net(batch.dense, batch.sparse)
    loss = _loss(logits, batch.label)
    loss.backward()
    return loss.detach(), _take_gradients(list(net.parameters()))


def supernet_gradients(supernet: Supernet, arch: Architecture | None, batch: Batch) -> tuple[Tensor, list[Update]]:
    """Loss and gradients of the subnet `arch` (None: the full path), as updates of the supernet slices it uses."""
    if arch is None:
        return network_gradients(supernet.network, batch)
    params = dict(supernet.network.named_parameters())
    slices = supernet.weight_slices(arch)
    with torch.no_grad():
        weights = {
            name: params[name] if index is None else params[name][index].requires_grad_()
            for name, index in slices.items()
        }
    with autocast(batch.dense.device):
        logits = supernet.run_subnet(arch, weights, batch.dense, batch.sparse)
    loss = _loss(logits, batch.label)
    loss.backward()
    whole = [params[name] for name, index in slices.items() if index is None]
    updates = _take_gradients(whole) + [
        (params[name], index, weights[name].grad)
        for name, index in slices.items()
        if index is not None and weights[name].grad is not None
    ]
    return loss.detach(), updates


def apply_updates(
    optimizer: Optimizer, loss: Tensor, updates: list[Update], max_grad_norm: float = 5.0
) -> tuple[float, float]:
    """Clip and apply one step's updates; raise NonFiniteLoss (weights untouched) on NaN/inf. Returns (loss, norm)."""
    value = float(loss)
    if not math.isfinite(value):
        raise NonFiniteLoss(f"the loss is {value}")
    clipped, norm = clip_gradients(updates, max_grad_norm)
    if not math.isfinite(norm):
        raise NonFiniteLoss(f"the gradient norm is {norm} (loss {value:.4f})")
    optimizer.apply(clipped)
    return value, norm


def network_step(net: nn.Module, batch: Batch, optimizer: Optimizer, max_grad_norm: float = 5.0) -> float:
    """One optimiser step of a whole network. Returns the loss."""
    loss, updates = network_gradients(net, batch)
    return apply_updates(optimizer, loss, updates, max_grad_norm)[0]


def supernet_step(
    supernet: Supernet, arch: Architecture | None, batch: Batch, optimizer: Optimizer, max_grad_norm: float = 5.0
) -> float:
    """One optimiser step of the subnet `arch` (None: the full path), training the supernet slices it uses."""
    loss, updates = supernet_gradients(supernet, arch, batch)
    return apply_updates(optimizer, loss, updates, max_grad_norm)[0]


def learning_rate(step: int, total_steps: int, peak: float, warmup_fraction: float = 0.1) -> float:
    """Linear warm-up over the first `warmup_fraction` of steps, then cosine decay to zero."""
    warmup = max(1, round(total_steps * warmup_fraction))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

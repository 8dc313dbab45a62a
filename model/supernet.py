"""Weight-sharing supernet: every operator of every block at its largest size; subnets use slices of it.

The supernet's parameters are those of its *full path* (all operators summed, all connections,
largest widths, both interaction modules). A subnet is a `NASRecNet` whose every weight is a slice
of the supernet weight of the same name: leading rows (the first d outputs) and, for weights that
read a block's concatenated input, the columns where that input's nodes sit in the full path.
Those positions depend only on the producing node, so an inherited weight means the same thing
in every subnet (NASREC.md section 6).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torch.func import functional_call

from model.arch import Architecture
from model.network import BlockNetwork, BlockSpec, InputSchema, NASRecNet, NodeDims
from model.ops import EMBEDDING_DIM, INTERACTION_TOKENS
from model.space import SearchSpace

Index = tuple[slice | Tensor, ...]  # per dimension: a range, or explicit positions (at most one, the last)

_CACHE_SIZE = 32


def full_path_specs(space: SearchSpace, schema: InputSchema) -> list[BlockSpec]:
    """Every operator, every earlier node, largest widths, both interaction modules."""
    widths = [schema.num_dense] + [space.max_dense_width] * space.num_blocks
    specs = []
    for b in range(space.num_blocks):
        widest = max(range(b + 1), key=lambda j: (widths[j], j))  # left/right weights sized for the widest input
        specs.append(
            BlockSpec(
                dense_ops=space.dense_operators,
                sparse_ops=space.sparse_operators,
                dense_width=space.max_dense_width,
                sparse_tokens=space.max_sparse_tokens,
                dense_sparse_interact=True,
                deep_fm=True,
                dense_inputs=tuple(range(b + 1)),
                sparse_inputs=tuple(range(b + 1)),
                dense_left=widest,
                dense_right=widest,
            )
        )
    return specs


class Supernet(nn.Module):
    """`supernet(dense, sparse)` runs the full path; `supernet(dense, sparse, arch)` runs one subnet."""

    def __init__(self, space: SearchSpace, schema: InputSchema, use_layernorm: bool = True):
        super().__init__()
        self.space = space
        self.schema = schema
        self.use_layernorm = use_layernorm
        self.network = BlockNetwork(
            full_path_specs(space, schema), schema, use_layernorm, full=True, first_order=True in space.first_order
        )
        self._subnets: OrderedDict[tuple, tuple[NASRecNet, dict[str, Index | None]]] = OrderedDict()

    def forward(self, dense: Tensor, sparse: Tensor, arch: Architecture | None = None) -> Tensor:
        if arch is None:
            return self.network(dense, sparse)
        return self.run_subnet(arch, self.subnet_weights(arch), dense, sparse)

    def check(self, arch: Architecture) -> None:
        """Raise ValueError if `arch` is not a subnet of this supernet."""
        arch.check(self.space)
        if arch.use_layernorm != self.use_layernorm:
            raise ValueError(
                f"use_layernorm: the architecture has {int(arch.use_layernorm)}, the supernet {int(self.use_layernorm)}"
            )

    def weight_slices(self, arch: Architecture) -> dict[str, Index | None]:
        """Where each subnet parameter lies in the supernet parameter of the same name (None: all of it)."""
        return self._subnet(arch)[1]

    def subnet_weights(self, arch: Architecture) -> dict[str, Tensor]:
        """The subnet's weights as (differentiable) slices of the supernet's."""
        params = dict(self.network.named_parameters())
        return {
            name: params[name] if index is None else params[name][index]
            for name, index in self.weight_slices(arch).items()
        }

    def run_subnet(self, arch: Architecture, weights: dict[str, Tensor], dense: Tensor, sparse: Tensor) -> Tensor:
        """Run the subnet's network with the given weights (e.g. `subnet_weights(arch)`, or leaves made from them)."""
        skeleton = self._subnet(arch)[0]
        return functional_call(skeleton, {**weights, **self._subnet_buffers(skeleton)}, (dense, sparse))

    def subnet_head_inputs(self, arch: Architecture, dense: Tensor, sparse: Tensor) -> tuple[Tensor, Tensor]:
        """What the subnet's head reads (B, F) and what its logit adds to the head's output (B,), both with the
        inherited weights (for head-only fine-tuning: logits = head(inputs) + offset)."""
        skeleton = self._subnet(arch)[0]
        state = {**self.subnet_weights(arch), **self._subnet_buffers(skeleton)}
        return functional_call(_HeadInputs(skeleton), {f"net.{k}": v for k, v in state.items()}, (dense, sparse))

    def _subnet_buffers(self, skeleton: NASRecNet) -> dict[str, Tensor]:
        """The supernet's buffers for a subnet's modules: each is built for the largest size, which serves
        every smaller one (e.g. the Dot-Product pair indices, whose leading pairs are a smaller operator's)."""
        buffers = dict(self.network.named_buffers())
        return {name: buffers[name] for name, _ in skeleton.named_buffers()}

    def extract(self, arch: Architecture) -> NASRecNet:
        """A standalone NASRecNet holding copies of the inherited weights."""
        self.check(arch)
        device = next(self.network.parameters()).device
        net = NASRecNet(arch, self.schema).to(device)
        with torch.no_grad():
            net.load_state_dict({name: w.detach() for name, w in self.subnet_weights(arch).items()})
        return net

    def _subnet(self, arch: Architecture) -> tuple[NASRecNet, dict[str, Index | None]]:
        device = next(self.network.parameters()).device
        key = (arch, device)
        if key in self._subnets:
            self._subnets.move_to_end(key)
            return self._subnets[key]
        self.check(arch)
        with torch.device("meta"):
            skeleton = NASRecNet(arch, self.schema)
        entry = (skeleton, self._slices(arch, skeleton, device))
        self._subnets[key] = entry
        if len(self._subnets) > _CACHE_SIZE:
            self._subnets.popitem(last=False)
        return entry

    def _slices(self, arch: Architecture, skeleton: NASRecNet, device: torch.device) -> dict[str, Index | None]:
        params = dict(self.network.named_parameters())
        columns = self._input_columns(arch, skeleton)
        slices = {}
        for name, p in skeleton.named_parameters():
            source = params[name].shape
            index = [slice(0, n) for n in p.shape]
            if name in columns:
                index[-1] = _as_index(columns[name], device)
            slices[name] = None if tuple(p.shape) == tuple(source) and name not in columns else tuple(index)
        return slices

    def _input_columns(self, arch: Architecture, skeleton: NASRecNet) -> dict[str, list[int]]:
        """Full-path column positions of every weight that reads a concatenation of nodes."""
        full_nodes, sub_nodes = self.network.nodes, skeleton.nodes
        dense_pos = [list(range(n.dense)) for n in sub_nodes]
        token_pos = [list(range(sub_nodes[0].tokens))] + [
            list(range(b.sparse_tokens))
            + [self.space.max_sparse_tokens + t for t in range(INTERACTION_TOKENS * b.dense_sparse_interact)]
            for b in arch.blocks
        ]
        dense_offset = _offsets([n.dense for n in full_nodes])
        token_offset = _offsets([n.tokens for n in full_nodes])
        columns = {}
        for b, block in skeleton.blocks.items():
            spec = block.spec
            dense_cols = [dense_offset[j] + p for j in spec.dense_inputs for p in dense_pos[j]]
            token_cols = [token_offset[j] + p for j in spec.sparse_inputs for p in token_pos[j]]
            for group in ("dense_ops", "sparse_ops"):
                for op_name, op in getattr(block, group).items():
                    prefix = f"blocks.{b}.{group}.{op_name}."
                    columns.update({prefix + w: dense_cols for w in op.dense_input_weights})
                    columns.update({prefix + w: token_cols for w in op.sparse_input_weights})
                    flat_cols = [t * EMBEDDING_DIM + c for t in token_cols for c in range(EMBEDDING_DIM)]
                    columns.update({prefix + w: flat_cols for w in op.flat_sparse_input_weights})
        last_full: NodeDims = full_nodes[-1]
        columns["head.weight"] = dense_pos[-1] + [
            last_full.dense + t * EMBEDDING_DIM + c for t in token_pos[-1] for c in range(EMBEDDING_DIM)
        ]
        return columns


class _HeadInputs(nn.Module):
    """Lets functional_call run a skeleton's `head_inputs` and `logit_offset` instead of its forward."""

    def __init__(self, net: NASRecNet):
        super().__init__()
        self.net = net

    def forward(self, dense: Tensor, sparse: Tensor) -> tuple[Tensor, Tensor]:
        return self.net.head_inputs(dense, sparse), self.net.logit_offset(dense, sparse)


def _offsets(sizes: list[int]) -> list[int]:
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += size
    return offsets


def _as_index(positions: list[int], device: torch.device) -> slice | Tensor:
    """A contiguous run becomes a slice (a view); anything else an index tensor."""
    start = positions[0]
    if positions == list(range(start, start + len(positions))):
        return slice(start, start + len(positions))
    return torch.tensor(positions, dtype=torch.long, device=device)

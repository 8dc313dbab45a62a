"""The NASRec network: a stem of embeddings, a chain of blocks and a linear head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.arch import Architecture
from model.ops import (
    EMBEDDING_DIM,
    INTERACTION_TOKENS,
    BlockInputs,
    DenseToSparse,
    InputDims,
    SparseToDense,
    get_operator,
    init_linear,
)


@dataclass(frozen=True)
class InputSchema:
    """What the model reads: `num_dense` float features and one categorical feature per cardinality.

    Datasets without dense features use one all-zero column (NASREC.md section 9).
    """

    num_dense: int
    cardinalities: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "cardinalities", tuple(self.cardinalities))
        if self.num_dense < 1:
            raise ValueError(
                f"num_dense: must be >= 1 (use one all-zero column when there are none), got {self.num_dense}"
            )
        if not self.cardinalities or any(c < 1 for c in self.cardinalities):
            raise ValueError(f"cardinalities: need at least one feature, each >= 1, got {list(self.cardinalities)}")

    @property
    def num_sparse(self) -> int:
        return len(self.cardinalities)

    def to_dict(self) -> dict:
        return {"num_dense": self.num_dense, "cardinalities": list(self.cardinalities)}

    @classmethod
    def from_dict(cls, data: dict) -> InputSchema:
        return cls(num_dense=data["num_dense"], cardinalities=tuple(data["cardinalities"]))


@dataclass(frozen=True)
class BlockSpec:
    """What one block runs. Several operators of a kind are summed (the supernet's full path runs them all)."""

    dense_ops: tuple[str, ...]
    sparse_ops: tuple[str, ...]
    dense_width: int
    sparse_tokens: int
    dense_sparse_interact: bool
    deep_fm: bool
    dense_inputs: tuple[int, ...]
    sparse_inputs: tuple[int, ...]
    dense_left: int
    dense_right: int

    @property
    def output_tokens(self) -> int:
        return self.sparse_tokens + INTERACTION_TOKENS * self.dense_sparse_interact


@dataclass(frozen=True)
class NodeDims:
    """Output sizes of the stem (node 0) or of a block (node j = block j-1)."""

    dense: int
    tokens: int


def block_specs(arch: Architecture) -> list[BlockSpec]:
    return [
        BlockSpec(
            dense_ops=(b.dense_op,),
            sparse_ops=(b.sparse_op,),
            dense_width=b.dense_width,
            sparse_tokens=b.sparse_tokens,
            dense_sparse_interact=b.dense_sparse_interact,
            deep_fm=b.deep_fm,
            dense_inputs=b.dense_inputs,
            sparse_inputs=b.sparse_inputs,
            dense_left=b.dense_left,
            dense_right=b.dense_right,
        )
        for b in arch.blocks
    ]


def live_blocks(specs: list[BlockSpec]) -> set[int]:
    """Blocks whose output reaches the head (the last block reads into it; others through later live blocks)."""
    live = {len(specs) - 1}
    for b in range(len(specs) - 1, -1, -1):
        if b in live:
            spec = specs[b]
            used = {*spec.dense_inputs, *spec.sparse_inputs, spec.dense_left, spec.dense_right}
            live |= {j - 1 for j in used if j >= 1}
    return live


class NASRecBlock(nn.Module):
    def __init__(self, spec: BlockSpec, nodes: list[NodeDims], layernorm: bool, full: bool = False):
        super().__init__()
        self.spec = spec
        inputs = InputDims(
            dense=sum(nodes[j].dense for j in spec.dense_inputs),
            sparse=sum(nodes[j].tokens for j in spec.sparse_inputs),
            left=nodes[spec.dense_left].dense,
            right=nodes[spec.dense_right].dense,
        )
        self.dense_ops = nn.ModuleDict(
            {name: get_operator(name)(inputs, spec.dense_width, layernorm, full) for name in spec.dense_ops}
        )
        self.sparse_ops = nn.ModuleDict(
            {name: get_operator(name)(inputs, spec.sparse_tokens, layernorm, full) for name in spec.sparse_ops}
        )
        self.dense_to_sparse = DenseToSparse(spec.dense_width, layernorm) if spec.dense_sparse_interact else None
        self.sparse_to_dense = SparseToDense(spec.dense_width, layernorm, full) if spec.deep_fm else None

    @property
    def output(self) -> NodeDims:
        return NodeDims(self.spec.dense_width, self.spec.output_tokens)

    def forward(self, dense_nodes: list[Tensor], sparse_nodes: list[Tensor]) -> tuple[Tensor, Tensor]:
        spec = self.spec
        x = BlockInputs(
            dense=_concat([dense_nodes[j] for j in spec.dense_inputs], dim=1),  # (B, sum d_j)
            sparse=_concat([sparse_nodes[j] for j in spec.sparse_inputs], dim=1),  # (B, sum t_j, 16)
            left=dense_nodes[spec.dense_left],
            right=dense_nodes[spec.dense_right],
        )
        dense = _total(op(x) for op in self.dense_ops.values())  # (B, d)
        sparse = _total(op(x) for op in self.sparse_ops.values())  # (B, s, 16)
        if self.dense_to_sparse is not None:
            sparse = torch.cat([sparse, self.dense_to_sparse(dense)], dim=1)  # (B, s + 8, 16)
        if self.sparse_to_dense is not None:
            dense = dense + self.sparse_to_dense(sparse)
        return dense, sparse

    def macs(self) -> int:
        modules = [*self.dense_ops.values(), *self.sparse_ops.values(), self.dense_to_sparse, self.sparse_to_dense]
        return sum(m.macs() for m in modules if m is not None)


def _concat(tensors: list[Tensor], dim: int) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=dim)


def _total(tensors) -> Tensor:
    total = None
    for t in tensors:
        total = t if total is None else total + t
    return total


class FieldEmbedding(nn.Module):
    """One table for all categorical features, each in its own rows; sparse gradients. (B, n) -> (B, n, dim).
    An id outside its feature's vocabulary is read as 0, the missing-or-unseen id.

    Initialised Xavier-normal per feature table (NASREC.md section 5), or normal with `init_std` when given.
    """

    def __init__(self, schema: InputSchema, dim: int, init_std: float | None = None):
        super().__init__()
        self.table = nn.Embedding(sum(schema.cardinalities), dim, sparse=True)
        self.register_buffer("offsets", torch.tensor([0, *schema.cardinalities[:-1]]).cumsum(0), persistent=False)
        self.register_buffer("cardinalities", torch.tensor(schema.cardinalities), persistent=False)
        if self.table.weight.is_meta:  # a shape-only skeleton (see Supernet): nothing to initialise
            return
        if init_std is not None:
            nn.init.normal_(self.table.weight, std=init_std)
            return
        start = 0
        with torch.no_grad():
            for rows in schema.cardinalities:  # Xavier-normal per feature table, as with separate tables
                nn.init.xavier_normal_(self.table.weight[start : start + rows])
                start += rows

    def forward(self, ids: Tensor) -> Tensor:
        # an id outside its feature's table counts as unseen (0): it never reads another feature's rows
        known = (ids >= 0) & (ids < self.cardinalities)
        return self.table(torch.where(known, ids, 0) + self.offsets)


# Per-value weights of a first-order term start near zero (as FuxiCTR's): a linear term starts silent.
NEAR_ZERO_STD = 1e-4


class FirstOrder(nn.Module):
    """A first-order (LR) term: bias + one weight per categorical value + a linear map of the dense features.
    (B, n_dense), (B, n_sparse) -> (B,)"""

    def __init__(self, schema: InputSchema):
        super().__init__()
        self.weights = FieldEmbedding(schema, 1, NEAR_ZERO_STD)
        self.dense = init_linear(nn.Linear(schema.num_dense, 1))

    def forward(self, dense: Tensor, sparse: Tensor) -> Tensor:
        return self.weights(sparse).sum(dim=(1, 2)) + self.dense(dense).squeeze(-1)

    def macs(self) -> int:
        return self.dense.in_features + self.weights.cardinalities.numel()


class Stem(nn.Module):
    """Dense features pass through; categorical features become 16-wide tokens."""

    def __init__(self, schema: InputSchema):
        super().__init__()
        self.embedding = FieldEmbedding(schema, EMBEDDING_DIM)

    def forward(self, dense: Tensor, sparse: Tensor) -> tuple[Tensor, Tensor]:
        return dense, self.embedding(sparse)  # (B, n_dense), (B, n_sparse, 16)


class BlockNetwork(nn.Module):
    """Stem -> blocks -> head, plus an optional first-order term. `full=True` builds every optional layer
    (for supernets)."""

    def __init__(
        self,
        specs: list[BlockSpec],
        schema: InputSchema,
        layernorm: bool,
        full: bool = False,
        first_order: bool = False,
    ):
        super().__init__()
        self.schema = schema
        self.stem = Stem(schema)
        nodes = [NodeDims(schema.num_dense, schema.num_sparse)]
        nodes += [NodeDims(spec.dense_width, spec.output_tokens) for spec in specs]
        self.nodes = nodes
        # Blocks whose outputs never reach the head are not built: they cannot change the prediction.
        self.blocks = nn.ModuleDict(
            {
                str(b): NASRecBlock(spec, nodes, layernorm, full)
                for b, spec in enumerate(specs)
                if b in live_blocks(specs)
            }
        )
        self.head = init_linear(nn.Linear(nodes[-1].dense + nodes[-1].tokens * EMBEDDING_DIM, 1))
        self.first_order = FirstOrder(schema) if first_order else None

    def forward(self, dense: Tensor, sparse: Tensor) -> Tensor:
        """dense: (B, n_dense) float; sparse: (B, n_sparse) int64 ids. Returns click logits (B,)."""
        return self.head(self.head_inputs(dense, sparse)).squeeze(-1) + self.logit_offset(dense, sparse)

    def logit_offset(self, dense: Tensor, sparse: Tensor) -> Tensor:
        """What the logit adds to the head's output: the first-order term, or zeros. (B,)"""
        if self.first_order is None:
            return dense.new_zeros(dense.shape[0])
        return self.first_order(dense, sparse)

    def head_inputs(self, dense: Tensor, sparse: Tensor) -> Tensor:
        """What the head reads: the last block's dense output and flattened tokens, (B, d + t*16)."""
        dense_node, sparse_node = self.stem(dense, sparse)
        dense_nodes: list[Tensor | None] = [dense_node] + [None] * self.num_blocks
        sparse_nodes: list[Tensor | None] = [sparse_node] + [None] * self.num_blocks
        for b, block in self.blocks.items():
            dense_nodes[int(b) + 1], sparse_nodes[int(b) + 1] = block(dense_nodes, sparse_nodes)
        return torch.cat([dense_nodes[-1], sparse_nodes[-1].flatten(1)], dim=1)  # (B, d + t*16)

    @property
    def num_blocks(self) -> int:
        return len(self.nodes) - 1

    def mflops(self) -> float:
        """Multiply-accumulates per sample, in millions; embedding lookups excluded."""
        first_order = 0 if self.first_order is None else self.first_order.macs()
        return (sum(block.macs() for block in self.blocks.values()) + self.head.in_features + first_order) / 1e6

    def num_parameters(self, embeddings: bool = False) -> int:
        tables = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(p.numel() for p in self.parameters() if embeddings or id(p) not in tables)


class NASRecNet(BlockNetwork):
    """A standalone network for one architecture: one dense and one sparse operator per block."""

    def __init__(self, arch: Architecture, schema: InputSchema):
        super().__init__(block_specs(arch), schema, arch.use_layernorm, first_order=arch.first_order)
        self.arch = arch

    @classmethod
    def to_train(cls, arch: Architecture, schema: InputSchema) -> NASRecNet:
        """A network to train from scratch: its head starts at zero, so the blocks enter the logit only as far as
        training finds them useful. With the Xavier head, their initial noise cost the LR and FM architectures
        about 0.01 AUC on 8k-row Criteo folds (bench/results/quality/FINDINGS.md)."""
        net = cls(arch, schema)
        with torch.no_grad():
            net.head.weight.zero_()
        return net

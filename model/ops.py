"""NASRec operators and interaction modules (NASREC.md sections 3 and 4), each built at one exact size,
and three operators beyond the paper's (fm, flat_fc, cross) that let a network be the hand-designed
CTR models (LR, FM, DeepFM, DCN, DLRM): they read the raw embeddings, and FM keeps its scale.

A supernet builds the same classes at their largest size with every optional layer present
(`full=True`); a subnet uses leading slices of those weights (see `model.supernet`). Each operator
names the weights that read the block's concatenated dense or sparse input, because only those
columns are not a leading slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EMBEDDING_DIM = 16  # token width; fixed, not searched
INTERACTION_TOKENS = 8  # dense -> sparse module: 128 values = 8 tokens of 16
ATTENTION_HEADS = 8
ATTENTION_NORM_INIT = 0.17  # gain of the attention LayerNorms at initialisation, as in the reference


@dataclass(frozen=True)
class InputDims:
    """Sizes of a block's inputs: concatenated dense width, concatenated token count, left and right widths."""

    dense: int
    sparse: int
    left: int
    right: int


@dataclass(frozen=True)
class BlockInputs:
    dense: Tensor  # (B, dense)
    sparse: Tensor  # (B, sparse, 16)
    left: Tensor  # (B, left)
    right: Tensor  # (B, right)


def init_linear(layer: nn.Linear) -> nn.Linear:
    """Xavier-uniform weight, zero bias (NASREC.md section 5); shape-only (meta) layers are left as they are."""
    if layer.weight.is_meta:
        return layer
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class Projection(nn.Module):
    """Linear map on the last axis, then LayerNorm; the linear layer has a bias exactly when LayerNorm is off."""

    def __init__(self, in_features: int, out_features: int, layernorm: bool):
        super().__init__()
        self.linear = init_linear(nn.Linear(in_features, out_features, bias=not layernorm))
        self.norm = nn.LayerNorm(out_features) if layernorm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.linear(x))


class TokenProjection(nn.Module):
    """Linear map along the token axis, shared by the 16 channels, then LayerNorm over tokens.

    (B, N, 16) -> (B, M, 16)
    """

    def __init__(self, in_tokens: int, out_tokens: int, layernorm: bool):
        super().__init__()
        self.proj = Projection(in_tokens, out_tokens, layernorm)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x.transpose(1, 2)).transpose(1, 2)


def pad_to(x: Tensor, width: int) -> Tensor:
    return x if x.shape[-1] == width else F.pad(x, (0, width - x.shape[-1]))


def dot_product_tokens(width: int) -> int:
    """Tokens the Dot-Product operator projects the sparse input to for output width d: round(sqrt(2d))."""
    return round(math.sqrt(2 * width))


class Operator(nn.Module):
    """Base of all operators: forward(BlockInputs) -> output; `macs()` per sample at this size."""

    kind: ClassVar[str]  # "dense" (output (B, width)) or "sparse" (output (B, width, 16))
    dense_input_weights: ClassVar[tuple[str, ...]] = ()
    sparse_input_weights: ClassVar[tuple[str, ...]] = ()  # read the input tokens: one column per token
    flat_sparse_input_weights: ClassVar[tuple[str, ...]] = ()  # read the flattened tokens: 16 columns per token

    def __init__(self, inputs: InputDims, width: int):
        super().__init__()
        self.inputs = inputs
        self.width = width

    def macs(self) -> int:
        raise NotImplementedError


class FC(Operator):
    """ReLU(LN(W x)) over the concatenated dense inputs."""

    kind = "dense"
    dense_input_weights = ("proj.linear.weight",)

    def __init__(self, inputs: InputDims, width: int, layernorm: bool, full: bool = False):
        super().__init__(inputs, width)
        self.proj = Projection(inputs.dense, width, layernorm)

    def forward(self, x: BlockInputs) -> Tensor:
        return F.relu(self.proj(x.dense))

    def macs(self) -> int:
        return self.inputs.dense * self.width


class DotProduct(Operator):
    """Pairwise dot products of [dense token; k sparse tokens], strict lower triangle, projected to d."""

    kind = "dense"
    dense_input_weights = ("dense_proj.linear.weight",)
    sparse_input_weights = ("token_proj.proj.linear.weight",)

    def __init__(self, inputs: InputDims, width: int, layernorm: bool, full: bool = False):
        super().__init__(inputs, width)
        self.tokens = dot_product_tokens(width)
        self.dense_proj = Projection(inputs.dense, EMBEDDING_DIM, layernorm)
        self.token_proj = TokenProjection(inputs.sparse, self.tokens, layernorm)
        # Row-major lower-triangle order: the pairs of k' < k tokens are a prefix of those of k, so a subnet
        # run with the supernet's buffers (see model.supernet) takes the leading `pairs` of them.
        self.out_proj = Projection(self.pairs, width, layernorm)
        pairs = torch.tril_indices(self.tokens + 1, self.tokens + 1, offset=-1)  # (2, pairs)
        self.register_buffer("pair_index", pairs, persistent=False)

    @property
    def pairs(self) -> int:
        return (self.tokens + 1) * self.tokens // 2

    def forward(self, x: BlockInputs) -> Tensor:
        tokens = torch.cat([self.dense_proj(x.dense).unsqueeze(1), self.token_proj(x.sparse)], dim=1)  # (B, k+1, 16)
        gram = torch.bmm(tokens, tokens.transpose(1, 2))  # (B, k+1, k+1)
        rows, cols = self.pair_index[:, : self.pairs]  # a buffer, not built per call: export sees constants
        return self.out_proj(gram[:, rows, cols])  # (B, d)

    def macs(self) -> int:
        k1 = self.tokens + 1
        return (
            self.inputs.dense * EMBEDDING_DIM
            + self.inputs.sparse * self.tokens * EMBEDDING_DIM
            + k1 * k1 * EMBEDDING_DIM
            + self.pairs * self.width
        )


class Gating(Operator):
    """Sigmoid gating: W_p(sigmoid(W_g L + b_g) * R), then LN; no projection when max(|L|, |R|) == d.

    Zero-padding L and R to a common width leaves only the first |R| gate rows and |L| gate columns
    (and |R| projection columns) contributing, so the layers are sized to those.
    """

    kind = "dense"

    def __init__(self, inputs: InputDims, width: int, layernorm: bool, full: bool = False):
        super().__init__(inputs, width)
        self.gate = init_linear(nn.Linear(inputs.left, inputs.right))
        projects = full or max(inputs.left, inputs.right) != width
        self.proj = init_linear(nn.Linear(inputs.right, width, bias=not layernorm)) if projects else None
        self.norm = nn.LayerNorm(width) if layernorm else nn.Identity()

    def forward(self, x: BlockInputs) -> Tensor:
        gated = torch.sigmoid(self.gate(x.left)) * x.right  # (B, R)
        if max(x.left.shape[-1], x.right.shape[-1]) == self.width:
            return self.norm(pad_to(gated, self.width))
        return self.norm(self.proj(gated))

    def macs(self) -> int:
        projection = 0 if max(self.inputs.left, self.inputs.right) == self.width else self.inputs.right * self.width
        return self.inputs.left * self.inputs.right + projection


class Sum(Operator):
    """W_p(pad(L) + pad(R)), then LN; no projection when the common width equals d."""

    kind = "dense"

    def __init__(self, inputs: InputDims, width: int, layernorm: bool, full: bool = False):
        super().__init__(inputs, width)
        common = max(inputs.left, inputs.right)
        self.proj = init_linear(nn.Linear(common, width, bias=not layernorm)) if full or common != width else None
        self.norm = nn.LayerNorm(width) if layernorm else nn.Identity()

    def forward(self, x: BlockInputs) -> Tensor:
        common = max(x.left.shape[-1], x.right.shape[-1])
        total = pad_to(x.left, common) + pad_to(x.right, common)  # (B, w)
        return self.norm(total if common == self.width else self.proj(total))

    def macs(self) -> int:
        common = max(self.inputs.left, self.inputs.right)
        return 0 if common == self.width else common * self.width


class EFC(Operator):
    """Embedded FC: ReLU(LN(token-axis linear N -> s)), shared across the 16 channels."""

    kind = "sparse"
    sparse_input_weights = ("token_proj.proj.linear.weight",)

    def __init__(self, inputs: InputDims, width: int, layernorm: bool, full: bool = False):
        super().__init__(inputs, width)
        self.token_proj = TokenProjection(inputs.sparse, width, layernorm)

    def forward(self, x: BlockInputs) -> Tensor:
        return F.relu(self.token_proj(x.sparse))  # (B, s, 16)

    def macs(self) -> int:
        return self.inputs.sparse * self.width * EMBEDDING_DIM


class SelfAttention(nn.Module):
    """Multi-head self-attention over 16-wide tokens (8 heads of width 2), no dropout."""

    def __init__(self, dim: int = EMBEDDING_DIM, heads: int = ATTENTION_HEADS):
        super().__init__()
        self.heads = heads
        self.qkv = init_linear(nn.Linear(dim, 3 * dim))
        self.out = init_linear(nn.Linear(dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, heads, s, head_dim)
        return self.out(attended.transpose(1, 2).reshape(batch, tokens, dim))


class Attention(Operator):
    """Token projection N -> s, then a transformer layer: LN1(P + MHA(P)), LN2(A + FFN(A))."""

    kind = "sparse"
    sparse_input_weights = ("token_proj.proj.linear.weight",)

    def __init__(self, inputs: InputDims, width: int, layernorm: bool, full: bool = False):
        super().__init__(inputs, width)
        self.token_proj = TokenProjection(inputs.sparse, width, layernorm)
        self.attention = SelfAttention()
        self.norm1 = nn.LayerNorm(EMBEDDING_DIM)
        self.ff1 = init_linear(nn.Linear(EMBEDDING_DIM, EMBEDDING_DIM))
        self.ff2 = init_linear(nn.Linear(EMBEDDING_DIM, EMBEDDING_DIM))
        self.norm2 = nn.LayerNorm(EMBEDDING_DIM)
        for norm in (self.norm1, self.norm2):
            nn.init.constant_(norm.weight, ATTENTION_NORM_INIT)

    def forward(self, x: BlockInputs) -> Tensor:
        projected = self.token_proj(x.sparse)  # (B, s, 16)
        attended = self.norm1(projected + self.attention(projected))
        return self.norm2(attended + self.ff2(F.relu(self.ff1(attended))))

    def macs(self) -> int:
        s, e = self.width, EMBEDDING_DIM
        return self.inputs.sparse * s * e + 4 * s * e * e + 2 * s * s * e + 2 * s * e * e


class FM(Operator):
    """Factorisation machine over the block's N input tokens as they are (the stem's are the raw embeddings)
    and one token projected from the dense input: 0.5 * ((sum v)^2 - sum v^2) / (N + 1), (B, 16), summed over
    the 16 channels by the head. Projected to d unless d == 16; no LayerNorm or activation, so the second-order
    term keeps its scale, as in FM (unlike the paper's operators, and unlike deep_fm on a block's own tokens).

    The constant 1 / (N + 1), which the head's weight absorbs, keeps the term's size from growing with the
    square of the tokens read: a supernet's full path reads every block's tokens (~150), and unscaled its
    logits start near 1e4 and its training diverges."""

    kind = "dense"
    dense_input_weights = ("dense_proj.weight",)

    def __init__(self, inputs: InputDims, width: int, layernorm: bool, full: bool = False):
        super().__init__(inputs, width)
        self.dense_proj = init_linear(nn.Linear(inputs.dense, EMBEDDING_DIM))
        projects = full or width != EMBEDDING_DIM
        self.proj = init_linear(nn.Linear(EMBEDDING_DIM, width, bias=False)) if projects else None

    def forward(self, x: BlockInputs) -> Tensor:
        tokens = torch.cat([self.dense_proj(x.dense).unsqueeze(1), x.sparse], dim=1)  # (B, 1 + N, 16)
        total = tokens.sum(dim=1)  # (B, 16)
        fm = 0.5 * (total * total - (tokens * tokens).sum(dim=1)) / tokens.shape[1]  # (B, 16)
        return fm if self.width == EMBEDDING_DIM else self.proj(fm)

    def macs(self) -> int:
        projection = 0 if self.width == EMBEDDING_DIM else EMBEDDING_DIM * self.width
        return self.inputs.dense * EMBEDDING_DIM + 2 * self.inputs.sparse * EMBEDDING_DIM + projection


class FlatFC(Operator):
    """ReLU(LN(W [dense; flattened tokens])): a fully connected layer over the dense inputs and the values
    of the input tokens (the stem's: the raw embeddings), as the deep part of DeepFM, DCN and the like.
    W is two linear maps summed, one per input kind, so a subnet's token columns can be sliced; both are
    initialised as the one Xavier-uniform layer they make up."""

    kind = "dense"
    dense_input_weights = ("dense_linear.weight",)
    flat_sparse_input_weights = ("token_linear.weight",)

    def __init__(self, inputs: InputDims, width: int, layernorm: bool, full: bool = False):
        super().__init__(inputs, width)
        self.dense_linear = init_linear(nn.Linear(inputs.dense, width, bias=not layernorm))
        self.token_linear = nn.Linear(inputs.sparse * EMBEDDING_DIM, width, bias=False)
        self.norm = nn.LayerNorm(width) if layernorm else nn.Identity()
        if not self.token_linear.weight.is_meta:
            bound = math.sqrt(6 / (inputs.dense + inputs.sparse * EMBEDDING_DIM + width))
            for layer in (self.dense_linear, self.token_linear):
                nn.init.uniform_(layer.weight, -bound, bound)

    def forward(self, x: BlockInputs) -> Tensor:
        return F.relu(self.norm(self.dense_linear(x.dense) + self.token_linear(x.sparse.flatten(1))))

    def macs(self) -> int:
        return (self.inputs.dense + self.inputs.sparse * EMBEDDING_DIM) * self.width


class Cross(Operator):
    """DCN-v2 cross layer between two dense nodes: L * (W R + b) + R, with L the crossed input (x0) and R the
    layer's input (x_l), both zero-padded to their common width; projected to d unless that width is d; then LN."""

    kind = "dense"

    def __init__(self, inputs: InputDims, width: int, layernorm: bool, full: bool = False):
        super().__init__(inputs, width)
        common = max(inputs.left, inputs.right)
        self.cross = init_linear(nn.Linear(inputs.right, common))
        self.proj = init_linear(nn.Linear(common, width, bias=not layernorm)) if full or common != width else None
        self.norm = nn.LayerNorm(width) if layernorm else nn.Identity()

    def forward(self, x: BlockInputs) -> Tensor:
        common = max(x.left.shape[-1], x.right.shape[-1])
        crossed = pad_to(x.left, common) * self.cross(x.right) + pad_to(x.right, common)  # (B, common)
        return self.norm(crossed if common == self.width else self.proj(crossed))

    def macs(self) -> int:
        common = max(self.inputs.left, self.inputs.right)
        return self.inputs.right * common + (0 if common == self.width else common * self.width)


OPERATORS: dict[str, type[Operator]] = {
    "fc": FC,
    "dot_product": DotProduct,
    "gating": Gating,
    "sum": Sum,
    "efc": EFC,
    "attention": Attention,
    "fm": FM,
    "flat_fc": FlatFC,
    "cross": Cross,
}


def get_operator(name: str) -> type[Operator]:
    try:
        return OPERATORS[name]
    except KeyError:
        raise ValueError(f"unknown operator {name!r}; known: {sorted(OPERATORS)}") from None


class DenseToSparse(nn.Module):
    """Interaction module: the block's dense output -> 128 values -> 8 extra tokens of 16."""

    def __init__(self, width: int, layernorm: bool):
        super().__init__()
        self.width = width
        self.proj = Projection(width, INTERACTION_TOKENS * EMBEDDING_DIM, layernorm)

    def forward(self, dense: Tensor) -> Tensor:
        return self.proj(dense).view(-1, INTERACTION_TOKENS, EMBEDDING_DIM)  # (B, 8, 16)

    def macs(self) -> int:
        return self.width * INTERACTION_TOKENS * EMBEDDING_DIM


class SparseToDense(nn.Module):
    """Interaction module (deep_fm): FM second-order term of the tokens, projected to d unless d == 16."""

    def __init__(self, width: int, layernorm: bool, full: bool = False):
        super().__init__()
        self.width = width
        self.proj = Projection(EMBEDDING_DIM, width, layernorm) if full or width != EMBEDDING_DIM else None

    def forward(self, tokens: Tensor) -> Tensor:
        total = tokens.sum(dim=1)  # (B, 16)
        fm = total * total - (tokens * tokens).sum(dim=1)  # (B, 16)
        return fm if self.width == EMBEDDING_DIM else self.proj(fm)

    def macs(self) -> int:
        return 0 if self.width == EMBEDDING_DIM else EMBEDDING_DIM * self.width

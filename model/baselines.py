"""Hand-designed CTR baselines over shared layers: LR, FM, DeepFM, DCNv2, DLRM.

Each takes the same inputs as NASRecNet (dense (B, n_dense) float, categorical ids (B, n_sparse) int64) and
returns click logits (B,), so the same data path, training steps and metrics serve all models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.network import NEAR_ZERO_STD, FieldEmbedding, FirstOrder, InputSchema
from model.ops import init_linear


@dataclass(frozen=True)
class BaselineConfig:
    embedding_dim: int = 16
    mlp: tuple[int, ...] = (400, 400, 400)
    dropout: float = 0.2
    cross_layers: int = 3


# Models with a first-order term start their embeddings near zero (FuxiCTR's default): pairwise terms begin
# silent instead of adding noise from Xavier-sized vectors of small vocabularies, which on 8k training rows
# cost FM 0.06 AUC on Criteo. DCNv2 and DLRM keep Xavier: DLRM reads embeddings only through dot products,
# which near-zero vectors leave without gradient.


class MLP(nn.Sequential):
    def __init__(self, in_features: int, hidden: tuple[int, ...], dropout: float, out_features: int | None = 1):
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [init_linear(nn.Linear(in_features, width)), nn.ReLU(), nn.Dropout(dropout)]
            in_features = width
        if out_features is not None:
            layers.append(init_linear(nn.Linear(in_features, out_features)))
        super().__init__(*layers)


class LogisticRegression(FirstOrder):
    """bias + sum of one weight per categorical value + a linear term over dense features."""

    def __init__(self, schema: InputSchema, config: BaselineConfig = BaselineConfig()):
        super().__init__(schema)


class FM(nn.Module):
    """LR plus all pairwise interactions of field vectors; dense features enter as one projected field."""

    def __init__(self, schema: InputSchema, config: BaselineConfig = BaselineConfig()):
        super().__init__()
        self.linear = LogisticRegression(schema)
        self.vectors = FieldEmbedding(schema, config.embedding_dim, NEAR_ZERO_STD)
        self.dense_vector = init_linear(nn.Linear(schema.num_dense, config.embedding_dim))

    def fields(self, dense: Tensor, sparse: Tensor) -> Tensor:
        return torch.cat([self.dense_vector(dense).unsqueeze(1), self.vectors(sparse)], dim=1)  # (B, 1+n, k)

    def forward(self, dense: Tensor, sparse: Tensor) -> Tensor:
        return self.linear(dense, sparse) + pairwise_sum(self.fields(dense, sparse))


def pairwise_sum(fields: Tensor) -> Tensor:
    """Sum over field pairs i < j of <v_i, v_j>: 0.5 * ((sum v)^2 - sum v^2), summed over dims."""
    total = fields.sum(dim=1)
    return 0.5 * (total * total - (fields * fields).sum(dim=1)).sum(dim=1)


class DeepFM(FM):
    """FM plus an MLP over the same field vectors."""

    def __init__(self, schema: InputSchema, config: BaselineConfig = BaselineConfig()):
        super().__init__(schema, config)
        self.mlp = MLP((schema.num_sparse + 1) * config.embedding_dim, config.mlp, config.dropout)

    def forward(self, dense: Tensor, sparse: Tensor) -> Tensor:
        fields = self.fields(dense, sparse)
        return self.linear(dense, sparse) + pairwise_sum(fields) + self.mlp(fields.flatten(1)).squeeze(-1)


class DCNv2(nn.Module):
    """Cross network x_{l+1} = x0 * (W x_l + b) + x_l over [dense; embeddings], in parallel with an MLP."""

    def __init__(self, schema: InputSchema, config: BaselineConfig = BaselineConfig()):
        super().__init__()
        self.vectors = FieldEmbedding(schema, config.embedding_dim)
        width = schema.num_dense + schema.num_sparse * config.embedding_dim
        self.cross = nn.ModuleList(init_linear(nn.Linear(width, width)) for _ in range(config.cross_layers))
        self.mlp = MLP(width, config.mlp, config.dropout, out_features=None)
        self.head = init_linear(nn.Linear(width + (config.mlp[-1] if config.mlp else width), 1))

    def forward(self, dense: Tensor, sparse: Tensor) -> Tensor:
        x0 = torch.cat([dense, self.vectors(sparse).flatten(1)], dim=1)  # (B, width)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.head(torch.cat([x, self.mlp(x0)], dim=1)).squeeze(-1)


class DLRM(nn.Module):
    """Bottom MLP for dense features, dot products between all field vectors, top MLP."""

    def __init__(self, schema: InputSchema, config: BaselineConfig = BaselineConfig()):
        super().__init__()
        dim = config.embedding_dim
        self.bottom = nn.Sequential(MLP(schema.num_dense, (64,), 0.0, out_features=dim), nn.ReLU())
        self.vectors = FieldEmbedding(schema, dim)
        fields = schema.num_sparse + 1
        self.register_buffer("pairs", torch.tril_indices(fields, fields, offset=-1), persistent=False)
        self.top = MLP(dim + fields * (fields - 1) // 2, config.mlp, config.dropout)

    def forward(self, dense: Tensor, sparse: Tensor) -> Tensor:
        bottom = self.bottom(dense)  # (B, dim)
        fields = torch.cat([bottom.unsqueeze(1), self.vectors(sparse)], dim=1)  # (B, 1+n, dim)
        gram = torch.bmm(fields, fields.transpose(1, 2))  # (B, 1+n, 1+n)
        interactions = gram[:, self.pairs[0], self.pairs[1]]  # (B, pairs)
        return self.top(torch.cat([bottom, interactions], dim=1)).squeeze(-1)


BASELINES: dict[str, type[nn.Module]] = {
    "lr": LogisticRegression,
    "fm": FM,
    "deepfm": DeepFM,
    "dcnv2": DCNv2,
    "dlrm": DLRM,
}


def build_baseline(name: str, schema: InputSchema, config: BaselineConfig = BaselineConfig()) -> nn.Module:
    """A baseline by name; unknown names fail with the known ones."""
    try:
        cls = BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}") from None
    return cls(schema, config)

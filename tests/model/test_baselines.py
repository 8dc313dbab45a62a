import pytest
import torch

from features.synthetic import TeacherCTR
from model.baselines import BASELINES, NEAR_ZERO_STD, BaselineConfig, build_baseline
from model.network import FieldEmbedding, InputSchema, Stem
from model.training import Batch, SliceAdagrad, network_step

SCHEMA = InputSchema(num_dense=4, cardinalities=(30, 12, 50, 7))
SMALL = BaselineConfig(embedding_dim=8, mlp=(32, 16), dropout=0.0, cross_layers=2)


def teacher_batches(count: int, rows: int = 256) -> list[Batch]:
    teacher = TeacherCTR(SCHEMA.num_dense, SCHEMA.cardinalities, seed=4, interactions=4)
    batches = []
    for i in range(count):
        data = teacher.sample(rows, seed=i)
        batches.append(Batch(torch.from_numpy(data.dense), torch.from_numpy(data.sparse), torch.from_numpy(data.label)))
    return batches


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_outputs_one_logit_per_row(name):
    model = build_baseline(name, SCHEMA, SMALL)
    batch = teacher_batches(1, rows=5)[0]
    assert model(batch.dense, batch.sparse).shape == (5,)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_learns_on_teacher_data(name):
    """A few hundred steps on the same small stream lower the held-out log loss."""
    torch.manual_seed(0)
    model = build_baseline(name, SCHEMA, SMALL)
    optimizer = SliceAdagrad(model.parameters(), lr=0.05)
    train, held_out = teacher_batches(40), teacher_batches(1, rows=4000)[0]

    def held_out_loss() -> float:
        with torch.no_grad():
            return float(
                torch.nn.functional.binary_cross_entropy_with_logits(
                    model(held_out.dense, held_out.sparse), held_out.label
                )
            )

    before = held_out_loss()
    for _ in range(3):
        for batch in train:
            network_step(model, batch, optimizer)
    assert held_out_loss() < before - 0.01


def test_unknown_baseline_fails_with_the_known_names():
    with pytest.raises(
        ValueError, match=r"unknown baseline 'xgboost'; known: \['dcnv2', 'deepfm', 'dlrm', 'fm', 'lr'\]"
    ):
        build_baseline("xgboost", SCHEMA)


def test_first_order_baselines_start_embeddings_near_zero_while_nasrecnet_keeps_xavier():
    """Small-data FM-style baselines need silent pairwise terms at the start; NASRecNet follows the paper."""
    schema = InputSchema(num_dense=1, cardinalities=(3, 4000))
    torch.manual_seed(0)
    for name in ("lr", "fm", "deepfm"):
        for module in build_baseline(name, schema, SMALL).modules():
            if isinstance(module, FieldEmbedding):
                assert float(module.table.weight.detach().std()) == pytest.approx(NEAR_ZERO_STD, rel=0.1), name
    paper = Stem(schema).embedding.table.weight.detach()  # NASRecNet's embeddings
    # Xavier-normal per feature table: std sqrt(2 / (rows + 16)), so the 3-row table is far wider
    assert float(paper[:3].std()) == pytest.approx((2 / 19) ** 0.5, rel=0.5)
    assert float(paper[3:].std()) == pytest.approx((2 / 4016) ** 0.5, rel=0.05)

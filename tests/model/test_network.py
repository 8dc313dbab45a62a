import pytest
import torch

from model.arch import Architecture, Block
from model.network import InputSchema, NASRecNet

SCHEMA = InputSchema(num_dense=13, cardinalities=(5, 9))


def block(**changes) -> Block:
    base = dict(
        dense_op="fc",
        sparse_op="efc",
        dense_width=16,
        sparse_tokens=8,
        dense_sparse_interact=False,
        deep_fm=False,
        dense_inputs=(0,),
        sparse_inputs=(0,),
        dense_left=0,
        dense_right=0,
    )
    return Block(**{**base, **changes})


@pytest.mark.parametrize(
    ("blk", "macs", "params"),
    [
        # FC 13*16, EFC 2 tokens -> 8 (x16 channels), head 16 + 8*16
        (block(), 13 * 16 + 2 * 8 * 16 + 16 + 8 * 16, 13 * 16 + 32 + 2 * 8 + 16 + (16 + 128 + 1)),
        # adds dense->sparse (32 -> 128) and the FM projection (16 -> 32); the head reads 8 + 8 tokens
        (
            block(dense_width=32, dense_sparse_interact=True, deep_fm=True),
            13 * 32 + 2 * 8 * 16 + 32 * 128 + 16 * 32 + 32 + 16 * 16,
            (13 * 32 + 64) + (2 * 8 + 16) + (32 * 128 + 256) + (16 * 32 + 64) + (32 + 256 + 1),
        ),
    ],
)
def test_mflops_and_parameters_by_hand(blk, macs, params):
    net = NASRecNet(Architecture((blk,)), SCHEMA)
    assert net.mflops() == pytest.approx(macs / 1e6)
    assert net.num_parameters() == params
    assert net.num_parameters(embeddings=True) == params + (5 + 9) * 16


def test_blocks_that_never_reach_the_head_are_not_built():
    arch = Architecture((block(), block(dense_inputs=(1,)), block(dense_inputs=(0, 1), sparse_inputs=(1,))))
    net = NASRecNet(arch, SCHEMA)
    assert sorted(net.blocks) == ["0", "2"]  # block 1's output is read by nobody
    dense = torch.randn(4, 13)
    sparse = torch.tensor([[0, 1], [4, 8], [2, 2], [3, 0]])
    assert net(dense, sparse).shape == (4,)


def test_categorical_features_use_separate_rows():
    net = NASRecNet(Architecture((block(),)), SCHEMA)
    emb = net.stem(torch.zeros(1, 13), torch.tensor([[0, 0]]))[1]
    assert not torch.equal(emb[0, 0], emb[0, 1])  # id 0 of feature 0 and of feature 1 are different rows


def test_schema_validation():
    with pytest.raises(ValueError, match="num_dense: must be >= 1"):
        InputSchema(0, (3,))
    with pytest.raises(ValueError, match="cardinalities"):
        InputSchema(1, ())


def test_a_network_to_train_starts_with_the_first_order_term_alone_and_learns_its_head():
    arch = Architecture((block(),), first_order=True)
    net = NASRecNet.to_train(arch, SCHEMA)
    dense, sparse = torch.randn(64, 13), torch.randint(0, 5, (64, 2))
    assert (net.head.weight == 0).all()
    torch.testing.assert_close(net(dense, sparse), net.head.bias + net.logit_offset(dense, sparse))
    torch.nn.functional.binary_cross_entropy_with_logits(net(dense, sparse), torch.rand(64).round()).backward()
    assert net.head.weight.grad.abs().sum() > 0  # the head learns from the first step, and the blocks after it
    assert (NASRecNet(arch, SCHEMA).head.weight != 0).any()  # a network built to load or export keeps Xavier's

import pytest
import torch

from model.ops import (
    EMBEDDING_DIM,
    INTERACTION_TOKENS,
    OPERATORS,
    BlockInputs,
    DenseToSparse,
    InputDims,
    SparseToDense,
    dot_product_tokens,
    get_operator,
)

BATCH = 3


def block_inputs(dims: InputDims) -> BlockInputs:
    return BlockInputs(
        dense=torch.randn(BATCH, dims.dense),
        sparse=torch.randn(BATCH, dims.sparse, EMBEDDING_DIM),
        left=torch.randn(BATCH, dims.left),
        right=torch.randn(BATCH, dims.right),
    )


INPUT_DIMS = [
    InputDims(13, 26, 13, 13),
    InputDims(80, 40, 64, 16),
    InputDims(1024, 90, 1024, 512),
    InputDims(16, 8, 16, 32),
]


@pytest.mark.parametrize("name", sorted(OPERATORS))
@pytest.mark.parametrize("dims", INPUT_DIMS, ids=lambda d: f"in{d.dense}x{d.sparse}_l{d.left}_r{d.right}")
@pytest.mark.parametrize("layernorm", [True, False])
def test_every_operator_output_shape(name, dims, layernorm):
    op_cls = get_operator(name)
    widths = (16, 32, 64, 128, 1024) if op_cls.kind == "dense" else (8, 16, 48, 64)
    for width in widths:
        for full in (False, True):
            out = op_cls(dims, width, layernorm, full)(block_inputs(dims))
            expected = (BATCH, width) if op_cls.kind == "dense" else (BATCH, width, EMBEDDING_DIM)
            assert out.shape == expected, (name, width, full)
            assert torch.isfinite(out).all()


def test_linear_layers_have_bias_exactly_when_layernorm_is_off():
    dims = InputDims(32, 16, 32, 32)
    for name in OPERATORS:
        for layernorm in (True, False):
            op = get_operator(name)(dims, 64 if get_operator(name).kind == "dense" else 16, layernorm)
            norms = [m for m in op.modules() if isinstance(m, torch.nn.LayerNorm)]
            projections = [m for n, m in op.named_modules() if n.endswith("proj.linear")]
            assert all((m.bias is None) == layernorm for m in projections), name
            if name != "attention":  # the transformer layer's LayerNorms always exist
                assert bool(norms) == layernorm, name


def test_dot_product_tokens_follow_sqrt_2d():
    assert [dot_product_tokens(d) for d in (16, 32, 64, 1024)] == [6, 8, 11, 45]


def test_gating_and_sum_skip_projection_when_widths_match():
    dims = InputDims(8, 8, 64, 32)
    assert get_operator("gating")(dims, 64, True).proj is None
    assert get_operator("sum")(dims, 64, True).proj is None
    assert get_operator("gating")(dims, 128, True).proj is not None
    assert get_operator("gating")(dims, 64, True, full=True).proj is not None


def test_sum_adds_zero_padded_inputs_when_no_projection():
    op = get_operator("sum")(InputDims(4, 4, 4, 2), 4, layernorm=False)
    x = BlockInputs(
        torch.zeros(1, 4), torch.zeros(1, 4, 16), torch.tensor([[1.0, 2, 3, 4]]), torch.tensor([[10.0, 20]])
    )
    assert op(x).tolist() == [[11.0, 22.0, 3.0, 4.0]]


@pytest.mark.parametrize("width", [16, 64, 512])
@pytest.mark.parametrize("tokens", [8, 40])
def test_interaction_modules(width, tokens):
    dense, sparse = torch.randn(BATCH, width), torch.randn(BATCH, tokens, EMBEDDING_DIM)
    assert DenseToSparse(width, True)(dense).shape == (BATCH, INTERACTION_TOKENS, EMBEDDING_DIM)
    assert SparseToDense(width, True)(sparse).shape == (BATCH, width)


def test_fm_term_is_the_second_order_interaction():
    sparse = torch.randn(2, 5, EMBEDDING_DIM)
    pairs = sum(sparse[:, i] * sparse[:, j] for i in range(5) for j in range(5) if i != j)
    torch.testing.assert_close(SparseToDense(EMBEDDING_DIM, True)(sparse), pairs)


def test_unknown_operator_fails_with_known_names():
    with pytest.raises(ValueError, match=r"unknown operator 'conv'.*known"):
        get_operator("conv")

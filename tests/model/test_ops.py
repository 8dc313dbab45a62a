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
            if name == "attention":  # the transformer layer's LayerNorms always exist
                assert norms, name
            elif name == "fm":  # the second-order term keeps its scale, as in FM
                assert not norms, name
            else:
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


def test_fm_operator_is_fm_over_the_input_tokens_and_a_dense_token_per_token():
    dims = InputDims(4, 5, 4, 4)
    op = get_operator("fm")(dims, EMBEDDING_DIM, layernorm=True)
    x = block_inputs(dims)
    fields = torch.cat([op.dense_proj(x.dense).unsqueeze(1), x.sparse], dim=1)  # (B, 6, 16)
    pairs = sum(fields[:, i] * fields[:, j] for i in range(6) for j in range(i))
    torch.testing.assert_close(op(x), pairs / 6)
    assert pairs.sum(dim=1).shape == (BATCH,)  # the head's sum over channels is FM's second-order logit


def test_flat_fc_is_one_layer_over_dense_and_flattened_tokens():
    dims = InputDims(4, 3, 4, 4)
    op = get_operator("flat_fc")(dims, 32, layernorm=False)
    x = block_inputs(dims)
    weight = torch.cat([op.dense_linear.weight, op.token_linear.weight], dim=1)  # (32, 4 + 3*16)
    expected = torch.relu(torch.cat([x.dense, x.sparse.flatten(1)], dim=1) @ weight.T + op.dense_linear.bias)
    torch.testing.assert_close(op(x), expected)
    bound = (6 / (4 + 3 * EMBEDDING_DIM + 32)) ** 0.5  # Xavier-uniform of the one layer both halves make up
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound


def test_cross_is_a_dcn_v2_cross_layer():
    dims = InputDims(4, 3, 32, 32)
    op = get_operator("cross")(dims, 32, layernorm=False)
    x = block_inputs(dims)
    torch.testing.assert_close(op(x), x.left * op.cross(x.right) + x.right)
    assert op.proj is None
    narrow = InputDims(4, 3, 32, 16)  # x_l narrower than x0: zero-padded, then projected to d
    out = get_operator("cross")(narrow, 64, layernorm=True)(block_inputs(narrow))
    assert out.shape == (BATCH, 64)


def test_unknown_operator_fails_with_known_names():
    with pytest.raises(ValueError, match=r"unknown operator 'conv'.*known"):
        get_operator("conv")

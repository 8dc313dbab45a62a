import pytest
import torch

from model.network import InputSchema, NASRecNet
from model.sampling import ArchitectureSampler
from model.space import SPACES, get_space
from model.supernet import Supernet
from model.training import Batch, SliceAdagrad, SliceAdam, clip_gradients, supernet_step

SCHEMA = InputSchema(num_dense=13, cardinalities=(50, 7, 300, 3, 20, 11))
BATCH = 8


def inputs(seed: int = 0, batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(batch, SCHEMA.num_dense, generator=g) * 3
    sparse = torch.stack([torch.randint(0, c, (batch,), generator=g) for c in SCHEMA.cardinalities], dim=1)
    return dense, sparse


@pytest.fixture(scope="module", params=sorted(SPACES))
def supernet(request) -> Supernet:
    torch.manual_seed(0)
    return Supernet(get_space(request.param), SCHEMA)


def test_full_path_runs_at_every_width(supernet):
    dense, sparse = inputs()
    assert supernet(dense, sparse).shape == (BATCH,)
    assert len(supernet.network.blocks) == supernet.space.num_blocks


def test_extracted_subnet_equals_subnet_in_supernet(supernet):
    """50 random architectures per space: the same output from the supernet slice and the standalone copy."""
    dense, sparse = inputs(1)
    sampler = ArchitectureSampler(supernet.space, seed=11)
    with torch.no_grad():
        for _ in range(50):
            arch = sampler.sample()
            net = supernet.extract(arch)
            assert isinstance(net, NASRecNet) and net.arch == arch
            assert (supernet(dense, sparse, arch) - net(dense, sparse)).abs().max() <= 1e-5


def test_inherited_weights_keep_their_meaning_across_subnets(supernet):
    """A block's weight slice for an earlier node's output does not depend on what else the block reads."""
    arch = ArchitectureSampler(supernet.space, seed=5).sample()
    last = arch.num_blocks - 1
    narrow = arch.with_block(last, dense_op="fc", dense_inputs=(last,))
    wide = arch.with_block(last, dense_op="fc", dense_inputs=(0, last))
    name = f"blocks.{last}.dense_ops.fc.proj.linear.weight"
    w_narrow = supernet.subnet_weights(narrow)[name]
    w_wide = supernet.subnet_weights(wide)[name]
    stem_width = SCHEMA.num_dense
    torch.testing.assert_close(w_wide[:, stem_width:], w_narrow, rtol=0, atol=0)


def test_backward_reaches_only_the_weights_the_subnet_used(supernet):
    dense, sparse = inputs(2)
    sampler = ArchitectureSampler(supernet.space, seed=7)
    params = dict(supernet.network.named_parameters())
    for _ in range(5):
        arch = sampler.sample()
        supernet.zero_grad(set_to_none=True)
        supernet(dense, sparse, arch).sum().backward()
        net = supernet.extract(arch)
        net(dense, sparse).sum().backward()
        used = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in params.items()}
        for name, index in supernet.weight_slices(arch).items():
            grad, expected = params[name].grad, net.get_parameter(name).grad
            region = ... if index is None else index
            if expected is None:  # a live block's operator whose output no later block reads
                assert grad is None or not grad.to_dense()[region].any(), name
                continue
            torch.testing.assert_close(grad.to_dense()[region], expected.to_dense(), rtol=1e-5, atol=1e-6)
            used[name][region] = True
        for name, p in params.items():
            if p.grad is not None and not p.grad.is_sparse:
                assert not p.grad[~used[name]].any(), f"{name} has gradient outside the subnet's slice"
        assert any(p.grad is None for p in params.values()), "some operator of the supernet must be unused"


def test_slice_adagrad_step_equals_dense_adagrad_on_the_supernet():
    """The efficient supernet step is exactly torch's Adagrad on dense (zero outside the slice) gradients."""
    torch.manual_seed(0)
    fast = Supernet(get_space("demo"), SCHEMA)
    reference = Supernet(get_space("demo"), SCHEMA)
    reference.load_state_dict(fast.state_dict())
    fast_opt = SliceAdagrad(fast.parameters(), lr=0.1)
    ref_opt = torch.optim.Adagrad(reference.parameters(), lr=0.1, eps=1e-2)
    sampler = ArchitectureSampler(fast.space, seed=1)
    for step in range(4):
        dense, sparse = inputs(step, batch=32)
        label = (torch.rand(32) < 0.3).float()
        arch = sampler.sample() if step else None
        supernet_step(fast, arch, Batch(dense, sparse, label), fast_opt, max_grad_norm=0.5)
        ref_opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(reference(dense, sparse, arch), label)
        loss.backward()
        updates = [(p, None, p.grad) for p in reference.parameters() if p.grad is not None]
        scaled, _ = clip_gradients(updates, 0.5)
        for p, _, g in scaled:
            p.grad = g
        ref_opt.step()
    for (name, a), b in zip(fast.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def adam_reference(value: torch.Tensor, grads: list[torch.Tensor], sparse: bool = False) -> torch.Tensor:
    """`value` after torch's Adam (or SparseAdam, lazy rows) applies `grads` in turn."""
    param = torch.nn.Parameter(value.clone())
    optimizer = (torch.optim.SparseAdam if sparse else torch.optim.Adam)([param], lr=0.01, eps=1e-12)
    for grad in grads:
        param.grad = grad
        optimizer.step()
    return param.detach()


@pytest.mark.parametrize("index", [None, (slice(0, 4), slice(0, 5)), (torch.tensor([1, 3, 6]), slice(2, 7))])
def test_slice_adam_on_a_slice_is_torch_adam_on_that_slice(index):
    """Moments live on the supernet's slices: a slice moves as Adam would move it alone; the rest stays."""
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(8, 7, dtype=torch.float64))
    before = param.detach().clone()
    part = before if index is None else before[index]
    grads = [torch.randn_like(part) for _ in range(3)]
    optimizer = SliceAdam([param], lr=0.01, eps=1e-12)
    for grad in grads:
        optimizer.apply([(param, index, grad)])
    after = param.detach()
    torch.testing.assert_close(after if index is None else after[index], adam_reference(part, grads))
    if index is not None:
        outside = torch.ones_like(before, dtype=torch.bool)
        outside[index] = False
        assert torch.equal(after[outside], before[outside])


def test_slice_adam_updates_embedding_rows_lazily_as_sparse_adam():
    torch.manual_seed(0)
    table = torch.nn.Embedding(20, 4, sparse=True).double()
    before = table.weight.detach().clone()
    optimizer = SliceAdam(table.parameters(), lr=0.01, eps=1e-12)
    grads = []
    for _ in range(3):
        rows = torch.randint(0, 12, (30,))  # rows 12.. are never seen: they must not move
        (table(rows) * torch.randn(30, 4, dtype=torch.float64)).sum().backward()
        grads.append(table.weight.grad.clone())
        optimizer.apply([(table.weight, None, table.weight.grad)])
        table.weight.grad = None
    torch.testing.assert_close(table.weight.detach(), adam_reference(before, grads, sparse=True))
    assert torch.equal(table.weight[12:], before[12:])


def test_clip_matches_torch_for_dense_gradients():
    grads = [torch.randn(5, 3) * 4, torch.randn(7)]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    expected = torch.nn.utils.clip_grad_norm_(params, 1.0)
    clipped, total = clip_gradients([(p, None, g) for p, g in zip(params, grads)], 1.0)
    assert total == pytest.approx(float(expected), rel=1e-5)
    for p, (_, _, g) in zip(params, clipped):
        torch.testing.assert_close(g, p.grad)


def test_subnet_of_another_space_or_layernorm_is_rejected():
    supernet = Supernet(get_space("demo"), SCHEMA)
    with pytest.raises(ValueError, match="num_blocks"):
        supernet.extract(ArchitectureSampler(get_space("nasrec-small"), 0).sample())
    arch = ArchitectureSampler(get_space("demo"), 0, use_layernorm=False).sample()
    with pytest.raises(ValueError, match="use_layernorm: the architecture has 0, the supernet 1"):
        supernet(*inputs(), arch)

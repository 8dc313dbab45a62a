import dataclasses
import json

import pytest
import torch

from model.arch import Architecture
from model.network import FirstOrder, InputSchema, NASRecNet
from model.search import FitnessConfig, HeadFinetuneFitness, SearchConfig, SearchHistory, regularized_evolution
from model.space import SPACES, get_space
from model.supernet import Supernet
from model.trainer import evaluate
from model.training import Batch
from model.zoo import ARCHITECTURES, HAND_DESIGNED, hand_designed, seed_architectures

SCHEMA = InputSchema(num_dense=13, cardinalities=(50, 7, 300, 3, 20, 11))


def inputs(batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    dense = torch.rand(batch, SCHEMA.num_dense, generator=g)
    sparse = torch.stack([torch.randint(0, c, (batch,), generator=g) for c in SCHEMA.cardinalities], dim=1)
    return dense, sparse


def test_every_architecture_file_is_a_hand_designed_model_that_says_what_it_changes():
    assert sorted(p.stem for p in ARCHITECTURES.glob("*.json")) == sorted(HAND_DESIGNED)
    for name in HAND_DESIGNED:
        assert json.loads((ARCHITECTURES / f"{name}.json").read_text())["about"].lower().startswith(name)


@pytest.mark.parametrize("name", HAND_DESIGNED)
def test_hand_designed_architectures_lie_in_the_ctr_space_and_run_as_subnets(name):
    arch = hand_designed(name)
    arch.check(get_space("ctr"))
    assert Architecture.from_json(arch.to_json()) == arch
    torch.manual_seed(0)
    supernet = Supernet(get_space("ctr"), SCHEMA)
    dense, sparse = inputs()
    with torch.no_grad():
        net = supernet.extract(arch)
        torch.testing.assert_close(supernet(dense, sparse, arch), net(dense, sparse), rtol=1e-5, atol=1e-5)


def test_first_order_term_is_added_to_the_logit():
    lr, fm = hand_designed("lr"), hand_designed("fm")
    assert lr.first_order and fm.first_order
    torch.manual_seed(0)
    net = NASRecNet(fm, SCHEMA)
    assert isinstance(net.first_order, FirstOrder)
    dense, sparse = inputs()
    with torch.no_grad():
        body = net.head(net.head_inputs(dense, sparse)).squeeze(-1)
        torch.testing.assert_close(net(dense, sparse), body + net.first_order(dense, sparse))
    assert NASRecNet(dataclasses.replace(fm, first_order=False), SCHEMA).first_order is None


@pytest.mark.parametrize("name", ["lr", "dcnv2"])  # with and without a first-order term
def test_head_fitness_features_make_the_subnets_logits(name):
    """Head-only fine-tuning sees head(inputs) + offset, so a first-order term is scored with its subnet."""
    arch = hand_designed(name)
    torch.manual_seed(0)
    supernet = Supernet(get_space("ctr"), SCHEMA)
    dense, sparse = inputs()
    with torch.no_grad():
        head_inputs, offset = supernet.subnet_head_inputs(arch, dense, sparse)
        weights = supernet.subnet_weights(arch)
        logits = head_inputs @ weights["head.weight"].T + weights["head.bias"]
        torch.testing.assert_close(logits.squeeze(-1) + offset, supernet(dense, sparse, arch))
        assert bool(offset.abs().sum() > 0) == arch.first_order


def test_head_fitness_scores_a_first_order_architecture_as_its_subnet_predicts():
    torch.manual_seed(0)
    supernet = Supernet(get_space("ctr"), SCHEMA)
    dense, sparse = inputs(64)
    batch = Batch(dense, sparse, (torch.rand(64) < 0.3).float())
    arch = hand_designed("fm")
    record = HeadFinetuneFitness(
        supernet, [batch], [batch], FitnessConfig(finetune_steps=2, finetune_warmup_steps=0), torch.device("cpu")
    )(arch)
    assert record["supernet_logloss"] == pytest.approx(
        evaluate(supernet.extract(arch), [batch], torch.device("cpu"))["log_loss"], abs=1e-5
    )


def test_fm_architecture_reads_the_raw_embeddings():
    """Block 3's fm operator reads the stem: its tokens are the embedding rows themselves."""
    net = NASRecNet(hand_designed("fm"), SCHEMA)
    assert sorted(net.blocks) == ["3"]
    assert net.blocks["3"].spec.sparse_inputs == (0,)
    assert net.blocks["3"].dense_ops["fm"].inputs.sparse == SCHEMA.num_sparse


def test_unknown_and_misfitting_seeds_fail_clearly():
    with pytest.raises(ValueError, match=r"unknown hand-designed architecture 'xgboost'; known: \['lr'"):
        hand_designed("xgboost")
    demo = dataclasses.replace(get_space("demo"), seed_architectures=("fm",))
    with pytest.raises(
        ValueError, match=r"search space 'demo': seed architecture 'fm': first_order: 1 is not in search space 'demo'"
    ):
        seed_architectures(demo)


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_seeds_lie_in_their_space(space_name):
    space = get_space(space_name)
    for arch in seed_architectures(space, use_layernorm=False):
        arch.check(space)
        assert not arch.use_layernorm


def test_search_starts_from_the_seeds(tmp_path):
    space = get_space("ctr")
    seeds = seed_architectures(space)
    config = SearchConfig(population=8, generations=2, sample_size=2, children=2, fitness=FitnessConfig())
    scored = []

    def evaluate(archs):
        scored.extend(archs)
        return [{"val_logloss": float(i), "architecture": a.to_dict()} for i, a in enumerate(archs)]

    records = regularized_evolution(
        space, SCHEMA, evaluate, config, SearchHistory(tmp_path / "h.jsonl"), seeds=[*seeds, seeds[0]]
    )
    assert scored[: len(seeds)] == seeds  # first, once each
    assert len(set(scored[:8])) == 8 and len(records) == config.evaluations

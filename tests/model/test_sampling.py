import random
from collections import Counter

import pytest

from model.sampling import ArchitectureSampler, mutate, mutations_per_child
from model.space import SPACES, get_space


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_same_seed_same_architectures(space_name):
    space = get_space(space_name)
    first = [ArchitectureSampler(space, seed=42).sample() for _ in range(1)]
    a, b = ArchitectureSampler(space, seed=42), ArchitectureSampler(space, seed=42)
    assert [a.sample() for _ in range(20)] == [b.sample() for _ in range(20)]
    assert first[0] != ArchitectureSampler(space, seed=43).sample()


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_samples_are_valid_and_cover_the_space(space_name):
    space = get_space(space_name)
    sampler = ArchitectureSampler(space, seed=0)
    archs = [sampler.sample() for _ in range(300)]
    for arch in archs:
        arch.check(space)
    blocks = [b for a in archs for b in a.blocks]
    assert {b.dense_op for b in blocks} == set(space.dense_operators)
    assert {b.sparse_op for b in blocks} == set(space.sparse_operators)
    assert {b.dense_width for b in blocks} == set(space.dense_widths)
    assert {b.sparse_tokens for b in blocks} == set(space.sparse_tokens)
    assert {a.first_order for a in archs} == set(space.first_order)


def test_input_counts_follow_one_plus_binomial():
    space = get_space("nasrec-full")
    sampler = ArchitectureSampler(space, seed=1)
    counts = Counter(len(sampler.sample().blocks[6].dense_inputs) for _ in range(4000))
    # 1 + Binomial(3, 0.5): 1/8, 3/8, 3/8, 1/8
    for k, p in {1: 0.125, 2: 0.375, 3: 0.375, 4: 0.125}.items():
        assert counts[k] / 4000 == pytest.approx(p, abs=0.03)
    assert all(sampler.sample().blocks[0].dense_inputs == (0,) for _ in range(10))


def test_full_path_warmup_schedule():
    sampler = ArchitectureSampler(get_space("demo"), seed=0)
    assert all(sampler.sample_for_step(0, 100) is None for _ in range(50))
    assert all(sampler.sample_for_step(100, 100) is not None for _ in range(50))
    share = sum(sampler.sample_for_step(75, 100) is None for _ in range(4000)) / 4000
    assert share == pytest.approx(0.25, abs=0.03)


def test_mutations_per_child_schedule():
    assert [mutations_per_child(g, 240) for g in (0, 47, 48, 192, 239)] == [6, 5, 5, 2, 1]


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_mutation_changes_the_architecture_and_stays_in_space(space_name):
    space = get_space(space_name)
    rng = random.Random(0)
    parent = ArchitectureSampler(space, seed=0).sample()
    flips = 0
    for _ in range(200):
        child = mutate(parent, space, rng, mutations=1)
        child.check(space)
        changed = [(i, a, b) for i, (a, b) in enumerate(zip(parent.blocks, child.blocks)) if a != b]
        flips += child.first_order != parent.first_order
        assert len(changed) + (child.first_order != parent.first_order) == 1
    # the first-order term changes as often as one block's choices, where the space offers it
    assert (flips > 0) == (len(space.first_order) > 1)
    assert all(mutate(parent, space, rng) != parent for _ in range(200))
    a, b = random.Random(5), random.Random(5)
    assert mutate(parent, space, a, 3) == mutate(parent, space, b, 3)

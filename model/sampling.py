"""Seeded architecture sampling (NASREC.md section 5) and mutation (section 7)."""

from __future__ import annotations

import random
from dataclasses import replace

from model.arch import Architecture, Block
from model.space import SearchSpace

MACRO_CHOICES = ("dense_inputs", "sparse_inputs", "dense_left", "dense_right")
MICRO_CHOICES = ("dense_op", "sparse_op", "dense_width", "sparse_tokens", "dense_sparse_interact", "deep_fm")


class ArchitectureSampler:
    """Single-operator any-connection sampling: one seed, one sequence of architectures."""

    def __init__(self, space: SearchSpace, seed: int, use_layernorm: bool = True):
        self.space = space
        self.use_layernorm = use_layernorm
        self.rng = random.Random(seed)

    def sample(self) -> Architecture:
        blocks = tuple(self._block(i) for i in range(self.space.num_blocks))
        # drawn only where the space offers a choice, so the paper's spaces sample as they always did
        first_order = self.rng.choice(self.space.first_order) if len(self.space.first_order) > 1 else None
        return Architecture(
            blocks,
            use_layernorm=self.use_layernorm,
            json_config=self.space.json_config,
            first_order=self.space.first_order[0] if first_order is None else first_order,
        )

    def sample_for_step(self, step: int, warmup_steps: int) -> Architecture | None:
        """None (run the full path) with probability 1 - step / warmup_steps, else a sampled subnet."""
        if step < warmup_steps and self.rng.random() < 1.0 - step / warmup_steps:
            return None
        return self.sample()

    def _block(self, i: int) -> Block:
        rng, space = self.rng, self.space
        return Block(
            dense_op=rng.choice(space.dense_operators),
            sparse_op=rng.choice(space.sparse_operators),
            dense_width=rng.choice(space.dense_widths),
            sparse_tokens=rng.choice(space.sparse_tokens),
            dense_sparse_interact=rng.random() < 0.5,
            deep_fm=rng.random() < 0.5,
            dense_inputs=sample_inputs(rng, i, space.max_inputs),
            sparse_inputs=sample_inputs(rng, i, space.max_inputs),
            dense_left=rng.randrange(i + 1),
            dense_right=rng.randrange(i + 1),
        )


def sample_inputs(rng: random.Random, i: int, max_inputs: int) -> tuple[int, ...]:
    """Block i's inputs: 1 + Binomial(min(n - 1, max_inputs - 1), 0.5) distinct indices of the n = i + 1 available."""
    trials = min(i, max_inputs - 1)
    count = 1 + sum(rng.random() < 0.5 for _ in range(trials))
    return tuple(sorted(rng.sample(range(i + 1), count)))


def mutations_per_child(generation: int, generations: int) -> int:
    """Mutations for a child of this generation: 6 at the start down to 1 ((240 - g) // 48 + 1 in the paper)."""
    return (generations - generation) // max(generations // 5, 1) + 1


def mutate(arch: Architecture, space: SearchSpace, rng: random.Random, mutations: int = 1) -> Architecture:
    """Change `mutations` choices: each the network's first-order term (where the space offers both, as
    often as one block), or in a random block, a macro or a micro choice with equal odds.

    Only choices the space lets change are drawn (block 0 has a single possible wiring), so every
    mutation changes the architecture.
    """
    for _ in range(mutations):
        if len(space.first_order) > 1 and rng.randrange(arch.num_blocks + 1) == 0:
            arch = replace(arch, first_order=not arch.first_order)
            continue
        fields: list[str] = []
        while not fields:
            i = rng.randrange(arch.num_blocks)
            fields = [f for f in (MACRO_CHOICES if rng.random() < 0.5 else MICRO_CHOICES) if _options(space, i, f) != 1]
        field = rng.choice(fields)
        arch = arch.with_block(i, **{field: _new_value(arch.blocks[i], i, field, space, rng)})
    return arch


def _options(space: SearchSpace, i: int, field: str) -> int | None:
    """How many values `field` of block i can take (None: several, not counted)."""
    if field in MACRO_CHOICES:
        return 1 if i == 0 else None
    return len(_MICRO_VALUES[field](space))


_MICRO_VALUES = {
    "dense_op": lambda space: space.dense_operators,
    "sparse_op": lambda space: space.sparse_operators,
    "dense_width": lambda space: space.dense_widths,
    "sparse_tokens": lambda space: space.sparse_tokens,
    "dense_sparse_interact": lambda space: (False, True),
    "deep_fm": lambda space: (False, True),
}


def _new_value(block: Block, i: int, field: str, space: SearchSpace, rng: random.Random):
    current = getattr(block, field)
    if field in ("dense_inputs", "sparse_inputs"):  # redraw from the sampling distribution until it differs
        while (candidate := sample_inputs(rng, i, space.max_inputs)) == current:
            pass
        return candidate
    options = range(i + 1) if field in ("dense_left", "dense_right") else _MICRO_VALUES[field](space)
    return rng.choice([v for v in options if v != current])

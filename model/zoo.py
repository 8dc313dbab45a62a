"""Hand-designed CTR models as architectures of the `ctr` space (model/architectures/*.json).

Each is its model as nearly as a 4-block NASRecNet can be: the head always reads the last block's tokens
too, LayerNorm follows each block, and DLRM's dot products see projected tokens (see the files' `about`).
A search over a space that names them in `seed_architectures` starts from them, so it starts no worse
than the hand-designed models it has to beat.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from model.arch import Architecture
from model.space import SearchSpace

ARCHITECTURES = Path(__file__).with_name("architectures")
HAND_DESIGNED = ("lr", "fm", "deepfm", "dcnv2", "dlrm")


def hand_designed(name: str) -> Architecture:
    """The architecture JSON of a hand-designed model; unknown names fail with the known ones."""
    if name not in HAND_DESIGNED:
        raise ValueError(f"unknown hand-designed architecture {name!r}; known: {list(HAND_DESIGNED)}")
    return Architecture.load(ARCHITECTURES / f"{name}.json")


def seed_architectures(space: SearchSpace, use_layernorm: bool = True) -> list[Architecture]:
    """The architectures a search over `space` starts from, with the supernet's LayerNorm setting; each must lie
    in the space."""
    seeds = []
    for name in space.seed_architectures:
        arch = replace(hand_designed(name), use_layernorm=use_layernorm)
        try:
            arch.check(space)
        except ValueError as err:
            raise ValueError(f"search space {space.name!r}: seed architecture {name!r}: {err}") from None
        seeds.append(arch)
    return seeds

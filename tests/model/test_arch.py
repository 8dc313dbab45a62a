import copy
import json
from pathlib import Path

import pytest

from model.arch import Architecture
from model.network import InputSchema, NASRecNet
from model.sampling import ArchitectureSampler
from model.space import SPACES, SearchSpace, get_space

PUBLISHED = Path(__file__).parent.parent / "data" / "published_autoctr.json"


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_json_round_trip(space_name, tmp_path):
    sampler = ArchitectureSampler(get_space(space_name), seed=3)
    for _ in range(20):
        arch = sampler.sample()
        assert Architecture.from_dict(json.loads(json.dumps(arch.to_dict()))) == arch
        arch.save(tmp_path / "arch.json")
        assert Architecture.load(tmp_path / "arch.json") == arch


def test_loads_a_published_format_file():
    arch = Architecture.load(PUBLISHED)
    arch.check(get_space("nasrec-small"))
    assert arch.num_blocks == 7 and arch.json_config == "autoctr" and not arch.use_layernorm
    first, last = arch.blocks[0], arch.blocks[-1]
    assert (first.dense_op, first.sparse_op, first.dense_width, first.sparse_tokens) == ("dot_product", "efc", 64, 64)
    assert (last.dense_inputs, last.sparse_inputs, last.dense_left, last.dense_right) == ((2, 3, 4), (0, 6), 2, 3)
    assert last.deep_fm and last.dense_sparse_interact
    assert arch.to_dict() == json.loads(PUBLISHED.read_text())
    net = NASRecNet(arch, InputSchema(13, (100,) * 26))
    assert net.mflops() > 0


def published() -> dict:
    return json.loads(PUBLISHED.read_text())


def mutated(path: list, value) -> dict:
    data = copy.deepcopy(published())
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (mutated(["num_blocks"], 6), r"num_blocks: says 6, but micro has 7 entries and macro 7"),
        (
            mutated(["macro", 3, "dense_idx"], [0, 4]),
            r"block 3: dense_inputs \(macro.dense_idx\): index 4 points at block 3, which is this block",
        ),
        (
            mutated(["macro", 2, "sparse_idx"], [5]),
            r"block 2: sparse_inputs \(macro.sparse_idx\): index 5 .* a later block",
        ),
        (mutated(["macro", 4, "dense_left_idx"], [6]), r"block 4: dense_left \(macro.dense_left_idx\): index 6"),
        (mutated(["macro", 1, "dense_idx"], []), r"block 1: dense_inputs \(macro.dense_idx\): the input list is empty"),
        (
            mutated(["macro", 1, "sparse_idx"], []),
            r"block 1: sparse_inputs \(macro.sparse_idx\): the input list is empty",
        ),
        (mutated(["macro", 3, "dense_idx"], [1, 1]), r"block 3: dense_inputs .* distinct"),
        (
            mutated(["micro", 5, "active_nodes"], [7, 2]),
            r"block 5: dense_op \(micro.active_nodes\[0\]\): 7 is not an operator id of config 'autoctr'",
        ),
        (mutated(["micro", 5, "active_nodes"], [2, 2]), r"block 5: dense_op .* 'efc' is not a dense operator"),
        (
            mutated(["micro", 0, "dense_in_dims"], -3),
            r"block 0: dense_width \(micro.dense_in_dims\): must be a positive integer",
        ),
        (mutated(["micro", 2, "deep_fm"], 2), r"block 2: deep_fm: must be 0 or 1"),
        (mutated(["config"], "huge"), r"config: must be one of"),
        ({"micro": []}, r"missing fields \['num_blocks', 'macro'\]"),
    ],
)
def test_invalid_architectures_name_block_and_field(data, message):
    with pytest.raises(ValueError, match=message):
        Architecture.from_dict(data)


def test_space_check_names_block_and_field():
    small = get_space("nasrec-small")
    arch = Architecture.load(PUBLISHED)
    with pytest.raises(ValueError, match=r"num_blocks: the architecture has 7 blocks, search space 'demo' has 4"):
        arch.check(get_space("demo"))
    with pytest.raises(
        ValueError, match=r"block 2: dense_width \(micro.dense_in_dims\): 100 is not in search space 'nasrec-small'"
    ):
        arch.with_block(2, dense_width=100).check(small)
    with pytest.raises(ValueError, match=r"block 6: sparse_tokens \(micro.sparse_in_dims\): 20 is not in search space"):
        arch.with_block(6, sparse_tokens=20).check(small)
    with pytest.raises(
        ValueError,
        match=r"block 1: dense_op \(micro.active_nodes\[0\]\): 'gating' is not in search space 'nasrec-small'",
    ):
        arch.with_block(1, dense_op="gating").check(small)
    with pytest.raises(ValueError, match=r"block 4: sparse_op .* 'attention' is not in search space 'nasrec-small'"):
        arch.with_block(4, sparse_op="attention").check(small)
    with pytest.raises(ValueError, match=r"block 6: dense_inputs .* 5 inputs, at most 4"):
        arch.with_block(6, dense_inputs=(0, 1, 2, 3, 4)).check(small)


def test_writing_an_operator_the_config_has_no_id_for_fails():
    arch = Architecture.load(PUBLISHED).with_block(0, dense_op="gating")
    with pytest.raises(ValueError, match=r"block 0: dense_op .* 'gating' has no id in config 'autoctr'"):
        arch.to_dict()


def test_bad_json_text_names_the_source():
    with pytest.raises(ValueError, match=r"my\.json: not valid JSON"):
        Architecture.from_json("{", source="my.json")
    with pytest.raises(ValueError, match=r"my\.json: block 3"):
        Architecture.from_json(json.dumps(mutated(["macro", 3, "dense_idx"], [9])), source="my.json")


def test_unknown_space_fails_loudly():
    with pytest.raises(
        ValueError, match=r"unknown search space 'huge'; known: \['ctr', 'demo', 'nasrec-full', 'nasrec-small'\]"
    ):
        get_space("huge")


def test_space_round_trips_and_rejects_bad_fields():
    for space in SPACES.values():
        assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space
    with pytest.raises(ValueError, match="dense_widths must be ascending"):
        SearchSpace.from_dict({**get_space("demo").to_dict(), "dense_widths": [64, 16]})
    with pytest.raises(ValueError, match="dense_operators must be a non-empty subset of \\['fc', 'dot_product'\\]"):
        SearchSpace.from_dict({**get_space("nasrec-small").to_dict(), "dense_operators": ["gating"]})
    with pytest.raises(ValueError, match="unknown fields \\['blocks'\\]"):
        SearchSpace.from_dict({**get_space("demo").to_dict(), "blocks": 3})

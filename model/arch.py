"""Architectures as data, and the interoperable NASRec JSON format (NASREC.md section 10)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from model.space import DENSE_OPERATORS, OPERATOR_IDS, SPARSE_OPERATORS, SearchSpace

# Where each Block field lives in the JSON file, so errors name what the user actually edits.
JSON_FIELDS = {
    "dense_op": "micro.active_nodes[0]",
    "sparse_op": "micro.active_nodes[1]",
    "dense_width": "micro.dense_in_dims",
    "sparse_tokens": "micro.sparse_in_dims",
    "dense_sparse_interact": "micro.dense_sparse_interact",
    "deep_fm": "micro.deep_fm",
    "dense_inputs": "macro.dense_idx",
    "sparse_inputs": "macro.sparse_idx",
    "dense_left": "macro.dense_left_idx",
    "dense_right": "macro.dense_right_idx",
}


def _field_error(block: int, name: str, message: str) -> ValueError:
    return ValueError(f"block {block}: {name} ({JSON_FIELDS[name]}): {message}")


@dataclass(frozen=True)
class Block:
    """One block's choices. Input indices: 0 is the stem, j >= 1 is the output of block j-1."""

    dense_op: str
    sparse_op: str
    dense_width: int
    sparse_tokens: int
    dense_sparse_interact: bool
    deep_fm: bool
    dense_inputs: tuple[int, ...]
    sparse_inputs: tuple[int, ...]
    dense_left: int
    dense_right: int


@dataclass(frozen=True)
class Architecture:
    """A NASRecNet: a chain of blocks. Construction checks everything that does not depend on a search space."""

    blocks: tuple[Block, ...]
    use_layernorm: bool = True
    json_config: str = "xlarge"
    first_order: bool = False  # a first-order (LR) term added to the logit

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not self.blocks:
            raise ValueError("num_blocks: an architecture needs at least one block")
        if self.json_config not in OPERATOR_IDS:
            raise ValueError(f"config: must be one of {sorted(OPERATOR_IDS)}, got {self.json_config!r}")
        object.__setattr__(self, "blocks", tuple(_checked_block(i, b) for i, b in enumerate(self.blocks)))
        object.__setattr__(self, "first_order", _flag(-1, "first_order", self.first_order))

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def check(self, space: SearchSpace) -> None:
        """Raise ValueError naming the block and field of the first choice `space` does not allow."""
        if self.num_blocks != space.num_blocks:
            raise ValueError(
                f"num_blocks: the architecture has {self.num_blocks} blocks, "
                f"search space {space.name!r} has {space.num_blocks}"
            )
        allowed = {
            "dense_op": space.dense_operators,
            "sparse_op": space.sparse_operators,
            "dense_width": space.dense_widths,
            "sparse_tokens": space.sparse_tokens,
        }
        if self.first_order not in space.first_order:
            raise ValueError(
                f"first_order: {int(self.first_order)} is not in search space {space.name!r}; "
                f"allowed: {[int(v) for v in space.first_order]}"
            )
        for i, block in enumerate(self.blocks):
            for name, values in allowed.items():
                if getattr(block, name) not in values:
                    raise _field_error(
                        i,
                        name,
                        f"{getattr(block, name)!r} is not in search space {space.name!r}; allowed: {list(values)}",
                    )
            for name in ("dense_inputs", "sparse_inputs"):
                if len(getattr(block, name)) > space.max_inputs:
                    raise _field_error(
                        i, name, f"{len(getattr(block, name))} inputs, at most {space.max_inputs} allowed"
                    )

    def to_dict(self) -> dict[str, Any]:
        ids = OPERATOR_IDS[self.json_config]
        for i, block in enumerate(self.blocks):
            for name in ("dense_op", "sparse_op"):
                if getattr(block, name) not in ids:
                    raise _field_error(i, name, f"{getattr(block, name)!r} has no id in config {self.json_config!r}")
        # "first_order" is this project's extension, written only when set: other files stay the published format
        return {
            "num_blocks": self.num_blocks,
            "use_layernorm": int(self.use_layernorm),
            "config": self.json_config,
            **({"first_order": 1} if self.first_order else {}),
            "micro": [
                {
                    "active_nodes": [ids.index(b.dense_op), ids.index(b.sparse_op)],
                    "dense_in_dims": b.dense_width,
                    "sparse_in_dims": b.sparse_tokens,
                    "dense_sparse_interact": int(b.dense_sparse_interact),
                    "deep_fm": int(b.deep_fm),
                }
                for b in self.blocks
            ],
            "macro": [
                {
                    "dense_idx": list(b.dense_inputs),
                    "sparse_idx": list(b.sparse_inputs),
                    "dense_left_idx": [b.dense_left],
                    "dense_right_idx": [b.dense_right],
                }
                for b in self.blocks
            ],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Architecture:
        """Parse the interoperable JSON (also the published NASRecNet files)."""
        if not isinstance(data, dict):
            raise ValueError(f"architecture: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in ("num_blocks", "micro", "macro") if k not in data]
        if missing:
            raise ValueError(f"architecture: missing fields {missing}")
        config = data.get("config", "xlarge")
        if config not in OPERATOR_IDS:
            raise ValueError(f"config: must be one of {sorted(OPERATOR_IDS)}, got {config!r}")
        micro, macro, num_blocks = data["micro"], data["macro"], data["num_blocks"]
        if not isinstance(micro, list) or not isinstance(macro, list):
            raise ValueError("architecture: micro and macro must be lists with one entry per block")
        if not isinstance(num_blocks, int) or num_blocks != len(micro) or num_blocks != len(macro):
            raise ValueError(
                f"num_blocks: says {num_blocks!r}, but micro has {len(micro)} entries and macro {len(macro)}"
            )
        blocks = tuple(_block_from_json(i, mi, ma, config) for i, (mi, ma) in enumerate(zip(micro, macro)))
        return cls(
            blocks=blocks,
            use_layernorm=_flag(-1, "use_layernorm", data.get("use_layernorm", 1)),
            json_config=config,
            first_order=_flag(-1, "first_order", data.get("first_order", 0)),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "architecture JSON") -> Architecture:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: not valid JSON: {err}") from None
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Architecture:
        return cls.from_json(Path(path).read_text(), source=str(path))

    def with_block(self, index: int, **changes: Any) -> Architecture:
        blocks = list(self.blocks)
        blocks[index] = replace(blocks[index], **changes)
        return replace(self, blocks=tuple(blocks))


def _checked_block(i: int, block: Block) -> Block:
    """Validate one block at position i and return it with sorted input lists."""
    if block.dense_op not in DENSE_OPERATORS:
        raise _field_error(i, "dense_op", f"{block.dense_op!r} is not a dense operator; known: {list(DENSE_OPERATORS)}")
    if block.sparse_op not in SPARSE_OPERATORS:
        raise _field_error(
            i, "sparse_op", f"{block.sparse_op!r} is not a sparse operator; known: {list(SPARSE_OPERATORS)}"
        )
    for name in ("dense_width", "sparse_tokens"):
        value = getattr(block, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _field_error(i, name, f"must be a positive integer, got {value!r}")
    for name in ("dense_inputs", "sparse_inputs"):
        indices = tuple(getattr(block, name))
        if not indices:
            raise _field_error(i, name, "the input list is empty")
        for j in indices:
            _check_index(i, name, j)
        if len(set(indices)) != len(indices):
            raise _field_error(i, name, f"indices must be distinct, got {list(indices)}")
        block = replace(block, **{name: tuple(sorted(indices))})
    for name in ("dense_left", "dense_right"):
        _check_index(i, name, getattr(block, name))
    return replace(block, dense_sparse_interact=bool(block.dense_sparse_interact), deep_fm=bool(block.deep_fm))


def _check_index(i: int, name: str, j: Any) -> None:
    if isinstance(j, bool) or not isinstance(j, int) or j < 0:
        raise _field_error(i, name, f"index {j!r} is not a non-negative integer")
    if j > i:
        raise _field_error(
            i,
            name,
            f"index {j} points at block {j - 1}, which is {'this block' if j == i + 1 else 'a later block'}; "
            f"allowed: 0 (stem) to {i}",
        )


def _flag(i: int, name: str, value: Any) -> bool:
    if value not in (0, 1, True, False):
        where = f"block {i}: {name}" if i >= 0 else name
        raise ValueError(f"{where}: must be 0 or 1, got {value!r}")
    return bool(value)


def _single(i: int, name: str, value: Any) -> int:
    if isinstance(value, list):
        if len(value) != 1:
            raise _field_error(i, name, f"must hold exactly one index, got {value!r}")
        return value[0]
    return value


def _block_from_json(i: int, micro: Any, macro: Any, config: str) -> Block:
    if not isinstance(micro, dict) or not isinstance(macro, dict):
        raise ValueError(f"block {i}: micro and macro entries must be JSON objects")
    try:
        nodes = micro["active_nodes"]
        dense_width, sparse_tokens = micro["dense_in_dims"], micro["sparse_in_dims"]
        dense_idx, sparse_idx = macro["dense_idx"], macro["sparse_idx"]
        left, right = macro["dense_left_idx"], macro["dense_right_idx"]
    except KeyError as err:
        raise ValueError(f"block {i}: missing field {err.args[0]!r}") from None
    ids = OPERATOR_IDS[config]
    if not isinstance(nodes, list) or len(nodes) != 2:
        raise _field_error(i, "dense_op", f"active_nodes must be [dense_op_id, sparse_op_id], got {nodes!r}")
    ops = []
    for name, op_id in zip(("dense_op", "sparse_op"), nodes):
        if isinstance(op_id, bool) or not isinstance(op_id, int) or not 0 <= op_id < len(ids):
            raise _field_error(i, name, f"{op_id!r} is not an operator id of config {config!r}: {dict(enumerate(ids))}")
        ops.append(ids[op_id])
    for name, value in (("dense_inputs", dense_idx), ("sparse_inputs", sparse_idx)):
        if not isinstance(value, list):
            raise _field_error(i, name, f"must be a list of indices, got {value!r}")
    return Block(
        dense_op=ops[0],
        sparse_op=ops[1],
        dense_width=dense_width,
        sparse_tokens=sparse_tokens,
        dense_sparse_interact=_flag(i, "dense_sparse_interact", micro.get("dense_sparse_interact", 0)),
        deep_fm=_flag(i, "deep_fm", micro.get("deep_fm", 0)),
        dense_inputs=tuple(dense_idx),
        sparse_inputs=tuple(sparse_idx),
        dense_left=_single(i, "dense_left", left),
        dense_right=_single(i, "dense_right", right),
    )

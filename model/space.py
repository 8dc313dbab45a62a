"""Search spaces as data: which operators, widths and connections a NASRec architecture may use."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

PAPER_DENSE_OPERATORS = ("fc", "dot_product", "gating", "sum")
DENSE_OPERATORS = (*PAPER_DENSE_OPERATORS, "fm", "flat_fc", "cross")
SPARSE_OPERATORS = ("efc", "attention")

# Operator ids of the interoperable architecture JSON (NASREC.md section 10), per "config" value. "ctr" is
# this project's: the paper's ids, then the operators that express hand-designed models.
OPERATOR_IDS: dict[str, tuple[str, ...]] = {
    "xlarge": ("fc", "dot_product", "gating", "sum", "attention", "efc"),
    "autoctr": ("fc", "dot_product", "efc"),
    "ctr": ("fc", "dot_product", "gating", "sum", "attention", "efc", "fm", "flat_fc", "cross"),
}


@dataclass(frozen=True)
class SearchSpace:
    """Every choice a block may make. Presets are instances of this class; users may load their own."""

    name: str
    num_blocks: int
    dense_operators: tuple[str, ...]
    sparse_operators: tuple[str, ...]
    dense_widths: tuple[int, ...]
    sparse_tokens: tuple[int, ...]
    json_config: str
    max_inputs: int = 4
    first_order: tuple[bool, ...] = (False,)  # whether a network adds a first-order (LR) term to its logit
    seed_architectures: tuple[str, ...] = ()  # hand-designed models (model/zoo.py) the search starts from
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.num_blocks < 1:
            raise ValueError(f"search space {self.name!r}: num_blocks must be >= 1, got {self.num_blocks}")
        if self.json_config not in OPERATOR_IDS:
            raise ValueError(
                f"search space {self.name!r}: json_config must be one of {sorted(OPERATOR_IDS)}, "
                f"got {self.json_config!r}"
            )
        for attr, allowed in (("dense_operators", DENSE_OPERATORS), ("sparse_operators", SPARSE_OPERATORS)):
            ops = getattr(self, attr)
            unknown = [op for op in ops if op not in allowed or op not in OPERATOR_IDS[self.json_config]]
            if not ops or unknown:
                raise ValueError(
                    f"search space {self.name!r}: {attr} must be a non-empty subset of "
                    f"{[op for op in allowed if op in OPERATOR_IDS[self.json_config]]}, got {list(ops)}"
                )
        for attr in ("dense_widths", "sparse_tokens"):
            values = getattr(self, attr)
            if not values or any(v < 1 for v in values) or list(values) != sorted(set(values)):
                raise ValueError(
                    f"search space {self.name!r}: {attr} must be ascending positive integers, got {list(values)}"
                )
        if self.max_inputs < 1:
            raise ValueError(f"search space {self.name!r}: max_inputs must be >= 1, got {self.max_inputs}")
        if not self.first_order or any(not isinstance(v, bool) for v in self.first_order):
            raise ValueError(
                f"search space {self.name!r}: first_order must be [false], [true] or [false, true], "
                f"got {list(self.first_order)}"
            )

    @property
    def max_dense_width(self) -> int:
        return self.dense_widths[-1]

    @property
    def max_sparse_tokens(self) -> int:
        return self.sparse_tokens[-1]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SearchSpace:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"search space: unknown fields {unknown}; allowed: {sorted(known)}")
        tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
        return cls(**{**data, **tuples})


_PAPER_WIDTHS = (16, 32, 64, 128, 256, 512, 768, 1024)
_PAPER_TOKENS = (16, 32, 48, 64)

SPACES: dict[str, SearchSpace] = {
    space.name: space
    for space in (
        SearchSpace(
            name="nasrec-full",
            num_blocks=7,
            dense_operators=PAPER_DENSE_OPERATORS,
            sparse_operators=SPARSE_OPERATORS,
            dense_widths=_PAPER_WIDTHS,
            sparse_tokens=_PAPER_TOKENS,
            json_config="xlarge",
            description="NASRec-Full (paper): all six operators, 7 blocks.",
        ),
        SearchSpace(
            name="nasrec-small",
            num_blocks=7,
            dense_operators=("fc", "dot_product"),
            sparse_operators=("efc",),
            dense_widths=_PAPER_WIDTHS,
            sparse_tokens=_PAPER_TOKENS,
            json_config="autoctr",
            description="NASRec-Small (paper): FC, Dot-Product and EFC, 7 blocks.",
        ),
        SearchSpace(
            name="demo",
            num_blocks=4,
            dense_operators=PAPER_DENSE_OPERATORS,
            sparse_operators=SPARSE_OPERATORS,
            dense_widths=(16, 32, 64, 128, 256),
            sparse_tokens=(8, 16, 32),
            json_config="xlarge",
            description="CPU-sized: the paper's operators, 4 blocks, narrower widths; for demos, CI and small data.",
        ),
        SearchSpace(
            name="ctr",
            num_blocks=4,
            dense_operators=DENSE_OPERATORS,
            sparse_operators=SPARSE_OPERATORS,
            dense_widths=(16, 32, 64, 128, 256),
            sparse_tokens=(8, 16, 32),
            json_config="ctr",
            first_order=(False, True),
            seed_architectures=("lr", "fm", "deepfm", "dcnv2", "dlrm"),
            description=(
                "demo's sizes with the operators that express LR, FM, DeepFM, DCN and DLRM (fm, flat_fc, cross) "
                "and an optional first-order term; the search starts from those models (model/architectures/)."
            ),
        ),
    )
}


def get_space(name: str) -> SearchSpace:
    """Look up a preset by name; unknown names fail with the list of known ones."""
    try:
        return SPACES[name]
    except KeyError:
        raise ValueError(f"unknown search space {name!r}; known: {sorted(SPACES)}") from None

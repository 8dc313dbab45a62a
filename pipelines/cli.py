"""The `nasrec` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _schema(args: argparse.Namespace):
    from model.network import InputSchema

    return InputSchema(args.num_dense, tuple(args.cardinalities))


def cmd_demo(args: argparse.Namespace) -> None:
    from pipelines.demo import DemoConfig, run_demo

    run_demo(
        DemoConfig(
            rows=args.rows,
            space=args.space,
            steps=args.steps,
            warmup_steps=args.warmup_steps,
            batch_size=args.batch_size,
            seed=args.seed,
            out=args.out,
        )
    )


def cmd_spaces(args: argparse.Namespace) -> None:
    from model.space import SPACES

    for space in SPACES.values():
        print(f"{space.name:13s} {space.description}")
        print(
            f"{'':13s} blocks {space.num_blocks}; dense {list(space.dense_operators)}; sparse "
            f"{list(space.sparse_operators)}; widths {list(space.dense_widths)}; tokens {list(space.sparse_tokens)}"
        )


def cmd_sample(args: argparse.Namespace) -> None:
    from model.sampling import ArchitectureSampler
    from model.space import get_space

    arch = ArchitectureSampler(get_space(args.space), args.seed, use_layernorm=not args.no_layernorm).sample()
    if args.out:
        arch.save(args.out)
        print(f"wrote {args.out}")
    else:
        print(arch.to_json())


def cmd_inspect(args: argparse.Namespace) -> None:
    import torch

    from model.arch import Architecture
    from model.network import NASRecNet
    from model.space import get_space

    arch = Architecture.load(args.architecture)
    if args.space:
        arch.check(get_space(args.space))
    with torch.device("meta"):
        net = NASRecNet(arch, _schema(args))
    summary = {
        "blocks": arch.num_blocks,
        "mflops_per_sample": net.mflops(),
        "parameters": net.num_parameters(),
        "embedding_parameters": net.num_parameters(embeddings=True) - net.num_parameters(),
        "live_blocks": sorted(int(b) for b in net.blocks),
    }
    print(json.dumps(summary, indent=2))


def _dataset_schema(value: str):
    from features.schema import DatasetSchema, builtin_schema

    return DatasetSchema.load(value) if value.endswith((".yaml", ".yml")) else builtin_schema(value)


def cmd_ingest(args: argparse.Namespace) -> None:
    from features.ingest import SplitSpec, ingest

    split = SplitSpec(
        validation_fraction=args.validation_fraction, test_fraction=args.test_fraction, folds=args.folds, fold=args.fold
    )
    result = ingest(_dataset_schema(args.schema), args.data, args.out, split, args.max_reject_fraction)
    print(json.dumps(result.stats, indent=2))


def cmd_synthetic(args: argparse.Namespace) -> None:
    from features.synthetic import write_synthetic_log

    path = write_synthetic_log(_dataset_schema(args.schema), args.out, args.rows, args.seed, args.cardinality)
    print(f"wrote {args.rows:,} rows to {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nasrec", description="NASRec: search, train and serve CTR models.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="ingest a synthetic log through Feast, train a supernet briefly, evaluate a sampled subnet"
    )
    demo.add_argument("--space", default="demo", help="search space preset (see `nasrec spaces`); default: demo")
    demo.add_argument("--steps", type=int, default=1500, help="supernet training steps (default: 1500)")
    demo.add_argument(
        "--warmup-steps",
        type=int,
        default=300,
        help="steps over which the full-path probability falls from 1 to 0 (default: 300)",
    )
    demo.add_argument("--batch-size", type=int, default=512, help="rows per step (default: 512)")
    demo.add_argument("--rows", type=int, default=300_000, help="synthetic log rows to ingest (default: 300000)")
    demo.add_argument("--seed", type=int, default=0, help="seeds data, weights and sampling (default: 0)")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    demo.set_defaults(func=cmd_demo)

    ingest = sub.add_parser(
        "ingest", help="raw logs -> Feast offline store -> point-in-time train/validation/test splits"
    )
    ingest.add_argument("--schema", required=True, help="built-in schema (criteo, avazu) or a schema YAML file")
    ingest.add_argument("--data", type=Path, nargs="+", required=True, help="raw log files (CSV/TSV, .gz, Parquet)")
    ingest.add_argument("--out", type=Path, required=True, help="output folder (splits, transform, Feast repo)")
    ingest.add_argument("--folds", type=Path, help="fold file (row,fold): split by fold instead of by time")
    ingest.add_argument("--fold", type=int, default=0, help="with --folds: the test fold k (validation k+1)")
    ingest.add_argument("--validation-fraction", type=float, default=0.1, help="time split (default: 0.1)")
    ingest.add_argument("--test-fraction", type=float, default=0.1, help="time split: latest rows (default: 0.1)")
    ingest.add_argument(
        "--max-reject-fraction",
        type=float,
        default=0.01,
        help="fail when more malformed rows than this (default: 0.01)",
    )
    ingest.set_defaults(func=cmd_ingest)

    synthetic = sub.add_parser("synthetic", help="write a synthetic raw log with teacher labels in a schema's format")
    synthetic.add_argument("--schema", default="criteo", help="built-in schema or schema YAML (default: criteo)")
    synthetic.add_argument("--rows", type=int, default=100_000, help="rows to write (default: 100000)")
    synthetic.add_argument("--cardinality", type=int, default=10_000, help="distinct values per feature")
    synthetic.add_argument("--seed", type=int, default=0, help="teacher and data seed (default: 0)")
    synthetic.add_argument("--out", type=Path, required=True, help="output file (.gz compresses)")
    synthetic.set_defaults(func=cmd_synthetic)

    spaces = sub.add_parser("spaces", help="list the search-space presets")
    spaces.set_defaults(func=cmd_spaces)

    sample = sub.add_parser("sample", help="sample an architecture JSON from a search space")
    sample.add_argument("--space", default="demo", help="search space preset (default: demo)")
    sample.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    sample.add_argument("--no-layernorm", action="store_true", help="write use_layernorm = 0")
    sample.add_argument("--out", type=Path, help="write here instead of printing")
    sample.set_defaults(func=cmd_sample)

    inspect = sub.add_parser("inspect", help="validate an architecture JSON and print its MFLOPs and parameters")
    inspect.add_argument("architecture", type=Path, help="architecture JSON (NASRec interoperable format)")
    inspect.add_argument("--space", help="also check it against this search space preset")
    inspect.add_argument("--num-dense", type=int, default=13, help="dense features (default: 13, Criteo)")
    inspect.add_argument(
        "--cardinalities",
        type=int,
        nargs="+",
        default=[100_000] * 26,
        help="rows per categorical feature (default: 26 x 100000)",
    )
    inspect.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"nasrec {args.command}: error: {err}")


if __name__ == "__main__":
    main()

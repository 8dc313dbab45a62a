"""The `nasrec` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines import COMPILED_PIPELINE
from pipelines.cluster import DEFAULT_EXPERIMENT, DEFAULT_JOB_NAME, EXIT_GATE_REFUSED, EXIT_RUN_FAILED, EXIT_TIMED_OUT
from pipelines.local import PipelineStepError
from serving.errors import SERVING_ERRORS
from serving.interface import MODEL_PREFIX

OPTIMIZER_NAMES = ("adagrad", "adam")  # model.training.OPTIMIZERS, named here so --help needs no torch import
FINETUNE_SPLITS = ("train", "validation")  # components.steps.search.FINETUNE_SPLITS, likewise


def config_from_args(cls, args: argparse.Namespace, **values):
    """A step's config from the options named like its fields (and `values`), through its `from_dict`."""
    import dataclasses

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls.from_dict(given | values)


def _schema(args: argparse.Namespace):
    from model.network import InputSchema

    return InputSchema(args.num_dense, tuple(args.cardinalities))


def cmd_spaces(args: argparse.Namespace) -> None:
    from model.space import SPACES

    for space in SPACES.values():
        print(f"{space.name:13s} {space.description}")
        print(
            f"{'':13s} blocks {space.num_blocks}; dense {list(space.dense_operators)}; sparse "
            f"{list(space.sparse_operators)}; widths {list(space.dense_widths)}; tokens {list(space.sparse_tokens)}"
            + (f"; first-order term {[int(v) for v in space.first_order]}" if len(space.first_order) > 1 else "")
            + (f"; starts from {list(space.seed_architectures)}" if space.seed_architectures else "")
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


def cmd_ingest(args: argparse.Namespace) -> None:
    from components.steps.ingest import IngestRun, ingest

    stats = ingest(args.data, args.out, config_from_args(IngestRun, args))
    print(json.dumps(stats, indent=2))


def cmd_synthetic(args: argparse.Namespace) -> None:
    from features.schema import load_schema
    from features.synthetic import write_synthetic_log

    path = write_synthetic_log(load_schema(args.schema), args.out, args.rows, args.seed, args.cardinality)
    print(f"wrote {args.rows:,} rows to {path}")


def _device(args: argparse.Namespace):
    from components.steps.common import resolve_device

    return resolve_device(args.device)


def cmd_train_supernet(args: argparse.Namespace) -> None:
    from components.steps.train_supernet import SupernetRun, train_supernet

    metrics = train_supernet(args.data, args.out, config_from_args(SupernetRun, args), _device(args))
    if metrics:
        print(json.dumps({k: metrics[k] for k in ("validation_before", "validation_after", "checkpoint")}, indent=2))


def _search_run(args: argparse.Namespace):
    from dataclasses import asdict

    from components.steps.search import SearchRun
    from model.search import SearchConfig

    evolution = {f: getattr(args, f) for f in SearchConfig.__dataclass_fields__ if f != "fitness"}
    return config_from_args(SearchRun, args, search=evolution | {"fitness": asdict(fitness_config(args))})


def cmd_search(args: argparse.Namespace) -> None:
    from components.steps.search import search

    summary = search(args.supernet, args.data, args.out, _search_run(args), _device(args))
    best = summary["best"]
    print(
        f"{summary['evaluations']} architectures evaluated; best: validation log loss {best['val_logloss']:.4f}, "
        f"AUC {best['val_auc']:.4f}, {best['mflops']:.3f} MFLOPs"
        + (f", p99 {best['latency_p99_ms']:.2f} ms as served" if "latency_p99_ms" in best else "")
        + f"; wrote {args.out}"
    )


def _finetune_run(args: argparse.Namespace):
    from components.steps.finetune import FinetuneRun

    return config_from_args(FinetuneRun, args)


def cmd_finetune(args: argparse.Namespace) -> None:
    from components.steps.finetune import finetune, read_architectures

    archs = read_architectures(args.architectures, args.top_k)
    finetune(archs, args.data, args.out, _finetune_run(args), _device(args), args.supernet, args.workers)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from components.steps.evaluate import EvaluateRun, evaluate

    result = evaluate(args.model, args.data, args.out, config_from_args(EvaluateRun, args), _device(args))
    if not result["deploy"]:
        sys.exit(3)  # the gate said no: a script can tell it from a failure (exit 1) and from a pass


def cmd_rank_corr(args: argparse.Namespace) -> None:
    from pipelines.studies import RankCorrRun, rank_corr

    run = config_from_args(RankCorrRun, args, search=_search_run(args).to_dict(), train=_finetune_run(args).to_dict())
    result = rank_corr(args.supernet, args.data, args.out, run, _device(args))
    print(json.dumps({k: v for k, v in result.items() if k != "run"}, indent=2))


def cmd_export(args: argparse.Namespace) -> None:
    from components.steps.export import ExportRun, export

    export(args.model, args.data, args.out, config_from_args(ExportRun, args), args.evaluation)


def cmd_deploy(args: argparse.Namespace) -> None:
    from components.steps.deploy import DeployRun, deploy

    deploy(args.export, args.repository, config_from_args(DeployRun, args), args.data)


def cmd_serve(args: argparse.Namespace) -> None:
    from serving.server import TritonRuntime, TritonServer, serve_forever

    server = TritonServer(
        args.repository,
        runtime=TritonRuntime.find(args.runtime_env),
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        log_file=args.log_file,
    )
    sys.exit(serve_forever(server))


def cmd_predict(args: argparse.Namespace) -> None:
    from serving.client import CTRClient, read_rows

    with CTRClient(args.url, args.model) as client:
        probabilities = client.predict(read_rows(args.rows, client.dense_fields))
    print("\n".join(f"{p:.6f}" for p in probabilities))


def _pipeline_parameters(args: argparse.Namespace, preset=None) -> dict:
    """The preset's parameters, then a --params file's, then each --set NAME=VALUE (a YAML value)."""
    import yaml

    parameters = dict(preset.parameters) if preset else {}
    if args.params:
        loaded = yaml.safe_load(args.params.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.params}: expected a mapping of pipeline parameters")
        parameters |= loaded
    for item in args.set or []:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE")
        parameters[name] = yaml.safe_load(value)
    return parameters


def cmd_pipeline_compile(args: argparse.Namespace) -> None:
    from pipelines.pipeline import compile_pipeline

    print(f"wrote {compile_pipeline(args.out)}")


def cmd_pipeline_run_local(args: argparse.Namespace) -> None:
    from pipelines.local import Preset, run_local, serve_held_out, summarise

    preset = Preset.load(args.preset)
    parameters = _pipeline_parameters(args, preset)
    if args.data:
        parameters["raw_files"] = [str(p) for p in args.data]
    if args.schema:
        parameters["schema"] = args.schema
    run = run_local(parameters, args.out, preset)
    summarise(run)
    serve_held_out(run, args.rows, args.serve)


def _submission(args: argparse.Namespace):
    from pipelines.cluster import Submission

    return Submission(args.host, args.experiment, args.package, args.image_tag)


def cmd_pipeline_submit(args: argparse.Namespace) -> None:
    from pipelines.cluster import follow, submit

    result = submit(_submission(args), _pipeline_parameters(args), args.run_name)
    print(f"submitted run {result.run_id} to {args.host} (experiment {args.experiment!r})", flush=True)
    if args.wait:
        sys.exit(follow(args.host, result.run_id, args.timeout * 60))


def cmd_pipeline_schedule(args: argparse.Namespace) -> None:
    from pipelines.cluster import schedule

    recurring = schedule(_submission(args), args.cron, _pipeline_parameters(args), args.job_name)
    print(f"scheduled {args.job_name!r} ({recurring.recurring_run_id}) on {args.host}: cron {args.cron!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nasrec", description="NASRec: search, train and serve CTR models.")
    sub = parser.add_subparsers(dest="command", required=True)

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
    ingest.add_argument(
        "--feature-server",
        default="",
        help="a cluster's Feast feature server (http://host:port): publish the repository under --feast-root and "
        "write the entities' latest features into its online store",
    )
    ingest.add_argument("--feast-root", type=Path, help="with --feature-server: the registry root (/data/feast)")
    ingest.add_argument(
        "--engine",
        choices=("duckdb", "spark"),
        default="duckdb",
        help="offline store for the point-in-time join and materialisation: duckdb (one machine, default) or spark "
        "(logs beyond one machine; needs pyspark and a JDK)",
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
    sample.add_argument("--space", default="ctr", help="search space preset (default: ctr)")
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

    train = sub.add_parser(
        "train-supernet",
        help="train a weight-sharing supernet on ingested data (resumes from OUT/checkpoint.pt; torchrun for DDP)",
    )
    _data_options(train)
    train.add_argument("--space", default="ctr", help="search space preset (see `nasrec spaces`); default: ctr")
    _schedule_options(train, batch_size=512, lr=0.12)
    train.add_argument(
        "--full-path-warmup",
        dest="full_path_warmup_fraction",
        type=float,
        default=0.2,
        help="fraction of steps over which the full-path probability falls from 1 to 0 (default: 0.2)",
    )
    train.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default: 500)")
    train.add_argument(
        "--no-layernorm", dest="use_layernorm", action="store_false", help="a supernet without LayerNorm"
    )
    train.set_defaults(func=cmd_train_supernet)

    search = sub.add_parser(
        "search", help="regularised evolution over a trained supernet (resumes from OUT/history.jsonl)"
    )
    _data_options(search)
    search.add_argument(
        "--supernet", type=Path, required=True, help="supernet checkpoint (train-supernet OUT/checkpoint.pt)"
    )
    _search_options(search)
    search.add_argument("--top-k", type=int, default=15, help="architectures written to top_k.json (default: 15)")
    search.add_argument("--workers", type=int, default=1, help="processes evaluating candidates (default: 1)")
    search.set_defaults(func=cmd_search)

    finetune = sub.add_parser(
        "finetune", help="train the top-k architectures and keep the best on validation (evaluate reads the test split)"
    )
    _data_options(finetune)
    finetune.add_argument(
        "--architectures", type=Path, required=True, help="a search's top_k.json, or one architecture JSON"
    )
    finetune.add_argument(
        "--top-k", type=int, help="train the first K of them (default: all, the search's top-k and its seeds)"
    )
    finetune.add_argument("--supernet", type=Path, help="supernet checkpoint (for --warm-start)")
    finetune.add_argument(
        "--warm-start", action="store_true", help="start from the inherited supernet weights instead of from scratch"
    )
    _schedule_options(finetune, batch_size=256, lr=0.1)
    _validation_options(finetune)
    _training_workers_option(finetune, "candidates")
    finetune.set_defaults(func=cmd_finetune)

    evaluate = sub.add_parser(
        "evaluate",
        help="test metrics of a fine-tuned model and the quality gate (exit 3 when it says do not deploy)",
    )
    evaluate.add_argument("--model", type=Path, required=True, help="fine-tuned model folder (finetune OUT/winner)")
    _data_options(evaluate)
    evaluate.add_argument("--min-auc", type=float, default=0.5, help="the gate's floor on test AUC (default: 0.5)")
    evaluate.add_argument(
        "--repository",
        default="",
        help="the Triton model repository served now: its latest version is scored on the same test events",
    )
    evaluate.add_argument("--model-name", default="", help=f"the served model's name (default: {MODEL_PREFIX}<schema>)")
    evaluate.set_defaults(func=cmd_evaluate)

    rank = sub.add_parser(
        "rank-corr",
        help="rank correlation of supernet scores (without and with fine-tuning) with training from scratch",
        description="Rank correlation of supernet scores (without and with fine-tuning, see --fitness) with training"
        " from scratch. Each from-scratch run k is kept in OUT/standalone_run{k}.jsonl: a rerun into the same --out"
        " resumes a killed study, and one with more --architectures or --truth-runs (same --seed) extends it."
        " Scores are kept likewise in OUT/scores_{digest}.jsonl, one file per supernet, data and fitness options.",
    )
    _data_options(rank)
    rank.add_argument("--supernet", type=Path, required=True, help="supernet checkpoint")
    rank.add_argument("--architectures", type=int, default=20, help="architectures sampled (default: 20)")
    rank.add_argument(
        "--truth-runs",
        type=int,
        default=1,
        help="from-scratch runs per architecture, seeded --seed + k; the truth is their mean validation log loss, "
        "and with 2 or more the study also reports how well one run ranks another (default: 1)",
    )
    _search_options(rank, evolution=False)
    _schedule_options(rank, batch_size=256, lr=0.1)
    _validation_options(rank)
    _training_workers_option(rank, "networks from scratch")
    rank.set_defaults(func=cmd_rank_corr)
    _serving_commands(sub)
    _pipeline_commands(sub)
    return parser


def _pipeline_commands(sub) -> None:
    pipeline = sub.add_parser("pipeline", help="the Kubeflow pipeline: compile, run locally, submit, schedule")
    commands = pipeline.add_subparsers(dest="pipeline_command", required=True)

    compiled = commands.add_parser("compile", help="write the pipeline's Kubeflow YAML")
    compiled.add_argument(
        "--out", type=Path, default=COMPILED_PIPELINE, help=f"(default: {COMPILED_PIPELINE.name} beside the source)"
    )
    compiled.set_defaults(func=cmd_pipeline_compile)

    local = commands.add_parser(
        "run-local",
        help="the whole pipeline on this machine (kfp.local), then the local Triton answers held-out rows",
        description="Runs every step as a subprocess of this environment; a rerun reuses the steps whose inputs "
        "are unchanged. Without --data it writes the preset's synthetic teacher-labelled log.",
    )
    local.add_argument("--preset", default="demo", help="pipelines/presets/NAME.yaml, or a YAML path (default: demo)")
    local.add_argument("--data", type=Path, nargs="+", help="raw log files (default: the preset's synthetic log)")
    local.add_argument("--schema", help="built-in schema (criteo, avazu) or a schema YAML (default: the preset's)")
    local.add_argument("--out", type=Path, default=Path("runs/pipeline"), help="(default: runs/pipeline)")
    local.add_argument("--rows", type=int, default=8, help="held-out rows scored over gRPC at the end (default: 8)")
    local.add_argument("--serve", action="store_true", help="keep Triton serving afterwards, until Ctrl-C")
    _parameter_options(local)
    local.set_defaults(func=cmd_pipeline_run_local)

    for name, what in (("submit", "one run"), ("schedule", "a recurring run")):
        remote = commands.add_parser(name, help=f"{what} of the compiled pipeline on a Kubeflow Pipelines cluster")
        remote.add_argument("--host", required=True, help="the KFP API endpoint, e.g. http://localhost:8080")
        remote.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"(default: {DEFAULT_EXPERIMENT})")
        remote.add_argument(
            "--package", type=Path, default=COMPILED_PIPELINE, help="the compiled pipeline (default: ours)"
        )
        remote.add_argument(
            "--image-tag",
            help="run the project's images tagged TAG-cpu and TAG-cuda, e.g. the commit they were built from "
            "(default: the package's, the project version)",
        )
        _parameter_options(remote)
        if name == "submit":
            remote.add_argument("--run-name", help="(default: the pipeline's name and the time)")
            remote.add_argument(
                "--wait",
                action="store_true",
                help=f"follow the run to its end; exit 0 when it deployed, {EXIT_GATE_REFUSED} when the quality gate "
                f"refused the model, {EXIT_RUN_FAILED} when the run failed, {EXIT_TIMED_OUT} after --timeout",
            )
            remote.add_argument("--timeout", type=float, default=720, help="--wait's limit in minutes (default: 720)")
            remote.set_defaults(func=cmd_pipeline_submit)
        else:
            remote.add_argument("--cron", required=True, help="e.g. '0 3 * * *' (5 fields; 6 with seconds first)")
            remote.add_argument("--job-name", default=DEFAULT_JOB_NAME, help=f"(default: {DEFAULT_JOB_NAME})")
            remote.set_defaults(func=cmd_pipeline_schedule)


def _parameter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, help="a YAML file of pipeline parameters")
    parser.add_argument(
        "--set", action="append", metavar="NAME=VALUE", help="one pipeline parameter (repeatable; YAML value)"
    )


def _serving_commands(sub) -> None:
    export = sub.add_parser(
        "export", help="export a fine-tuned NASRecNet to ONNX, checked against PyTorch on validation rows"
    )
    export.add_argument("--model", type=Path, required=True, help="fine-tuned model folder (finetune OUT/winner)")
    export.add_argument("--out", type=Path, required=True, help="output folder (model.onnx, transform, metadata)")
    export.add_argument("--data", type=Path, help="ingestion folder (default: the one fine-tuning recorded)")
    export.add_argument("--rows", type=int, default=4096, help="validation rows of the parity check (default: 4096)")
    export.add_argument(
        "--evaluation", type=Path, help="`nasrec evaluate`'s evaluation.json: its test metrics join the metadata"
    )
    export.add_argument(
        "--external-data",
        action=argparse.BooleanOptionalAction,
        help="weights in model.onnx.data beside the graph (default: only when over 2 GiB)",
    )
    export.set_defaults(func=cmd_export)

    deploy = sub.add_parser("deploy", help="add an export as a new version of a model in a Triton model repository")
    deploy.add_argument("--export", type=Path, required=True, help="`nasrec export` output folder")
    deploy.add_argument("--repository", type=Path, required=True, help="Triton model repository")
    deploy.add_argument("--model", dest="model_name", default="", help=f"model name (default: {MODEL_PREFIX}<schema>)")
    deploy.add_argument("--data", type=Path, help="ingestion folder of the checked rows (default: the export's)")
    deploy.add_argument(
        "--check-rows",
        type=int,
        default=64,
        help="test events answered over gRPC, raw and as ids, by the new version before clients can reach it; they "
        "must equal ONNX Runtime's (on --url, else on a local Triton started for it; default: 64; 0: no check)",
    )
    deploy.add_argument(
        "--variant",
        choices=("local", "production"),
        default="local",
        help="local: Python backend running ONNX Runtime (the local tritonserver); production: Triton's "
        "onnxruntime_onnx platform (default: local)",
    )
    kept = "default: what the served model has, else"
    deploy.add_argument("--instance-kind", choices=("cpu", "gpu"), help=f"({kept} cpu)")
    deploy.add_argument("--instances", type=int, help=f"model instances ({kept} 1)")
    deploy.add_argument(
        "--parallel-runs",
        type=int,
        default=2,
        help="local variant: a batch of 256 rows or more runs as this many parts at once, on as many cores "
        "(default: 2)",
    )
    deploy.add_argument("--max-batch-size", type=int, help=f"({kept} 4096)")
    deploy.add_argument("--max-queue-delay-us", type=int, default=100, help="dynamic batching delay (default: 100)")
    deploy.add_argument("--tensorrt", action="store_true", help="production on GPU: the TensorRT accelerator")
    deploy.add_argument("--url", default="", help="a running server (HOST:PORT, gRPC) to load the new version into")
    deploy.set_defaults(func=cmd_deploy)

    serve = sub.add_parser("serve", help="run the local Triton server on a model repository until SIGTERM or Ctrl-C")
    serve.add_argument("--repository", type=Path, required=True, help="Triton model repository")
    serve.add_argument("--grpc-port", type=int, help="(default: a free port)")
    serve.add_argument("--http-port", type=int, help="(default: a free port)")
    serve.add_argument("--metrics-port", type=int, help="(default: a free port)")
    serve.add_argument("--log-file", type=Path, help="(default: beside the repository)")
    serve.add_argument("--runtime-env", type=Path, help="the Triton runtime environment (default: .venv-triton)")
    serve.set_defaults(func=cmd_serve)

    predict = sub.add_parser("predict", help="click probabilities for raw events from a Triton server, one per line")
    predict.add_argument("--url", required=True, help="Triton gRPC address, HOST:PORT")
    predict.add_argument("--rows", type=Path, required=True, help="raw events: .jsonl (an object per line) or .csv")
    predict.add_argument("--model", help="model name (default: the one model of raw events the server has ready)")
    predict.set_defaults(func=cmd_predict)


def _training_workers_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help=f"processes training {what} at once, sharing the CPU cores or the GPU; a small network keeps "
        "neither busy alone (default: 1)",
    )


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="ingestion output folder (`nasrec ingest --out`)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto: cuda when available, else cpu)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds weights, data order and sampling (default: 0)")


def _schedule_options(parser: argparse.ArgumentParser, batch_size: int, lr: float) -> None:
    parser.add_argument("--epochs", type=float, default=1.0, help="passes over the training split (default: 1)")
    parser.add_argument("--steps", type=int, help="optimiser steps (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"rows per step (default: {batch_size})")
    parser.add_argument(
        "--lr", type=float, default=lr, help=f"peak learning rate, 10%% warm-up then cosine (default: {lr})"
    )
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZER_NAMES,
        default="adagrad",
        help="adagrad (eps 1e-2, the paper's) or adam (lazy on embedding rows; try lr 1e-3 to 3e-3 on small data)"
        " (default: adagrad)",
    )


def _validation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--eval-every", type=int, default=0, help="steps between validations (default: 0 = once per epoch)"
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=0,
        help="stop after this many validations without a better AUC; the best weights are kept either way"
        " (default: 0 = train every step)",
    )


def _search_options(parser: argparse.ArgumentParser, evolution: bool = True) -> None:
    if evolution:
        parser.add_argument("--population", type=int, default=128, help="initial population (default: 128)")
        parser.add_argument("--generations", type=int, default=240, help="generations (default: 240)")
        parser.add_argument("--sample-size", type=int, default=64, help="members drawn to pick a parent (default: 64)")
        parser.add_argument("--children", type=int, default=8, help="children per generation (default: 8)")
        parser.add_argument("--batch-size", type=int, default=512, help="rows per fitness batch (default: 512)")
    else:
        parser.set_defaults(population=1, generations=0, sample_size=1, children=1)
    add_fitness_options(parser)
    parser.add_argument(
        "--finetune-batches",
        type=int,
        default=16,
        help="distinct batches the head cycles through (default: 16); the subnet fitness takes one per step",
    )
    parser.add_argument(
        "--finetune-split",
        choices=FINETUNE_SPLITS,
        default="train",
        help="rows the head is fine-tuned on (default: train); validation uses the batches after the scored "
        "ones, for a supernet trained over many epochs, whose training rows are memorised",
    )
    parser.add_argument(
        "--eval-batches", type=int, default=8, help="fixed validation batches every candidate is scored on (default: 8)"
    )
    parser.add_argument(
        "--max-mflops", type=float, help="reject architectures costing more MFLOPs per sample (default: no limit)"
    )
    parser.add_argument(
        "--max-latency-ms",
        type=float,
        default=0.0,
        help="serving-latency budget: p99 in ms of one --latency-batch request as served (ONNX Runtime, one thread, "
        "this machine). A latency model fitted to --latency-calibration measured networks drops the clearly too "
        "slow candidates, and the best are measured: the top-k all meet it (default: 0, no budget)",
    )
    parser.add_argument("--latency-batch", type=int, default=512, help="rows of the budget's request (default: 512)")
    parser.add_argument(
        "--latency-calibration", type=int, default=16, help="networks measured to fit the latency model (default: 16)"
    )


def add_fitness_options(parser: argparse.ArgumentParser) -> None:
    """--fitness and its schedule; read them back with `fitness_config`."""
    from model.search import FITNESS_METHODS

    parser.add_argument(
        "--fitness",
        choices=FITNESS_METHODS,
        default="head",
        help="how a candidate is fine-tuned from the supernet's weights before scoring: head, the paper's, trains "
        "the final linear layer alone; subnet trains a copy of the whole subnet, one training batch per step. In the "
        "rank-correlation study subnet ranked architectures closer to training them from scratch (Kendall tau 0.573 "
        "against 0.493 over 48 architectures) at 7x the head's cost (119 s against 16 s a candidate on a CPU core) "
        "(default: head)",
    )
    parser.add_argument("--finetune-steps", type=int, help="fine-tuning steps (default: 500 head, 600 subnet)")
    parser.add_argument("--finetune-lr", type=float, help="peak Adagrad lr (default: 0.04 head, 0.12 subnet)")
    parser.add_argument("--finetune-warmup-steps", type=int, help="warm-up steps (default: a tenth of the steps)")


def fitness_config(args: argparse.Namespace):
    """The FitnessConfig of --fitness, with the steps, lr and warm-up given overriding its defaults."""
    from dataclasses import replace

    from model.search import FitnessConfig

    config = FitnessConfig.for_method(args.fitness)
    steps = config.finetune_steps if args.finetune_steps is None else args.finetune_steps
    return replace(
        config,
        finetune_steps=steps,
        finetune_lr=config.finetune_lr if args.finetune_lr is None else args.finetune_lr,
        finetune_warmup_steps=steps // 10 if args.finetune_warmup_steps is None else args.finetune_warmup_steps,
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        FloatingPointError,
        PipelineStepError,
        *SERVING_ERRORS,
    ) as err:
        sys.exit(f"nasrec {args.command}: error: {err}")


if __name__ == "__main__":
    main()

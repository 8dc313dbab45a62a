"""The pipeline on one machine: `kfp.local` runs each step as a subprocess of this environment, with kfp's
local cache (a rerun reuses the finished steps), then the local Triton answers CTR requests for held-out
rows of the log.

    runs/pipeline/                  (--out)
        data/                       the synthetic log, when no data is given
        outputs/nasrec-<time>/      each step's artifacts, one folder a step and output
        cache/                      kfp.local's cache entries
        logs/<step>.log             each step's output of the latest run
        triton/                     the model repository deploy writes and the server serves
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from components.artifacts import LOG_DIR_VARIABLE

if TYPE_CHECKING:
    from kfp.dsl.graph_component import GraphComponent

PRESETS = Path(__file__).with_name("presets")
SYNTHETIC_OPTIONS = ("synthetic_rows", "synthetic_cardinality")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
STEPS = (
    "fingerprint",
    "ingest",
    "plan_training",
    "train_supernet",
    "search",
    "finetune",
    "evaluate",
    "export",
    "deploy",
)
GATED_STEPS = ("export", "deploy")


class _WithoutExecutorEcho:
    """Stdout without the hundreds of lines in which each kfp step echoes its whole input; the rest passes."""

    def __init__(self, stream):
        self.stream = stream
        self.skipping = False

    def write(self, text: str) -> int:
        if "Got executor_input:" in text:
            self.skipping = True
        elif self.skipping and "[KFP Executor" in text:
            self.skipping = False
        return len(text) if self.skipping else self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


class PipelineStepError(RuntimeError):
    """A step of a local run failed; the message names it and its log."""


@dataclass(frozen=True)
class Preset:
    """Named pipeline parameters (`pipelines/presets/<name>.yaml`), and the synthetic log used without data."""

    parameters: dict[str, Any]
    synthetic_rows: int = 200_000
    synthetic_cardinality: int = 1000

    @classmethod
    def load(cls, name_or_path: str | Path) -> Preset:
        path = Path(name_or_path)
        if not path.suffix:
            path = PRESETS / f"{name_or_path}.yaml"
            if not path.exists():
                known = sorted(p.stem for p in PRESETS.glob("*.yaml"))
                raise ValueError(f"unknown preset {name_or_path!r}; known: {known} (or a YAML file's path)")
        data = yaml.safe_load(path.read_text()) or {}
        unknown = sorted(set(data) - {"parameters", *SYNTHETIC_OPTIONS})
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; allowed: parameters, {', '.join(SYNTHETIC_OPTIONS)}")
        return cls(
            parameters=dict(data.get("parameters") or {}), **{k: data[k] for k in SYNTHETIC_OPTIONS if k in data}
        )


def pipeline_parameters() -> dict[str, Any]:
    """The pipeline's parameters with their defaults (None where one must be given)."""
    from pipelines.pipeline import nasrec_pipeline

    inputs = nasrec_pipeline.component_spec.inputs
    return {name: spec.default for name, spec in inputs.items()}


def check_parameters(parameters: dict[str, Any]) -> None:
    known = pipeline_parameters()
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise ValueError(f"unknown pipeline parameter(s) {unknown}; known: {sorted(known)}")
    if "gpus" in parameters:
        from components.steps.common import check_gpus

        check_gpus(parameters["gpus"])
    if "ingest_engine" in parameters:
        from features.feast_repo import OFFLINE_STORES

        engine = parameters["ingest_engine"]
        if engine not in OFFLINE_STORES:
            raise ValueError(f"ingest_engine {engine!r}: known engines are {sorted(OFFLINE_STORES)}")


def code_digest(root: Path | None = None) -> str:
    """Changes when the project's code does: the sources of every package a step imports (under `root`, by
    default this installation's)."""
    import components

    root = root or Path(components.__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in ("model", "features", "serving", "components"):
        for path in sorted((root / package).rglob("*")):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                digest.update(f"{path.relative_to(root)}\n".encode() + path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class LocalRun:
    """What a local run produced: the pipeline's outputs (artifacts as local paths), and where things are."""

    out: Path
    parameters: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0  # time.time() at the start
    seconds: float = 0.0

    @property
    def repository(self) -> Path:
        return Path(self.parameters["repository"])

    def artifact(self, name: str) -> Path:
        return Path(self.outputs[name].path)


def synthetic_log(out: Path, schema: str, preset: Preset, seed: int) -> Path:
    """A teacher-labelled log in the schema's format (written once; a rerun finds it)."""
    from features.schema import load_schema
    from features.synthetic import write_synthetic_log

    path = out / "data" / f"synthetic_{Path(schema).stem}_{preset.synthetic_rows}_seed{seed}.txt"
    if not path.exists():
        print(f"writing {preset.synthetic_rows:,} synthetic rows (teacher labels) to {path}", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        write_synthetic_log(load_schema(schema), partial, preset.synthetic_rows, seed, preset.synthetic_cardinality)
        partial.replace(path)
    return path


def local_gpus() -> int:
    """What a local run trains on unless told: the GPU when this machine has one."""
    import torch

    return int(torch.cuda.is_available())


def run_local(parameters: dict[str, Any], out: Path, preset: Preset | None = None) -> LocalRun:
    """Run the pipeline with `parameters` (over the pipeline's defaults; `gpus` defaults to `local_gpus()`)
    under `out`; without raw files, on the preset's synthetic log. Raises PipelineStepError naming the failed
    step and its log."""
    from kfp import local

    from pipelines.pipeline import nasrec_pipeline

    check_parameters(parameters)
    from features.feast_repo import offline_engine

    offline_engine(parameters.get("ingest_engine", "duckdb"))  # runs here: pyspark and a JDK, or no pod for spark-k8s
    out = Path(out).absolute()
    if "gpus" not in parameters:
        parameters = parameters | {"gpus": local_gpus()}
    parameters = {k: v for k, v in pipeline_parameters().items() if v is not None} | parameters
    parameters["repository"] = parameters["repository"] or str(out / "triton")
    if not parameters.get("raw_files"):
        log = synthetic_log(out, parameters["schema"], preset or Preset({}), parameters["seed"])
        parameters["raw_files"] = [str(log)]
    parameters["raw_files"] = [str(Path(p).absolute()) for p in parameters["raw_files"]]
    parameters["code_digest"] = parameters["code_digest"] or code_digest()
    logs = out / "logs"
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(out / "outputs"),
        enable_caching=True,
        cache_root=str(out / "cache"),
    )
    previous = os.environ.get(LOG_DIR_VARIABLE)
    os.environ[LOG_DIR_VARIABLE] = str(logs)
    started, clock = time.time(), time.perf_counter()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(_WithoutExecutorEcho(sys.stdout)):
            # settings that only a cluster uses, and our image names, are expected here
            warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            task = without_retries(nasrec_pipeline)(**parameters)
    except RuntimeError as error:
        failed = re.findall(r"Inner task failed: (.*?)\.?$", ANSI.sub("", str(error)))
        if not failed:  # not a step's failure: kfp's own
            raise
        step = failed[0].split(" inside ")[0].strip("'\"")
        log = logs / f"{step.replace('-', '_')}.log"
        raise PipelineStepError(f"step {step!r} failed; its log: {log}") from None
    finally:
        if previous is None:
            os.environ.pop(LOG_DIR_VARIABLE, None)
        else:
            os.environ[LOG_DIR_VARIABLE] = previous
    return LocalRun(out, parameters, dict(task.outputs), started, time.perf_counter() - clock)


def without_retries(pipeline: GraphComponent) -> GraphComponent:
    """A copy of `pipeline` whose steps are not retried. Retries wait out a cluster's transient failures (a lost
    node, a preempted pod); on one machine a failed step fails again, minutes of backoff later."""
    local_pipeline = copy.deepcopy(pipeline)
    graph = local_pipeline.component_spec.implementation.graph
    for dag in (graph.root.dag, *(c.dag for c in graph.components.values() if c.HasField("dag"))):
        for task in dag.tasks.values():
            task.ClearField("retry_policy")
    return local_pipeline


def step_times(run: LocalRun, steps: tuple[str, ...]) -> dict[str, str]:
    """Each step's time in this run, from the last line of its log; or whether the cache answered for it, or
    the gate kept it from running."""
    times = {}
    for step in steps:
        log = run.out / "logs" / f"{step}.log"
        if log.exists() and log.stat().st_mtime >= run.started:
            lines = log.read_text().strip().splitlines() or ["(an empty log)"]
            times[step] = lines[-1].removeprefix(f"{step} ").removeprefix("took ")
        elif step in GATED_STEPS and not run.outputs["deployed"]:
            times[step] = "not run: the quality gate said no"
        else:
            times[step] = "reused from the cache"
    return times


def held_out_requests(run: LocalRun, count: int) -> tuple[list[dict[str, Any]], list[float]]:
    """The first `count` test events of the log as raw request rows, and their labels."""
    import pyarrow.parquet as pq

    from features.readers import EVENT_ID
    from features.schema import load_schema
    from features.transform import LABEL
    from serving.client import log_rows

    test = pq.read_table(run.artifact("data") / "test.parquet", columns=[EVENT_ID, LABEL]).slice(0, count)
    events = test[EVENT_ID].to_pylist()
    rows = log_rows(run.parameters["raw_files"], load_schema(run.parameters["schema"]), events)
    return rows, test[LABEL].to_pylist()


def summarise(run: LocalRun) -> None:
    """Print each step's time, the test metrics, the gate's decision and where every artifact lives."""
    import json

    evaluation = json.loads(run.artifact("evaluation").read_text())
    device = "the GPU" if run.parameters["gpus"] else "the CPU"
    print(f"\npipeline finished in {run.seconds:.0f} s, training on {device}; each step:")
    for step, took in step_times(run, STEPS).items():
        print(f"  {step:15s} {took}")
    test = evaluation["test"]
    print(f"test AUC {test['auc']:.4f}, log loss {test['log_loss']:.4f} on {test['rows']:,} rows")
    print(f"quality gate: {'deployed' if run.outputs['deployed'] else 'not deployed'}: {evaluation['reason']}")
    print("artifacts:")
    for name in ("data", "supernet", "history", "winner", "evaluation"):
        print(f"  {name:15s} {run.artifact(name)}")
    print(f"  {'repository':15s} {run.repository}")
    print(f"  {'step logs':15s} {run.out / 'logs'}")


def served_model_name(run: LocalRun) -> str:
    from features.schema import load_schema
    from serving.interface import default_model_name

    return run.parameters["model_name"] or default_model_name(load_schema(run.parameters["schema"]).name)


def serve_held_out(run: LocalRun, count: int, keep_serving: bool = False) -> None:
    """Start the local Triton on the run's repository and print its click probabilities for `count` held-out raw
    events (sent as a client in any language would, to the model's raw-event endpoint) next to their labels;
    stop it, or with `keep_serving` serve until SIGTERM or Ctrl-C."""
    from serving.client import CTRClient
    from serving.repository import ids_model, versions
    from serving.server import TritonServer, serve_forever

    model = served_model_name(run)
    if not versions(run.repository / model):
        print(f"no version of {model!r} in {run.repository} to serve")
        return
    rows, labels = held_out_requests(run, count)
    server = TritonServer(run.repository, models=(ids_model(model), model)).start()
    try:
        with CTRClient(server.url, model) as client:
            result = client.predict(rows)
        print(f"\nTriton at {server.url} (gRPC), model {model}, on {len(rows)} held-out raw events:")
        print("  probability  label")
        for probability, label in zip(result, labels):
            print(f"  {probability:11.4f}  {label:5.0f}")
    except BaseException:
        server.stop()
        raise
    if keep_serving:
        serve_forever(server)
    else:
        server.stop()
        print("stopped Triton (rerun with --serve, or SERVE=1 with make run, to keep it up)")

"""Triton model repositories: every exported version is served as two Triton models of the same version number.

    <repo>/<name>/config.pbtxt, <name>/<N>/      raw events in: the schema's fields, one input each (what
                                                  clients call); the version's fitted transform runs in the server,
                                                  and entity features come from the Feast online store
    <repo>/<name>_ids/config.pbtxt, <name>_ids/<N>/   model-ready `dense`/`sparse` ids in: the ONNX network alone

Two variants serve the same `model.onnx`:
- `local`: both are Python-backend models (`serving/triton_model.py`) running ONNX Runtime in the serving runtime
  environment: what the `tritonserver` binary of the nvidia-pytriton wheel runs here, having no ONNX backend.
  The events model runs the network in process, on its own copy of the version's model.onnx.
- `production`: the ids model is Triton's ONNX Runtime backend (`platform: "onnxruntime_onnx"`, GPU or CPU,
  optionally TensorRT), what the NGC Triton image runs; the events model is the same Python-backend preprocessing,
  which calls the ids model's version of its own number through BLS. A Triton ensemble cannot do this: its steps
  are the same for every version of the ensemble, so during a roll-out it could pair version N's transform with
  version N+1's network. The ids model keeps one version more loaded, so the events version being retired finishes
  its requests on its own network.

Either way version N's transform always runs with version N's network, and the two roll in and out together.
`config.pbtxt` is built from Triton's own `ModelConfig` protobuf.

A version is first written as a *candidate*: the models `<name>__candidate` and `<name>__candidate_ids`, inside the
repository, which deploy loads and checks before `promote` renames the version folders into the served models
(a rename within the repository's own file system, which works on a mounted volume).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from features.schema import DatasetSchema
from serving.interface import DENSE_INPUT, IDS_SUFFIX, MODEL_FILE, OUTPUT, SPARSE_INPUT

VARIANTS = ("local", "production")
INSTANCE_KINDS = {"cpu": mc.ModelInstanceGroup.KIND_CPU, "gpu": mc.ModelInstanceGroup.KIND_GPU}
CONFIG_FILE = "config.pbtxt"
BUNDLE_FILES = ("transform.json", "schema.yaml", "export.json")  # beside the events model in each version
PYTHON_MODEL = Path(__file__).with_name("triton_model.py")
FEATURES_PACKAGE = Path(__file__).resolve().parents[1] / "features"
FEATURE_MODULES = (
    "__init__.py",
    "schema.py",
    "compiled.py",
    "transform.py",
    "online.py",
)  # what the events model imports
FEATURE_REPO = "feature_repo"  # in an events version of a schema with entities: the online store it reads
CANDIDATE_SUFFIX = "__candidate"
INPUTS_PARAMETER = "nasrec_inputs"  # "events" or "ids": which endpoint the Python model is
IDS_MODEL_PARAMETER = "nasrec_ids_model"  # production: the model the events model calls through BLS
LAST_VERSION_PARAMETER = "nasrec_last_version"  # the newest version ever written: numbers are not reused
THREADS_PARAMETER = "onnx_intra_op_threads"
PARALLEL_PARAMETER = "onnx_parallel_runs"
TUNED_FIELDS = ("instance_kind", "instances", "max_batch_size", "preferred_batch_sizes")


def ids_model(name: str) -> str:
    """The ids endpoint's model name of the events model `name`."""
    return name + IDS_SUFFIX


def candidate_model(name: str) -> str:
    return name + CANDIDATE_SUFFIX


@dataclass(frozen=True)
class ServingConfig:
    """How Triton runs the model. The defaults suit the local 2-core machine; a cluster overlay sets its own."""

    variant: str = "local"
    max_batch_size: int = 4096
    preferred_batch_sizes: tuple[int, ...] = (64, 512)
    max_queue_delay_us: int = 100
    instance_kind: str = "cpu"
    instances: int = 1
    tensorrt: bool = False  # production on GPU: ONNX Runtime's TensorRT execution provider
    tensorrt_precision: str = "FP16"
    warmup_batch_sizes: tuple[int, ...] = (1, 512)
    onnx_threads: int = 1  # intra-op threads per instance (local variant)
    parallel_runs: int = 2  # local variant: a batch of >= 256 rows runs as this many parts at once
    versions_served: int = 1  # the latest N versions stay loaded
    extra_parameters: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: one of {list(VARIANTS)}, got {self.variant!r}")
        if self.instance_kind not in INSTANCE_KINDS:
            raise ValueError(f"instance_kind: one of {sorted(INSTANCE_KINDS)}, got {self.instance_kind!r}")
        if self.variant == "local" and self.instance_kind != "cpu":
            raise ValueError("instance_kind: the local variant runs ONNX Runtime on CPU; use the production variant")
        if self.tensorrt and (self.variant != "production" or self.instance_kind != "gpu"):
            raise ValueError("tensorrt: needs variant 'production' with instance_kind 'gpu'")
        counts = ("max_batch_size", "instances", "onnx_threads", "parallel_runs", "versions_served")
        below_one = [name for name in counts if getattr(self, name) < 1]
        if below_one:
            raise ValueError(f"{', '.join(below_one)}: must be >= 1")
        too_large = [b for b in (*self.preferred_batch_sizes, *self.warmup_batch_sizes) if b > self.max_batch_size]
        if too_large:
            raise ValueError(f"batch sizes {too_large} exceed max_batch_size {self.max_batch_size}")

    def tuned_like(self, served: mc.ModelConfig, given: dict[str, object]) -> ServingConfig:
        """This config with the tuned fields (instances, their kind, batch sizes) of the served ids model's config,
        except those in `given` (what a command set): a redeploy keeps what an operator tuned."""
        group = served.instance_group[0]
        kind = next(k for k, v in INSTANCE_KINDS.items() if v == group.kind)
        tuned = {
            "instance_kind": kind,
            "instances": group.count,
            "max_batch_size": served.max_batch_size,
            "preferred_batch_sizes": tuple(served.dynamic_batching.preferred_batch_size),
        }
        kept = {k: v for k, v in tuned.items() if k not in given}
        if self.variant == "local" and kept.get("instance_kind") == "gpu":
            kept.pop("instance_kind")
        warmup = tuple(min(b, kept.get("max_batch_size", self.max_batch_size)) for b in self.warmup_batch_sizes)
        return replace(self, **kept, warmup_batch_sizes=warmup)


def event_inputs(schema: DatasetSchema) -> list[tuple[str, int]]:
    """The raw-event endpoint's inputs: each field a client sends (the schema's event features: entity keys, not
    the features the online store owns), dense ones FP32, categorical ones BYTES."""
    dense = set(schema.dense)
    return [(f, mc.TYPE_FP32 if f in dense else mc.TYPE_STRING) for f in schema.event_features]


def model_configs(
    name: str, schema: DatasetSchema, input_schema: dict, last_version: int, config: ServingConfig
) -> tuple[mc.ModelConfig, mc.ModelConfig]:
    """The `ModelConfig`s of the events model `name` and its ids model."""
    events = _base_config(name, config, versions=config.versions_served, instances=mc.ModelInstanceGroup.KIND_CPU)
    events.backend = "python"
    events.parameters[INPUTS_PARAMETER].string_value = "events"
    _add_inputs(events, [(field, data_type, 1) for field, data_type in event_inputs(schema)], config)
    # production: the ids version that an events version being retired still calls stays loaded
    served = config.versions_served + (config.variant == "production")
    ids = _base_config(ids_model(name), config, versions=served, instances=INSTANCE_KINDS[config.instance_kind])
    ids_inputs = [
        (DENSE_INPUT, mc.TYPE_FP32, input_schema["num_dense"]),
        (SPARSE_INPUT, mc.TYPE_INT64, len(input_schema["cardinalities"])),
    ]
    _add_inputs(ids, ids_inputs, config)
    if config.variant == "production":
        ids.platform = "onnxruntime_onnx"
        ids.default_model_filename = MODEL_FILE
        events.parameters[IDS_MODEL_PARAMETER].string_value = ids_model(name)
        if config.tensorrt:
            accelerator = ids.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
            accelerator.parameters["precision_mode"] = config.tensorrt_precision
    else:
        ids.backend = "python"
        ids.parameters[INPUTS_PARAMETER].string_value = "ids"
    for model in (events, ids):
        model.parameters[LAST_VERSION_PARAMETER].string_value = str(last_version)
        if model.backend == "python":
            model.parameters[THREADS_PARAMETER].string_value = str(config.onnx_threads)
            model.parameters[PARALLEL_PARAMETER].string_value = str(config.parallel_runs)
        for key, value in config.extra_parameters.items():
            model.parameters[key].string_value = value
    return events, ids


def _add_inputs(model: mc.ModelConfig, inputs: list[tuple[str, int, int]], config: ServingConfig) -> None:
    """The model's inputs (name, datatype, width: each [batch, width]) and a zero-filled warm-up request of each
    warm-up batch size."""
    for input_name, data_type, width in inputs:
        model.input.add(name=input_name, data_type=data_type, dims=[width])
    for batch in config.warmup_batch_sizes:
        warmup = model.model_warmup.add(name=f"batch_{batch}", batch_size=batch, count=1)
        for input_name, data_type, width in inputs:
            warmup.inputs[input_name].CopyFrom(mc.ModelWarmup.Input(data_type=data_type, dims=[width], zero_data=True))


def _base_config(name: str, config: ServingConfig, versions: int, instances: int) -> mc.ModelConfig:
    model = mc.ModelConfig(name=name, max_batch_size=config.max_batch_size)
    model.version_policy.latest.num_versions = versions
    model.output.add(name=OUTPUT, data_type=mc.TYPE_FP32, dims=[1])
    model.dynamic_batching.preferred_batch_size.extend(config.preferred_batch_sizes)
    model.dynamic_batching.max_queue_delay_microseconds = config.max_queue_delay_us
    model.instance_group.add(kind=instances, count=config.instances)
    return model


def write_config(path: Path, config: mc.ModelConfig) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text_format.MessageToString(config))
    partial.replace(path)


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a `config.pbtxt` back into a `ModelConfig` (what Triton reads), naming the file on errors."""
    try:
        return text_format.Parse(Path(path).read_text(), mc.ModelConfig())
    except text_format.ParseError as error:
        raise ValueError(f"{path}: not a valid Triton model config: {error}") from None


def served_config(repository: Path, name: str) -> mc.ModelConfig | None:
    """The ids model's config of `name` in the repository (it carries the tuned fields), or None."""
    path = Path(repository) / ids_model(name) / CONFIG_FILE
    return read_config(path) if path.exists() else None


def versions(model_dir: Path) -> list[int]:
    """The numbered version directories of a model, in order."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _last_version(repository: Path, name: str) -> int:
    """The newest version number ever written for `name`, taken out or not."""
    last = 0
    for model in (name, ids_model(name)):
        model_dir = repository / model
        last = max(last, *versions(model_dir), 0)
        if (model_dir / CONFIG_FILE).exists():
            parameters = read_config(model_dir / CONFIG_FILE).parameters
            if LAST_VERSION_PARAMETER in parameters:
                last = max(last, int(parameters[LAST_VERSION_PARAMETER].string_value))
    return last


@dataclass(frozen=True)
class Candidate:
    """A version written under the candidate names, to be checked, then promoted or discarded."""

    repository: Path
    name: str  # the served model's name
    version: int
    config: ServingConfig
    schema: DatasetSchema
    input_schema: dict

    @property
    def model(self) -> str:
        return candidate_model(self.name)

    @property
    def models(self) -> tuple[str, str]:
        """Its ids model, then its events model: the order a server loads them in."""
        return ids_model(self.model), self.model


def write_candidate(
    export_dir: Path, repository: Path, name: str, config: ServingConfig, version: int | None = None
) -> Candidate:
    """Write the export as version N (the next one by default) of the candidate models of `name`.

    A version number is used once: one that exists, or was taken out, is refused. The new version must take the
    same raw events as the served model (another schema needs its own model name).
    """
    export_dir, repository = Path(export_dir), Path(repository)
    record = _read_export(export_dir)
    last = _last_version(repository, name)
    version = version if version is not None else last + 1
    if version in versions(repository / name):
        raise FileExistsError(f"{repository / name / str(version)}: version {version} exists; versions are immutable")
    if version <= last or version < 1:
        raise ValueError(f"version: must be above {last}, the newest written to {repository / name}; got {version}")
    schema = DatasetSchema.load(export_dir / "schema.yaml")
    input_schema = json.loads(record["metadata"]["input_schema"])
    candidate = Candidate(repository, name, version, config, schema, input_schema)
    events, ids = model_configs(candidate.model, schema, input_schema, version, config)
    current = repository / name / CONFIG_FILE
    if current.exists():
        served_events, _ = model_configs(name, schema, input_schema, version, config)
        _check_same_interface(read_config(current), served_events, current)
    discard(candidate)  # what a failed deploy may have left
    for model, model_config in zip(candidate.models, (ids, events)):
        (repository / model).mkdir(parents=True)
        write_config(repository / model / CONFIG_FILE, model_config)
    _write_version(export_dir, *(repository / model / str(version) for model in candidate.models), candidate)
    return candidate


def _write_version(export_dir: Path, ids_folder: Path, events_folder: Path, candidate: Candidate) -> None:
    """The ids version: the network (and the Python model, locally). The events version: the transform, schema and
    export record, the Python model and the `features` modules it runs, locally a copy of the network, and for a
    schema with entities the feature store it reads."""
    local = candidate.config.variant == "local"
    ids_folder.mkdir()
    events_folder.mkdir()
    shutil.copy2(export_dir / "export.json", ids_folder / "export.json")
    for item in export_dir.iterdir():
        if item.name.startswith(MODEL_FILE):
            shutil.copy2(item, ids_folder / item.name)
            if local:  # the events model runs the network in process
                shutil.copy2(item, events_folder / item.name)
        elif item.name in BUNDLE_FILES:
            shutil.copy2(item, events_folder / item.name)
    for folder in (events_folder, ids_folder) if local else (events_folder,):
        shutil.copy2(PYTHON_MODEL, folder / "model.py")
    (events_folder / "features").mkdir()
    for module in FEATURE_MODULES:
        shutil.copy2(FEATURES_PACKAGE / module, events_folder / "features" / module)
    if candidate.schema.entities:
        record = json.loads((export_dir / "export.json").read_text())
        _write_feature_repo(Path(record["feature_repo"]), events_folder / FEATURE_REPO, candidate.config.variant)


def _write_feature_repo(source: Path, target: Path, variant: str) -> None:
    """The registry and online store the events model reads entity features from (see feast_repo.serving_config)."""
    import yaml

    from features.feast_repo import serving_config  # Feast: only for schemas with entities

    target.mkdir()
    (target / "feature_store.yaml").write_text(yaml.safe_dump(serving_config(source, variant), sort_keys=False))


def promote(candidate: Candidate) -> Path:
    """Make the candidate's version a version of the served models: configs first, then the ids version, then the
    events version, each renamed into place whole. Returns the events model's version folder."""
    repository, name, version = candidate.repository, candidate.name, candidate.version
    events, ids = model_configs(name, candidate.schema, candidate.input_schema, version, candidate.config)
    for served, model_config, staged in zip((ids_model(name), name), (ids, events), candidate.models):
        (repository / served).mkdir(exist_ok=True)
        write_config(repository / served / CONFIG_FILE, model_config)
        (repository / staged / str(version)).replace(repository / served / str(version))
    discard(candidate)
    return repository / name / str(version)


def discard(candidate: Candidate) -> None:
    for model in candidate.models:
        shutil.rmtree(candidate.repository / model, ignore_errors=True)


def add_version(
    export_dir: Path, repository: Path, name: str, config: ServingConfig, version: int | None = None
) -> Path:
    """Write the export as the next version (or `version`) of model `name` and its ids model, unchecked; returns
    the events model's version folder."""
    return promote(write_candidate(export_dir, repository, name, config, version))


def remove_version(repository: Path, name: str, version: int) -> None:
    """Take `version` out of both models (a deploy whose check failed), events model first, so the version before
    it is the latest again. Its number is not used again."""
    for model in (name, ids_model(name)):
        shutil.rmtree(Path(repository) / model / str(version), ignore_errors=True)


def _read_export(export_dir: Path) -> dict:
    missing = [f for f in (MODEL_FILE, *BUNDLE_FILES) if not (export_dir / f).exists()]
    if missing:
        raise FileNotFoundError(f"{export_dir}: lacks {missing}; is it the output of `nasrec export`?")
    return json.loads((export_dir / "export.json").read_text())


def _check_same_interface(current: mc.ModelConfig, new: mc.ModelConfig, path: Path) -> None:
    """A new version must take the same raw events and be served the same way, or it needs its own model name.
    Its feature transform may differ: each version runs its own."""
    if list(current.input) != list(new.input) or list(current.output) != list(new.output):
        raise ValueError(
            f"{path}: the new version takes other fields than the served model (another schema?); use a new model name"
        )
    if (IDS_MODEL_PARAMETER in current.parameters) != (IDS_MODEL_PARAMETER in new.parameters):
        raise ValueError(f"{path}: the model is served by another variant than the new version; use a new model name")

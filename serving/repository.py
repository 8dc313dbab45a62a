"""Triton model repositories for exported models: `<repo>/<model>/config.pbtxt` and `<repo>/<model>/<version>/`.

Two variants serve the same `model.onnx`:
- `production`: Triton's ONNX Runtime backend (`platform: "onnxruntime_onnx"`), GPU or CPU instances,
  optionally the TensorRT execution accelerator: what the NGC Triton image runs on a cluster;
- `local`: a Python-backend model (`serving/triton_model.py`) running ONNX Runtime in the serving runtime
  environment: what the `tritonserver` binary of the nvidia-pytriton wheel runs here, having no ONNX backend.

`config.pbtxt` is built from Triton's own `ModelConfig` protobuf. Each version directory also holds the
export's `transform.json`, `schema.yaml` and `export.json`, so a client can use the transform the served
version was trained with. Versions may differ in transform (a model retrained on re-ingested data): the config
names each version's transform digest, and clients ask for the version whose transform they hold.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from serving.interface import DENSE_INPUT, MODEL_FILE, OUTPUT, SPARSE_INPUT

VARIANTS = ("local", "production")
INSTANCE_KINDS = {"cpu": mc.ModelInstanceGroup.KIND_CPU, "gpu": mc.ModelInstanceGroup.KIND_GPU}
CONFIG_FILE = "config.pbtxt"
BUNDLE_FILES = ("transform.json", "schema.yaml", "export.json")  # beside model.onnx in each version
PYTHON_MODEL = Path(__file__).with_name("triton_model.py")
TRANSFORM_PARAMETER = "nasrec_feature_transform_sha256"  # one a version: see transform_parameter
LAST_VERSION_PARAMETER = "nasrec_last_version"  # the newest version ever written: numbers are not reused
THREADS_PARAMETER = "onnx_intra_op_threads"
PARALLEL_PARAMETER = "onnx_parallel_runs"


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


def transform_parameter(version: int) -> str:
    """The config parameter holding the feature transform digest of `version`."""
    return f"{TRANSFORM_PARAMETER}_v{version}"


def version_transform(config: mc.ModelConfig, version: int) -> str:
    """The feature transform digest that `config` records for `version` ('' for none). A config written before
    versions could differ in transform records one digest for all of them."""
    for key in (transform_parameter(version), TRANSFORM_PARAMETER):
        if key in config.parameters:
            return config.parameters[key].string_value
    return ""


def model_config(
    name: str, num_dense: int, num_sparse: int, transforms: dict[int, str], config: ServingConfig
) -> mc.ModelConfig:
    """The `ModelConfig` of an exported CTR model with these input widths; `transforms` maps each version to
    the digest of the feature transform it was trained with."""
    model = mc.ModelConfig(name=name, max_batch_size=config.max_batch_size)
    if config.variant == "production":
        model.platform = "onnxruntime_onnx"
        model.default_model_filename = MODEL_FILE
    else:
        model.backend = "python"
        model.parameters[THREADS_PARAMETER].string_value = str(config.onnx_threads)
        model.parameters[PARALLEL_PARAMETER].string_value = str(config.parallel_runs)
    model.version_policy.latest.num_versions = config.versions_served
    model.input.add(name=DENSE_INPUT, data_type=mc.TYPE_FP32, dims=[num_dense])
    model.input.add(name=SPARSE_INPUT, data_type=mc.TYPE_INT64, dims=[num_sparse])
    model.output.add(name=OUTPUT, data_type=mc.TYPE_FP32, dims=[1])
    model.dynamic_batching.preferred_batch_size.extend(config.preferred_batch_sizes)
    model.dynamic_batching.max_queue_delay_microseconds = config.max_queue_delay_us
    model.instance_group.add(kind=INSTANCE_KINDS[config.instance_kind], count=config.instances)
    if config.tensorrt:
        accelerator = model.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters["precision_mode"] = config.tensorrt_precision
    for batch in config.warmup_batch_sizes:
        warmup = model.model_warmup.add(name=f"batch_{batch}", batch_size=batch, count=1)
        warmup.inputs[DENSE_INPUT].CopyFrom(
            mc.ModelWarmup.Input(data_type=mc.TYPE_FP32, dims=[num_dense], zero_data=True)
        )
        warmup.inputs[SPARSE_INPUT].CopyFrom(
            mc.ModelWarmup.Input(data_type=mc.TYPE_INT64, dims=[num_sparse], zero_data=True)
        )
    for version, digest in transforms.items():
        model.parameters[transform_parameter(version)].string_value = digest
    model.parameters[LAST_VERSION_PARAMETER].string_value = str(max(transforms))
    for key, value in config.extra_parameters.items():
        model.parameters[key].string_value = value
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


def versions(model_dir: Path) -> list[int]:
    """The numbered version directories of a model, in order."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def add_version(
    export_dir: Path, repository: Path, name: str, config: ServingConfig, version: int | None = None
) -> Path:
    """Add the export in `export_dir` as a version of model `name` (the next one by default); returns its folder.

    The config, naming the new version's transform, is written first; the version directory is assembled
    beside the repository and then renamed into place, so a Triton server never sees half of it. A version
    number is used once: an existing version is refused, not overwritten, and one taken out is not reused.
    """
    export_dir, repository = Path(export_dir), Path(repository)
    record = _read_export(export_dir)
    model_dir = repository / name
    config_path = model_dir / CONFIG_FILE
    current = read_config(config_path) if config_path.exists() else None
    existing = versions(model_dir)
    last = max(existing, default=0)
    if current is not None and LAST_VERSION_PARAMETER in current.parameters:
        last = max(last, int(current.parameters[LAST_VERSION_PARAMETER].string_value))
    version = version if version is not None else last + 1
    if version in existing:
        raise FileExistsError(f"{model_dir / str(version)}: version {version} exists; versions are immutable")
    if version <= last or version < 1:
        raise ValueError(f"version: must be above {last}, the newest written to {model_dir}; got {version}")
    schema = json.loads(record["metadata"]["input_schema"])
    transforms = {v: _recorded_transform(model_dir, v, current) for v in existing}
    transforms[version] = record["metadata"]["feature_transform_sha256"]
    new_config = model_config(name, schema["num_dense"], len(schema["cardinalities"]), transforms, config)
    if current is not None:
        _check_same_interface(current, new_config, config_path)
    repository.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{repository.name}.staging-", dir=repository.parent))
    staging = scratch / str(version)
    staging.mkdir()
    try:
        for item in export_dir.iterdir():
            if item.name.startswith(MODEL_FILE) or item.name in BUNDLE_FILES:
                shutil.copy2(item, staging / item.name)
        if config.variant == "local":
            shutil.copy2(PYTHON_MODEL, staging / "model.py")
        model_dir.mkdir(parents=True, exist_ok=True)
        write_config(config_path, new_config)  # first: a server loading the version finds its transform there
        os.replace(staging, model_dir / str(version))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return model_dir / str(version)


def remove_version(model_dir: Path, version: int) -> None:
    """Take `version` out of the model (a deploy whose check failed): its folder, and its transform in the
    config, so the version before it is the latest again."""
    shutil.rmtree(model_dir / str(version))
    config_path = model_dir / CONFIG_FILE
    if config_path.exists():
        config = read_config(config_path)
        config.parameters.pop(transform_parameter(version), None)
        write_config(config_path, config)


def _recorded_transform(model_dir: Path, version: int, config: mc.ModelConfig | None) -> str:
    """A written version's transform digest: from the config, or else from its export record."""
    recorded = version_transform(config, version) if config is not None else ""
    return recorded or _read_export(model_dir / str(version))["metadata"]["feature_transform_sha256"]


def _read_export(export_dir: Path) -> dict:
    missing = [f for f in (MODEL_FILE, *BUNDLE_FILES) if not (export_dir / f).exists()]
    if missing:
        raise FileNotFoundError(f"{export_dir}: lacks {missing}; is it the output of `nasrec export`?")
    return json.loads((export_dir / "export.json").read_text())


def _check_same_interface(current: mc.ModelConfig, new: mc.ModelConfig, path: Path) -> None:
    """A new version must take the same inputs and be served the same way, or it needs its own model name.
    Its feature transform may differ: clients ask for the version whose transform they hold."""
    if list(current.input) != list(new.input) or list(current.output) != list(new.output):
        raise ValueError(f"{path}: the new version's inputs or outputs differ from the model's; use a new model name")
    if (current.platform, current.backend) != (new.platform, new.backend):
        raise ValueError(
            f"{path}: the model is served by {current.platform or current.backend!r}, the new version by "
            f"{new.platform or new.backend!r}; use a new model name"
        )

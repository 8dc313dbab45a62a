"""ONNX export of a trained NASRecNet, checked against PyTorch on real validation rows.

    export_model(model_dir, out)  ->  out/
        model.onnx          dense float32 [B, n_dense], sparse int64 [B, n_sparse] -> probability float32 [B, 1]
        model.onnx.data     the weights, only when they do not fit one protobuf (over 2 GiB)
        transform.json      the fitted feature transform the model was trained with
        schema.yaml         the dataset schema (raw column names, entities)
        export.json         the model's metadata and the parity figures

The exported graph is the served model: the sigmoid is part of it, the training loss is not. Export fails
unless ONNX Runtime reproduces PyTorch's probabilities on real rows to within `PARITY_TOLERANCE`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from features.loader import SplitLoader
from features.schema import DatasetSchema, builtin_schema
from features.transform import FeatureTransform
from model.network import InputSchema, NASRecNet
from model.trainer import load_model
from serving.errors import ExportError
from serving.interface import DENSE_INPUT, MODEL_FILE, OUTPUT, SPARSE_INPUT

OPSET = 18
PARITY_TOLERANCE = 1e-5
PARITY_ROWS = 4096
# One protobuf holds at most 2 GiB; past this many bytes of weights they go to an external data file.
EXTERNAL_DATA_BYTES = 2**31 - 64 * 2**20  # headroom for the graph itself
METADATA_PREFIX = "nasrec."


class CTRProbability(nn.Module):
    """What is served: click probabilities (B, 1) from a `(dense, sparse) -> logits (B,)` network."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, dense: Tensor, sparse: Tensor) -> Tensor:
        return torch.sigmoid(self.net(dense, sparse)).unsqueeze(-1)  # (B, 1)


@dataclass(frozen=True)
class ExportResult:
    out: Path
    metadata: dict[str, str]
    parity: dict[str, Any]

    @property
    def model(self) -> Path:
        return self.out / MODEL_FILE


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over every tensor of the state dict (name, dtype, shape and bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights and buffers the graph would carry (works on shape-only meta models)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def needs_external_data(model: nn.Module, limit: int = EXTERNAL_DATA_BYTES) -> bool:
    return weight_bytes(model) > limit


def export_onnx(
    net: NASRecNet,
    path: Path,
    metadata: dict[str, str],
    example: tuple[Tensor, Tensor],
    external_data: bool | None = None,
) -> Path:
    """Write `net` as ONNX with a dynamic batch dimension and `metadata` in the model's metadata_props.

    `external_data=None` chooses: one self-contained file unless the weights exceed one protobuf.
    """
    served = CTRProbability(net).cpu().eval()
    external = needs_external_data(served) if external_data is None else external_data
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    dense, sparse = (t.cpu() for t in example)
    if dense.shape[0] < 2:  # a batch of 1 would be specialised away by torch.export
        dense, sparse = dense.repeat(2, 1), sparse.repeat(2, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), warnings.catch_warnings(), _quiet("torch.onnx"):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                served,
                (dense, sparse),
                str(path),
                input_names=[DENSE_INPUT, SPARSE_INPUT],
                output_names=[OUTPUT],
                dynamic_shapes={"dense": {0: batch}, "sparse": {0: batch}},
                opset_version=OPSET,
                dynamo=True,
                external_data=external,
            )
    except Exception as error:
        raise ExportError(f"torch.onnx.export failed: {error}\n{log.getvalue()}") from error
    _set_metadata(path, metadata, external)
    return path


@contextlib.contextmanager
def _quiet(logger_name: str):
    """Silence a library's logger for the duration (torch.onnx warns about every absent optional package)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _set_metadata(path: Path, metadata: dict[str, str], external: bool) -> None:
    """Rewrite the graph's metadata_props; with external data only the graph file is rewritten."""
    proto = onnx.load(str(path), load_external_data=False)
    del proto.metadata_props[:]
    for key, value in sorted(metadata.items()):
        proto.metadata_props.add(key=METADATA_PREFIX + key, value=value)
    proto.producer_name = "nasrec-pipeline"
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(proto.SerializeToString())
    partial.replace(path)
    if not external:
        onnx.checker.check_model(str(path))


def read_metadata(path: Path) -> dict[str, str]:
    """The nasrec.* metadata of an exported model, prefix removed."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key[len(METADATA_PREFIX) :]: p.value for p in proto.metadata_props if p.key.startswith(METADATA_PREFIX)}


def onnx_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """An ONNX Runtime CPU session (one intra-op thread: serving scales by instances, not threads)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_parity(
    net: nn.Module, path: Path, dense: np.ndarray, sparse: np.ndarray, tolerance: float = PARITY_TOLERANCE
) -> dict[str, Any]:
    """Max abs difference of ONNX Runtime's probabilities to PyTorch's on the same rows; raises above `tolerance`."""
    served = CTRProbability(net).cpu().eval()
    session = onnx_session(path)
    worst = 0.0
    for start in range(0, len(dense), 1024):
        d, s = dense[start : start + 1024], sparse[start : start + 1024]
        (onnx_out,) = session.run([OUTPUT], {DENSE_INPUT: d, SPARSE_INPUT: s})
        with torch.no_grad():
            torch_out = served(torch.from_numpy(d), torch.from_numpy(s)).numpy()
        if onnx_out.shape != torch_out.shape:
            raise ExportError(f"{path}: ONNX output shape {onnx_out.shape}, PyTorch {torch_out.shape}")
        worst = max(worst, float(np.abs(onnx_out - torch_out).max()))
    if not worst <= tolerance:  # also catches NaN
        raise ExportError(
            f"{path}: ONNX Runtime differs from PyTorch by up to {worst:.3g} on {len(dense)} rows "
            f"(tolerance {tolerance:g})"
        )
    return {"rows": len(dense), "max_abs_diff": worst, "tolerance": tolerance}


def model_metadata(
    net: NASRecNet, transform: FeatureTransform, schema: DatasetSchema, test: dict[str, float] | None = None
) -> dict[str, str]:
    """What the graph records about itself; `test` (the evaluate step's AUC and log loss) lets a later
    run's quality gate compare itself with this model once it is served."""
    tested = (
        {} if test is None else {"test_auc": repr(float(test["auc"])), "test_log_loss": repr(float(test["log_loss"]))}
    )
    return tested | {
        "architecture": net.arch.to_json(),
        "input_schema": json.dumps(net.schema.to_dict()),
        "dataset_schema": schema.name,
        "opset": str(OPSET),
        "feature_transform_version": str(transform.to_dict()["format_version"]),
        "feature_transform_sha256": transform.sha256(),
        "weights_sha256": weights_sha256(net),
    }


def load_dataset_schema(data_dir: Path, transform: FeatureTransform) -> DatasetSchema:
    """The schema ingestion recorded (schema.yaml), or the built-in one the transform names."""
    path = data_dir / "schema.yaml"
    return DatasetSchema.load(path) if path.exists() else builtin_schema(transform.schema_name)


def parity_rows(data_dir: Path, transform: FeatureTransform, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `rows` validation rows of an ingestion folder, model-ready."""
    batch = next(iter(SplitLoader(data_dir / "validation.parquet", transform, rows)))
    return batch.dense, batch.sparse


def export_model(
    model_dir: Path,
    out: Path,
    data_dir: Path | None = None,
    rows: int = PARITY_ROWS,
    external_data: bool | None = None,
    test: dict[str, float] | None = None,
) -> ExportResult:
    """Export the NASRecNet in `model_dir` (finetune's winner/) into `out`, checked on `rows` validation rows.

    The data folder defaults to the one fine-tuning recorded in `model_dir/metrics.json`; `test` (the
    evaluate step's metrics) is recorded in the metadata.
    """
    model_dir, out = Path(model_dir), Path(out)
    checkpoint = model_dir / "checkpoint.pt"
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: missing; is {model_dir} a fine-tuned model (finetune's winner/)?")
    data_dir = Path(data_dir or _recorded_data_dir(model_dir))
    transform_path = data_dir / "transform.json"
    if not transform_path.exists():
        raise FileNotFoundError(f"{transform_path}: missing; is {data_dir} the output of `nasrec ingest`?")
    transform = FeatureTransform.load(transform_path)
    net = load_model(checkpoint, "cpu")
    if not isinstance(net, NASRecNet):
        raise ExportError(f"{checkpoint}: holds a {type(net).__name__}; export takes a NASRecNet")
    expected = InputSchema(transform.num_dense, transform.cardinalities)
    if net.schema != expected:
        raise ExportError(
            f"{checkpoint}: the model reads {net.schema.to_dict()}, but {transform_path} gives "
            f"{expected.to_dict()}: was it trained on other data?"
        )
    net.eval()
    schema = load_dataset_schema(data_dir, transform)
    dense, sparse = parity_rows(data_dir, transform, rows)
    metadata = model_metadata(net, transform, schema, test)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        example = (torch.from_numpy(dense), torch.from_numpy(sparse))
        path = export_onnx(net, staging / MODEL_FILE, metadata, example, external_data)
        parity = check_parity(net, path, dense, sparse)
        transform.save(staging / "transform.json")
        schema.save(staging / "schema.yaml")
        record = {
            "metadata": metadata,
            "parity": parity,
            "checkpoint": str(checkpoint.resolve()),
            "data": str(data_dir.resolve()),
            "feature_repo": str((data_dir / "feature_repo").resolve()),
            "external_data": (staging / f"{MODEL_FILE}.data").exists(),
        }
        (staging / "export.json").write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        staging.replace(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out, metadata, parity)


def _recorded_data_dir(model_dir: Path) -> Path:
    metrics = model_dir / "metrics.json"
    recorded = json.loads(metrics.read_text()).get("data") if metrics.exists() else None
    if not recorded:
        raise FileNotFoundError(f"{model_dir}: no data folder recorded in metrics.json; pass --data (nasrec ingest's)")
    return Path(recorded)

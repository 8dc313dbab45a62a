"""evaluate: the winner's test metrics, and the quality gate that decides whether it may be deployed.

The gate passes when the test AUC reaches `min_auc`, the winner is not the model served now (the same weights: a
rerun on unchanged inputs deploys nothing new), and it is not worse than the served version on this run's own
test events: the served version is scored here, with its own transform and network, on the same raw events and
labels, so two models trained on other data or another transform are still judged on one split. A served model
that takes other fields (another schema) cannot be replaced by this one: the gate says to deploy under another
model name. The model is named after the schema unless `model_name` says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from components.steps.common import StepConfig, write_json
from components.steps.data import IngestedData
from features.readers import EVENT_ID
from features.schema import DatasetSchema
from features.transform import LABEL, FeatureTransform
from model.metrics import roc_auc
from model.trainer import evaluate as evaluate_model
from model.trainer import load_model
from serving.export import onnx_session, read_metadata, weights_sha256
from serving.interface import DENSE_INPUT, MODEL_FILE, OUTPUT, SPARSE_INPUT, default_model_name
from serving.repository import event_inputs, ids_model, versions

EVALUATION_FILE = "evaluation.json"
REPORT_FILE = "report.md"
SCORED_ROWS = 8192  # rows a served-model call scores at once


@dataclass(frozen=True)
class EvaluateRun(StepConfig):
    min_auc: float = 0.5  # the gate's floor on test AUC (0.5: better than chance)
    repository: str = ""  # the Triton model repository served now; empty: compare with the floor alone
    model_name: str = ""  # empty: nasrec_<schema>

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_auc <= 1.0:
            raise ValueError(f"min_auc: must be in [0, 1], got {self.min_auc}")


def served_model(repository: str, model_name: str, data_dir: Path) -> dict[str, Any] | None:
    """The served version (the latest in the repository) scored on the test events of `data_dir`: its test AUC
    there and its weights digest; `takes_other_fields` when it cannot answer this schema's requests. None when
    nothing is served."""
    if not repository:
        return None
    available = versions(Path(repository) / model_name)
    if not available:
        return None
    version = available[-1]
    folder, ids_folder = (Path(repository) / m / str(version) for m in (model_name, ids_model(model_name)))
    served = {"version": version, "weights_sha256": read_metadata(ids_folder / MODEL_FILE).get("weights_sha256")}
    schema = DatasetSchema.load(data_dir / "schema.yaml")
    served_schema = DatasetSchema.load(folder / "schema.yaml")
    if event_inputs(served_schema) != event_inputs(schema):
        return served | {"test_auc": None, "takes_other_fields": served_schema.name}
    auc = test_auc_of(FeatureTransform.load(folder / "transform.json"), ids_folder / MODEL_FILE, data_dir, schema)
    return served | {"test_auc": auc, "takes_other_fields": None}


def test_auc_of(transform: FeatureTransform, onnx_path: Path, data_dir: Path, schema: DatasetSchema) -> float:
    """AUC of an exported network with its own transform on the raw test events of `data_dir` (the typed events
    ingestion stored as the offline source; each event's entity features as logged with it)."""
    test = pq.read_table(data_dir / "test.parquet", columns=[EVENT_ID, LABEL]).to_pandas()
    fields = [*schema.dense, *schema.categorical_names]
    events = pq.read_table(
        data_dir / "offline" / "events.parquet",
        columns=[EVENT_ID, *fields],
        filters=[(EVENT_ID, "in", test[EVENT_ID].tolist())],
    )
    events = events.to_pandas().set_index(EVENT_ID).loc[test[EVENT_ID]]
    session = onnx_session(onnx_path)
    scores = []
    for start in range(0, len(events), SCORED_ROWS):
        dense, sparse = transform.transform(events.iloc[start : start + SCORED_ROWS])
        scores.append(session.run([OUTPUT], {DENSE_INPUT: dense, SPARSE_INPUT: sparse})[0][:, 0])
    return roc_auc(test[LABEL].to_numpy(), np.concatenate(scores))


def gate(test_auc: float, weights: str, run: EvaluateRun, served: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether to deploy the model with test AUC `test_auc` and weights digest `weights`, and why."""
    if test_auc < run.min_auc:
        return False, f"test AUC {test_auc:.4f} is below the threshold {run.min_auc:.4f}"
    if served is None:
        return True, f"test AUC {test_auc:.4f} reaches the threshold {run.min_auc:.4f}; no model is served yet"
    if served["takes_other_fields"]:
        return False, (
            f"the served version {served['version']} takes the fields of schema {served['takes_other_fields']!r}: "
            "deploy this model under another model name"
        )
    if served["weights_sha256"] == weights:
        return False, f"the served version {served['version']} is this very model (the same weights)"
    if test_auc < served["test_auc"]:
        return False, (
            f"test AUC {test_auc:.4f} is below the served version {served['version']}'s {served['test_auc']:.4f} "
            "on the same test events"
        )
    return True, (
        f"test AUC {test_auc:.4f} reaches the threshold {run.min_auc:.4f} and the served version "
        f"{served['version']}'s {served['test_auc']:.4f} on the same test events"
    )


def evaluate(
    model_dir: Path, data_dir: Path, out: Path | None, run: EvaluateRun, device: torch.device
) -> dict[str, Any]:
    """Test metrics of the NASRecNet in `model_dir` and the gate's decision (also in `out/evaluation.json` and
    `out/report.md` when `out` is given)."""
    checkpoint = Path(model_dir) / "checkpoint.pt"
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: missing; is {model_dir} a fine-tuned model (finetune's winner/)?")
    data = IngestedData(data_dir)
    net = load_model(checkpoint, device).eval()
    test = evaluate_model(net, data.batches("test"), device)
    weights = weights_sha256(net)
    name = run.model_name or default_model_name(DatasetSchema.load(Path(data_dir) / "schema.yaml").name)
    served = served_model(run.repository, name, Path(data_dir))
    deploy, reason = gate(test["auc"], weights, run, served)
    result = {
        "test": test,
        "weights_sha256": weights,
        "model_name": name,
        "served": served,
        "deploy": deploy,
        "reason": reason,
        "run": run.to_dict(),
    }
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_json(Path(out) / EVALUATION_FILE, result)
        (Path(out) / REPORT_FILE).write_text(report(result))
    print(f"test AUC {test['auc']:.4f}, log loss {test['log_loss']:.4f}; {'deploy' if deploy else 'keep'}: {reason}")
    return result


def report(result: dict[str, Any]) -> str:
    test, served = result["test"], result["served"]
    served_auc = "none" if served is None else f"version {served['version']}, test AUC {served['test_auc']}"
    verdict = "deploy" if result["deploy"] else "do not deploy"
    return (
        "# Quality gate\n\n"
        f"**{verdict}**: {result['reason']}.\n\n"
        "| figure | value |\n| --- | --- |\n"
        f"| test AUC | {test['auc']:.4f} |\n| test log loss | {test['log_loss']:.4f} |\n"
        f"| threshold | {result['run']['min_auc']:.4f} |\n| served | {served_auc} |\n"
    )

"""evaluate: the winner's test metrics, and the quality gate that decides whether it may be deployed.

The gate passes when the test AUC reaches `min_auc` and is not below the test AUC recorded in the metadata
of the model currently served (the latest version in the Triton model repository), when there is one, and the
winner is not that very model (the same weights: a rerun on unchanged inputs deploys nothing new).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from components.steps.common import StepConfig, write_json
from components.steps.data import IngestedData
from model.trainer import evaluate as evaluate_model
from model.trainer import load_model
from serving.export import read_metadata, weights_sha256
from serving.interface import DEFAULT_MODEL, MODEL_FILE
from serving.repository import versions

EVALUATION_FILE = "evaluation.json"
REPORT_FILE = "report.md"


@dataclass(frozen=True)
class EvaluateRun(StepConfig):
    min_auc: float = 0.5  # the gate's floor on test AUC (0.5: better than chance)
    repository: str = ""  # the Triton model repository served now; empty: compare with the floor alone
    model_name: str = DEFAULT_MODEL

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_auc <= 1.0:
            raise ValueError(f"min_auc: must be in [0, 1], got {self.min_auc}")


def served_model(repository: str, model_name: str) -> dict[str, Any] | None:
    """The latest served version's test AUC and weights digest from its ONNX metadata; None when nothing is
    served."""
    if not repository:
        return None
    model_dir = Path(repository) / model_name
    available = versions(model_dir)
    if not available:
        return None
    metadata = read_metadata(model_dir / str(available[-1]) / MODEL_FILE)
    auc = metadata.get("test_auc")
    return {
        "version": available[-1],
        "test_auc": float(auc) if auc is not None else None,
        "weights_sha256": metadata.get("weights_sha256"),
    }


def gate(test_auc: float, weights: str, run: EvaluateRun, served: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether to deploy the model with test AUC `test_auc` and weights digest `weights`, and why."""
    if test_auc < run.min_auc:
        return False, f"test AUC {test_auc:.4f} is below the threshold {run.min_auc:.4f}"
    if served is not None and served["weights_sha256"] == weights:
        return False, f"the served version {served['version']} is this very model (the same weights)"
    if served is None:
        return True, f"test AUC {test_auc:.4f} reaches the threshold {run.min_auc:.4f}; no model is served yet"
    if served["test_auc"] is None:
        return True, (
            f"test AUC {test_auc:.4f} reaches the threshold {run.min_auc:.4f}; the served version "
            f"{served['version']} records no test AUC to compare with"
        )
    if test_auc < served["test_auc"]:
        return False, (
            f"test AUC {test_auc:.4f} is below the served version {served['version']}'s {served['test_auc']:.4f}"
        )
    return True, (
        f"test AUC {test_auc:.4f} reaches the threshold {run.min_auc:.4f} and the served version "
        f"{served['version']}'s {served['test_auc']:.4f}"
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
    served = served_model(run.repository, run.model_name)
    deploy, reason = gate(test["auc"], weights, run, served)
    result = {
        "test": test,
        "weights_sha256": weights,
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

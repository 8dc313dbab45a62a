"""The evaluate step: test metrics of the winner and the quality gate, against a floor and the served model."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from components.steps.evaluate import EvaluateRun, evaluate, gate, served_model
from components.steps.finetune import FinetuneRun, finetune
from model.sampling import ArchitectureSampler
from model.space import get_space
from serving.export import METADATA_PREFIX
from tests.conftest import CPU


def served_version(repository: Path, version: int, test_auc: float | None, weights: str = "0" * 64) -> None:
    """A served version whose model.onnx carries only what the gate reads: its metadata."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "served",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    proto = helper.make_model(graph)
    if test_auc is not None:
        proto.metadata_props.add(key=METADATA_PREFIX + "test_auc", value=repr(test_auc))
    proto.metadata_props.add(key=METADATA_PREFIX + "weights_sha256", value=weights)
    folder = repository / "ctr" / str(version)
    folder.mkdir(parents=True)
    onnx.save(proto, str(folder / "model.onnx"))


def test_the_gate_needs_the_floor_the_served_models_auc_and_another_model() -> None:
    run = EvaluateRun(min_auc=0.7)
    served = {"version": 3, "test_auc": 0.72, "weights_sha256": "a" * 64}
    assert gate(0.69, "b" * 64, run, None) == (False, "test AUC 0.6900 is below the threshold 0.7000")
    assert gate(0.71, "b" * 64, run, None)[0]
    assert gate(0.71, "b" * 64, run, served) == (False, "test AUC 0.7100 is below the served version 3's 0.7200")
    assert gate(0.72, "b" * 64, run, served)[0]  # not worse is enough
    assert gate(0.72, "a" * 64, run, served) == (False, "the served version 3 is this very model (the same weights)")
    passed, reason = gate(0.71, "b" * 64, run, served | {"test_auc": None})
    assert passed and "records no test AUC" in reason


def test_the_served_model_is_the_latest_version_in_the_repository(tmp_path: Path) -> None:
    assert served_model("", "ctr") is None
    assert served_model(str(tmp_path / "none"), "ctr") is None
    served_version(tmp_path, 1, 0.75)
    served_version(tmp_path, 2, 0.7125, "2" * 64)
    assert served_model(str(tmp_path), "ctr") == {"version": 2, "test_auc": 0.7125, "weights_sha256": "2" * 64}
    served_version(tmp_path, 3, None)  # exported before the gate: no figure to compare with
    assert served_model(str(tmp_path), "ctr")["test_auc"] is None


@pytest.fixture(scope="module")
def winner(ingested: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finetuned")
    arch = ArchitectureSampler(get_space("demo"), 2).sample()
    finetune([arch], ingested, out, FinetuneRun(steps=40, batch_size=256, eval_every=40, progress=False), CPU)
    return out / "winner"


def test_evaluate_reports_test_metrics_and_decides_both_ways(winner: Path, ingested: Path, tmp_path: Path) -> None:
    passed = evaluate(winner, ingested, tmp_path / "pass", EvaluateRun(min_auc=0.5), CPU)
    auc = passed["test"]["auc"]
    assert passed["deploy"] and passed["served"] is None and passed["test"]["rows"] == 2000 and auc > 0.5
    assert json.loads((tmp_path / "pass" / "evaluation.json").read_text()) == passed
    assert "**deploy**" in (tmp_path / "pass" / "report.md").read_text()

    served_version(tmp_path / "repo", 1, auc + 0.01)
    run = EvaluateRun(min_auc=0.5, repository=str(tmp_path / "repo"), model_name="ctr")
    kept = evaluate(winner, ingested, tmp_path / "keep", run, CPU)
    assert not kept["deploy"] and kept["served"]["version"] == 1
    assert kept["test"] == passed["test"]  # the same rows, the same weights
    assert "below the served version 1's" in kept["reason"]
    served_version(tmp_path / "repo", 2, auc - 0.01, passed["weights_sha256"])  # this very model, served
    again = evaluate(winner, ingested, None, run, CPU)
    assert not again["deploy"] and "version 2 is this very model" in again["reason"]
    assert "**do not deploy**" in (tmp_path / "keep" / "report.md").read_text()
    with pytest.raises(FileNotFoundError, match=r"is .* a fine-tuned model"):
        evaluate(tmp_path, ingested, tmp_path / "x", EvaluateRun(), CPU)

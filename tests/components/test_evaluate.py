"""The evaluate step: test metrics of the winner and the quality gate, against a floor and the served model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from components.steps.evaluate import EvaluateRun, evaluate, gate
from components.steps.finetune import FinetuneRun, finetune
from model.sampling import ArchitectureSampler
from model.space import get_space
from serving.export import export_model
from serving.repository import ServingConfig, add_version
from tests.conftest import CPU


def test_the_gate_needs_the_floor_the_served_models_auc_and_another_model() -> None:
    run = EvaluateRun(min_auc=0.7)
    served = {"version": 3, "test_auc": 0.72, "weights_sha256": "a" * 64, "takes_other_fields": None}
    assert gate(0.69, "b" * 64, run, None) == (False, "test AUC 0.6900 is below the threshold 0.7000")
    assert gate(0.71, "b" * 64, run, None)[0]
    assert gate(0.71, "b" * 64, run, served) == (
        False,
        "test AUC 0.7100 is below the served version 3's 0.7200 on the same test events",
    )
    assert gate(0.72, "b" * 64, run, served)[0]  # not worse is enough
    assert gate(0.72, "a" * 64, run, served) == (False, "the served version 3 is this very model (the same weights)")
    passed, reason = gate(0.75, "b" * 64, run, served | {"takes_other_fields": "avazu", "test_auc": None})
    assert not passed and "takes the fields of schema 'avazu': deploy this model under another model name" in reason


@pytest.fixture(scope="module")
def winner(ingested: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finetuned")
    arch = ArchitectureSampler(get_space("demo"), 2).sample()
    finetune([arch], ingested, out, FinetuneRun(steps=40, batch_size=256, eval_every=40, progress=False), CPU)
    return out / "winner"


def test_evaluate_scores_the_served_version_on_this_runs_test_events(
    winner: Path, ingested: Path, tmp_path: Path
) -> None:
    passed = evaluate(winner, ingested, tmp_path / "pass", EvaluateRun(min_auc=0.5), CPU)
    auc = passed["test"]["auc"]
    assert passed["deploy"] and passed["served"] is None and passed["test"]["rows"] == 2000 and auc > 0.5
    assert passed["model_name"] == "nasrec_criteo"
    assert json.loads((tmp_path / "pass" / "evaluation.json").read_text()) == passed
    assert "**deploy**" in (tmp_path / "pass" / "report.md").read_text()

    repository = tmp_path / "repo"
    add_version(export_model(winner, tmp_path / "export").out, repository, "nasrec_criteo", ServingConfig())
    run = EvaluateRun(min_auc=0.5, repository=str(repository))
    again = evaluate(winner, ingested, tmp_path / "keep", run, CPU)
    # the served version, scored from the raw test events with its own transform, is this very model
    assert again["served"]["version"] == 1 and abs(again["served"]["test_auc"] - auc) <= 1e-4
    assert not again["deploy"] and "version 1 is this very model" in again["reason"]
    assert "**do not deploy**" in (tmp_path / "keep" / "report.md").read_text()

    other = tmp_path / "other"  # another architecture, trained on the same data
    arch = ArchitectureSampler(get_space("demo"), 5).sample()
    finetune([arch], ingested, other, FinetuneRun(steps=40, batch_size=256, eval_every=40, progress=False), CPU)
    challenger = evaluate(other / "winner", ingested, None, run, CPU)
    better = challenger["test"]["auc"] >= again["served"]["test_auc"]
    assert challenger["deploy"] == better and challenger["served"]["test_auc"] == again["served"]["test_auc"]
    assert ("reaches" if better else "is below") in challenger["reason"]

    served_schema = repository / "nasrec_criteo" / "1" / "schema.yaml"  # the served model took other fields
    schema = yaml.safe_load(served_schema.read_text())
    served_schema.write_text(yaml.safe_dump(schema | {"name": "mine", "categorical": schema["categorical"][:-1]}))
    refused = evaluate(winner, ingested, None, run, CPU)
    assert not refused["deploy"] and "takes the fields of schema 'mine'" in refused["reason"]
    with pytest.raises(FileNotFoundError, match=r"is .* a fine-tuned model"):
        evaluate(tmp_path, ingested, tmp_path / "x", EvaluateRun(), CPU)

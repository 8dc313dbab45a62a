"""Every step's config round-trips through to_dict/from_dict and names the field at fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.steps.common import StepConfig, resolve_device, training_device
from components.steps.deploy import DeployRun
from components.steps.evaluate import EvaluateRun
from components.steps.export import ExportRun
from components.steps.finetune import FinetuneRun
from components.steps.ingest import IngestRun
from components.steps.search import SearchRun
from components.steps.train_supernet import SupernetRun
from model.search import FitnessConfig, SearchConfig
from pipelines.studies import RankCorrRun

CONFIGS = [
    IngestRun(schema="avazu", folds=Path("folds.csv"), fold=3),
    IngestRun(schema="avazu", feature_server="http://feast:6566", feast_root=Path("/data/feast")),
    IngestRun(schema="avazu", shared_work_root=Path("/data/ingest-work")),
    SupernetRun(space="nasrec-small", steps=40),
    SearchRun(search=SearchConfig(population=4, children=2, max_mflops=0.3, fitness=FitnessConfig.for_method("head"))),
    SearchRun(max_latency_ms=5.0, latency_batch=256, latency_calibration=8),
    FinetuneRun(steps=7, warm_start=True),
    EvaluateRun(min_auc=0.7, repository="runs/triton"),
    ExportRun(rows=100, external_data=True),
    DeployRun(max_batch_size=256, url="127.0.0.1:8001"),
    RankCorrRun(architectures=3, train=FinetuneRun(steps=2)),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_a_config_round_trips_through_json(config: StepConfig) -> None:
    data = json.loads(json.dumps(config.to_dict()))
    assert type(config).from_dict(data) == config
    assert type(config).from_dict({}) == type(config)()  # every field has a default


def test_a_bad_config_names_the_field_at_fault() -> None:
    with pytest.raises(ValueError, match=r"SupernetRun: unknown field\(s\) \['stpes'\]; allowed: \['space'"):
        SupernetRun.from_dict({"stpes": 10})
    with pytest.raises(ValueError, match=r"SupernetRun\.steps: expected int, got 'ten'"):
        SupernetRun.from_dict({"steps": "ten"})
    with pytest.raises(ValueError, match=r"SearchRun\.search\.fitness: unknown field\(s\) \['lr'\]"):
        SearchRun.from_dict({"search": {"fitness": {"lr": 0.1}}})
    with pytest.raises(ValueError, match=r"SearchRun\.search: expected a mapping of fields, got int"):
        SearchRun.from_dict({"search": 3})
    with pytest.raises(ValueError, match=r"IngestRun\.folds: expected a path, got ''"):
        IngestRun.from_dict({"folds": ""})
    with pytest.raises(ValueError, match=r"latency budget: p99_ms must be > 0, got -1"):
        SearchRun.from_dict({"max_latency_ms": -1})
    with pytest.raises(ValueError, match=r"latency_calibration: at least 5 networks, got 2"):
        SearchRun.from_dict({"latency_calibration": 2})
    with pytest.raises(ValueError, match=r"feature_server: publishing needs feast_root"):
        IngestRun.from_dict({"feature_server": "http://feast:6566"})
    with pytest.raises(ValueError, match=r"engine spark-k8s: its executors read and write the step's files"):
        IngestRun.from_dict({"engine": "spark-k8s"} | {"shared_work_root": None})
    with pytest.raises(ValueError, match=r"EvaluateRun\.min_auc: expected float, got True"):
        EvaluateRun.from_dict({"min_auc": True})
    with pytest.raises(ValueError, match=r"min_auc: must be in \[0, 1\], got 2"):
        EvaluateRun.from_dict({"min_auc": 2})
    for device in ("tpu", "cuda:x"):
        with pytest.raises(ValueError, match=r"device: one of \['auto', 'cpu', 'cuda'\] or cuda:N, got"):
            resolve_device(device)


def test_gpus_choose_the_training_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert training_device(0).type == "cpu"  # 0 means the CPU, even on a machine with a GPU
    for wrong in (-1, 2, True):
        with pytest.raises(ValueError, match=rf"gpus: 0 \(the CPU\) or 1 .*, got {wrong}"):
            training_device(wrong)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"gpus=1, but this step sees no CUDA device"):
        training_device(1)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert training_device(1).type == "cuda"

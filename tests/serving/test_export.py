"""ONNX export: the served graph predicts what PyTorch does, for every operator, and says what it is."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from components.steps.evaluate import served_model
from components.steps.export import ExportRun, export
from features.transform import FeatureTransform
from model.network import InputSchema, NASRecNet
from model.ops import OPERATORS
from model.zoo import HAND_DESIGNED, hand_designed
from serving.errors import ExportError
from serving.export import (
    MODEL_FILE,
    check_parity,
    export_model,
    export_onnx,
    needs_external_data,
    onnx_session,
    read_metadata,
    weights_sha256,
)
from serving.repository import ServingConfig, add_version
from tests.serving.conftest import Exported, architecture_with

SCHEMA = InputSchema(num_dense=13, cardinalities=(50,) * 26)


def random_rows(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dense = rng.exponential(1.0, (rows, SCHEMA.num_dense)).astype(np.float32)
    return dense, rng.integers(0, 50, (rows, SCHEMA.num_sparse), dtype=np.int64)


def export_random(net: NASRecNet, path, **options):
    dense, sparse = random_rows(64)
    return export_onnx(net, path, {"test": "1"}, (torch.from_numpy(dense), torch.from_numpy(sparse)), **options)


@pytest.mark.parametrize("operator", sorted(OPERATORS))
def test_every_operator_exports_with_a_dynamic_batch(operator: str, tmp_path) -> None:
    net = NASRecNet(architecture_with(operator), SCHEMA).eval()
    path = export_random(net, tmp_path / MODEL_FILE)
    for rows in (1, 7, 3000):  # none of them the example's batch of 64
        dense, sparse = random_rows(rows, seed=rows)
        assert check_parity(net, path, dense, sparse)["max_abs_diff"] <= 1e-5


@pytest.mark.parametrize("name", HAND_DESIGNED)
def test_every_hand_designed_architecture_exports(name: str, tmp_path) -> None:
    """The first-order term and the fm, flat_fc and cross operators as the search's seeds use them."""
    net = NASRecNet(hand_designed(name), SCHEMA).eval()
    path = export_random(net, tmp_path / MODEL_FILE)
    dense, sparse = random_rows(9, seed=3)
    assert check_parity(net, path, dense, sparse)["max_abs_diff"] <= 1e-5


def test_the_graph_outputs_probabilities_and_holds_no_loss(tmp_path) -> None:
    net = NASRecNet(architecture_with("fc"), SCHEMA).eval()
    path = export_random(net, tmp_path / MODEL_FILE)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["dense", "sparse"]
    assert [o.name for o in graph.output] == ["probability"]
    ops = {node.op_type for node in graph.node}
    assert "Sigmoid" in ops and not ops & {"BinaryCrossEntropyWithLogits", "Log", "NegativeLogLikelihoodLoss"}
    dense, sparse = random_rows(5)
    (probability,) = onnx_session(path).run(None, {"dense": dense, "sparse": sparse})
    assert probability.shape == (5, 1) and ((probability > 0) & (probability < 1)).all()


def test_an_onnx_copy_that_predicts_otherwise_is_refused(tmp_path) -> None:
    net = NASRecNet(architecture_with("fc"), SCHEMA).eval()
    path = export_random(net, tmp_path / MODEL_FILE)
    with torch.no_grad():
        net.head.bias += 0.01  # the exported file now disagrees with the model
    dense, sparse = random_rows(100)
    with pytest.raises(ExportError, match=r"differs from PyTorch by up to .* on 100 rows"):
        check_parity(net, path, dense, sparse)


def test_weights_beyond_one_protobuf_go_to_external_data(tmp_path) -> None:
    with torch.device("meta"):  # shapes only: a 2.6 GB embedding table costs nothing here
        large = NASRecNet(architecture_with("fc"), InputSchema(13, (1_600_000,) * 26))
    assert needs_external_data(large)
    small = NASRecNet(architecture_with("fc"), SCHEMA).eval()
    assert not needs_external_data(small)
    # the external-data path itself, forced on a small model: graph and weights in two files, same answers
    path = export_random(small, tmp_path / MODEL_FILE, external_data=True)
    graph = onnx.load(str(path), load_external_data=False).graph
    external = {t.name for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    table = next(t for t in graph.initializer if "stem.embedding.table" in t.name)
    assert list(table.dims) == [50 * 26, 16] and table.name in external
    assert (tmp_path / f"{MODEL_FILE}.data").stat().st_size >= 50 * 26 * 16 * 4
    assert read_metadata(path) == {"test": "1"}
    dense, sparse = random_rows(50)
    assert check_parity(small, path, dense, sparse)["max_abs_diff"] <= 1e-5


def test_export_of_a_trained_model_checks_real_rows_and_records_what_it_is(criteo_exported: Exported) -> None:
    out = criteo_exported.exports[0]
    record = json.loads((out / "export.json").read_text())
    assert record["parity"]["rows"] == 1001  # every validation row of fold 1 (the sample's folds hold ~1,000)
    assert record["parity"]["max_abs_diff"] <= 1e-5 and not record["external_data"]
    metadata = read_metadata(out / MODEL_FILE)
    net = criteo_exported.net(1)
    transform = FeatureTransform.load(criteo_exported.data.out_dir / "transform.json")
    assert metadata == record["metadata"]
    assert json.loads(metadata["architecture"]) == net.arch.to_dict()
    assert metadata["opset"] == "18" and metadata["feature_transform_version"] == "1"
    assert metadata["feature_transform_sha256"] == transform.sha256()
    assert metadata["weights_sha256"] == weights_sha256(net)
    assert weights_sha256(criteo_exported.net(2)) != weights_sha256(net)
    assert FeatureTransform.load(out / "transform.json") == transform
    assert not list(out.glob("*.data"))  # one self-contained file


def test_export_refuses_what_it_cannot_serve(criteo_exported: Exported, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"checkpoint\.pt: missing"):
        export_model(tmp_path, tmp_path / "out")
    other = tmp_path / "other_data"
    other.mkdir()
    transform = FeatureTransform.load(criteo_exported.data.out_dir / "transform.json")
    first = transform.categorical[0]
    replace(transform, categorical=(replace(first, vocabulary=first.vocabulary[:-1]), *transform.categorical[1:])).save(
        other / "transform.json"
    )
    with pytest.raises(ExportError, match="was it trained on other data"):
        export_model(criteo_exported.models[0], tmp_path / "out", data_dir=other)
    assert not (tmp_path / "out").exists()


def test_the_export_step_records_the_test_metrics_and_the_weights_digest_the_gate_reads(
    criteo_exported: Exported, tmp_path
) -> None:
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps({"test": {"auc": 0.7123456789, "log_loss": 0.45, "rows": 1000}}))
    record = export(
        criteo_exported.models[0], None, tmp_path / "export", ExportRun(rows=200, latency_batch=64), evaluation
    )
    assert record["parity"]["rows"] == 200
    latency = record["latency"]  # reported beside the test metrics, and kept with the export
    assert latency["batch_size"] == 64 and 0 < latency["p50_ms"] <= latency["p99_ms"]
    assert json.loads((tmp_path / "export" / "export.json").read_text())["latency"] == latency
    metadata = read_metadata(tmp_path / "export" / MODEL_FILE)
    assert float(metadata["test_auc"]) == 0.7123456789 and float(metadata["test_log_loss"]) == 0.45
    add_version(tmp_path / "export", tmp_path / "repository", "ctr", ServingConfig())
    served = served_model(str(tmp_path / "repository"), "ctr", criteo_exported.data.out_dir)
    assert served["version"] == 1 and served["weights_sha256"] == metadata["weights_sha256"]
    assert served["takes_other_fields"] is None
    assert 0.5 < served["test_auc"] < 1 and served["test_auc"] != 0.7123456789  # scored afresh on the test events

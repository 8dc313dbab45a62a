"""End to end on the real tritonserver, with a plain tritonclient.grpc client that knows only the model's metadata:
raw events in, the PyTorch model's probabilities out; bad requests refused one by one; a retrained version rolled
in under load, every answer from one version whole."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import tritonclient.grpc as grpcclient
import yaml
from tritonclient.utils import InferenceServerException

from components.steps.deploy import DeployRun, deploy
from features.ingest import OnlineFeatures
from features.readers import EVENT_ID, EVENT_TIMESTAMP
from features.schema import DatasetSchema
from features.transform import FeatureTransform
from serving.client import CTRClient, infer_inputs, log_rows
from serving.errors import RowError, ServingError
from serving.export import CTRProbability
from serving.repository import ServingConfig, add_version
from serving.server import TritonServer
from tests.conftest import shared
from tests.serving.conftest import Exported

MODEL, IDS = "nasrec_criteo", "nasrec_criteo_ids"


def torch_probabilities(net, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return CTRProbability(net)(torch.from_numpy(dense), torch.from_numpy(sparse)).numpy()[:, 0]


def pytorch_on_raw(exported: Exported, version: int, rows: list[dict]) -> np.ndarray:
    """What the PyTorch model of `version` predicts for raw rows, through its own training transform."""
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    return torch_probabilities(exported.net(version), *exported.data.transform.transform(columns))


def validation_rows(exported: Exported, schema: DatasetSchema, count: int | None = None) -> list[dict]:
    ids = pq.read_table(exported.data.out_dir / "validation.parquet", columns=[EVENT_ID])[EVENT_ID].to_pylist()
    return log_rows([shared(schema.name)], schema, ids[:count])


def raw_inputs(metadata, rows: list[Mapping]) -> list[grpcclient.InferInput]:
    """A request as any gRPC client builds it from the model metadata and the README: one input per field, FP32
    with NaN for a missing number, BYTES (UTF-8 text) with b"" for a missing category."""
    inputs = []
    for spec in metadata.inputs:
        values = [row[spec.name] for row in rows]
        if spec.datatype == "FP32":
            array = np.array([[np.nan if v is None else v] for v in values], dtype=np.float32)
        else:
            array = np.array([[b"" if v is None else str(v).encode()] for v in values], dtype=np.object_)
        tensor = grpcclient.InferInput(spec.name, list(array.shape), spec.datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def assert_no_process_left(group: int, shm_prefix: str) -> None:
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)  # no process of the server's group (server, Python stubs) is left
    assert not list(Path("/dev/shm").glob(f"{shm_prefix}*"))


@pytest.fixture(scope="module")
def criteo_rows(criteo_exported: Exported) -> list[dict]:
    rows = validation_rows(criteo_exported, DatasetSchema.load(criteo_exported.exports[0] / "schema.yaml"))
    assert len(rows) >= 1000
    return rows


def test_raw_criteo_events_get_the_pytorch_probabilities_from_a_plain_grpc_client(
    criteo_exported: Exported, criteo_rows: list[dict], tmp_path
) -> None:
    repository = tmp_path / "repository"
    add_version(criteo_exported.exports[0], repository, MODEL, ServingConfig())
    expected = pytorch_on_raw(criteo_exported, 1, criteo_rows)
    with TritonServer(repository) as server, grpcclient.InferenceServerClient(server.url) as client:
        group, shm_prefix = server.process.pid, server.shm_prefix
        metadata = client.get_model_metadata(MODEL)
        assert [(i.name, i.datatype, list(i.shape)) for i in metadata.inputs][:2] == [
            ("I1", "FP32", [-1, 1]),
            ("I2", "FP32", [-1, 1]),
        ]
        assert {i.name for i in metadata.inputs} == {*(f"I{k}" for k in range(1, 14)), *(f"C{k}" for k in range(1, 27))}
        result = client.infer(MODEL, raw_inputs(metadata, criteo_rows))
        assert result.get_response().model_version == "1"
        assert np.abs(result.as_numpy("probability")[:, 0] - expected).max() <= 1e-5

        refuse_bad_requests(client, metadata, criteo_rows[:4])
        one_bad_request_in_a_batch(client, metadata, criteo_rows[:8], expected[:8])
        again = client.infer(MODEL, raw_inputs(metadata, criteo_rows[:10])).as_numpy("probability")[:, 0]
        assert np.abs(again - expected[:10]).max() <= 1e-5  # still serving
        the_projects_client(server.url, criteo_rows, expected)

        # the ids endpoint on its own: an id past its feature's vocabulary counts as unseen, never another feature's
        data = pq.read_table(criteo_exported.data.out_dir / "validation.parquet").to_pandas().head(4)
        schema = DatasetSchema.load(criteo_exported.exports[0] / "schema.yaml")
        dense = data[list(schema.dense)].to_numpy(np.float32)
        sparse = data[list(schema.categorical_names)].to_numpy(np.int64)
        outside = sparse.copy()
        outside[0, 0] = criteo_exported.data.transform.cardinalities[0]  # the next feature's first row
        outside[1, 3] = -1
        unseen = outside.copy()
        unseen[0, 0] = unseen[1, 3] = 0
        served = client.infer(IDS, infer_inputs(dense, outside)).as_numpy("probability")[:, 0]
        np.testing.assert_allclose(served, torch_probabilities(criteo_exported.net(1), dense, unseen), atol=1e-5)
    assert server.process is None
    assert_no_process_left(group, shm_prefix)


def the_projects_client(url: str, rows: list[dict], expected: np.ndarray) -> None:
    """CTRClient needs the address alone, checks rows before sending them, and gets the same answers."""
    with CTRClient(url, max_batch_size=300) as ctr:
        assert ctr.model == MODEL and ctr.dense_fields == {f"I{k}" for k in range(1, 14)}
        assert np.abs(ctr.predict(rows) - expected).max() <= 1e-5  # in requests of 300 rows
        missing = {k: v for k, v in rows[1].items() if k != "C5"}
        with pytest.raises(RowError, match=r"row 1: missing fields \['C5'\]"):
            ctr.predict([rows[0], missing])
        with pytest.raises(RowError, match=r"row 0: unknown fields \['colour'\]"):
            ctr.predict([{**rows[0], "colour": "red"}])
        with pytest.raises(RowError, match=r"row 0: field 'I1': expected a number or null, got str"):
            ctr.predict([{**rows[0], "I1": "many"}])
        with pytest.raises(RowError, match=r"row 0: field 'C1': expected a string, an integer or null, got float"):
            ctr.predict([{**rows[0], "C1": 1.5}])
    with pytest.raises(ServingError, match=r"model 'absent'"):
        CTRClient(url, "absent")


def refuse_bad_requests(client: grpcclient.InferenceServerClient, metadata, rows: list[dict]) -> None:
    """Each bad request gets an error that names the field at fault and what is allowed."""
    good = raw_inputs(metadata, rows)

    def refused(inputs: list, pattern: str) -> None:
        with pytest.raises(InferenceServerException, match=pattern):
            client.infer(MODEL, inputs)

    def tensor(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
        made = grpcclient.InferInput(name, list(array.shape), datatype)
        made.set_data_from_numpy(array)
        return made

    def replaced(name: str, array: np.ndarray, datatype: str) -> list:
        return [tensor(name, array, datatype) if i.name() == name else i for i in good]

    refused([i for i in good if i.name() != "C5"], r"missing required input\(s\) \['C5'\]")
    refused([*good, tensor("colour", np.array([[b"red"]] * 4, np.object_), "BYTES")], "'colour'")
    refused(replaced("I1", np.array([[b"1"]] * 4, np.object_), "BYTES"), "'I1' data-type is 'BYTES', but .* 'FP32'")
    wide = np.ones((4, 2), np.float32)
    refused(replaced("I1", wide, "FP32"), r"shape for input 'I1'.*Expected \[-1,1\], got \[4,2\]")
    refused(replaced("I1", np.ones((3, 1), np.float32), "FP32"), "input 'I1' batch size does not match")
    infinite = np.array([[1.0], [np.inf], [2.0], [3.0]], np.float32)
    refused(replaced("I2", infinite, "FP32"), r"field 'I2', row 1: inf is not allowed: a finite number, or NaN")
    empty = [grpcclient.InferInput(i.name(), [0, 1], i.datatype()) for i in good]
    for tensor in empty:
        tensor.set_data_from_numpy(np.empty((0, 1), np.float32 if tensor.datatype() == "FP32" else np.object_))
    refused(empty, r"(empty batch|got \[0\]|got 0)")  # Triton refuses it before the model, naming an input


def one_bad_request_in_a_batch(client, metadata, rows: list[dict], expected: np.ndarray) -> None:
    """Requests sent at once share a dynamic batch: the bad one fails alone."""
    answers: dict[int, object] = {}
    done = threading.Semaphore(0)

    def answered(k: int):
        def callback(result, error) -> None:
            answers[k] = error if error is not None else result.as_numpy("probability")[:, 0]
            done.release()

        return callback

    bad = raw_inputs(metadata, rows[:2])
    bad[0].set_data_from_numpy(np.array([[np.inf], [1.0]], np.float32))
    requests = [raw_inputs(metadata, rows[2 * k : 2 * k + 2]) for k in range(4)]
    requests[1] = bad
    for k, inputs in enumerate(requests):
        client.async_infer(MODEL, inputs, answered(k))
    for _ in requests:
        done.acquire(timeout=60)
    assert isinstance(answers[1], InferenceServerException) and "field 'I1', row 0" in answers[1].message()
    for k in (0, 2, 3):
        np.testing.assert_allclose(answers[k], expected[2 * k : 2 * k + 2], atol=1e-5)


def test_a_retrained_version_rolls_in_under_load_and_every_answer_is_one_versions(
    criteo_exported: Exported, criteo_retrained: Exported, criteo_rows: list[dict], tmp_path
) -> None:
    """Version 2 has another feature transform (other data): version 1's transform with version 2's network, or
    the reverse, would give answers that are neither version's."""
    rows = criteo_rows[:64]
    v1, v2 = pytorch_on_raw(criteo_exported, 1, rows), pytorch_on_raw(criteo_retrained, 1, rows)
    assert np.abs(v1 - v2).max() > 1e-3
    other_transform = FeatureTransform.load(criteo_retrained.exports[0] / "transform.json")
    assert other_transform.sha256() != criteo_exported.data.transform.sha256()
    repository = tmp_path / "repository"
    add_version(criteo_exported.exports[0], repository, MODEL, ServingConfig())
    answers = {"v1": 0, "v2": 0, "other": [], "failed": []}
    stop = threading.Event()
    with TritonServer(repository) as server:

        def loop() -> None:
            with grpcclient.InferenceServerClient(server.url) as client:
                inputs = raw_inputs(client.get_model_metadata(MODEL), rows)
                deadline = time.monotonic() + 180
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        result = client.infer(MODEL, inputs, client_timeout=30)
                    except InferenceServerException as error:  # every failure is recorded: there must be none
                        answers["failed"].append(error.message())
                        continue
                    got, version = result.as_numpy("probability")[:, 0], result.get_response().model_version
                    if version == "1" and np.abs(got - v1).max() <= 1e-5:
                        answers["v1"] += 1
                    elif version == "2" and np.abs(got - v2).max() <= 1e-5:
                        answers["v2"] += 1
                    else:
                        answers["other"].append((version, float(np.abs(got - v1).max()), float(np.abs(got - v2).max())))

        thread = threading.Thread(target=loop)
        thread.start()
        try:
            time.sleep(0.5)
            record = deploy(criteo_retrained.exports[0], repository, DeployRun(url=server.url))
            assert record["version"] == 2 and record["check"]["events"]["served_version"] == 2
            time.sleep(1.0)  # version 2 answers for a while
        finally:
            stop.set()
            thread.join()
    assert answers["failed"] == [] and answers["other"] == []
    assert answers["v1"] > 0 and answers["v2"] > 0, answers


def test_avazu_requests_carry_entity_keys_and_the_server_reads_entity_features_from_feast(
    avazu_exported: Exported, tmp_path
) -> None:
    export = avazu_exported.exports[0]
    schema = DatasetSchema.load(export / "schema.yaml")
    data = avazu_exported.data
    online = OnlineFeatures(data.repo, schema, data.transform)
    events = pq.read_table(data.out_dir / "offline" / "events.parquet", columns=[EVENT_TIMESTAMP])[EVENT_TIMESTAMP]
    online.materialize(events.to_pandas().min(), events.to_pandas().max() + timedelta(hours=1), entities_only=True)
    rows = validation_rows(avazu_exported, schema)
    assert len(rows) >= 900 and all("device_model" not in r and "device_id" in r for r in rows)
    # what the online store holds for these rows' entities, read through Feast's SDK (not the server's path)
    refs = [f"{schema.name}_{e.name}_fv:{f}" for e in schema.entities for f in e.features]
    keys = [{e.key: row[e.key] for e in schema.entities} for row in rows]
    stored = online.store.get_online_features(features=refs, entity_rows=keys).to_dict()
    assert sum(v is not None for v in stored["device_model"]) > 0.9 * len(rows)
    columns = {f: [row[f] for row in rows] for f in rows[0]} | {f: stored[f] for f in schema.entity_features}
    expected = torch_probabilities(avazu_exported.net(1), *data.transform.transform(columns))

    repository = tmp_path / "repository"
    folder = add_version(export, repository, "nasrec_avazu", ServingConfig())
    store = yaml.safe_load((folder / "feature_repo" / "feature_store.yaml").read_text())
    assert store["online_store"]["path"] == str(data.repo / "data" / "online_store.db") and "offline_store" not in store
    production = add_version(export, tmp_path / "production", "nasrec_avazu", ServingConfig(variant="production"))
    store = yaml.safe_load((production / "feature_repo" / "feature_store.yaml").read_text())
    assert store["online_store"] == {"type": "redis", "connection_string": "${REDIS_CONNECTION_STRING}"}
    with TritonServer(repository) as server, grpcclient.InferenceServerClient(server.url) as client:
        group, shm_prefix = server.process.pid, server.shm_prefix
        metadata = client.get_model_metadata("nasrec_avazu")
        assert {i.name for i in metadata.inputs} == set(schema.event_features)  # entity keys, not their features
        served = client.infer("nasrec_avazu", raw_inputs(metadata, rows)).as_numpy("probability")[:, 0]
        assert np.abs(served - expected).max() <= 1e-5
        unseen = [{**rows[0], "device_id": "never-seen-device"}]  # no online record: its features are unseen
        unknown_device = {k: v[:1] for k, v in columns.items()} | {"device_id": ["never-seen-device"]}
        unknown_device |= {f: [None] for f in schema.entities[0].features}
        want = torch_probabilities(avazu_exported.net(1), *data.transform.transform(unknown_device))
        got = client.infer("nasrec_avazu", raw_inputs(metadata, unseen)).as_numpy("probability")[:, 0]
        np.testing.assert_allclose(got, want, atol=1e-5)
        with pytest.raises(InferenceServerException, match="'device_model'"):  # the online store owns it
            extra = grpcclient.InferInput("device_model", [1, 1], "BYTES")
            extra.set_data_from_numpy(np.array([[b"x"]], dtype=np.object_))
            client.infer("nasrec_avazu", [*raw_inputs(metadata, rows[:1]), extra])
    assert_no_process_left(group, shm_prefix)

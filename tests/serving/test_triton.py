"""End to end on the real tritonserver: raw rows in, the PyTorch model's probabilities out over gRPC."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from features.ingest import OnlineFeatures
from features.readers import EVENT_ID, EVENT_TIMESTAMP
from features.schema import DatasetSchema
from serving.client import CTRClient, ModelBundle, RequestFeatures, load_model, log_rows
from serving.errors import RowError, ServingError
from serving.export import CTRProbability
from serving.interface import DEFAULT_MODEL
from serving.repository import (
    CONFIG_FILE,
    LAST_VERSION_PARAMETER,
    TRANSFORM_PARAMETER,
    ServingConfig,
    add_version,
    read_config,
    transform_parameter,
    write_config,
)
from serving.server import TritonServer
from tests.conftest import shared
from tests.serving.conftest import Exported

MODEL = DEFAULT_MODEL


def torch_probabilities(net, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return CTRProbability(net)(torch.from_numpy(dense), torch.from_numpy(sparse)).numpy()[:, 0]


def validation_rows(exported: Exported) -> pd.DataFrame:
    """The validation split as ingestion wrote it: model-ready features of every validation event."""
    return pq.read_table(exported.data.out_dir / "validation.parquet").to_pandas()


def assert_no_process_left(group: int, shm_prefix: str) -> None:
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)  # no process of the server's group (server, Python stubs) is left
    assert not list(Path("/dev/shm").glob(f"{shm_prefix}*"))


def test_criteo_raw_rows_get_the_pytorch_probabilities_over_grpc(criteo_exported: Exported, tmp_path) -> None:
    schema = DatasetSchema.load(criteo_exported.exports[0] / "schema.yaml")
    repository = tmp_path / "repository"
    add_version(criteo_exported.exports[0], repository, MODEL, ServingConfig())
    validation = validation_rows(criteo_exported)
    rows = log_rows([shared("criteo")], schema, validation[EVENT_ID].tolist())
    assert len(rows) >= 1000
    dense = validation[list(schema.dense)].to_numpy(np.float32)
    sparse = validation[list(schema.categorical_names)].to_numpy(np.int64)
    v1, v2 = (torch_probabilities(criteo_exported.net(v), dense, sparse) for v in (1, 2))

    with TritonServer(repository) as server:
        group, shm_prefix = server.process.pid, server.shm_prefix
        with CTRClient.from_repository(server.url, repository) as client:
            features = client.features(rows)  # the training features of these events, from their raw fields
            np.testing.assert_array_equal(features.sparse, sparse)
            np.testing.assert_allclose(features.dense, dense, rtol=1e-6)
            assert features.version == 1
            probabilities = client.predict(rows)
            assert probabilities.shape == (len(rows),)
            assert np.abs(probabilities - v1).max() <= 1e-5

            bad_requests(client, rows)
            assert np.abs(client.predict(rows[:10]) - v1[:10]).max() <= 1e-5  # still serving
            with pytest.raises(ServingError, match="model 'absent' version 1 is not ready"):
                CTRClient(server.url, client.bundle, model="absent")

            answers = roll_out(client, rows[:64], criteo_exported.exports[1], repository, server.url)
        assert answers["failed"] == []
        assert answers["v1"] > 0 and answers["v2"] > 0 and answers["other"] == 0, answers
        with CTRClient.from_repository(server.url, repository) as client:
            assert np.abs(client.predict(rows) - v2).max() <= 1e-5
    assert server.process is None
    assert_no_process_left(group, shm_prefix)
    with pytest.raises(ServingError, match="not reachable"):
        CTRClient.from_repository(server.url, repository, timeout_s=2)


def bad_requests(client: CTRClient, rows: list[dict]) -> None:
    """Each bad request gets an error naming what is wrong; none of them stops the server."""
    field = next(iter(rows[0]))
    missing = dict(rows[1])
    del missing[field]
    with pytest.raises(RowError, match=rf"row 1: missing fields \['{field}'\]"):
        client.predict([rows[0], missing])
    with pytest.raises(RowError, match=r"row 0: unknown fields \['colour'\]"):
        client.predict([{**rows[0], "colour": "red"}])
    with pytest.raises(RowError, match=rf"row 0: field '{field}': expected a number or null, got str"):
        client.predict([{**rows[0], field: "many"}])
    inputs = client.features(rows[:4])
    with pytest.raises(ServingError, match="dense"):  # a request the server itself rejects: wrong width
        client.predict_arrays(replace(inputs, dense=inputs.dense[:, :-1]))
    inputs.sparse[2, 5] = 10**9  # an id past its table's end: the model's answer is an error, not a crash
    with pytest.raises(ServingError, match="ONNX Runtime"):
        client.predict_arrays(inputs)


def roll_out(client: CTRClient, rows: list[dict], export: Path, repository: Path, url: str) -> dict:
    """Deploy `export` as version 2 and load it while a second client loops; count whose answers came back."""
    expected = client.predict(rows)
    answers = {"v1": 0, "v2": 0, "other": 0, "failed": []}
    stop = threading.Event()
    v2: list[np.ndarray] = []

    def loop() -> None:
        with CTRClient.from_repository(url, repository) as looping:
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    got = looping.predict_arrays(features)
                except Exception as error:  # every failure is recorded: there must be none
                    answers["failed"].append(repr(error))
                    continue
                if np.abs(got - expected).max() <= 1e-5:
                    answers["v1"] += 1
                elif v2 and np.abs(got - v2[0]).max() <= 1e-5:
                    answers["v2"] += 1
                else:
                    answers["other"] += 1

    features = client.features(rows)
    thread = threading.Thread(target=loop)
    thread.start()
    try:
        time.sleep(0.5)
        folder = add_version(export, repository, MODEL, ServingConfig())
        v2.append(torch_probabilities(export_net(folder), features.dense, features.sparse))
        load_model(url, MODEL)
        time.sleep(1.0)  # version 2 answers for a while
    finally:
        stop.set()
        thread.join()
    return answers


def export_net(version_folder: Path):
    """The PyTorch model an exported version came from (export.json names its checkpoint)."""
    import json

    from model.trainer import load_model as load_checkpoint

    record = json.loads((version_folder / "export.json").read_text())
    return load_checkpoint(Path(record["checkpoint"])).eval()


def test_a_retrained_version_with_another_transform_rolls_in_and_clients_follow_it(
    criteo_exported: Exported, criteo_retrained: Exported, tmp_path
) -> None:
    schema = DatasetSchema.load(criteo_exported.exports[0] / "schema.yaml")
    rows = log_rows([shared("criteo")], schema, validation_rows(criteo_exported)[EVENT_ID].tolist()[:200])
    repository = tmp_path / "repository"
    add_version(criteo_exported.exports[0], repository, MODEL, ServingConfig())
    with TritonServer(repository) as server, contextlib.ExitStack() as clients:
        following = clients.enter_context(CTRClient.from_repository(server.url, repository))
        arrays_client = clients.enter_context(CTRClient.from_repository(server.url, repository))
        pinned = clients.enter_context(CTRClient(server.url, ModelBundle.load(repository, MODEL, 1)))
        v1_inputs = following.features(rows)
        v1 = following.predict(rows)
        expected = torch_probabilities(criteo_exported.net(1), v1_inputs.dense, v1_inputs.sparse)
        np.testing.assert_allclose(v1, expected, atol=1e-5)

        folder = add_version(criteo_retrained.exports[0], repository, MODEL, ServingConfig())
        v2_dense, v2_sparse = RequestFeatures(ModelBundle.load(repository, MODEL, 2))(rows)
        assert not np.array_equal(v2_sparse, v1_inputs.sparse)  # the new transform gives other ids
        v2 = torch_probabilities(export_net(folder), v2_dense, v2_sparse)
        np.testing.assert_allclose(following.predict(rows), v1, atol=1e-5)  # not loaded yet: version 1 answers
        load_model(server.url, MODEL)  # version 2 takes over; version 1 is retired
        wait_until_retired(server.url, version=1)

        np.testing.assert_allclose(following.predict(rows), v2, atol=1e-5)  # rows transformed for version 2
        assert following.bundle.version == 2
        stale = "these arrays hold ids of version 1's feature transform; the client now asks for version 2"
        with pytest.raises(ServingError, match=stale):  # found retired during this very call
            arrays_client.predict_arrays(v1_inputs)
        assert arrays_client.bundle.version == 2
        with pytest.raises(ServingError, match=stale):  # the client had moved before: refused all the same
            following.predict_arrays(v1_inputs)
        np.testing.assert_allclose(following.predict_arrays(following.features(rows)), v2, atol=1e-5)
        with pytest.raises(ServingError, match=r"version 1 is not ready, and this client has no repository"):
            pinned.predict(rows)


def wait_until_retired(url: str, version: int, timeout_s: float = 30.0) -> None:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        deadline = time.monotonic() + timeout_s
        while client.is_model_ready(MODEL, str(version)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"version {version} still served after {timeout_s} s")
            time.sleep(0.05)


def as_written_before_cfe57dd(config_path: Path) -> None:
    """Rewrite a model config as the repository writer did when all versions shared one transform digest."""
    config = read_config(config_path)
    digest = config.parameters[transform_parameter(1)].string_value
    config.parameters[TRANSFORM_PARAMETER].string_value = digest
    for key in (transform_parameter(1), LAST_VERSION_PARAMETER):
        del config.parameters[key]
    write_config(config_path, config)


def test_avazu_rows_get_their_entity_features_from_the_online_store(avazu_exported: Exported, tmp_path) -> None:
    export = avazu_exported.exports[0]
    schema = DatasetSchema.load(export / "schema.yaml")
    data = avazu_exported.data
    events = pq.read_table(data.out_dir / "offline" / "events.parquet").to_pandas()
    online = OnlineFeatures(data.repo, schema, data.transform)
    online.materialize(events[EVENT_TIMESTAMP].min(), events[EVENT_TIMESTAMP].max() + timedelta(hours=1))
    ids = validation_rows(avazu_exported)[EVENT_ID].tolist()
    rows = log_rows([shared("avazu")], schema, ids)
    assert len(rows) >= 900 and all("device_model" not in r and "device_id" in r for r in rows)
    # what the online store holds for these rows' entities, read through Feast's SDK (not the client's path)
    refs = [f"{schema.name}_{e.name}_fv:{f}" for e in schema.entities for f in e.features]
    keys = [{e.key: row[e.key] for e in schema.entities} for row in rows]
    stored = online.store.get_online_features(features=refs, entity_rows=keys).to_dict()
    assert sum(v is not None for v in stored["device_model"]) > 0.9 * len(rows)
    columns = {f: [row[f] for row in rows] for f in rows[0]} | {f: stored[f] for f in schema.entity_features}
    dense, sparse = data.transform.transform(columns)
    expected = torch_probabilities(avazu_exported.net(1), dense, sparse)

    repository = tmp_path / "repository"
    add_version(export, repository, MODEL, ServingConfig())
    as_written_before_cfe57dd(repository / MODEL / CONFIG_FILE)  # one transform digest for all versions
    with TritonServer(repository) as server:
        group, shm_prefix = server.process.pid, server.shm_prefix
        with CTRClient.from_repository(server.url, repository) as client:
            got = client.features(rows)
            np.testing.assert_array_equal(got.sparse, sparse)
            assert np.abs(client.predict(rows) - expected).max() <= 1e-5
            with pytest.raises(RowError, match=r"row 0: unknown fields \['device_model'\]"):
                client.predict([{**rows[0], "device_model": "x"}])  # the online store owns entity features
            unseen = {**rows[0], "device_id": "never-seen-device"}  # no online record: its features are id 0
            unseen_ids = client.features([unseen]).sparse
            device = [schema.categorical_names.index(f) for f in schema.entities[0].features]
            assert (unseen_ids[0, device] == 0).all()
            assert client.predict([unseen]).shape == (1,)
    assert_no_process_left(group, shm_prefix)

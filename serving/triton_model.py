"""Triton Python-backend model: a CTR model's two endpoints, copied into each version directory as model.py.

It runs inside Triton's Python backend stub, in the serving runtime environment (numpy < 2, onnxruntime, and a
Feast release that supports numpy < 2), and imports nothing of this project but the `features` modules copied
beside it.

- `ids` (parameter `nasrec_inputs: ids`): model-ready `dense` and `sparse` arrays in, ONNX Runtime on the
  version's model.onnx (the local variant's ids endpoint; in production Triton's ONNX Runtime backend serves it).
- `events`: the schema's raw event fields in, one input per field (dense FP32 with NaN for missing,
  categorical BYTES with b"" for missing). The version's own fitted transform (`transform.json`, applied by the
  project's `features.transform` copied beside it) makes model inputs, entity features (for a schema with
  entities, the request carries only their keys) read from the Feast online store that `feature_repo/` names,
  through `features.online` as ingestion reads it; and the version's own network scores
  them: ONNX Runtime on the model.onnx beside it, or, when the config names `nasrec_ids_model` (production),
  that model's version of the same number through BLS. So version N's transform always runs with version N's
  network.

Each request of a dynamic batch is checked on its own: a bad one gets its own error response and the others
are answered. The requests that pass are scored together in one call: their BYTES inputs, which the stub hands
over still serialised (`keep_serialized`), are read at once, every vocabulary is looked up at once, and a large
batch is cut into parts run at once on a thread pool (ONNX Runtime releases the GIL), because on this graph of
many small operators that uses a second core far better than intra-op threads do.
"""

from __future__ import annotations

import gc
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

if TYPE_CHECKING:
    from features.transform import ByteColumn

DENSE, SPARSE, OUTPUT = "dense", "sparse", "probability"
MIN_PART_ROWS = 128  # smaller parts cost more per row than they save


class RequestError(ValueError):
    """This request is malformed; the message names the field and what is allowed."""


@dataclass(frozen=True)
class EventRequest:
    """A checked raw-event request: its dense fields as one array, its BYTES fields still serialised."""

    rows: int
    dense: np.ndarray  # float32, (rows, n_dense), NaN for missing
    serialized: dict[str, Serialized]


def keep_serialized(buffer: np.ndarray) -> Serialized:
    """Takes the place of `pb_utils.deserialize_bytes_tensor`, which the stub calls on every BYTES input's
    serialised buffer, then reshapes the result to the input's shape: the buffer is kept as it is, so a batch's
    categorical values are read from all their buffers at once (`byte_columns`), with no Python object per value."""
    return Serialized.holding(buffer, (0,))


class Serialized(np.ndarray):
    """A BYTES input as Triton serialises it (each element: a 4-byte little-endian length, then its bytes), held in
    `buffer`; as an array it has only the input's shape (object dtype, every element None)."""

    buffer: np.ndarray

    @classmethod
    def holding(cls, buffer: np.ndarray, shape) -> Serialized:
        array = np.empty(shape, dtype=object).view(cls)
        array.buffer = buffer
        return array

    def reshape(self, *shape) -> Serialized:
        return Serialized.holding(self.buffer, shape[0] if len(shape) == 1 else shape)


def byte_columns(names: list[str], requests: list[dict[str, Serialized]], rows: int) -> dict[str, ByteColumn]:
    """The BYTES inputs `names` of a batch's requests (`rows` rows in all), each field's values of every request in
    order as one ByteColumn over one shared buffer, read in one compiled pass."""
    from features.compiled import length_prefixed  # the copies beside this file, on the path once `initialize` ran
    from features.transform import ByteColumn

    data = np.concatenate([request[name].buffer for name in names for request in requests])
    starts, lengths, whole = length_prefixed(data)
    if not whole or len(starts) != rows * len(names):  # Triton checks each input itself
        raise RuntimeError(f"the BYTES inputs do not hold {rows} rows of {len(names)} fields")
    return {
        name: ByteColumn(data, starts[k * rows : (k + 1) * rows], lengths[k * rows : (k + 1) * rows])
        for k, name in enumerate(names)
    }


class OnnxModel:
    """ONNX Runtime on one model.onnx, a large batch run as parts at once."""

    def __init__(self, path: Path, threads: int, parts: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.parts = parts
        self.pool = ThreadPoolExecutor(parts) if parts > 1 else None

    def __call__(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        parts = min(self.parts, len(dense) // MIN_PART_ROWS)
        if parts < 2:
            return self._run(dense, sparse)
        results = self.pool.map(self._run, np.array_split(dense, parts), np.array_split(sparse, parts))
        return np.concatenate(list(results))

    def _run(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {DENSE: dense, SPARSE: sparse})[0]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


class IdsModel:
    """The network called through Triton (BLS): the ids model's version of this version's number."""

    def __init__(self, name: str, version: int):
        self.name, self.version = name, version

    def __call__(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        request = pb_utils.InferenceRequest(
            model_name=self.name,
            model_version=self.version,
            requested_output_names=[OUTPUT],
            inputs=[pb_utils.Tensor(DENSE, dense), pb_utils.Tensor(SPARSE, sparse)],
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{self.name} version {self.version}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, OUTPUT).as_numpy()

    def close(self) -> None:
        pass


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        self.events = parameters.get("nasrec_inputs") == "events"
        if "nasrec_ids_model" in parameters:
            self.network = IdsModel(parameters["nasrec_ids_model"], int(args["model_version"]))
        else:
            threads = int(parameters.get("onnx_intra_op_threads", "1"))
            self.network = OnnxModel(folder / "model.onnx", threads, int(parameters.get("onnx_parallel_runs", "1")))
        if self.events:
            sys.path.insert(0, str(folder))  # the `features` modules copied beside this file
            from features.schema import DatasetSchema
            from features.transform import FeatureTransform

            self.transform = FeatureTransform.load(folder / "transform.json")
            schema = DatasetSchema.load(folder / "schema.yaml")
            self.entity_keys = [e.key for e in schema.entities]
            if self.entity_keys:
                from feast import FeatureStore  # only for schemas with entities

                from features.online import OnlineReader

                self.online = OnlineReader(FeatureStore(repo_path=str(folder / "feature_repo")), schema)
            self.byte_fields = [i["name"] for i in config["input"] if i["data_type"] == "TYPE_STRING"]
            pb_utils.deserialize_bytes_tensor = keep_serialized  # what the stub calls for BYTES inputs
        # what is loaded lives as long as the model, so a full collection need not walk it mid-request (one stalled
        # a 512-key online read by up to ~180 ms in a timing of reads like bench/ingest.py's)
        gc.collect()
        gc.freeze()

    def execute(self, requests: list) -> list:
        batches, errors = [], {}
        for index, request in enumerate(requests):
            try:
                batches.append((index, self._columns(request) if self.events else self._arrays(request)))
            except RequestError as error:
                errors[index] = str(error)
        responses = dict(self._score(batches)) if batches else {}
        responses |= {index: _error(message) for index, message in errors.items()}
        return [responses[index] for index in range(len(requests))]

    def _arrays(self, request) -> tuple[np.ndarray, np.ndarray]:
        dense = pb_utils.get_input_tensor_by_name(request, DENSE).as_numpy()
        sparse = pb_utils.get_input_tensor_by_name(request, SPARSE).as_numpy()
        if len(dense) == 0:  # Triton refuses inputs of unequal rows itself
            raise RequestError("empty batch: a request needs at least one row")
        return dense, sparse

    def _columns(self, request) -> EventRequest:
        """A request's raw fields, checked: the dense ones as one (rows, n_dense) array, the BYTES ones serialised."""
        columns = {tensor.name(): tensor.as_numpy() for tensor in request.inputs()}
        rows = len(next(iter(columns.values())))
        if not rows:  # Triton refuses missing, unknown and unequal inputs itself
            raise RequestError("empty batch: a request needs at least one row")
        fields = self.transform.dense
        dense = np.concatenate([columns[f] for f in fields], axis=1) if fields else np.zeros((rows, 0), np.float32)
        infinite = np.argwhere(np.isinf(dense))
        if len(infinite):
            row, column = infinite[0]
            raise RequestError(
                f"field {fields[column]!r}, row {row}: {dense[row, column]} is not allowed: a finite number, or NaN "
                "for a missing value"
            )
        return EventRequest(rows, dense, {name: columns[name] for name in self.byte_fields})

    def _score(self, batches: list) -> list:
        """Score the checked requests in one call; should that fail, each on its own, so one failure is one
        request's error."""
        try:
            return self._split(batches, self._probabilities([inputs for _, inputs in batches]))
        except Exception:
            if len(batches) == 1:
                return [(batches[0][0], _error(f"the model failed: {sys.exc_info()[1]}"))]
        return [pair for batch in batches for pair in self._score([batch])]

    def _probabilities(self, inputs: list) -> np.ndarray:
        if self.events:
            rows = sum(request.rows for request in inputs)
            categorical = byte_columns(self.byte_fields, [request.serialized for request in inputs], rows)
            for key in self.entity_keys:
                categorical |= self.online.read_bytes(key, categorical[key])
            dense = np.concatenate([request.dense for request in inputs])
            dense, sparse = self.transform.transform_request(dense, categorical)
        else:
            dense, sparse = (np.concatenate(arrays) for arrays in zip(*inputs))
        return self.network(dense, sparse)

    def _split(self, batches: list, probability: np.ndarray) -> list:
        answers, start = [], 0
        for index, inputs in batches:
            rows = inputs.rows if self.events else len(inputs[0])
            tensor = pb_utils.Tensor(OUTPUT, probability[start : start + rows])
            answers.append((index, pb_utils.InferenceResponse(output_tensors=[tensor])))
            start += rows
        return answers

    def finalize(self) -> None:
        self.network.close()


def _error(message: str):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))

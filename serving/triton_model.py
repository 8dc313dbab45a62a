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
are answered. The requests that pass are scored together in one call; a large batch is cut into parts run at
once on a thread pool (ONNX Runtime releases the GIL), because on this graph of many small operators that
uses a second core far better than intra-op threads do.
"""

import json
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

DENSE, SPARSE, OUTPUT = "dense", "sparse", "probability"
MIN_PART_ROWS = 128  # smaller parts cost more per row than they save
MIN_VIEW_ELEMENTS = 32  # below this a BYTES tensor is parsed faster by a plain loop than by numpy views
_LENGTH = struct.Struct("<I")


class RequestError(ValueError):
    """This request is malformed; the message names the field and what is allowed."""


def parse_bytes_tensor(buffer) -> np.ndarray:
    """Triton's serialised BYTES tensor (each element: a 4-byte little-endian length, then its bytes), elementwise
    equal to `pb_utils.deserialize_bytes_tensor`'s object array, several times faster on large tensors.

    A large tensor whose values share one length and hold no NUL byte, some of them empty (most categorical
    columns, missing values included), comes back as a fixed-width `S<width>` array read with numpy alone, empty
    entries for the empty values; any other tensor as an object array of bytes.
    """
    data = np.frombuffer(buffer, dtype=np.uint8)
    fixed = _one_width(data) if len(data) >= 4 * MIN_VIEW_ELEMENTS else None
    return fixed if fixed is not None else _objects(_each_value(bytes(data)))


def _one_width(data: np.ndarray) -> np.ndarray | None:
    """When no value holds a NUL byte, the buffer's zero bytes are exactly its length prefixes' zeros: a value's
    prefix `[w, 0, 0, 0]` (w < 256) leaves a run of three after its length byte, an empty value's `[0, 0, 0, 0]`
    four, and m empty values in a row a run of 4m. The records read off the zero runs are kept only if they tile
    the whole buffer, each starting where the one before ends: that tiling is the buffer's one parse, and it has
    no room for a NUL inside a value. None when that fails, or the values have several lengths."""
    width = int(data[0])
    if width and len(data) % (4 + width) == 0:  # no empty value: one reshape reads them all
        records = data.reshape(-1, 4 + width)
        if (records[:, 0] == width).all() and not records[:, 1:4].any() and records[:, 4:].all():
            return records[:, 4:].copy().view(f"S{width}")[:, 0]
    zero = np.concatenate(([False], data == 0, [False]))
    edges = np.flatnonzero(zero[1:] != zero[:-1])
    starts, runs = edges[0::2], edges[1::2] - edges[0::2]
    valued = runs == 3
    if not (valued | (runs % 4 == 0)).all() or (valued & (starts == 0)).any():
        return None
    empties = runs[~valued] // 4
    first = np.repeat(starts[~valued], empties)
    within = np.arange(empties.sum()) - np.repeat(np.cumsum(empties) - empties, empties)
    records = np.concatenate((starts[valued] - 1, first + 4 * within))
    lengths = np.concatenate((data[starts[valued] - 1].astype(np.int64), np.zeros(len(first), np.int64)))
    order = np.argsort(records, kind="stable")
    records, lengths = records[order], lengths[order]
    width = int(lengths.max(initial=0))
    if (
        not len(records)
        or records[0] != 0
        or records[-1] + 4 + lengths[-1] != len(data)
        or not np.array_equal(records[1:], records[:-1] + 4 + lengths[:-1])
        or not ((lengths == 0) | (lengths == width)).all()
    ):
        return None
    values = np.zeros((len(records), max(width, 1)), dtype=np.uint8)
    present = lengths > 0
    values[present, :width] = data[(records[present] + 4)[:, None] + np.arange(width)]
    return values.view(f"S{max(width, 1)}")[:, 0]


def _each_value(buffer: bytes) -> list[bytes]:
    values, offset, end = [], 0, len(buffer)
    while offset < end:
        (length,) = _LENGTH.unpack_from(buffer, offset)
        offset += 4
        values.append(buffer[offset : offset + length])
        offset += length
    return values


def _objects(values: list) -> np.ndarray:
    """A 1-D object array of these values (np.array would make a fixed-width bytes array of them)."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


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
            self.inputs = {i["name"]: i["data_type"] for i in config["input"]}
            self.dense_fields = [name for name, kind in self.inputs.items() if kind == "TYPE_FP32"]
            pb_utils.deserialize_bytes_tensor = parse_bytes_tensor  # what the stub calls for BYTES inputs

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

    def _columns(self, request) -> dict[str, np.ndarray]:
        """A request's raw fields, one flat column each, checked."""
        columns = {tensor.name(): tensor.as_numpy() for tensor in request.inputs()}
        if not len(next(iter(columns.values()))):  # Triton refuses missing, unknown and unequal inputs itself
            raise RequestError("empty batch: a request needs at least one row")
        for name in self.dense_fields:
            infinite = np.flatnonzero(np.isinf(columns[name]))
            if infinite.size:
                raise RequestError(
                    f"field {name!r}, row {infinite[0]}: {columns[name].flat[infinite[0]]} is not allowed: a "
                    "finite number, or NaN for a missing value"
                )
        return {name: values.reshape(-1) for name, values in columns.items()}

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
            columns = dict(inputs[0])
            if len(inputs) > 1:
                columns = {name: np.concatenate([c[name] for c in inputs]) for name in self.inputs}
            for key in self.entity_keys:
                columns |= self._entity_features(key, columns[key])
            dense, sparse = self.transform.transform_request(columns)
        else:
            dense, sparse = (np.concatenate(arrays) for arrays in zip(*inputs))
        return self.network(dense, sparse)

    def _entity_features(self, key: str, values: np.ndarray) -> dict[str, np.ndarray]:
        """The features of the entities these keys name, as the online store holds them now (b"": unknown)."""
        distinct, rows = np.unique(values, return_inverse=True)
        found = self.online.read(key, [v or None for v in distinct])
        return {feature: _objects([(v or "").encode() for v in got])[rows] for feature, got in found.items()}

    def _split(self, batches: list, probability: np.ndarray) -> list:
        answers, start = [], 0
        for index, inputs in batches:
            rows = len(next(iter(inputs.values()))) if self.events else len(inputs[0])
            tensor = pb_utils.Tensor(OUTPUT, probability[start : start + rows])
            answers.append((index, pb_utils.InferenceResponse(output_tensors=[tensor])))
            start += rows
        return answers

    def finalize(self) -> None:
        self.network.close()


def _error(message: str):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))

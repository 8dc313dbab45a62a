"""The CTR client: raw event rows in, click probabilities out, over Triton's gRPC API. It needs only the server.

A row maps each field the model takes (its inputs, as Triton's model metadata lists them: the schema's event
fields, entity keys rather than entity features) to its raw value: a number or None for a dense (FP32) field,
text, an integer or None for a categorical (BYTES) field. The server applies the served version's fitted
transform and reads entity features from its online store; the client only checks the rows, encodes them
(NaN and b"" for missing) and sends requests of at most the model's `max_batch_size` rows.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serving.errors import RowError, ServingError
from serving.interface import DENSE_INPUT, IDS_SUFFIX, OUTPUT, SPARSE_INPUT
from serving.repository import CANDIDATE_SUFFIX

DENSE_TYPE, CATEGORICAL_TYPE = "FP32", "BYTES"


class CTRClient:
    """Click probabilities for raw events from the Triton server at `url`.

    `model`: the model taking raw events (e.g. nasrec_criteo); None: the one such model the server has ready.
    `max_batch_size`: the most rows a request carries (at most the model's).
    """

    def __init__(self, url: str, model: str | None = None, timeout_s: float = 30.0, max_batch_size: int = 0):
        self.url = url
        self.model = model or ""
        self.timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(url)
        try:
            self._check_live()
            self.model = model or self._only_events_model()
            metadata = self._call(self._client.get_model_metadata, self.model)
            self.fields = {i.name: i.datatype for i in metadata.inputs}
            served_batch = self._call(self._client.get_model_config, self.model).config.max_batch_size
            unknown = {n: kind for n, kind in self.fields.items() if kind not in (DENSE_TYPE, CATEGORICAL_TYPE)}
            if unknown or not served_batch:
                raise ServingError(f"Triton at {url}: model {self.model!r} does not take raw events (inputs {unknown})")
        except BaseException:
            self.close()
            raise
        self.max_batch_size = min(max_batch_size or served_batch, served_batch)
        self.dense_fields = frozenset(n for n, kind in self.fields.items() if kind == DENSE_TYPE)

    def _check_live(self) -> None:
        try:
            live = self._client.is_server_live(client_timeout=self.timeout_s)
        except InferenceServerException as error:
            raise ServingError(f"Triton at {self.url} is not reachable: {error.message()}") from None
        if not live:
            raise ServingError(f"Triton at {self.url} is not live")

    def _only_events_model(self) -> str:
        index = self._call(self._client.get_model_repository_index).models
        ready = sorted(
            m.name for m in index if m.state == "READY" and not m.name.endswith((IDS_SUFFIX, CANDIDATE_SUFFIX))
        )
        if len(ready) != 1:
            raise ServingError(f"Triton at {self.url} serves {ready or 'no'} models of raw events: name one (model=)")
        return ready[0]

    def _call(self, method, *args: Any, **kwargs: Any):
        try:
            return method(*args, client_timeout=self.timeout_s, **kwargs)
        except InferenceServerException as error:
            raise ServingError(f"Triton at {self.url}, model {self.model!r}: {error.message()}") from None

    def inputs(self, rows: Sequence[Mapping[str, Any]]) -> list[grpcclient.InferInput]:
        """The gRPC inputs of one request for these rows (checked: a bad row or field is named)."""
        if not rows:
            raise RowError("no rows to score")
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise RowError(f"row {index}: expected a mapping of field names to values, got {type(row).__name__}")
            if row.keys() != self.fields.keys():
                missing = [f for f in self.fields if f not in row]
                extra = sorted(str(f) for f in row if f not in self.fields)
                problems = [f"missing fields {missing}" if missing else "", f"unknown fields {extra}" if extra else ""]
                raise RowError(f"row {index}: " + "; ".join(p for p in problems if p))
        return [self._input(name, [row[name] for row in rows]) for name in self.fields]

    def _input(self, name: str, values: list) -> grpcclient.InferInput:
        if name in self.dense_fields:
            array = np.array([_dense_value(name, i, v) for i, v in enumerate(values)], dtype=np.float32)
        else:
            array = np.empty(len(values), dtype=object)
            array[:] = [_category_bytes(name, i, v) for i, v in enumerate(values)]
        tensor = grpcclient.InferInput(name, [len(values), 1], self.fields[name])
        tensor.set_data_from_numpy(array.reshape(-1, 1))
        return tensor

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Click probabilities, one per row (float32), in requests of at most `max_batch_size` rows."""
        step = self.max_batch_size
        return np.concatenate([self._infer(rows[i : i + step]) for i in range(0, max(len(rows), 1), step)])

    def _infer(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        result = self._call(
            self._client.infer, self.model, self.inputs(rows), outputs=[grpcclient.InferRequestedOutput(OUTPUT)]
        )
        probability = result.as_numpy(OUTPUT)
        if probability is None or probability.shape != (len(rows), 1):
            shape = None if probability is None else probability.shape
            raise ServingError(f"Triton at {self.url}: expected {len(rows)} probabilities, got shape {shape}")
        return probability[:, 0]

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:  # dropped now, so tritonclient's __del__ runs while grpc is still alive
            client.close()

    def __enter__(self) -> CTRClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dense_value(name: str, row: int, value: Any) -> float:
    if value is None:
        return math.nan
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise RowError(f"row {row}: field {name!r}: expected a number or null, got {type(value).__name__} {value!r}")
    if math.isinf(value) or math.isnan(value):
        raise RowError(f"row {row}: field {name!r}: {value!r} is not a finite number (null for a missing value)")
    return value


def _category_bytes(name: str, row: int, value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode()
    raise RowError(
        f"row {row}: field {name!r}: expected a string, an integer or null, got {type(value).__name__} {value!r}"
    )


def infer_inputs(dense: np.ndarray, sparse: np.ndarray) -> list[grpcclient.InferInput]:
    """The gRPC inputs of one request to a model's ids endpoint (`<model>_ids`) for model-ready arrays."""
    inputs = [
        grpcclient.InferInput(DENSE_INPUT, list(dense.shape), "FP32"),
        grpcclient.InferInput(SPARSE_INPUT, list(sparse.shape), "INT64"),
    ]
    inputs[0].set_data_from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
    inputs[1].set_data_from_numpy(np.ascontiguousarray(sparse, dtype=np.int64))
    return inputs


def load_models(url: str, models: Sequence[str], timeout_s: float = 120.0, unload: bool = False) -> None:
    """Ask a server in explicit model control to (re)load `models`, in order, or to unload them: a model's newest
    versions take over once ready."""
    verb = "unload" if unload else "load"
    with grpcclient.InferenceServerClient(url) as client:
        for model in models:
            try:
                getattr(client, f"{verb}_model")(model, client_timeout=timeout_s)
            except InferenceServerException as error:
                raise ServingError(f"Triton at {url}: {verb}ing {model!r} failed: {error.message()}") from None


def read_rows(path: Path, dense_fields: Collection[str]) -> list[dict[str, Any]]:
    """Raw rows from a .jsonl file (an object per line) or a .csv file with a header.

    CSV values are text: `dense_fields` are parsed as numbers and empty cells become null, as the raw
    readers do; errors name the line.
    """
    path = Path(path)
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return [_typed(row, dense_fields, f"{path}:{line}") for line, row in enumerate(csv.DictReader(f), start=2)]
    rows = []
    with path.open() as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                rows.append(json.loads(text))
            except json.JSONDecodeError as error:
                raise RowError(f"{path}:{line}: not a JSON object: {error}") from None
    return rows


def log_rows(raw_paths: Sequence[Path], schema, event_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Logged events as a client sends them: the schema's event fields of each (entity keys, not entity
    features), numbers for dense fields, text for categories, None where the log is empty (event ids count data
    rows across the files, as ingestion does)."""
    from features.readers import raw_records  # pyarrow: only for this

    records = raw_records(list(raw_paths), schema, list(event_ids))
    fields = schema.event_features
    return [_typed({f: records[i].get(f) for f in fields}, schema.dense, f"event {i}") for i in event_ids]


def _typed(row: dict[str, str | None], dense_fields: Collection[str], where: str) -> dict[str, Any]:
    typed: dict[str, Any] = {}
    for name, text in row.items():
        if text is None or text == "":
            typed[name] = None
        elif name in dense_fields:
            try:
                typed[name] = float(text)
            except ValueError:
                raise RowError(f"{where}: field {name!r}: {text!r} is not a number") from None
        else:
            typed[name] = text
    return typed

"""The CTR client: raw feature rows in, click probabilities out, over Triton's gRPC API.

A row is a mapping of the schema's raw column names to raw values, as in the log. The client checks each
row, fetches entity features from the Feast online store when the schema has entities (the row then
carries the entity keys, not the entity's features), applies the served model's fitted feature transform
(the same code as training; unseen categories become id 0), batches the rows and calls Triton.

A client asks for one version of the model: the one whose transform it holds. When the server stops serving it
(a newer version rolled in), a client made from the repository moves to the newest version the server has ready,
so a retrained model with another transform can roll in under the same name while clients keep asking.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from features.schema import DatasetSchema
from features.transform import FeatureTransform
from serving.errors import RowError, ServingError
from serving.interface import DEFAULT_MODEL, DENSE_INPUT, OUTPUT, SPARSE_INPUT
from serving.repository import transform_parameter, version_transform, versions


@dataclass(frozen=True)
class ModelBundle:
    """What a client needs of one served version: its transform and schema (from the version directory)."""

    transform: FeatureTransform
    schema: DatasetSchema
    feature_repo: Path | None
    version: int

    @classmethod
    def load(cls, repository: Path, model: str = DEFAULT_MODEL, version: int | None = None) -> ModelBundle:
        """The bundle of `version` of `model` in a Triton model repository (default: the latest)."""
        model_dir = Path(repository) / model
        available = versions(model_dir)
        if not available:
            raise FileNotFoundError(f"{model_dir}: no model versions; write one with `nasrec deploy`")
        version = available[-1] if version is None else version
        if version not in available:
            raise FileNotFoundError(f"{model_dir}: no version {version}; there are {available}")
        folder = model_dir / str(version)
        record = json.loads((folder / "export.json").read_text())
        feature_repo = record.get("feature_repo")
        return cls(
            FeatureTransform.load(folder / "transform.json"),
            DatasetSchema.load(folder / "schema.yaml"),
            Path(feature_repo) if feature_repo else None,
            version,
        )


class RowChecker:
    """Turns request rows into raw columns, naming the row and field of anything malformed."""

    def __init__(self, schema: DatasetSchema):
        self.fields = schema.event_features  # the entity keys, not the features the online store owns
        self.dense = frozenset(schema.dense)
        self._expected = frozenset(self.fields)

    def columns(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, list]:
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise RowError(f"row {index}: expected a mapping of field names to values, got {type(row).__name__}")
            if row.keys() != self._expected:
                self._report_fields(index, row)
        columns = {name: [row[name] for row in rows] for name in self.fields}
        for name, values in columns.items():
            self._check_types(name, values)
        return columns

    def _report_fields(self, index: int, row: Mapping[str, Any]) -> None:
        missing = [f for f in self.fields if f not in row]
        extra = sorted(str(f) for f in row if f not in self._expected)
        problems = [f"missing fields {missing}" if missing else "", f"unknown fields {extra}" if extra else ""]
        raise RowError(f"row {index}: " + "; ".join(p for p in problems if p))

    def _check_types(self, name: str, values: list) -> None:
        if name in self.dense:
            allowed, wanted = (int, float, type(None)), "a number or null"
        else:
            allowed, wanted = (str, int, type(None)), "a string, an integer or null"
        for index, value in enumerate(values):
            if not isinstance(value, allowed) or isinstance(value, bool):
                raise RowError(f"row {index}: field {name!r}: expected {wanted}, got {type(value).__name__} {value!r}")
            if name in self.dense and isinstance(value, float) and math.isinf(value):
                raise RowError(f"row {index}: field {name!r}: {value!r} is not a finite number")


class RequestFeatures:
    """Raw rows -> model-ready arrays: rows checked, entity features read from the online store, transformed."""

    def __init__(self, bundle: ModelBundle, feature_repo: Path | None = None):
        self.bundle = bundle
        self.rows = RowChecker(bundle.schema)
        self.online = None
        if bundle.schema.entities:
            from features.ingest import OnlineFeatures  # Feast: only for schemas with entities

            repo = feature_repo or bundle.feature_repo
            if repo is None or not Path(repo).exists():
                raise FileNotFoundError(
                    f"schema {bundle.schema.name!r} has entities: the client needs the Feast feature repo "
                    f"(got {repo}); pass feature_repo"
                )
            self.online = OnlineFeatures(Path(repo), bundle.schema, bundle.transform)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        if not rows:
            raise RowError("no rows to score")
        columns = self.rows.columns(rows)
        if self.online is not None:
            keys = {e.key: columns[e.key] for e in self.bundle.schema.entities}
            columns |= self.online.raw_features(keys)
        return self.bundle.transform.transform(columns)


class VersionNotReadyError(ServingError):
    """The server does not have the version asked for ready: still loading, or retired by a newer one."""


@dataclass(frozen=True)
class ModelInputs:
    """Model-ready arrays of request rows, and the version whose feature transform made them."""

    dense: np.ndarray  # (B, n_dense) float32
    sparse: np.ndarray  # (B, n_sparse) int64
    version: int


class CTRClient:
    """Click probabilities from a Triton server for raw feature rows.

    `bundle`: the version to ask for; None (with `repository`): the newest version of `repository` that the
    server has ready. With `repository`, the client follows the model to its newest ready version when the
    server retires the one it asks for. `feature_repo`: the Feast repository for entity features, for every
    version (default: the one each version's export records).
    """

    def __init__(
        self,
        url: str,
        bundle: ModelBundle | None,
        model: str = DEFAULT_MODEL,
        feature_repo: Path | None = None,
        max_batch_size: int = 4096,
        timeout_s: float = 30.0,
        repository: Path | None = None,
    ):
        if bundle is None and repository is None:
            raise ValueError("CTRClient: give the bundle of a version, or the repository to take the newest from")
        self.url = url
        self.model = model
        self.feature_repo = feature_repo
        self.repository = Path(repository) if repository is not None else None
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self._digests: dict[int, str] = {}  # each version used so far: its transform digest
        self._client = grpcclient.InferenceServerClient(url)
        try:
            self._check_live()
            if bundle is None:
                self._follow()
            else:
                self._use(bundle)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_repository(
        cls, url: str, repository: Path, model: str = DEFAULT_MODEL, feature_repo: Path | None = None, **options: Any
    ) -> CTRClient:
        """A client for the newest version of `model` in the Triton model repository that the server has ready."""
        return cls(url, None, model, feature_repo, repository=repository, **options)

    @property
    def bundle(self) -> ModelBundle:
        """The version the client asks for now."""
        return self._current[0]

    def _check_live(self) -> None:
        try:
            live = self._client.is_server_live(client_timeout=self.timeout_s)
        except InferenceServerException as error:
            raise ServingError(f"Triton at {self.url} is not reachable: {error.message()}") from None
        if not live:
            raise ServingError(f"Triton at {self.url} is not live")

    def _ready(self, version: int) -> bool:
        return self._call(self._client.is_model_ready, self.model, str(version))

    def _use(self, bundle: ModelBundle) -> None:
        """Ask for `bundle`'s version from now on: the server must have it ready, trained with its transform."""
        where = f"Triton at {self.url}: model {self.model!r} version {bundle.version}"
        if not self._ready(bundle.version):
            raise VersionNotReadyError(f"{where} is not ready (loaded? still loading? retired by a newer version?)")
        config = self._call(self._client.get_model_config, self.model, str(bundle.version)).config
        served = version_transform(config, bundle.version)
        if not served:
            raise ServingError(
                f"{where}: its config does not say which feature transform it was trained with (parameter "
                f"{transform_parameter(bundle.version)}); write its repository with `nasrec deploy`"
            )
        if served != bundle.transform.sha256():
            raise ServingError(
                f"{where} was trained with feature transform {served[:12]}, the client's bundle holds "
                f"{bundle.transform.sha256()[:12]}: is the server serving another repository?"
            )
        self.max_batch_size = min(self.max_batch_size, config.max_batch_size or self.max_batch_size)
        self._digests[bundle.version] = served
        self._current = (bundle, RequestFeatures(bundle, self.feature_repo))  # one assignment: seen whole

    def _follow(self) -> None:
        """Ask for the newest version of the repository that the server has ready from now on."""
        if self.repository is None:
            raise VersionNotReadyError(
                f"Triton at {self.url}: model {self.model!r} version {self.bundle.version} is not ready, and this "
                f"client has no repository to find another version in (make it with from_repository)"
            )
        model_dir = self.repository / self.model
        for version in reversed(versions(model_dir)):
            try:
                self._use(ModelBundle.load(self.repository, self.model, version))
                return
            except VersionNotReadyError:
                continue  # loading, or retired since: an older one may still serve
        raise VersionNotReadyError(
            f"Triton at {self.url}: no version of model {self.model!r} in {model_dir} is ready (loaded? loading?)"
        )

    def _call(self, method, *args: Any, **kwargs: Any):
        try:
            return method(*args, client_timeout=self.timeout_s, **kwargs)
        except InferenceServerException as error:
            raise ServingError(f"Triton at {self.url}, model {self.model!r}: {error.message()}") from None

    def features(self, rows: Sequence[Mapping[str, Any]]) -> ModelInputs:
        """The rows checked and transformed for the version the client asks for now."""
        bundle, request_features = self._current
        return ModelInputs(*request_features(rows), bundle.version)

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Click probabilities, one per row (float32). Should the server retire the version asked for, the
        client follows the model to its newest version and asks again, with that version's transform."""
        return self._ask(lambda: self.features(rows))

    def predict_arrays(self, inputs: ModelInputs) -> np.ndarray:
        """Probabilities for rows that `features` made. They go to the version the client asks for now, which
        must have the same transform as the version that made them (else ServingError: make them again)."""
        return self._ask(lambda: inputs)

    def _ask(self, make_inputs: Callable[[], ModelInputs]) -> np.ndarray:
        """Predict; once more, after following the model, should the server have retired the version."""
        try:
            return self._predict(make_inputs())
        except VersionNotReadyError:
            self._follow()
            return self._predict(make_inputs())

    def _predict(self, inputs: ModelInputs) -> np.ndarray:
        """Sent in requests of at most `max_batch_size` rows, to the version asked for now."""
        version = self.bundle.version
        if self._digests.get(inputs.version) != self._digests[version]:
            raise ServingError(
                f"Triton at {self.url}: model {self.model!r}: these arrays hold ids of version {inputs.version}'s "
                f"feature transform; the client now asks for version {version}, which has another: make them again"
            )
        dense, sparse, step = inputs.dense, inputs.sparse, self.max_batch_size
        parts = [self._infer(dense[i : i + step], sparse[i : i + step], version) for i in range(0, len(dense), step)]
        return np.concatenate(parts)

    def _infer(self, dense: np.ndarray, sparse: np.ndarray, version: int) -> np.ndarray:
        try:
            result = self._client.infer(
                self.model,
                infer_inputs(dense, sparse),
                model_version=str(version),
                outputs=[grpcclient.InferRequestedOutput(OUTPUT)],
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as error:
            failure = ServingError(f"Triton at {self.url}, model {self.model!r}: {error.message()}")
            try:
                retired = not self._ready(version)
            except ServingError:
                raise failure from None  # the server is gone too: the request's own error says more
            if retired:
                failure = VersionNotReadyError(f"Triton at {self.url}: model {self.model!r} retired version {version}")
            raise failure from None
        probability = result.as_numpy(OUTPUT)
        if probability is None or probability.shape != (len(dense), 1):
            shape = None if probability is None else probability.shape
            raise ServingError(f"Triton at {self.url}: expected {len(dense)} probabilities, got shape {shape}")
        return probability[:, 0]

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:  # dropped now, so tritonclient's __del__ runs while grpc is still alive
            client.close()

    def __enter__(self) -> CTRClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def infer_inputs(dense: np.ndarray, sparse: np.ndarray) -> list[grpcclient.InferInput]:
    """The gRPC inputs of one request for model-ready arrays."""
    inputs = [
        grpcclient.InferInput(DENSE_INPUT, list(dense.shape), "FP32"),
        grpcclient.InferInput(SPARSE_INPUT, list(sparse.shape), "INT64"),
    ]
    inputs[0].set_data_from_numpy(np.ascontiguousarray(dense, dtype=np.float32))
    inputs[1].set_data_from_numpy(np.ascontiguousarray(sparse, dtype=np.int64))
    return inputs


def load_model(url: str, model: str, timeout_s: float = 120.0) -> None:
    """Ask a server in explicit model control to (re)load `model`: its newest version takes over once ready."""
    with grpcclient.InferenceServerClient(url) as client:
        try:
            client.load_model(model, client_timeout=timeout_s)
        except InferenceServerException as error:
            raise ServingError(f"Triton at {url}: loading {model!r} failed: {error.message()}") from None


def read_rows(path: Path, schema: DatasetSchema) -> list[dict[str, Any]]:
    """Raw rows from a .jsonl file (an object per line) or a .csv file with a header.

    CSV values are text: dense fields are parsed as numbers and empty cells become null, as the raw
    readers do; errors name the line.
    """
    path = Path(path)
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return [_typed(row, schema, f"{path}:{line}") for line, row in enumerate(csv.DictReader(f), start=2)]
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


def log_rows(raw_paths: Sequence[Path], schema: DatasetSchema, event_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Logged events as a client sends them: the request's fields of each, numbers for dense fields, text for
    categories, None where the log is empty (event ids count data rows across the files, as ingestion does)."""
    from features.readers import raw_records  # pyarrow: only for this

    records = raw_records(list(raw_paths), schema, list(event_ids))
    fields = RowChecker(schema).fields
    return [_typed({f: records[i].get(f) for f in fields}, schema, f"event {i}") for i in event_ids]


def _typed(row: dict[str, str | None], schema: DatasetSchema, where: str) -> dict[str, Any]:
    typed: dict[str, Any] = {}
    for name, text in row.items():
        if text is None or text == "":
            typed[name] = None
        elif name in schema.dense:
            try:
                typed[name] = float(text)
            except ValueError:
                raise RowError(f"{where}: field {name!r}: {text!r} is not a number") from None
        else:
            typed[name] = text
    return typed

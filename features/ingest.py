"""Ingestion: raw logs -> Feast offline store -> point-in-time training splits, and online features.

    ingest(schema, raw files, out_dir)  ->  out_dir/
        offline/events.parquet   typed events: the Feast offline source
        rejects.csv              malformed rows: file, line, reason, text
        feature_repo/            feature_store.yaml (+ production variant), generated definitions.py, registry
        train|validation|test.parquet   model-ready rows from get_historical_features
        transform.json           the fitted feature transform
        schema.yaml              the dataset schema (for serving: raw column names and entities)
        stats.json               rows, rejects, label rates, cardinalities

Every output is written under a temporary name and moved into place only when all of them are complete,
so a failed run leaves the previous outputs untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureStore

from features.feast_repo import LOCAL_CONFIG, apply_repo, feature_service_name, open_store, view_keys, write_repo
from features.online import OnlineReader
from features.prefetch import prefetch
from features.readers import EVENT_ID, EVENT_TIMESTAMP, IngestError, RawReader
from features.schema import DatasetSchema
from features.transform import LABEL, FeatureTransform, dense_columns

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitSpec:
    """By time (the last `test_fraction` is test, the `validation_fraction` before it validation), or by a fold
    file (`row,fold` per data row, as ../shared/data/*/folds.csv): test = fold k, validation = fold k+1 mod n."""

    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    folds: Path | None = None
    fold: int = 0


@dataclass
class IngestResult:
    out_dir: Path
    splits: dict[str, Path]
    transform: FeatureTransform
    stats: dict

    @property
    def repo(self) -> Path:
        return self.out_dir / "feature_repo"


def ingest(
    schema: DatasetSchema,
    raw_paths: list[Path],
    out_dir: Path,
    split: SplitSpec = SplitSpec(),
    max_reject_fraction: float = 0.01,
    log=print,
) -> IngestResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        started = time.perf_counter()
        events_path = staging / "events.parquet"
        reader = RawReader(schema, list(raw_paths), staging / "rejects.csv", max_reject_fraction)
        rows = write_events(reader, events_path)
        read_seconds = time.perf_counter() - started
        log(f"read {rows:,} rows ({reader.stats.rejected:,} rejected) in {read_seconds:.1f} s")

        write_repo(schema, staging / "feature_repo", events_path)
        store = apply_repo(staging / "feature_repo")
        frame = historical_features(store, schema, events_path)
        log(f"point-in-time join of {len(frame):,} rows through Feast")

        assignment = assign_splits(frame, split)
        transform = FeatureTransform.fit(schema, [frame[assignment == "train"]])
        split_paths = {}
        for name in SPLITS:
            part = frame[assignment == name]
            if part.empty:
                raise IngestError(f"split {name!r} is empty: check the fold file or the split fractions")
            split_paths[name] = staging / f"{name}.parquet"
            write_model_ready(part, transform, schema, split_paths[name])
        transform.save(staging / "transform.json")
        schema.save(staging / "schema.yaml")
        stats = {
            "schema": schema.name,
            "rows": rows,
            "rejected": reader.stats.rejected,
            "reject_reasons": reader.stats.reasons,
            "label_rate": float(frame[schema.label].mean()),
            "splits": {
                n: {
                    "rows": int((assignment == n).sum()),
                    "label_rate": float(frame.loc[assignment == n, schema.label].mean()),
                }
                for n in SPLITS
            },
            "cardinalities": dict(zip(schema.categorical_names, transform.cardinalities)),
            "read_seconds": round(read_seconds, 3),
            "total_seconds": round(time.perf_counter() - started, 3),
        }
        (staging / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        # everything is complete: move it into place, then point the repo's source at the final events
        final_events = out_dir / "offline" / "events.parquet"
        for name in (*(f"{s}.parquet" for s in SPLITS), "transform.json", "schema.yaml", "stats.json", "rejects.csv"):
            _replace(staging / name, out_dir / name)
        _replace(events_path, final_events)
        shutil.rmtree(out_dir / "feature_repo", ignore_errors=True)
        os.replace(staging / "feature_repo", out_dir / "feature_repo")
        write_repo(schema, out_dir / "feature_repo", final_events)
        apply_repo(out_dir / "feature_repo")
        return IngestResult(out_dir, {n: out_dir / f"{n}.parquet" for n in SPLITS}, transform, stats)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)


def write_events(reader: RawReader, path: Path) -> int:
    """Stream the reader's chunks into one Parquet file (the offline source); returns the row count."""
    writer = None
    rows = 0
    try:
        for chunk in prefetch(reader.chunks()):  # parse the next block while this one is written
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table.cast(writer.schema))
            rows += len(chunk)
    finally:
        if writer is not None:
            writer.close()
    return rows


def historical_features(store: FeatureStore, schema: DatasetSchema, events_path: Path) -> pd.DataFrame:
    """Point-in-time join: each event gets every feature as of its own timestamp, through Feast."""
    keys = [e.key for e in schema.entities]
    spine = pq.read_table(events_path, columns=[EVENT_ID, EVENT_TIMESTAMP, schema.label, *keys]).to_pandas()
    service = store.get_feature_service(feature_service_name(schema))
    frame = store.get_historical_features(entity_df=spine, features=service).to_df()
    return frame.sort_values(EVENT_ID, kind="stable").reset_index(drop=True)


def assign_splits(frame: pd.DataFrame, split: SplitSpec) -> np.ndarray:
    if split.folds is not None:
        folds = pd.read_csv(split.folds)
        if list(folds.columns[:2]) != ["row", "fold"]:
            raise IngestError(f"{split.folds}: expected columns row,fold; got {list(folds.columns)}")
        fold_of = folds.set_index("row")["fold"]
        missing = ~frame[EVENT_ID].isin(fold_of.index)
        if missing.any():
            raise IngestError(f"{split.folds}: no fold for rows {frame.loc[missing, EVENT_ID].head(5).tolist()}")
        n = int(fold_of.max()) + 1
        fold = fold_of.loc[frame[EVENT_ID]].to_numpy()
        return np.where(fold == split.fold, "test", np.where(fold == (split.fold + 1) % n, "validation", "train"))
    order = frame[EVENT_TIMESTAMP].rank(method="first").to_numpy() - 1  # 0..n-1 by time
    n = len(frame)
    test_start = n - round(n * split.test_fraction)
    validation_start = test_start - round(n * split.validation_fraction)
    return np.where(order >= test_start, "test", np.where(order >= validation_start, "validation", "train"))


def write_model_ready(frame: pd.DataFrame, transform: FeatureTransform, schema: DatasetSchema, path: Path) -> None:
    """label (float32), dense (float32, transformed) and categorical ids (int64), plus event id and time."""
    dense, sparse = transform.transform(frame)
    columns = {
        EVENT_ID: frame[EVENT_ID].to_numpy(),
        EVENT_TIMESTAMP: frame[EVENT_TIMESTAMP].to_numpy(),
        LABEL: frame[schema.label].to_numpy(dtype=np.float32),
    }
    columns |= {name: dense[:, j] for j, name in enumerate(dense_columns(transform))}
    columns |= {name: sparse[:, j] for j, name in enumerate(schema.categorical_names)}
    pq.write_table(pa.table(columns), path)


class OnlineFeatures:
    """Online lookups through Feast's online store, returned model-ready (the same transform as training), and
    materialisation into it. Reads go through `features.online.OnlineReader`: once per distinct key, and only for
    the views whose keys are given. `config` picks the repo's setting: LOCAL_CONFIG (SQLite), or PRODUCTION_CONFIG
    (Redis, and the registry under $FEAST_REGISTRY_ROOT).
    """

    def __init__(self, repo: Path, schema: DatasetSchema, transform: FeatureTransform, config: str = LOCAL_CONFIG):
        self.schema = schema
        self.transform = transform
        store = open_store(repo, config)
        service = store.get_feature_service(feature_service_name(schema))
        features = {p.name: [f.name for f in p.features] for p in service.feature_view_projections}
        # join key -> (its feature view, the features it unlocks)
        views = {key: (view, features[view]) for view, key in view_keys(schema).items()}
        self.reader = OnlineReader(store, schema, views)
        self.store = store

    @property
    def keys(self) -> tuple[str, ...]:
        """The join keys this store answers for: event_id, then each entity's key."""
        return tuple(self.reader.views)

    def materialize(
        self, start: datetime, end: datetime, rows_per_window: int = 50_000, entities_only: bool = False
    ) -> int:
        """Write the latest feature values in [start, end) to the online store; returns the rows read.

        `entities_only` skips the event-level view: a live request carries its own event fields.

        Feast holds a whole materialisation window in memory as Python objects (about 24 GB for 1M Criteo
        rows), so the range is cut into windows of about `rows_per_window` events each, in time order.
        """
        source = self.store.get_feature_view(next(iter(view_keys(self.schema)))).batch_source.path
        times = pq.read_table(source, columns=[EVENT_TIMESTAMP])[EVENT_TIMESTAMP].to_pandas()
        times = times[(times >= pd.Timestamp(start)) & (times < pd.Timestamp(end))].sort_values()
        if times.empty:
            return 0
        cuts = times.iloc[rows_per_window::rows_per_window].drop_duplicates().tolist()
        bounds = [pd.Timestamp(start), *cuts, pd.Timestamp(end)]
        views = [view for view, key in view_keys(self.schema).items() if key != EVENT_ID] if entities_only else None
        for lo, hi in pairwise(bounds):
            self.store.materialize(start_date=lo.to_pydatetime(), end_date=hi.to_pydatetime(), feature_views=views)
        return len(times)

    def raw_features(self, keys: dict[str, list]) -> dict[str, list]:
        """Raw feature values {feature: one value per row} of the views keyed by `keys`; None where unknown."""
        unknown = [k for k in keys if k not in self.reader.views]
        if unknown:
            raise ValueError(f"online lookup: {unknown} are not join keys of {self.schema.name!r}; known: {self.keys}")
        found: dict[str, list] = {}
        for key, values in keys.items():
            found |= self.reader.read(key, values)
        return found

    def lookup(self, keys: dict[str, list], request: dict[str, list] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Features for the given entity keys (e.g. {"event_id": [...]} or {"device_id": [...], ...}).

        Features of views whose key is not given must come in `request` (raw values, e.g. the event-level
        fields of a live ad request). Returns (dense (n, num_dense) float32, ids (n, n_categorical) int64).
        """
        sizes = {len(v) for v in (*keys.values(), *(request or {}).values())}
        if len(sizes) != 1:
            raise ValueError(f"online lookup: keys and request fields must have equal lengths, got {sorted(sizes)}")
        return self.transform.transform({**self.raw_features(keys), **keys, **(request or {})})

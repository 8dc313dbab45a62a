"""ingest: raw logs -> Feast (offline store, point-in-time splits, fitted transform) -> the online store.

The output folder is what `features.ingest.ingest` writes (splits, transform, schema, Feast repository);
for a schema with entities, their latest features are then materialised into the repository's online store, and,
given a cluster's feature server, published to the cluster's Feast (`features.publish`), where Triton reads them.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from components.steps.common import StepConfig, write_json
from features.feast_repo import offline_engine
from features.ingest import OnlineFeatures, SplitSpec
from features.ingest import ingest as ingest_through_feast
from features.publish import publish
from features.readers import EVENT_TIMESTAMP
from features.schema import load_schema


@dataclass(frozen=True)
class IngestRun(StepConfig):
    schema: str = "criteo"  # a built-in schema name, or the path of a schema YAML file
    validation_fraction: float = 0.1  # time split: the rows before the test rows
    test_fraction: float = 0.1  # time split: the latest rows
    folds: Path | None = None  # a fold file (row,fold) splits by fold instead of by time
    fold: int = 0  # with folds: the test fold k (validation k+1)
    max_reject_fraction: float = 0.01
    feature_server: str = ""  # on a cluster, its Feast feature server (http://host:port): publish there
    feast_root: Path | None = None  # with feature_server: the registry root the cluster's pods share
    engine: str = "duckdb"  # the offline store: duckdb, spark or spark-k8s (features.feast_repo.OFFLINE_STORES)
    # where the output is built before it is copied to the step's output: a folder that workers in other pods see
    # too (spark-k8s's executors: a folder of the data volume they mount)
    shared_work_root: Path | None = None

    def __post_init__(self) -> None:
        if self.feature_server and self.feast_root is None:
            raise ValueError("feature_server: publishing needs feast_root, the registry root the cluster's pods share")
        if self.engine == "spark-k8s" and self.shared_work_root is None:
            raise ValueError("engine spark-k8s: its executors read and write the step's files: give shared_work_root")
        offline_engine(self.engine)  # an unknown engine fails here, before any row is read


def ingest(raw_paths: list[Path], out: Path, run: IngestRun) -> dict[str, Any]:
    """Ingest `raw_paths` into `out`; returns the ingestion statistics (also in `out/stats.json`)."""
    if not raw_paths:
        raise ValueError("ingest needs at least one raw log file")
    missing = [str(p) for p in raw_paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"raw log file(s) not found: {missing}")
    if run.shared_work_root is None:
        return _ingest(raw_paths, Path(out), run)
    work = run.shared_work_root / f"ingest-{uuid.uuid4().hex[:12]}"
    try:
        stats = _ingest(raw_paths, work, run)
        shutil.copytree(work, out, dirs_exist_ok=True)  # the repo's paths are relative: it moves with its data
        return stats
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _ingest(raw_paths: list[Path], out: Path, run: IngestRun) -> dict[str, Any]:
    schema = load_schema(run.schema)
    split = SplitSpec(run.validation_fraction, run.test_fraction, run.folds, run.fold)
    result = ingest_through_feast(
        schema, [Path(p) for p in raw_paths], out, split, run.max_reject_fraction, engine=run.engine
    )
    stats = dict(result.stats)
    if schema.entities:
        times = pq.read_table(result.out_dir / "offline" / "events.parquet", columns=[EVENT_TIMESTAMP])
        times = times[EVENT_TIMESTAMP].to_pandas()
        online = OnlineFeatures(result.repo, schema, result.transform)
        stats["online_keys"] = online.materialize(times.min(), times.max() + timedelta(hours=1), entities_only=True)
        print(f"materialised the latest features of {stats['online_keys']:,} entity keys into the online store")
        if run.feature_server:
            events = result.out_dir / "offline" / "events.parquet"
            stats["published_rows"] = publish(schema, events, run.feast_root, run.feature_server)
        write_json(result.out_dir / "stats.json", stats)
    return stats

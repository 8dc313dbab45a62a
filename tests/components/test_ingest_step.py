"""The ingest step built in a shared work folder (as ingest_engine=spark-k8s builds it, where Spark's executors see
its files) gives the step's output what a direct build gives, and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from components.steps.ingest import IngestRun, ingest
from features.ingest import OnlineFeatures
from features.schema import builtin_schema
from features.synthetic import write_synthetic_log
from features.transform import FeatureTransform


def test_an_ingest_built_in_a_shared_work_folder_lands_whole_in_the_output(tmp_path: Path) -> None:
    schema = builtin_schema("avazu")
    raw = write_synthetic_log(schema, tmp_path / "raw.csv", rows=3_000, seed=1, cardinality=40)
    direct = ingest([raw], tmp_path / "direct", IngestRun(schema="avazu"))
    work = tmp_path / "shared"
    shared = ingest([raw], tmp_path / "out", IngestRun(schema="avazu", shared_work_root=work))
    assert list(work.iterdir()) == []  # the work folder is removed once copied
    assert {k: v for k, v in shared.items() if "seconds" not in k} == {
        k: v for k, v in direct.items() if "seconds" not in k
    }
    out = tmp_path / "out"
    for split in ("train", "validation", "test"):
        pd.testing.assert_frame_equal(
            pq.read_table(out / f"{split}.parquet").to_pandas(),
            pq.read_table(tmp_path / "direct" / f"{split}.parquet").to_pandas(),
        )
    # the copied repository still finds its data and its online store, and answers what the direct one does
    keys = {e.key: pq.read_table(out / "offline" / "events.parquet")[e.key].to_pylist()[:50] for e in schema.entities}
    answers = [
        OnlineFeatures(folder / "feature_repo", schema, FeatureTransform.load(folder / "transform.json")).raw_features(
            keys
        )
        for folder in (out, tmp_path / "direct")
    ]
    assert answers[0] == answers[1] and any(v is not None for values in answers[0].values() for v in values)
    assert shared["online_keys"] > 0

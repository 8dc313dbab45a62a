"""Fixtures shared by the model-step tests: a small synthetic Criteo-format log ingested through Feast."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 teacher-labelled rows (50 values per categorical feature), split 8:1:1 by time."""
    from features.ingest import SplitSpec, ingest  # Feast: imported only by the tests that ingest
    from features.schema import builtin_schema
    from features.synthetic import write_synthetic_log

    folder = tmp_path_factory.mktemp("ingested")
    schema = builtin_schema("criteo")
    raw = write_synthetic_log(schema, folder / "raw.txt", rows=20_000, seed=3, cardinality=50)
    ingest(schema, [raw], folder / "data", SplitSpec())
    return folder / "data"

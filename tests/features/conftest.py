from pathlib import Path

import pytest

from features.ingest import SplitSpec, ingest
from features.schema import builtin_schema

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
RAW = {"criteo": SHARED_DATA / "criteo_kaggle_10k" / "train.txt", "avazu": SHARED_DATA / "avazu_10k" / "train.csv"}


def shared(name: str) -> Path:
    path = RAW[name]
    if not path.exists():
        pytest.skip(f"shared data sample {path} is absent")
    return path


@pytest.fixture(scope="session", params=["criteo", "avazu"])
def ingested(request, tmp_path_factory):
    """Each shared sample ingested once through Feast with fold 0 of the fixed protocol."""
    raw = shared(request.param)
    out = tmp_path_factory.mktemp(request.param)
    result = ingest(builtin_schema(request.param), [raw], out, SplitSpec(folds=raw.parent / "folds.csv", fold=0))
    return request.param, raw, result

import pytest


@pytest.fixture(scope="session", params=["criteo", "avazu"])
def ingested(request, ingest_shared):
    """Each shared sample ingested once through Feast with fold 0 of the fixed protocol."""
    raw, result = ingest_shared(request.param)
    return request.param, raw, result

"""Raw log rows read back by event id, as ingestion numbers them across files (text and Parquet)."""

from __future__ import annotations

import pandas as pd
import pytest

from features.readers import IngestError, raw_records
from features.schema import DatasetSchema

SCHEMA = DatasetSchema.from_dict(
    {
        "name": "tiny",
        "label": "click",
        "dense": ["price"],
        "categorical": ["site"],
        "timestamp": {"source": "row_order"},
    }
)


def test_event_ids_count_data_rows_across_text_and_parquet_files(tmp_path) -> None:
    text = tmp_path / "day_0.csv"
    text.write_text("click,price,site\n0,1.5,a\n1,,b\n")
    table = tmp_path / "day_1.parquet"
    pd.DataFrame({"click": ["0", "1"], "price": ["2", "3"], "site": ["c", ""]}).to_parquet(table)
    found = raw_records([text, table], SCHEMA, [3, 1, 0])
    assert found == {
        0: {"click": "0", "price": "1.5", "site": "a"},
        1: {"click": "1", "price": None, "site": "b"},
        3: {"click": "1", "price": "3", "site": None},
    }
    with pytest.raises(IngestError, match=r"event ids \[4\] are past the end"):
        raw_records([text, table], SCHEMA, [4])
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(IngestError, match=r"event ids \[0\] are past the end"):
        raw_records([empty], SCHEMA, [0])

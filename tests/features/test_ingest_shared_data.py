"""Ingestion of the real Criteo and Avazu samples in ../shared/data through Feast."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.ingest import OnlineFeatures
from features.readers import EVENT_ID, EVENT_TIMESTAMP
from features.schema import builtin_schema
from features.transform import dense_columns
from tests.features.online_checks import reads_equal_the_sdks

EXPECTED = {"criteo": (10_000, 0.218), "avazu": (9_999, 0.171)}


def test_row_counts_label_rates_and_fold_protocol(ingested):
    name, raw, result = ingested
    rows, label_rate = EXPECTED[name]
    assert result.stats["rows"] == rows and result.stats["rejected"] == 0
    assert round(result.stats["label_rate"], 3) == label_rate
    folds = pd.read_csv(raw.parent / "folds.csv")
    splits = {n: pq.read_table(p).to_pandas() for n, p in result.splits.items()}
    assert sum(len(s) for s in splits.values()) == rows
    assert set(splits["test"][EVENT_ID]) == set(folds.loc[folds.fold == 0, "row"])
    assert set(splits["validation"][EVENT_ID]) == set(folds.loc[folds.fold == 1, "row"])
    train = splits["train"]
    cards = result.transform.cardinalities
    ids = train[list(builtin_schema(name).categorical_names)].to_numpy()
    assert (ids >= 0).all() and (ids < np.array(cards)).all()
    assert train["label"].dtype == np.float32


def test_training_rows_never_see_a_later_feature_value(ingested):
    """Each row's entity features are those of the latest entity record at or before the event."""
    name, _, result = ingested
    schema = builtin_schema(name)
    if not schema.entities:
        pytest.skip(f"{name} has no entities: every feature comes from the event's own record")
    events = pq.read_table(result.out_dir / "offline" / "events.parquet").to_pandas()
    raw_rows = pd.concat(pq.read_table(p).to_pandas() for p in result.splits.values()).set_index(EVENT_ID)
    events = events.sort_values(EVENT_TIMESTAMP)
    checked = 0
    for entity in schema.entities:
        for feature in entity.features:
            # reference: pandas as-of join, backward in time, per entity key
            expected = pd.merge_asof(
                events[[EVENT_ID, EVENT_TIMESTAMP, entity.key]],
                events[[EVENT_TIMESTAMP, entity.key, feature]],
                on=EVENT_TIMESTAMP,
                by=entity.key,
                direction="backward",
                allow_exact_matches=True,
            ).set_index(EVENT_ID)[feature]
            encoding = result.transform.categorical[schema.categorical_names.index(feature)]
            expected_ids = encoding.encode(expected.loc[raw_rows.index])
            assert (raw_rows[feature].to_numpy() == expected_ids).all(), feature
            # the check has power: the entity's last value differs from the event's own value on many rows
            last = events.groupby(entity.key)[feature].transform("last")
            checked += int((last.fillna("") != events[feature].fillna("")).sum())
    assert checked > 100


def test_online_features_equal_offline_encoded_rows(ingested):
    name, _, result = ingested
    schema = builtin_schema(name)
    online = OnlineFeatures(result.repo, schema, result.transform)
    events = pq.read_table(result.out_dir / "offline" / "events.parquet").to_pandas()
    online.materialize(
        events[EVENT_TIMESTAMP].min() - pd.Timedelta(days=1), events[EVENT_TIMESTAMP].max() + pd.Timedelta(days=1)
    )
    reads_equal_the_sdks(online, events)
    rows = pd.concat(pq.read_table(p).to_pandas() for p in result.splits.values()).set_index(EVENT_ID).sort_index()
    sample = rows.sample(200, random_state=0)
    if not schema.entities:  # Criteo: the event view holds every feature
        dense, ids = online.lookup({EVENT_ID: sample.index.tolist()})
        np.testing.assert_array_equal(ids, sample[list(schema.categorical_names)].to_numpy())
        np.testing.assert_allclose(dense, sample[list(dense_columns(result.transform))].to_numpy(), rtol=1e-6)
        return
    # Avazu: each entity's online value equals the encoded training value of its latest event
    for entity in schema.entities:
        latest = events.sort_values(EVENT_TIMESTAMP).groupby(entity.key, dropna=True).tail(1).head(100)
        keys = {e.key: latest[e.key].fillna("").tolist() for e in schema.entities}
        request = {f: latest[f].tolist() for f in schema.event_features if f not in keys}
        _, ids = online.lookup({EVENT_ID: latest[EVENT_ID].tolist(), **keys}, request)
        expected = rows.loc[latest[EVENT_ID], list(schema.categorical_names)].to_numpy()
        columns = [schema.categorical_names.index(f) for f in entity.features]
        np.testing.assert_array_equal(ids[:, columns], expected[:, columns])


def test_unknown_categories_at_serving_time_map_to_id_zero(ingested):
    name, _, result = ingested
    schema = builtin_schema(name)
    frame = pd.DataFrame(
        {c.name: ["1e300" if c.bucket else "never-seen-value", None] for c in schema.categorical}
        | {d: [3.0, None] for d in schema.dense}
    )
    dense, ids = result.transform.transform(frame)
    hashed = [i for i, c in enumerate(schema.categorical) if c.encoding == "hash"]
    vocab = [i for i in range(len(schema.categorical)) if i not in hashed]
    assert (ids[:, vocab] == 0).all() and (ids[1] == 0).all()
    assert np.isfinite(dense).all()


def test_feature_repo_files(ingested):
    name, _, result = ingested
    repo = result.repo
    for f in ("feature_store.yaml", "feature_store.production.yaml", "definitions.py"):
        assert (repo / f).exists()
    text = (repo / "feature_store.yaml").read_text()
    assert "AsofDuckDBOfflineStore" in text and "sqlite" in text
    production = (repo / "feature_store.production.yaml").read_text()
    assert "redis" in production and "AsofDuckDBOfflineStore" in production
    assert '"../offline/events.parquet"' in (repo / "definitions.py").read_text()  # moves with the repo
    assert str(repo.parent) not in (repo / "definitions.py").read_text()
    definitions = (repo / "definitions.py").read_text()
    assert f"{name}_event_fv" in definitions and f"{name}_service_v1" in definitions
    for entity in builtin_schema(name).entities:
        assert f"{name}_{entity.name}_fv" in definitions

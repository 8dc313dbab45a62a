"""Checks of online reads shared by the SQLite and Redis tests."""

import pandas as pd

from features.ingest import OnlineFeatures
from features.online import _entity_keys
from features.readers import EVENT_ID


def reads_equal_the_sdks(online: OnlineFeatures, events: pd.DataFrame) -> None:
    """The reader (its own queries on SQLite and Redis) answers what Feast's `get_online_features` answers, and what
    it answers through the store's `online_read`, for every view, known keys and unknown ones, and None for no
    key."""
    found = 0
    for key, (view, features) in online.reader.views.items():
        known = events[key].dropna().drop_duplicates().head(300).tolist()
        values = [*known, *(["never-seen", "é"] if key != EVENT_ID else [-5]), None]
        got = online.reader.read(key, values)
        alike = str(known[0]).encode() if key != EVENT_ID else str(known[0])  # the same key, held another way
        assert online.reader.read(key, [known[0], alike]) == {f: [got[f][0]] * 2 for f in features}
        asked = [v for v in values if v is not None]
        sdk = online.store.get_online_features(
            features=[f"{view.name}:{f}" for f in features], entity_rows=[{key: v} for v in asked]
        ).to_dict()
        through_store = online.reader._read_store(view, _entity_keys(key, view, asked), asked, features)
        for i, feature in enumerate(features):
            assert got[feature][:-1] == sdk[feature], (key, feature)
            assert [through_store.get(v, [None] * len(features))[i] for v in asked] == sdk[feature], (key, feature)
            assert got[feature][-1] is None and got[feature][len(known)] is None
        found += sum(v is not None for v in got[features[0]])
    assert found > 100  # the keys the log has are found

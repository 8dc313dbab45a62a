"""Dataset schemas, raw-format readers, the feature transform, Feast feature repository, synthetic data."""

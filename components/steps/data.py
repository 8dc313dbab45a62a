"""The model-ready splits that ingestion wrote, as torch batches for the training loop."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import torch

from features.loader import ArrayBatch, SplitLoader
from features.transform import FeatureTransform
from model.network import InputSchema
from model.training import Batch

SPLITS = ("train", "validation", "test")


def to_batch(arrays: ArrayBatch) -> Batch:
    return Batch(torch.from_numpy(arrays.dense), torch.from_numpy(arrays.sparse), torch.from_numpy(arrays.label))


class IngestedData:
    """An ingestion output folder: transform.json and train/validation/test Parquet splits."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        transform_path = self.folder / "transform.json"
        if not transform_path.exists():
            raise FileNotFoundError(f"{transform_path}: missing; is {self.folder} the output of `nasrec ingest`?")
        self.transform = FeatureTransform.load(transform_path)
        for split in SPLITS:
            if not (self.folder / f"{split}.parquet").exists():
                raise FileNotFoundError(f"{self.folder / f'{split}.parquet'}: missing split")

    @property
    def input_schema(self) -> InputSchema:
        return InputSchema(self.transform.num_dense, self.transform.cardinalities)

    def loader(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0) -> SplitLoader:
        if split not in SPLITS:
            raise ValueError(f"split: one of {SPLITS}, got {split!r}")
        return SplitLoader(self.folder / f"{split}.parquet", self.transform, batch_size, shuffle=shuffle, seed=seed)

    def fingerprint(self) -> str:
        """SHA-256 of the transform and every split: the same data wherever the folder lives, and other
        data (re-ingested, or rewritten with other settings) in the same folder is told apart."""
        digest = hashlib.sha256()
        for name in ("transform.json", *(f"{split}.parquet" for split in SPLITS)):
            with (self.folder / name).open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()

    def rows(self, split: str) -> int:
        return self.loader(split, 1).rows

    def train_stream(self, batch_size: int, seed: int) -> Iterator[Batch]:
        """Endless training batches, reshuffled every epoch; the same sequence for the same seed."""
        path = self.folder / "train.parquet"
        rows = self.rows("train")
        # equal-sized steps, unless the split is smaller than one batch
        loader = SplitLoader(path, self.transform, batch_size, shuffle=True, seed=seed, drop_last=rows >= batch_size)
        return (to_batch(a) for a in itertools.chain.from_iterable(itertools.repeat(loader)))

    def batches(self, split: str, batch_size: int = 4096) -> Iterator[Batch]:
        """One ordered pass over a split."""
        return (to_batch(a) for a in self.loader(split, batch_size))

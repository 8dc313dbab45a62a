"""The raw logs' digest: ingest's cache key (kept light: the step that computes it imports nothing else)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def data_digest(raw_paths: list[str]) -> str:
    """Changes when a file is replaced or rewritten: names, sizes and modification times (not the bytes, which
    for a large log would cost a full read on every run)."""
    missing = [str(p) for p in raw_paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"raw log file(s) not found: {missing}")
    digest = hashlib.sha256()
    for path in map(Path, raw_paths):
        stat = path.stat()
        digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]

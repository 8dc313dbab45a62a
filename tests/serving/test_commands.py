"""The serving commands as a user runs them: nasrec export, deploy, serve (a process of its own), predict."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from features.schema import DatasetSchema
from pipelines.cli import main
from serving.client import CTRClient, log_rows, read_rows
from serving.errors import RowError
from serving.server import free_port
from tests.conftest import shared
from tests.serving.conftest import Exported

NASREC = [sys.executable, "-m", "pipelines.cli"]


def nasrec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NASREC, *args], capture_output=True, text=True, timeout=300)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def processes_serving(repository: Path) -> list[int]:
    """Pids of live tritonserver and Python-stub processes whose command line names the repository."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().decode(errors="replace") if proc.name.isdigit() else ""
            if str(repository) in command and ("tritonserver" in command or "python_backend_stub" in command):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_export_deploy_serve_predict_and_stop_on_sigterm(criteo_exported: Exported, tmp_path, capsys) -> None:
    export, repository = tmp_path / "export", tmp_path / "repository"
    main(["export", "--model", str(criteo_exported.models[0]), "--out", str(export), "--rows", "500"])
    assert "matches PyTorch on 500 validation rows" in capsys.readouterr().out
    main(["deploy", "--export", str(export), "--repository", str(repository)])  # checked on a local Triton
    assert (repository / "nasrec_criteo" / "1" / "model.onnx").exists()
    assert "checked over gRPC: 64 test events, raw and as ids, equal ONNX Runtime's" in capsys.readouterr().out
    assert processes_serving(repository) == []  # the check's server is stopped

    port = free_port()
    server = subprocess.Popen(
        [*NASREC, "serve", "--repository", str(repository), "--grpc-port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        banner = server.stdout.readline()
        assert f"at 127.0.0.1:{port}" in banner, banner + server.stdout.read()
        schema = DatasetSchema.load(export / "schema.yaml")
        rows = log_rows([shared("criteo")], schema, list(range(20)))
        url = f"127.0.0.1:{port}"
        answered = nasrec("predict", "--url", url, "--rows", str(write_jsonl(tmp_path / "rows.jsonl", rows)))
        assert answered.returncode == 0, answered.stderr
        printed = np.array([float(line) for line in answered.stdout.split()])
        with CTRClient(url) as client:  # the address alone: the one model of raw events served
            assert client.model == "nasrec_criteo"
            expected = client.predict(rows)
        assert len(printed) == 20 and np.abs(printed - expected).max() <= 1e-6  # printed to 6 decimals

        bad = write_jsonl(tmp_path / "bad.jsonl", [rows[0], {**rows[1], "I1": "lots"}])
        refused = nasrec("predict", "--url", url, "--rows", str(bad), "--model", "nasrec_criteo")
        assert refused.returncode != 0 and "row 1: field 'I1': expected a number or null, got str" in refused.stderr

        loaded = nasrec(
            "deploy", "--export", str(criteo_exported.exports[1]), "--repository", str(repository), "--url", url
        )
        assert loaded.returncode == 0 and "loaded nasrec_criteo version 2" in loaded.stdout, loaded.stderr
        assert "checked over gRPC: 64 test events" in loaded.stdout
        assert processes_serving(repository)
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    assert code == 0, server.stdout.read()
    deadline = time.monotonic() + 5
    while processes_serving(repository) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_serving(repository) == []

    down = nasrec("predict", "--url", f"127.0.0.1:{port}", "--rows", str(tmp_path / "rows.jsonl"))
    assert down.returncode != 0 and f"Triton at 127.0.0.1:{port} is not reachable" in down.stderr


def test_rows_files_name_the_line_at_fault(tmp_path) -> None:
    schema = DatasetSchema.from_dict(
        {
            "name": "tiny",
            "label": "click",
            "dense": ["price"],
            "categorical": ["site"],
            "timestamp": {"source": "row_order"},
        }
    )
    table = tmp_path / "rows.csv"
    with table.open("w", newline="") as f:
        csv.writer(f).writerows([["price", "site"], ["1.5", "a"], ["", ""], ["cheap", "b"]])
    with pytest.raises(RowError, match=r"rows\.csv:4: field 'price': 'cheap' is not a number"):
        read_rows(table, schema.dense)
    table.write_text("price,site\n1.5,a\n,\n")
    assert read_rows(table, schema.dense) == [{"price": 1.5, "site": "a"}, {"price": None, "site": None}]
    lines = tmp_path / "rows.jsonl"
    lines.write_text('{"price": 2, "site": "x"}\n\n{"price": 3,\n')
    with pytest.raises(RowError, match=r"rows\.jsonl:3: not a JSON object"):
        read_rows(lines, schema.dense)

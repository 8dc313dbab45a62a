"""`nasrec pipeline submit` and `schedule` against a fake Kubeflow Pipelines API, faked at the HTTP boundary
only: kfp.Client and its generated REST client run unchanged. What a real cluster then does with the run
(pods, images, the GPU request) is not tested here."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import pytest
import yaml

from pipelines import COMPILED_PIPELINE
from pipelines.cli import main

API = "/apis/v2beta1"
CLUSTER = {"raw_files": ["/data/day_0.txt"], "repository": "/models", "triton_url": "triton.serving:8001"}


class FakeKFP(BaseHTTPRequestHandler):
    """The KFP v2beta1 endpoints kfp.Client calls to create experiments, runs and recurring runs."""

    requests: list[tuple[str, str, dict]]
    experiments: list[dict]

    def log_message(self, *args: object) -> None:  # quiet test output
        pass

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = urlparse(self.path).path
        self.requests.append(("GET", path, {}))
        if path == f"{API}/healthz":
            self._answer(200, {"multi_user": False})
        elif path == f"{API}/experiments":
            self._answer(200, {"experiments": self.experiments, "total_size": len(self.experiments)})
        else:
            self._answer(404, {"error": f"no {path}"})

    def do_POST(self) -> None:
        path = urlparse(self.path).path
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self.requests.append(("POST", path, body))
        if path == f"{API}/experiments":
            experiment = {"experiment_id": f"exp-{len(self.experiments) + 1}", "display_name": body["display_name"]}
            self.experiments.append(experiment)
            self._answer(200, experiment)
        elif path == f"{API}/runs":
            self._answer(200, {**body, "run_id": "run-1", "state": "PENDING"})
        elif path == f"{API}/recurringruns":
            self._answer(200, {**body, "recurring_run_id": "recurring-1", "status": "ENABLED"})
        else:
            self._answer(404, {"error": f"no {path}"})


@pytest.fixture
def kfp_api(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[tuple[str, FakeKFP]]:
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client reads ~/.config/kfp/context.json
    handler = type("Handler", (FakeKFP,), {"requests": [], "experiments": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()


def posted(handler: FakeKFP, path: str) -> list[dict]:
    return [body for method, where, body in handler.requests if method == "POST" and where == f"{API}/{path}"]


def test_submit_uploads_the_compiled_pipeline_with_its_parameters(kfp_api, tmp_path, capsys) -> None:
    url, handler = kfp_api
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(CLUSTER | {"supernet_steps": 20000}))
    main(["pipeline", "submit", "--host", url, "--params", str(params), "--set", "gpus=1", "--run-name", "nightly"])
    assert "submitted run run-1" in capsys.readouterr().out
    [experiment] = posted(handler, "experiments")
    [run] = posted(handler, "runs")
    assert experiment["display_name"] == "nasrec" and run["experiment_id"] == "exp-1"
    assert run["display_name"] == "nightly"
    assert run["pipeline_spec"] == yaml.safe_load(COMPILED_PIPELINE.read_text())  # the committed package, inline
    assert run["runtime_config"]["parameters"] == CLUSTER | {"supernet_steps": 20000, "gpus": 1}


def test_schedule_creates_a_recurring_run_on_a_cron_without_caching(kfp_api, tmp_path, capsys) -> None:
    url, handler = kfp_api
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(CLUSTER))
    schedule = ["pipeline", "schedule", "--host", url, "--params", str(params)]
    main([*schedule, "--cron", "0 3 * * *", "--set", "raw_files=[/data/latest.txt]"])
    assert "scheduled 'nasrec-retrain' (recurring-1)" in capsys.readouterr().out
    main([*schedule, "--cron", "30 0 3 * * 1", "--job-name", "weekly"])
    first, second = posted(handler, "recurringruns")
    assert len(posted(handler, "experiments")) == 1  # the second finds the experiment the first made
    assert first["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"  # KFP's cron starts with seconds
    assert second["trigger"]["cron_schedule"]["cron"] == "30 0 3 * * 1" and second["display_name"] == "weekly"
    assert int(first["max_concurrency"]) == 1 and first["mode"] == "ENABLE"
    assert first["pipeline_spec"]["pipelineInfo"]["name"] == "nasrec"
    tasks = first["pipeline_spec"]["root"]["dag"]["tasks"]
    assert not any(task.get("cachingOptions", {}).get("enableCache") for task in tasks.values())  # fresh data
    assert first["runtime_config"]["parameters"] == CLUSTER | {"raw_files": ["/data/latest.txt"]}


def test_cluster_commands_refuse_bad_input_before_calling_the_api(kfp_api) -> None:
    url, handler = kfp_api
    with pytest.raises(SystemExit, match=r"unknown pipeline parameter\(s\) \['supernet_stpes'\]"):
        main(["pipeline", "submit", "--host", url, "--set", "supernet_stpes=10"])
    given = [f"--set={name}={value}" for name, value in CLUSTER.items() if name != "triton_url"]
    with pytest.raises(SystemExit, match=r"a cluster run needs triton_url \(the Triton gRPC service"):
        main(["pipeline", "submit", "--host", url, *given])
    with pytest.raises(SystemExit, match=r"--cron: expected 5 fields .* got '3 \* \*'"):
        main(["pipeline", "schedule", "--host", url, *given, "--set", "triton_url=t:8001", "--cron", "3 * *"])
    with pytest.raises(SystemExit, match=r"--set 'gpus': expected NAME=VALUE"):
        main(["pipeline", "submit", "--host", url, "--set", "gpus"])
    assert not posted(handler, "runs") and not posted(handler, "recurringruns")

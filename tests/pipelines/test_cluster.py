"""`nasrec pipeline submit` and `schedule` against a fake Kubeflow Pipelines API, faked at the HTTP boundary
only: kfp.Client and its generated REST client run unchanged. What a real cluster then does with the run
(pods, volumes, images, the GPU request, the cache) is not tested here: what it is given is."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from components.images import CPU_IMAGE, CUDA_IMAGE, REGISTRY
from pipelines import COMPILED_PIPELINE
from pipelines.cli import main
from pipelines.cluster import EXIT_GATE_REFUSED, EXIT_RUN_FAILED, EXIT_TIMED_OUT, follow
from pipelines.local import code_digest
from tests.fake_http import JSONHandler, serving

API = "/apis/v2beta1"
CLUSTER = {"raw_files": ["/data/day_0.txt"], "repository": "/models", "triton_url": "nasrec-triton-replicas:8001"}
DIGEST = code_digest()


class FakeKFP(JSONHandler):
    """The KFP v2beta1 endpoints kfp.Client calls to create experiments, runs and recurring runs."""

    requests: list[tuple[str, str, dict]]
    experiments: list[dict]
    run_states: list[dict]  # what each GET of run-1 answers, in turn (the last one repeats)

    def do_GET(self) -> None:
        path = urlparse(self.path).path
        self.requests.append(("GET", path, {}))
        if path == f"{API}/healthz":
            self._answer(200, {"multi_user": False})
        elif path == f"{API}/experiments":
            self._answer(200, {"experiments": self.experiments, "total_size": len(self.experiments)})
        elif path == f"{API}/runs/run-1":
            self._answer(
                200, {"run_id": "run-1"} | (self.run_states.pop(0) if len(self.run_states) > 1 else self.run_states[0])
            )
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
    handler = type("Handler", (FakeKFP,), {"requests": [], "experiments": [], "run_states": []})
    with serving(handler) as url:
        yield url, handler


def posted(handler: FakeKFP, path: str) -> list[dict]:
    return [body for method, where, body in handler.requests if method == "POST" and where == f"{API}/{path}"]


def images(posted: dict) -> dict[str, str]:
    executors = posted["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"]
    return {name.removeprefix("exec-"): e["container"]["image"] for name, e in executors.items()}


def test_submit_uploads_the_compiled_pipeline_with_its_parameters_and_identity(kfp_api, tmp_path, capsys) -> None:
    url, handler = kfp_api
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(CLUSTER | {"supernet_steps": 20000}))
    main(["pipeline", "submit", "--host", url, "--params", str(params), "--set", "gpus=1", "--run-name", "nightly"])
    assert "submitted run run-1" in capsys.readouterr().out
    [experiment] = posted(handler, "experiments")
    [run] = posted(handler, "runs")
    assert experiment["display_name"] == "nasrec" and run["experiment_id"] == "exp-1"
    assert run["display_name"] == "nightly" and run["service_account"] == "nasrec-pipeline"  # k8s/ gives it rights
    spec, platform = yaml.safe_load_all(COMPILED_PIPELINE.read_text())
    assert run["pipeline_spec"] == {"pipeline_spec": spec, "platform_spec": platform}  # the committed package
    assert run["runtime_config"]["parameters"] == CLUSTER | {
        "supernet_steps": 20000,
        "gpus": 1,
        "code_digest": DIGEST,  # of this checkout's source
        "gpu_node_selector": {"nvidia.com/gpu.present": "true"},  # a GPU run lands on GPU nodes
        "feature_server": "http://nasrec-feature-server.nasrec.svc:6566",  # where ingest publishes (k8s/)
    }


def test_a_new_commit_or_a_code_change_is_a_new_cache_key(kfp_api, tmp_path) -> None:
    """KFP's cache key of a step holds its image and its inputs: the images are tagged by commit, code_digest
    follows the source, and the data's digest is the pipeline's own fingerprint step (see test_pipeline)."""
    url, handler = kfp_api
    given = [f"--set={name}={json.dumps(value)}" for name, value in CLUSTER.items()]
    for commit in ("3f2a9c1", "8d0e4b7"):
        main(["pipeline", "submit", "--host", url, *given, "--image-tag", commit])
    first, second = posted(handler, "runs")
    assert set(images(first)["ingest"].split(":")) == {REGISTRY, "3f2a9c1-cpu"}
    assert images(first)["train-supernet"] == f"{REGISTRY}:3f2a9c1-cuda"
    assert all(a != b for a, b in zip(images(first).values(), images(second).values()))  # no step shares a key
    assert set(images(first).values()) == {f"{REGISTRY}:3f2a9c1-cpu", f"{REGISTRY}:3f2a9c1-cuda"}
    assert {CPU_IMAGE, CUDA_IMAGE}.isdisjoint(images(first).values())

    source = tmp_path / "checkout"
    root = Path(__file__).resolve().parents[2]
    for package in ("model", "features", "serving", "components"):
        shutil.copytree(root / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    assert code_digest(source) == DIGEST == first["runtime_config"]["parameters"]["code_digest"]
    (source / "model" / "ops.py").write_text((source / "model" / "ops.py").read_text() + "\n# a change\n")
    assert code_digest(source) != DIGEST


def test_schedule_creates_a_recurring_run_on_a_cron_cached_like_a_run(kfp_api, tmp_path, capsys) -> None:
    url, handler = kfp_api
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(CLUSTER))
    schedule = ["pipeline", "schedule", "--host", url, "--params", str(params)]
    main([*schedule, "--cron", "0 3 * * *", "--set", "raw_files=[/data/latest.txt]", "--image-tag", "3f2a9c1"])
    assert "scheduled 'nasrec-retrain' (recurring-1)" in capsys.readouterr().out
    main([*schedule, "--cron", "30 0 3 * * 1", "--job-name", "weekly"])
    first, second = posted(handler, "recurringruns")
    assert len(posted(handler, "experiments")) == 1  # the second finds the experiment the first made
    assert first["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"  # KFP's cron starts with seconds
    assert second["trigger"]["cron_schedule"]["cron"] == "30 0 3 * * 1" and second["display_name"] == "weekly"
    assert int(first["max_concurrency"]) == 1 and first["mode"] == "ENABLE"
    assert first["service_account"] == "nasrec-pipeline"
    assert set(images(first).values()) == {f"{REGISTRY}:3f2a9c1-cpu", f"{REGISTRY}:3f2a9c1-cuda"}
    tasks = first["pipeline_spec"]["pipeline_spec"]["root"]["dag"]["tasks"]
    cached = {name for name, task in tasks.items() if task.get("cachingOptions", {}).get("enableCache")}
    assert {"ingest", "train-supernet", "search", "finetune"} <= cached  # keyed on each run's own fingerprint
    assert "fingerprint" not in cached
    assert first["runtime_config"]["parameters"] == CLUSTER | {
        "raw_files": ["/data/latest.txt"],
        "code_digest": DIGEST,
        "feature_server": "http://nasrec-feature-server.nasrec.svc:6566",
    }


def task(name: str, state: str) -> dict:
    return {"display_name": name, "state": state}


@pytest.mark.parametrize(
    ("final", "code", "said"),
    [
        ({"state": "SUCCEEDED", "run_details": {"task_details": [task("Deploy to Triton", "SUCCEEDED")]}}, 0,
         "the new version is served"),
        ({"state": "SUCCEEDED", "run_details": {"task_details": [task("Evaluate: quality gate", "SUCCEEDED")]}},
         EXIT_GATE_REFUSED, "the quality gate kept the model from Triton"),
        ({"state": "FAILED", "error": {"message": "ingest: raw log file(s) not found"}}, EXIT_RUN_FAILED,
         "run run-1 FAILED: ingest: raw log file(s) not found"),
        ({"state": "CANCELED"}, EXIT_RUN_FAILED, "run run-1 CANCELED"),
    ],
)  # fmt: skip
def test_submit_wait_follows_the_run_and_exits_with_how_it_ended(kfp_api, capsys, final, code, said) -> None:
    url, handler = kfp_api
    running = {"state": "RUNNING", "run_details": {"task_details": [task("Ingest through Feast", "RUNNING")]}}
    handler.run_states.extend([{"state": "PENDING"}, running, final])
    assert follow(url, "run-1", timeout_s=60, poll_s=0) == code
    out = capsys.readouterr()
    assert said in out.out + out.err
    assert "Ingest through Feast: RUNNING" in out.out  # each step's state as it changes


def test_submit_wait_gives_up_after_its_timeout_and_says_the_run_goes_on(kfp_api, capsys) -> None:
    url, handler = kfp_api
    handler.run_states.append({"state": "RUNNING"})
    given = [f"--set={name}={json.dumps(value)}" for name, value in CLUSTER.items()]
    with pytest.raises(SystemExit) as exit_info:
        main(["pipeline", "submit", "--host", url, *given, "--wait", "--timeout", "0"])
    assert exit_info.value.code == EXIT_TIMED_OUT
    assert "is still RUNNING after 0 s; it goes on" in capsys.readouterr().err


def test_cluster_commands_refuse_bad_input_before_calling_the_api(kfp_api) -> None:
    url, handler = kfp_api
    with pytest.raises(SystemExit, match=r"unknown pipeline parameter\(s\) \['supernet_stpes'\]"):
        main(["pipeline", "submit", "--host", url, "--set", "supernet_stpes=10"])
    with pytest.raises(SystemExit, match=r"ingest_engine 'ray': known engines are \['duckdb', 'spark', 'spark-k8s'\]"):
        main(["pipeline", "submit", "--host", url, "--set", "ingest_engine=ray"])
    given = [f"--set={name}={value}" for name, value in CLUSTER.items() if name != "triton_url"]
    with pytest.raises(
        SystemExit, match=r"a cluster run needs triton_url \(Triton's replicas, nasrec-triton-replicas:8001"
    ):
        main(["pipeline", "submit", "--host", url, *given])
    with pytest.raises(SystemExit, match=r"--cron: expected 5 fields .* got '3 \* \*'"):
        main(["pipeline", "schedule", "--host", url, *given, "--set", "triton_url=t:8001", "--cron", "3 * *"])
    with pytest.raises(SystemExit, match=r"--set 'gpus': expected NAME=VALUE"):
        main(["pipeline", "submit", "--host", url, "--set", "gpus"])
    with pytest.raises(SystemExit, match=r"raw_files \['/home/me/day_0.txt'\]: the ingest pod sees only the volume"):
        main(
            [
                "pipeline",
                "submit",
                "--host",
                url,
                *given,
                "--set=triton_url=t:8001",
                "--set=raw_files=[/home/me/day_0.txt]",
            ]
        )
    with pytest.raises(SystemExit, match=r"repository '/srv/models': evaluate and deploy see .* at /models"):
        main(["pipeline", "submit", "--host", url, *given, "--set=triton_url=t:8001", "--set=repository=/srv/models"])
    assert not posted(handler, "runs") and not posted(handler, "recurringruns")

"""Distributed supernet training jobs: their manifests validate against the upstream CRDs, and a step follows a
job through a fake Kubernetes API (faked at the HTTP boundary only) to its end. What the Training Operator or
Trainer then does with the job (pods, torchrun's rendezvous, NCCL) is not tested here."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from components.steps.cluster_training import KubernetesAPI, KubernetesError, TrainingJob, run_job, supernet_step_gpus
from components.steps.train_supernet import SupernetRun, train_on_cluster
from tests.fake_http import JSONHandler, serving
from tests.k8s.conftest import ROOT, validation_errors

COMMAND = ("-m", "components.steps.train_supernet", "/data/jobs/j1/data", "/data/jobs/j1/supernet", "{}", "cuda")


GPU_NODES = {"nvidia.com/gpu.present": "true"}


def job(kind: str, gpus: int = 1) -> TrainingJob:
    image = "ghcr.io/nasrec-pipeline/nasrec-pipeline:3f2a9c1-cuda"
    return TrainingJob("j1", image, COMMAND, 4, gpus, kind, node_selector=GPU_NODES if gpus else {})


@pytest.mark.parametrize("kind", ["PyTorchJob", "TrainJob"])
def test_both_kinds_of_job_validate_against_their_crds(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    on_cpus = replace(job(kind, gpus=0), name="j2")
    path.write_text(yaml.safe_dump_all([job(kind).manifest(), on_cpus.manifest()]))
    assert validation_errors(path) == {f"{kind}/j1": [], f"{kind}/j2": []}


def test_a_pytorchjob_runs_torchrun_on_every_node_as_the_training_identity() -> None:
    spec = job("PyTorchJob").manifest()["spec"]
    replicas = spec["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 3)
    assert spec["nprocPerNode"] == "1"  # a process per GPU
    pod = replicas["Worker"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "pytorch" and container["command"] == ["torchrun", *COMMAND]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["metadata"]["labels"] == {"app.kubernetes.io/name": "nasrec-training"}  # its NetworkPolicy
    assert pod["spec"]["serviceAccountName"] == "nasrec-training" and not pod["spec"]["automountServiceAccountToken"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] and container["securityContext"]["capabilities"]
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "nasrec-data"
    assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["spec"]["nodeSelector"] == GPU_NODES
    cpu = job("PyTorchJob", gpus=0).manifest()["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    assert "nvidia.com/gpu" not in cpu["spec"]["containers"][0]["resources"]["limits"]
    assert cpu["spec"]["tolerations"] == [] and "nodeSelector" not in cpu["spec"]
    (override,) = job("TrainJob").manifest()["spec"]["podSpecOverrides"]
    assert override["nodeSelector"] == GPU_NODES


def test_the_plan_gives_the_supernet_step_no_gpu_where_a_job_trains_and_refuses_what_cannot_run() -> None:
    assert [supernet_step_gpus(1, 1, "PyTorchJob"), supernet_step_gpus(0, 1, "")] == [1, 0]
    assert supernet_step_gpus(1, 4, "TrainJob") == 0  # the job's four pods take a GPU each; the step waits
    with pytest.raises(ValueError, match=r"training_nodes: 1 \(the step trains\) or more .* got 0"):
        supernet_step_gpus(1, 0, "PyTorchJob")
    with pytest.raises(ValueError, match=r"training_job 'MPIJob': expected one of"):
        supernet_step_gpus(1, 2, "MPIJob")
    with pytest.raises(ValueError, match=r"gpus: 0 \(the CPU\) or 1"):
        supernet_step_gpus(2, 1, "PyTorchJob")


def test_a_job_of_one_node_or_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match=r"nodes: a distributed job needs at least 2, got 1"):
        TrainingJob("j", "i:1", COMMAND, 1)
    with pytest.raises(ValueError, match=r"job kind 'MPIJob': expected one of \['PyTorchJob', 'TrainJob'\]"):
        TrainingJob("j", "i:1", COMMAND, 2, kind="MPIJob")


class FakeKubernetes(JSONHandler):
    requests: list[tuple[str, str, dict, str]]
    states: list[list[dict]]  # what each GET of the job answers as status.conditions, in turn (the last repeats)

    def _record(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.requests.append((self.command, self.path, body, self.headers.get("Authorization", "")))
        return body

    def do_POST(self) -> None:
        body = self._record()
        if self.path.endswith("/pytorchjobs") and body["metadata"]["name"] == "taken":
            self._answer(409, {"kind": "Status", "message": 'pytorchjobs.kubeflow.org "taken" already exists'})
        else:
            self._answer(201, body)

    def do_GET(self) -> None:
        self._record()
        conditions = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        self._answer(200, {"status": {"conditions": conditions}})

    def do_DELETE(self) -> None:
        self._record()
        self._answer(200, {"kind": "Status", "status": "Success"})


@pytest.fixture
def kubernetes() -> Iterator[tuple[KubernetesAPI, type[FakeKubernetes]]]:
    handler = type("Handler", (FakeKubernetes,), {"requests": [], "states": []})
    with serving(handler) as url:
        yield KubernetesAPI(url, token="t0ken"), handler


def condition(kind: str, message: str = "") -> dict:
    return {"type": kind, "status": "True", "message": message}


def test_a_step_creates_the_job_and_follows_it_to_success(kubernetes, capsys) -> None:
    api, handler = kubernetes
    done = condition("Succeeded", "PyTorchJob j1 is successfully completed.")
    handler.states.extend([[], [condition("Created")], [condition("Created"), condition("Running")], [done]])
    run_job(api, job("PyTorchJob"), timeout_s=60, poll_s=0)
    method, path, body, auth = handler.requests[0]
    assert (method, path, auth) == ("POST", "/apis/kubeflow.org/v1/namespaces/nasrec/pytorchjobs", "Bearer t0ken")
    assert body == job("PyTorchJob").manifest()
    assert {p for m, p, _, _ in handler.requests[1:]} == {"/apis/kubeflow.org/v1/namespaces/nasrec/pytorchjobs/j1"}
    printed = capsys.readouterr().out
    assert all(f"PyTorchJob j1: {s}" in printed for s in ("Pending", "Created", "Running", "Succeeded"))


def test_a_failed_job_fails_the_step_with_its_message_and_a_slow_one_is_deleted(kubernetes) -> None:
    api, handler = kubernetes
    handler.states.extend([[condition("Running")], [condition("Failed", "pod j1-worker-2 OOMKilled")]])
    with pytest.raises(KubernetesError, match=r"TrainJob nasrec/j1 failed: pod j1-worker-2 OOMKilled"):
        run_job(api, job("TrainJob"), timeout_s=60, poll_s=0)
    assert handler.requests[0][1] == "/apis/trainer.kubeflow.org/v1alpha1/namespaces/nasrec/trainjobs"

    handler.requests.clear()
    handler.states[:] = [[condition("Running")]]
    with pytest.raises(KubernetesError, match=r"did not finish in 0 s"):
        run_job(api, job("PyTorchJob"), timeout_s=0, poll_s=0)
    assert handler.requests[-1][:2] == ("DELETE", "/apis/kubeflow.org/v1/namespaces/nasrec/pytorchjobs/j1")

    taken = TrainingJob("taken", "i:1", COMMAND, 2)
    with pytest.raises(KubernetesError, match=r"POST .*/pytorchjobs: 409 pytorchjobs.kubeflow.org \"taken\" already"):
        run_job(api, taken, timeout_s=60, poll_s=0)


class FakeOperator(FakeKubernetes):
    """The API server and a training operator in one: a created job's command runs here, under torchrun with two
    processes on this machine standing in for two pods (what the operator's rendezvous variables give)."""

    jobs: dict[str, subprocess.Popen]

    def do_POST(self) -> None:
        body = self._record()
        template = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
        torchrun, *command = template["spec"]["containers"][0]["command"]
        launcher = [str(Path(sys.executable).with_name(torchrun)), "--standalone", "--nproc-per-node", "2"]
        self.jobs[body["metadata"]["name"]] = subprocess.Popen([*launcher, *command], cwd=ROOT)
        self._answer(201, body)

    def do_GET(self) -> None:
        self._record()
        if "/pods/" in self.path:
            self._answer(200, {"spec": {"containers": [{"name": "main", "image": "nasrec:3f2a9c1-cpu"}]}})
            return
        process = self.jobs[self.path.rsplit("/", 1)[1]]
        code = process.poll()
        state = "Running" if code is None else "Succeeded" if code == 0 else "Failed"
        self._answer(200, {"status": {"conditions": [condition(state, f"exit code {code}")]}})


def test_a_distributed_step_trains_the_supernet_through_the_job_it_creates(ingested: Path, tmp_path, monkeypatch):
    handler = type("Handler", (FakeOperator,), {"requests": [], "states": [], "jobs": {}})
    monkeypatch.setenv("POD_NAME", "nasrec-abc-train-supernet")
    monkeypatch.setenv("POD_NAMESPACE", "team-a")
    run = SupernetRun(steps=20, checkpoint_every=10, progress=False)
    with serving(handler) as url:
        api = KubernetesAPI(url)
        metrics = train_on_cluster(
            ingested, tmp_path / "supernet", run, 2, 0, "PyTorchJob", api, {"pool": "cpu"}, tmp_path / "shared"
        )
    assert metrics["world_size"] == 2 and metrics["training"]["steps"] == 20  # two processes trained it
    assert (tmp_path / "supernet" / "checkpoint.pt").exists()
    (created,) = [body for method, _, body, _ in handler.requests if method == "POST"]
    assert created["metadata"]["namespace"] == "team-a"  # the step's own namespace, and image:
    worker = created["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    assert worker["containers"][0]["image"] == "nasrec:3f2a9c1-cpu" and worker["nodeSelector"] == {"pool": "cpu"}
    assert list((tmp_path / "shared" / "jobs").iterdir()) == []  # the job's copy of the data is gone

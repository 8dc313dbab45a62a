"""Distributed supernet training on a cluster: a Kubeflow training job of `nodes` pods, each running torchrun
(nccl on GPUs, gloo on CPUs; see model/distributed.py) over `nasrec train-supernet`, created and followed through
the Kubernetes API by the pipeline's train_supernet step.

Two kinds of job: `PyTorchJob` (Kubeflow Training Operator v1, what most clusters run today) and `TrainJob`
(Kubeflow Trainer v2, over its `torch-distributed` ClusterTrainingRuntime). Either sets torchrun's rendezvous in
the pods' environment. The pods share the step's data and write the supernet through the nasrec-data volume, run
as the ServiceAccount nasrec-training and carry the label its NetworkPolicy lets talk to each other (k8s/).
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.steps.common import check_gpus

SHARED_VOLUME = ("nasrec-data", "/data")  # (claim, mount path): k8s/base/common/storage.yaml
TRAINING_NAME = "nasrec-training"  # the pods' ServiceAccount and app label (k8s/base/common/pipeline.yaml)
KINDS = {  # kind -> (apiVersion, resource)
    "PyTorchJob": ("kubeflow.org/v1", "pytorchjobs"),
    "TrainJob": ("trainer.kubeflow.org/v1alpha1", "trainjobs"),
}
TRAINER_RUNTIME = "torch-distributed"  # the ClusterTrainingRuntime Kubeflow Trainer installs
GPU = "nvidia.com/gpu"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class TrainingJob:
    """One distributed run of `command` (torchrun's arguments after its own: what it starts in each process) on
    `nodes` pods."""

    name: str
    image: str
    command: tuple[str, ...]
    nodes: int
    gpus_per_node: int = 0
    kind: str = "PyTorchJob"
    namespace: str = "nasrec"
    cpu: str = "4"
    memory: str = "16Gi"
    node_selector: dict[str, str] = field(default_factory=dict)  # the pipeline's gpu_node_selector

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"job kind {self.kind!r}: expected one of {sorted(KINDS)}")
        if self.nodes < 2:
            raise ValueError(f"nodes: a distributed job needs at least 2, got {self.nodes} (1 trains in the step)")

    @property
    def path(self) -> str:
        """The job's collection in the Kubernetes API."""
        api_version, resource = KINDS[self.kind]
        return f"/apis/{api_version}/namespaces/{self.namespace}/{resource}"

    def manifest(self) -> dict[str, Any]:
        metadata = {"name": self.name, "namespace": self.namespace, "labels": {"app.kubernetes.io/part-of": "nasrec"}}
        body = self._pytorchjob() if self.kind == "PyTorchJob" else self._trainjob()
        return {"apiVersion": KINDS[self.kind][0], "kind": self.kind, "metadata": metadata, "spec": body}

    def _resources(self) -> dict[str, dict[str, str]]:
        amounts = {"cpu": self.cpu, "memory": self.memory} | (
            {GPU: str(self.gpus_per_node)} if self.gpus_per_node else {}
        )
        return {"requests": amounts, "limits": amounts}

    def _processes(self) -> str:
        return str(self.gpus_per_node) if self.gpus_per_node else "1"

    def _pod(self) -> dict[str, Any]:
        container = {
            "name": "pytorch",  # the Training Operator finds the training container by this name
            "image": self.image,
            "command": ["torchrun", *self.command],
            "resources": self._resources(),
            "volumeMounts": [{"name": "shared", "mountPath": SHARED_VOLUME[1]}],
            "securityContext": _container_security(),
        }
        return {
            "metadata": {"labels": {"app.kubernetes.io/name": TRAINING_NAME}},
            "spec": {
                "serviceAccountName": TRAINING_NAME,
                "automountServiceAccountToken": False,
                "securityContext": _pod_security(),
                "containers": [container],
                "volumes": [_shared_volume()],
                "tolerations": _gpu_tolerations(self.gpus_per_node),
            }
            | self._node_selector(),
        }

    def _node_selector(self) -> dict[str, Any]:
        return {"nodeSelector": dict(self.node_selector)} if self.node_selector else {}

    def _pytorchjob(self) -> dict[str, Any]:
        replicas = {"Master": 1, "Worker": self.nodes - 1}
        return {
            "nprocPerNode": self._processes(),
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 2},
            "pytorchReplicaSpecs": {
                role: {"replicas": count, "restartPolicy": "OnFailure", "template": self._pod()}
                for role, count in replicas.items()
            },
        }

    def _trainjob(self) -> dict[str, Any]:
        node = "node"  # the torch-distributed runtime's replicated job, and its container
        return {
            "runtimeRef": {"name": TRAINER_RUNTIME},
            "labels": {"app.kubernetes.io/name": TRAINING_NAME},
            "trainer": {
                "image": self.image,
                "command": ["torchrun", *self.command],
                "numNodes": self.nodes,
                "numProcPerNode": self._processes(),
                "resourcesPerNode": self._resources(),
            },
            "podSpecOverrides": [
                {
                    "targetJobs": [{"name": node}],
                    "serviceAccountName": TRAINING_NAME,
                    "volumes": [_shared_volume()],
                    "containers": [{"name": node, "volumeMounts": [{"name": "shared", "mountPath": SHARED_VOLUME[1]}]}],
                    "tolerations": _gpu_tolerations(self.gpus_per_node),
                }
                | self._node_selector()
            ],
        }


def supernet_step_gpus(gpus: int, nodes: int, kind: str) -> int:
    """The GPUs of the train_supernet step's own pod: `gpus`, or none when a job of `nodes` pods trains and the
    step only starts and follows it. Checks the request before a run spends its time on ingest."""
    check_gpus(gpus)
    if isinstance(nodes, bool) or nodes < 1:
        raise ValueError(f"training_nodes: 1 (the step trains) or more (a distributed job), got {nodes!r}")
    if nodes > 1 and kind not in KINDS:
        raise ValueError(f"training_job {kind!r}: expected one of {sorted(KINDS)}")
    return 0 if nodes > 1 else gpus


def _shared_volume() -> dict[str, Any]:
    return {"name": "shared", "persistentVolumeClaim": {"claimName": SHARED_VOLUME[0]}}


def _gpu_tolerations(gpus: int) -> list[dict[str, str]]:
    return [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}] if gpus else []


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


class KubernetesError(RuntimeError):
    """The Kubernetes API refused a request, or a training job failed."""


class KubernetesAPI:
    """The few calls a step makes to the Kubernetes API over HTTPS: JSON in, JSON out, a bearer token."""

    def __init__(self, base_url: str, token: str | None = None, ca_file: str | None = None):
        self.base_url, self.token = base_url.rstrip("/"), token
        self.context = ssl.create_default_context(cafile=ca_file) if base_url.startswith("https") else None

    @classmethod
    def in_cluster(cls) -> KubernetesAPI:
        """As the pod's ServiceAccount (the pipeline's nasrec-pipeline, whose Role allows training jobs)."""
        if not (SERVICE_ACCOUNT / "token").exists():
            raise KubernetesError(f"no ServiceAccount token at {SERVICE_ACCOUNT}: a distributed run needs a cluster")
        token = (SERVICE_ACCOUNT / "token").read_text().strip()
        return cls("https://kubernetes.default.svc", token, str(SERVICE_ACCOUNT / "ca.crt"))

    def request(self, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as answer:
                return json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as error:
            detail = json.loads(error.read() or b"{}").get("message", error.reason)
            raise KubernetesError(f"{method} {path}: {error.code} {detail}") from None


def own_pod(api: KubernetesAPI) -> tuple[str, str]:
    """(namespace, image) of the pod this runs in (named by $POD_NAME and $POD_NAMESPACE, which the pipeline sets
    from the downward API): a job started from here runs the very image of the step."""
    name, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
    if not (name and namespace):
        raise KubernetesError("POD_NAME and POD_NAMESPACE are not set: a distributed run starts from a pipeline step")
    containers = api.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")["spec"]["containers"]
    main = next((c for c in containers if c["name"] == "main"), containers[0])  # KFP's step container is "main"
    return namespace, main["image"]


def job_state(job: dict[str, Any]) -> tuple[str, str]:
    """(state, message) from a job's latest true condition: Created, Running, Succeeded, Complete, Failed..."""
    conditions = [c for c in job.get("status", {}).get("conditions", []) if c.get("status") == "True"]
    if not conditions:
        return "Pending", ""
    return conditions[-1]["type"], conditions[-1].get("message", "")


def run_job(api: KubernetesAPI, job: TrainingJob, timeout_s: float, poll_s: float = 10.0) -> None:
    """Create the job, print its state as it changes until it succeeds; raises KubernetesError when it fails or
    outlives `timeout_s` (then it is deleted: its pods hold GPUs)."""
    api.request("POST", job.path, job.manifest())
    print(f"started {job.kind} {job.namespace}/{job.name}: {job.nodes} nodes", flush=True)
    deadline, seen = time.monotonic() + timeout_s, None
    while True:
        state, message = job_state(api.request("GET", f"{job.path}/{job.name}"))
        if state != seen:
            print(f"{job.kind} {job.name}: {state}" + (f" ({message})" if message else ""), flush=True)
            seen = state
        if state in ("Succeeded", "Complete"):
            return
        if state == "Failed":
            raise KubernetesError(f"{job.kind} {job.namespace}/{job.name} failed: {message or 'see its pods logs'}")
        if time.monotonic() > deadline:
            api.request("DELETE", f"{job.path}/{job.name}")
            print(f"deleted {job.kind} {job.name} after {timeout_s:.0f} s", file=sys.stderr)
            raise KubernetesError(f"{job.kind} {job.namespace}/{job.name} did not finish in {timeout_s:.0f} s")
        time.sleep(poll_s)

"""k8s/: every kustomization renders, validates offline against the Kubernetes API schemas and the upstream CRDs,
passes checkov, and holds what the product promises (restricted pods, no secrets, pinned images, network policies)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.k8s.conftest import K8S, VARIANTS, objects, run_tool, validation_errors

POD_KINDS = {"Deployment", "StatefulSet"}


def by_name(path: Path) -> dict[str, dict]:
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects(path)}


def pod_specs(path: Path) -> dict[str, dict]:
    """'Kind/name' -> pod spec, for workloads and the InferenceService's predictor."""
    specs = {k: o["spec"]["template"]["spec"] for k, o in by_name(path).items() if o["kind"] in POD_KINDS}
    for key, o in by_name(path).items():
        if o["kind"] == "InferenceService":
            predictor = dict(o["spec"]["predictor"])
            specs[key] = predictor | {"containers": [predictor.pop("model")]}
    return specs


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_validates_against_the_kubernetes_schemas_or_its_crd(rendered, variant: str) -> None:
    errors = validation_errors(rendered[variant])
    assert len(errors) >= 20, "expected the whole product, not a fragment"
    assert {k: e for k, e in errors.items() if e} == {}


def test_the_validators_reject_what_a_cluster_would(tmp_path: Path) -> None:
    broken = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "typo"}, "spec": {"prots": []}},
        {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "bad"},
         "spec": {"predictor": {"minReplicas": "two"}}},
        {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "bad"},
         "spec": {"pytorchReplicaSpecs": {"Worker": {"replicas": "4"}}}},
        {"apiVersion": "example.com/v1", "kind": "Unknown", "metadata": {"name": "x"}},
    ]  # fmt: skip
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all(broken))
    errors = validation_errors(path)
    assert "'prots' was unexpected" in errors["Service/typo"][0]
    assert "not of type 'integer'" in errors["InferenceService/bad"][0]
    assert "not of type 'integer'" in errors["PyTorchJob/bad"][0]
    assert "no schema" in errors["Unknown/x"][0]


def checkov(folder: Path) -> dict:
    done = run_tool("checkov", "-d", folder, "--framework", "kubernetes", "--output", "json", check=False)
    report = json.loads(done.stdout)
    return report[0] if isinstance(report, list) else report


def test_checkov_finds_no_failure_and_every_skip_says_why(rendered, tmp_path: Path) -> None:
    for path in rendered.values():
        (tmp_path / path.name).write_text(path.read_text())
    report = checkov(tmp_path)
    results = report["results"]
    failed = [f"{c['check_id']} {c['resource']} ({c['check_name']})" for c in results["failed_checks"]]
    assert failed == []
    assert report["summary"]["passed"] > 500
    for skipped in results["skipped_checks"]:
        reason = skipped["check_result"].get("suppress_comment", "")
        assert len(reason) > 20, f"{skipped['check_id']} on {skipped['resource']} is skipped without a reason"


def test_checkov_flags_a_privileged_root_pod(tmp_path: Path) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bad", "namespace": "nasrec"},
        "spec": {"containers": [{"name": "c", "image": "x:1", "securityContext": {"privileged": True}}]},
    }
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    failed = {c["check_id"] for c in checkov(tmp_path)["results"]["failed_checks"]}
    assert {"CKV_K8S_16", "CKV_K8S_23"} <= failed  # privileged; admission of root containers


def test_overlays_only_patch_the_base() -> None:
    for kustomization in sorted((K8S / "overlays").glob("*/kustomization.yaml")):
        spec = yaml.safe_load(kustomization.read_text())
        assert set(spec) <= {"apiVersion", "kind", "resources", "patches", "components"}, kustomization
        for resource in spec["resources"]:
            target = (kustomization.parent / resource).resolve()
            assert target.is_dir() and target.is_relative_to(K8S / "base"), f"{kustomization}: {resource}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_meet_the_restricted_profile_and_have_requests_and_limits(rendered, variant: str) -> None:
    specs = pod_specs(rendered[variant])
    assert len(specs) == 3  # the model server, the feature server, Redis
    for name, spec in specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["serviceAccountName"].startswith("nasrec-"), name
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec), name
        assert all("hostPath" not in v for v in spec.get("volumes", [])), name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name}: {kind}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_secret_is_written_and_images_are_pinned(rendered, variant: str) -> None:
    text = rendered[variant].read_text()
    assert "kind: Secret" not in text
    for name, spec in pod_specs(rendered[variant]).items():
        for container in spec["containers"]:
            repository, _, tag = container["image"].rpartition(":")
            assert repository and tag and tag != "latest", f"{name}: {container['image']}"
            for env in container.get("env", []):
                if "PASSWORD" in env["name"]:
                    assert env["valueFrom"]["secretKeyRef"]["name"] == "nasrec-redis", name
                elif "value" in env:
                    assert "password=" not in env["value"] or "$(REDIS_PASSWORD)" in env["value"], name


def ingress_sources(policy: dict) -> list[dict]:
    return [source for rule in policy["spec"]["ingress"] for source in rule["from"]]


def test_network_policies_let_only_the_named_clients_in(rendered) -> None:
    objs = by_name(rendered["base"])
    assert objs["NetworkPolicy/default-deny-ingress"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    (redis,) = ingress_sources(objs["NetworkPolicy/nasrec-redis"])
    (allowed,) = redis["podSelector"]["matchExpressions"]
    assert set(allowed["values"]) == {"nasrec-triton", "nasrec-feature-server"} and set(redis) == {"podSelector"}
    triton = objs["NetworkPolicy/nasrec-triton"]["spec"]["ingress"]
    served_ports = {p["port"] for rule in triton for p in rule["ports"] if rule["from"][0].get("podSelector")}
    gateway = triton[0]["from"][0]["podSelector"]["matchLabels"]
    assert gateway == {"nasrec.io/gateway": "true"} and served_ports == {8000, 8001}
    for key, obj in objs.items():
        if obj["kind"] in POD_KINDS:
            labels = obj["spec"]["template"]["metadata"]["labels"]
            covering = [p for p in objs.values() if p["kind"] == "NetworkPolicy" and p["spec"]["podSelector"]]
            assert any(p["spec"]["podSelector"]["matchLabels"].items() <= labels.items() for p in covering), key


def test_triton_serves_the_repository_with_health_probes_scaling_and_a_budget(rendered) -> None:
    objs = by_name(rendered["base"])
    spec = objs["Deployment/nasrec-triton"]["spec"]["template"]["spec"]
    (triton,) = spec["containers"]
    assert {p["containerPort"] for p in triton["ports"]} == {8000, 8001, 8002}
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "--model-control-mode=explicit" in triton["args"] and "--model-repository=/models" in triton["args"]
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in spec["volumes"]}
    assert claims["model-repository"] == "nasrec-model-repository"
    assert objs["Service/nasrec-triton-replicas"]["spec"]["clusterIP"] == "None"
    assert objs["HorizontalPodAutoscaler/nasrec-triton"]["spec"]["scaleTargetRef"]["name"] == "nasrec-triton"
    assert objs["PodDisruptionBudget/nasrec-triton"]["spec"]["minAvailable"] == 1
    isvc = by_name(rendered["overlays/kserve"])["InferenceService/nasrec"]["spec"]["predictor"]
    assert isvc["model"]["storageUri"] == "pvc://nasrec-model-repository"
    assert isvc["model"]["image"] == triton["image"]


def test_the_overlays_size_triton_for_their_cluster(rendered) -> None:
    dev = by_name(rendered["overlays/dev"])
    assert dev["Deployment/nasrec-triton"]["spec"]["replicas"] == 1
    assert dev["HorizontalPodAutoscaler/nasrec-triton"]["spec"]["maxReplicas"] == 1
    assert dev["PodDisruptionBudget/nasrec-triton"]["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "nasrec-triton"}},
    }
    gpu = by_name(rendered["overlays/gpu-prod"])["Deployment/nasrec-triton"]["spec"]["template"]["spec"]
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_the_feature_store_config_is_what_a_served_model_reads(rendered, tmp_path: Path) -> None:
    from features.feast_repo import serving_config, write_repo
    from features.schema import builtin_schema

    write_repo(builtin_schema("avazu"), tmp_path / "feature_repo", tmp_path / "offline" / "events.parquet")
    (config_map,) = [o for o in objects(rendered["base"]) if o["metadata"]["name"].startswith("nasrec-feature-store")]
    text = config_map["data"]["feature_store.yaml"].replace("${FEAST_PROJECT}", "avazu")
    assert yaml.safe_load(text) == serving_config(tmp_path / "feature_repo", "production")
    server = by_name(rendered["base"])["Deployment/nasrec-feature-server"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in server["containers"][0]["env"]}
    assert env["FEAST_PROJECT"] == "avazu" and env["REDIS_CONNECTION_STRING"].startswith("nasrec-redis:6379")


def test_ingest_publishes_where_the_feature_server_and_triton_read(rendered) -> None:
    """The pipeline's FEAST_ROOT is every Feast reader's FEAST_REGISTRY_ROOT; the feature server, which writes an
    empty registry when it starts before the first ingest, mounts that folder of nasrec-data writable; and the
    pipeline's FEATURE_SERVER names its Service."""
    from urllib.parse import urlsplit

    from pipelines import DATA_VOLUME, FEAST_ROOT, FEATURE_SERVER

    objs = by_name(rendered["overlays/dev"])
    for name in ("Deployment/nasrec-feature-server", "Deployment/nasrec-triton"):
        (container,) = objs[name]["spec"]["template"]["spec"]["containers"]
        assert {e["name"]: e.get("value") for e in container["env"]}["FEAST_REGISTRY_ROOT"] == FEAST_ROOT, name
    spec = objs["Deployment/nasrec-feature-server"]["spec"]["template"]["spec"]
    claims = {v["name"]: v.get("persistentVolumeClaim", {}) for v in spec["volumes"]}
    [mount] = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == FEAST_ROOT]
    assert claims[mount["name"]] == {"claimName": DATA_VOLUME[0]} and not mount.get("readOnly")
    assert Path(DATA_VOLUME[1], mount["subPath"]) == Path(FEAST_ROOT)
    address = urlsplit(FEATURE_SERVER)
    service = objs["Service/nasrec-feature-server"]
    assert address.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert address.port in {p["port"] for p in service["spec"]["ports"]}


def test_spark_executors_get_what_the_ingest_pods_spark_conf_asks_for(rendered, tmp_path: Path) -> None:
    """ingest_engine=spark-k8s: the executors' pod template is a restricted pod of the executor account (no API
    access), labelled as the network policies expect, and the ports those policies open are the spark_conf's; the
    pipeline's Role lets the ingest pod start executors, and its ingest task carries the driver's label, its
    address and the template where the spark_conf reads it."""
    from features.feast_repo import OFFLINE_STORES, SPARK_EXECUTOR_TEMPLATE, SPARK_EXECUTOR_VOLUME
    from pipelines import COMPILED_PIPELINE, DATA_VOLUME, INGEST_WORK_ROOT

    objs = by_name(rendered["base"])
    conf = OFFLINE_STORES["spark-k8s"]["spark_conf"]
    template = yaml.safe_load(objs["ConfigMap/nasrec-spark-executor-pod"]["data"][Path(SPARK_EXECUTOR_TEMPLATE).name])
    (tmp_path / "template.yaml").write_text(yaml.safe_dump(template | {"metadata": {"name": "executor"}}))
    assert validation_errors(tmp_path / "template.yaml") == {"Pod/executor": []}
    spec = template["spec"]
    assert spec["serviceAccountName"] == "nasrec-spark-executor" and spec["automountServiceAccountToken"] is False
    assert objs["ServiceAccount/nasrec-spark-executor"]["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
    (container,) = spec["containers"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    executor = template["metadata"]["labels"]["app.kubernetes.io/name"]
    driver = objs["NetworkPolicy/nasrec-spark-driver"]["spec"]
    (into_driver,) = driver["ingress"]
    assert into_driver["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": executor}}}]
    ports = {str(p["port"]) for p in into_driver["ports"]}
    assert ports == {conf["spark.driver.port"], conf["spark.blockManager.port"]}
    (into_executors,) = objs["NetworkPolicy/nasrec-spark-executor"]["spec"]["ingress"]
    assert objs["NetworkPolicy/nasrec-spark-executor"]["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": executor
    }
    assert [p["port"] for p in into_executors["ports"]] == [int(conf["spark.blockManager.port"])]
    assert SPARK_EXECUTOR_VOLUME == DATA_VOLUME and Path(INGEST_WORK_ROOT).is_relative_to(DATA_VOLUME[1])
    rules = objs["Role/nasrec-pipeline"]["rules"]
    for resource in ("pods", "configmaps"):
        verbs = {
            v for rule in rules if resource in rule["resources"] and rule["apiGroups"] == [""] for v in rule["verbs"]
        }
        assert {"create", "watch", "delete", "deletecollection"} <= verbs, resource
    # the compiled pipeline's ingest task: the driver's label, its pod's address, the template's folder
    (platform,) = list(yaml.safe_load_all(COMPILED_PIPELINE.read_text()))[1:]
    ingest = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-ingest"]
    assert (
        ingest["podMetadata"]["labels"]["app.kubernetes.io/name"]
        == driver["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
    )
    assert {"POD_NAME", "POD_NAMESPACE", "POD_IP"} <= {f["name"] for f in ingest["fieldPathAsEnv"]}
    (mounted,) = ingest["configMapAsVolume"]
    assert mounted["configMapName"] == "nasrec-spark-executor-pod" and mounted["optional"] is True
    assert mounted["mountPath"] == str(Path(SPARK_EXECUTOR_TEMPLATE).parent)

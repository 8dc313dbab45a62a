"""The Kubeflow pipeline: its committed compiled YAML, and whole local runs (kfp.local) with the tiny preset."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from components.images import CPU_IMAGE, CUDA_IMAGE
from pipelines import COMPILED_PIPELINE, DATA_VOLUME, MODEL_VOLUME
from pipelines.local import (
    STEPS,
    PipelineStepError,
    Preset,
    run_local,
    serve_held_out,
    step_times,
    without_retries,
)
from pipelines.pipeline import compile_pipeline
from serving.export import read_metadata
from serving.repository import versions
from tests.conftest import shared

TRAINING = ("train-supernet", "search", "finetune")


def test_the_committed_yaml_is_what_the_pipeline_compiles_to(tmp_path: Path) -> None:
    fresh = compile_pipeline(tmp_path / "pipeline.yaml").read_text()
    assert fresh == COMPILED_PIPELINE.read_text(), "run `nasrec pipeline compile` and commit the YAML"


def test_the_compiled_pipeline_pins_images_requests_gpus_and_caches_only_pure_steps() -> None:
    spec, _ = yaml.safe_load_all(COMPILED_PIPELINE.read_text())
    executors = spec["deploymentSpec"]["executors"]
    images = {name.removeprefix("exec-"): e["container"]["image"] for name, e in executors.items()}
    assert images == {
        step.replace("_", "-"): CUDA_IMAGE if step.replace("_", "-") in TRAINING else CPU_IMAGE for step in STEPS
    }
    for step in TRAINING:
        accelerator = executors[f"exec-{step}"]["container"]["resources"]["accelerator"]
        assert accelerator["resourceType"] == "nvidia.com/gpu", step
        # train_supernet's own pod holds no GPU where a distributed job trains: the plan says how many it takes
        given = "plan-training-Output" if step == "train-supernet" else "pipelinechannel--gpus"
        assert given in accelerator["resourceCount"], step
    tasks = spec["root"]["dag"]["tasks"] | spec["components"]["comp-condition-1"]["dag"]["tasks"]
    tasks = {name: task for name, task in tasks.items() if name in images}  # the steps, not the condition
    assert sorted(tasks) == sorted(images)
    assert all(task["taskInfo"]["name"] != name for name, task in tasks.items())  # each has a display name
    uncached = {name for name, task in tasks.items() if not task.get("cachingOptions", {}).get("enableCache")}
    assert uncached == {"fingerprint", "evaluate", "export", "deploy"}  # the data now, the served repository
    assert tasks["ingest"]["inputs"]["parameters"]["data_digest"]["taskOutputParameter"]["producerTask"] == (
        "fingerprint"
    )
    assert "plan-training" in tasks["train-supernet"]["dependentTasks"]
    for step in ("ingest", *TRAINING):  # a code change is a new cache key of every cached step
        code = tasks[step]["inputs"]["parameters"]["code_digest"]["componentInputParameter"]
        assert code == "code_digest", step
    condition = spec["root"]["dag"]["tasks"]["condition-1"]["triggerPolicy"]["condition"]
    assert "pipelinechannel--evaluate-Output" in condition  # export and deploy wait for the gate


def test_on_a_cluster_each_step_mounts_its_volume_is_sized_retried_and_training_finds_gpu_nodes() -> None:
    spec, platform = yaml.safe_load_all(COMPILED_PIPELINE.read_text())
    executors = spec["deploymentSpec"]["executors"]
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mounts = {
        name.removeprefix("exec-"): [(m["constant"], m["mountPath"]) for m in config.get("pvcMount", [])]
        for name, config in kubernetes.items()
    }
    assert {step: mount for step, mount in mounts.items() if mount} == {
        "fingerprint": [DATA_VOLUME],
        "ingest": [DATA_VOLUME],
        "train-supernet": [DATA_VOLUME],  # a distributed job's data and supernet
        "evaluate": [MODEL_VOLUME],
        "deploy": [MODEL_VOLUME],
    }
    for name, executor in executors.items():
        resources = executor["container"]["resources"]
        assert {"cpuRequest", "cpuLimit", "memoryRequest", "memoryLimit"} <= set(resources), name
    for step in TRAINING:
        config = kubernetes[f"exec-{step}"]
        assert config["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
        assert config["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"] == "gpu_node_selector"
    own_pod = {e["name"]: e["fieldPath"] for e in kubernetes["exec-train-supernet"]["fieldPathAsEnv"]}
    assert own_pod == {
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "POD_IP": "status.podIP",
    }  # its job's image
    tasks = spec["root"]["dag"]["tasks"] | spec["components"]["comp-condition-1"]["dag"]["tasks"]
    retried = {name: task["retryPolicy"]["maxRetryCount"] for name, task in tasks.items() if "retryPolicy" in task}
    assert retried == dict.fromkeys((n.removeprefix("exec-") for n in executors), 2)


def test_a_local_run_fails_at_once_where_a_cluster_retries() -> None:
    from pipelines.pipeline import nasrec_pipeline

    def retried(pipeline) -> set[str]:
        graph = pipeline.component_spec.implementation.graph
        dags = (graph.root.dag, *(c.dag for c in graph.components.values() if c.HasField("dag")))
        return {name for dag in dags for name, task in dag.tasks.items() if task.HasField("retry_policy")}

    assert retried(nasrec_pipeline) == {step.replace("_", "-") for step in STEPS}
    assert retried(without_retries(nasrec_pipeline)) == set()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    preset = Preset.load("tiny")
    return run_local(preset.parameters, tmp_path_factory.mktemp("pipeline"), preset)


def test_a_local_run_writes_every_artifact_deploys_and_answers_over_grpc(tiny_run, capsys) -> None:
    run = tiny_run
    data = run.artifact("data")
    for name in ("train.parquet", "validation.parquet", "test.parquet", "transform.json", "feature_repo"):
        assert (data / name).exists(), name
    assert (run.artifact("supernet") / "checkpoint.pt").exists()
    assert json.loads((run.artifact("history") / "top_k.json").read_text())
    assert (run.artifact("winner") / "checkpoint.pt").exists()
    evaluation = json.loads(run.artifact("evaluation").read_text())
    assert run.outputs["deployed"] and evaluation["deploy"] and evaluation["served"] is None
    assert run.outputs["evaluation"].metadata["test.auc"] == evaluation["test"]["auc"]
    outputs = run.artifact("data").parents[1]  # this run's folder: one folder a step, holding its artifacts
    assert "<img src='data:image/png;base64," in (outputs / "search" / "plots").read_text()
    assert (outputs / "search" / "top_architectures").read_text().startswith("# Top architectures")
    assert "**deploy**" in (outputs / "evaluate" / "report").read_text()
    assert json.loads((outputs / "export" / "metrics").read_text())["parity"]["max_abs_diff"] <= 1e-5
    check = json.loads((outputs / "deploy" / "metrics").read_text())["check"]
    assert check["rows"] == 64
    for endpoint in ("events", "ids"):  # raw test events and their ids, both answered as ONNX Runtime does
        assert check[endpoint]["max_abs_diff"] <= 1e-5 and check[endpoint]["served_version"] == 1
    assert versions(run.repository / "nasrec_criteo") == versions(run.repository / "nasrec_criteo_ids") == [1]
    onnx_path = run.repository / "nasrec_criteo_ids" / "1" / "model.onnx"
    assert float(read_metadata(onnx_path)["test_auc"]) == evaluation["test"]["auc"]
    assert all(took.endswith(" s") for took in step_times(run, STEPS).values())
    assert "digest" in (run.out / "logs" / "fingerprint.log").read_text()  # the log's files: ingest's cache key
    trained_on = "cuda" if run.parameters["gpus"] else "cpu"  # unless told, run-local uses the GPU when present
    for step in ("train-supernet", "search", "finetune"):
        assert json.loads((outputs / step / "metrics").read_text())["device"] == trained_on, step

    serve_held_out(run, 5)
    printed = capsys.readouterr().out
    answers = [line.split() for line in printed.split("probability  label\n")[1].splitlines()[:5]]
    assert all(0.0 < float(p) < 1.0 and label in ("0", "1") for p, label in answers)
    assert "stopped Triton" in printed


def test_a_rerun_reuses_the_pure_steps_and_the_gate_can_refuse(tiny_run, tmp_path: Path) -> None:
    again = run_local(tiny_run.parameters, tiny_run.out)  # the same inputs: the same winner, served already
    times = step_times(again, STEPS)
    assert times["fingerprint"].endswith(" s")  # taken on every run
    assert {step for step, took in times.items() if took == "reused from the cache"} == {
        "ingest",
        "plan_training",
        "train_supernet",
        "search",
        "finetune",
    }
    assert times["export"] == times["deploy"] == "not run: the quality gate said no"
    assert again.artifact("winner") == tiny_run.artifact("winner") and not again.outputs["deployed"]
    evaluation = json.loads(again.artifact("evaluation").read_text())
    assert evaluation["reason"] == "the served version 1 is this very model (the same weights)"

    strict = run_local(tiny_run.parameters | {"min_auc": 1.0}, tiny_run.out)
    assert not strict.outputs["deployed"]
    assert "below the threshold 1.0000" in json.loads(strict.artifact("evaluation").read_text())["reason"]
    assert versions(strict.repository / "nasrec_criteo") == [1]  # nothing exported, nothing deployed
    (log,) = tiny_run.parameters["raw_files"]
    os.utime(log, ns=(time.time_ns(), time.time_ns()))  # the log rewritten in place, at the same path
    started = time.time()
    # training_nodes=2 ends the run at train_supernet (a distributed job needs a cluster), after the part tested
    with pytest.raises(PipelineStepError, match=r"step 'train-supernet' failed"):
        run_local(tiny_run.parameters | {"training_nodes": 2}, tiny_run.out)
    logs = tiny_run.out / "logs"
    assert (logs / "ingest.log").stat().st_mtime >= started  # ingested again: the fingerprint is a new key
    assert (logs / "ingest.log").read_text().strip().splitlines()[-1].startswith("ingest took ")
    assert "a distributed run needs a cluster" in (logs / "train_supernet.log").read_text()

    with pytest.raises(ValueError, match=r"gpus: 0 \(the CPU\) or 1 \(a training step runs on one GPU\), got 2"):
        run_local(tiny_run.parameters | {"gpus": 2}, tmp_path)  # refused before any step runs
    with pytest.raises(ValueError, match=r"'spark-k8s' runs in the pipeline's ingest pod"):
        run_local(tiny_run.parameters | {"ingest_engine": "spark-k8s"}, tmp_path / "k8s")
    assert not (tmp_path / "k8s").exists()
    with pytest.raises(PipelineStepError, match=r"step 'ingest' failed; its log: .*logs/ingest\.log"):
        run_local(tiny_run.parameters | {"schema": "avazu"}, tmp_path)
    assert "ingest failed: IngestError" in (tmp_path / "logs" / "ingest.log").read_text()


def test_the_readmes_sequence_serves_a_second_dataset_beside_the_first(tiny_run, capsys) -> None:
    """`make run`, then `make run DATA=../shared/data/avazu_10k/train.csv SCHEMA=avazu`: the Avazu model is served
    under its own name, neither judged against the Criteo model nor replacing it."""
    parameters = tiny_run.parameters | {"raw_files": [str(shared("avazu"))], "schema": "avazu"}
    avazu = run_local(parameters, tiny_run.out)
    evaluation = json.loads(avazu.artifact("evaluation").read_text())
    assert avazu.outputs["deployed"] and evaluation["model_name"] == "nasrec_avazu" and evaluation["served"] is None
    assert versions(avazu.repository / "nasrec_avazu") == versions(avazu.repository / "nasrec_criteo") == [1]
    serve_held_out(avazu, 5)
    printed = capsys.readouterr().out
    assert "model nasrec_avazu, on 5 held-out raw events" in printed
    answers = [line.split() for line in printed.split("probability  label\n")[1].splitlines()[:5]]
    assert all(0.0 < float(p) < 1.0 and label in ("0", "1") for p, label in answers)


def test_the_image_tags_follow_the_project_version_the_dockerfile_builds() -> None:
    import tomllib

    from components.images import SPARK_EXECUTOR_IMAGE, SPARK_VERSION, VERSION

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    assert project["version"] == VERSION
    dockerfile = (Path(__file__).parents[2] / "Dockerfile").read_text()
    for image in (CPU_IMAGE, CUDA_IMAGE):
        assert f"-t {image} ." in dockerfile  # the build command for each tag the pipeline pins
    # the ingest step (CPU image) can run ingest_engine=spark: a Java runtime and the `spark` extra, with pyspark
    # at the release of the executors' image (spark-k8s)
    assert any(r.startswith("pyspark") for r in project["optional-dependencies"]["spark"])
    assert 'pip install ".[spark]" "pyspark==${SPARK_VERSION}"' in dockerfile and "default-jre-headless" in dockerfile
    assert f"ARG SPARK_VERSION={SPARK_VERSION}\n" in dockerfile and SPARK_EXECUTOR_IMAGE.endswith(f":{SPARK_VERSION}")

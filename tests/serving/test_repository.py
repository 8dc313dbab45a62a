"""Triton model repositories: each version served as a raw-events model and an ids model, configs from Triton's
ModelConfig protobuf parsed back, immutable versions, candidates checked before they are promoted."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from components.steps.deploy import DeployRun, deploy, replica_urls
from serving.errors import ServingError
from serving.repository import (
    CONFIG_FILE,
    IDS_MODEL_PARAMETER,
    INPUTS_PARAMETER,
    LAST_VERSION_PARAMETER,
    PARALLEL_PARAMETER,
    THREADS_PARAMETER,
    ServingConfig,
    add_version,
    read_config,
    remove_version,
    versions,
)
from tests.serving.conftest import Exported

CRITEO_FIELDS = [*(f"I{k}" for k in range(1, 14)), *(f"C{k}" for k in range(1, 27))]


def configs(repository, name: str = "ctr") -> tuple[mc.ModelConfig, mc.ModelConfig]:
    return read_config(repository / name / CONFIG_FILE), read_config(repository / f"{name}_ids" / CONFIG_FILE)


def test_the_local_variant_serves_raw_events_and_ids_as_python_backend_models(
    criteo_exported: Exported, tmp_path
) -> None:
    serving = ServingConfig(instances=2, onnx_threads=1, parallel_runs=3)
    folder = add_version(criteo_exported.exports[0], tmp_path, "ctr", serving)
    events, ids = configs(tmp_path)
    assert folder == tmp_path / "ctr" / "1"
    assert sorted(p.name for p in folder.iterdir()) == [
        "export.json",
        "features",
        "model.onnx",
        "model.py",
        "schema.yaml",
        "transform.json",
    ]
    modules = ["__init__.py", "compiled.py", "online.py", "schema.py", "transform.py"]
    assert sorted(p.name for p in (folder / "features").iterdir()) == modules
    assert not (folder / "feature_repo").exists()  # Criteo has no entities: no online store to read
    assert sorted(p.name for p in (tmp_path / "ctr_ids" / "1").iterdir()) == ["export.json", "model.onnx", "model.py"]
    assert [(i.name, i.data_type, list(i.dims)) for i in events.input] == [
        (f, mc.TYPE_FP32 if f.startswith("I") else mc.TYPE_STRING, [1]) for f in CRITEO_FIELDS
    ]
    assert [(i.name, i.data_type, list(i.dims)) for i in ids.input] == [
        ("dense", mc.TYPE_FP32, [13]),
        ("sparse", mc.TYPE_INT64, [26]),
    ]
    for config, inputs in ((events, "events"), (ids, "ids")):
        assert config.backend == "python" and not config.platform
        assert config.parameters[INPUTS_PARAMETER].string_value == inputs
        assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("probability", mc.TYPE_FP32, [1])]
        assert config.max_batch_size == 4096
        assert list(config.dynamic_batching.preferred_batch_size) == [64, 512]
        assert config.dynamic_batching.max_queue_delay_microseconds == 100
        assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2)]
        assert [(w.name, w.batch_size) for w in config.model_warmup] == [("batch_1", 1), ("batch_512", 512)]
        assert config.parameters[THREADS_PARAMETER].string_value == "1"
        assert config.parameters[PARALLEL_PARAMETER].string_value == "3"
        assert config.parameters[LAST_VERSION_PARAMETER].string_value == "1"
        assert config.version_policy.latest.num_versions == 1
        assert IDS_MODEL_PARAMETER not in config.parameters  # the events model runs the network in process
    assert all(w.inputs["C1"].zero_data and w.inputs["I1"].data_type == mc.TYPE_FP32 for w in events.model_warmup)
    assert all(list(w.inputs["dense"].dims) == [13] for w in ids.model_warmup)


def test_the_production_variant_pairs_python_preprocessing_with_triton_onnx_runtime(
    criteo_exported: Exported, tmp_path
) -> None:
    serving = ServingConfig(variant="production", instance_kind="gpu", tensorrt=True, preferred_batch_sizes=(256,))
    folder = add_version(criteo_exported.exports[0], tmp_path, "ctr", serving)
    events, ids = configs(tmp_path)
    assert ids.platform == "onnxruntime_onnx" and not ids.backend and ids.default_model_filename == "model.onnx"
    assert sorted(p.name for p in (tmp_path / "ctr_ids" / "1").iterdir()) == ["export.json", "model.onnx"]
    assert [(g.kind, g.count) for g in ids.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 1)]
    (accelerator,) = ids.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert ids.version_policy.latest.num_versions == 2  # a retiring events version still calls its own network
    # the preprocessing: a Python model on the CPU, calling the ids model's version of its own number (BLS)
    assert events.backend == "python" and events.parameters[IDS_MODEL_PARAMETER].string_value == "ctr_ids"
    assert [(g.kind, g.count) for g in events.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
    assert "model.onnx" not in {p.name for p in folder.iterdir()} and (folder / "model.py").exists()
    for config in (events, ids):
        assert list(config.dynamic_batching.preferred_batch_size) == [256]


def test_versions_are_numbered_immutable_and_keep_one_set_of_fields(
    criteo_exported: Exported, criteo_retrained: Exported, avazu_exported: Exported, tmp_path
) -> None:
    repository = tmp_path / "repository"
    for export in (*criteo_exported.exports, criteo_retrained.exports[0]):  # the last with another transform
        add_version(export, repository, "ctr", ServingConfig())
    assert versions(repository / "ctr") == versions(repository / "ctr_ids") == [1, 2, 3]
    with pytest.raises(FileExistsError, match="version 2 exists"):
        add_version(criteo_exported.exports[0], repository, "ctr", ServingConfig(), version=2)
    with pytest.raises(ValueError, match=r"served by another variant than the new version; use a new model name"):
        add_version(criteo_exported.exports[0], repository, "ctr", ServingConfig(variant="production"))
    with pytest.raises(ValueError, match=r"takes other fields than the served model \(another schema\?\)"):
        add_version(avazu_exported.exports[0], repository, "ctr", ServingConfig())
    assert sorted(p.name for p in repository.iterdir()) == ["ctr", "ctr_ids"]  # no candidate left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repository"]  # nothing staged beside it

    remove_version(repository, "ctr", 3)  # a version that failed after its promotion
    assert versions(repository / "ctr") == versions(repository / "ctr_ids") == [1, 2]
    with pytest.raises(ValueError, match=r"version: must be above 3, the newest written to .*ctr; got 3"):
        add_version(criteo_retrained.exports[0], repository, "ctr", ServingConfig(), version=3)
    assert add_version(criteo_retrained.exports[0], repository, "ctr", ServingConfig()).name == "4"  # not 3 again


def test_a_redeploy_keeps_the_tuned_fields_unless_the_command_changes_them(criteo_exported: Exported, tmp_path) -> None:
    repository = tmp_path / "repository"
    deploy(criteo_exported.exports[0], repository, DeployRun(instances=3, max_batch_size=256, check_rows=0))
    tuned = configs(repository, "nasrec_criteo")
    deploy(criteo_exported.exports[1], repository, DeployRun(check_rows=0))
    kept = configs(repository, "nasrec_criteo")
    for before, after in zip(tuned, kept):
        assert [(g.kind, g.count) for g in after.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 3)]
        assert after.max_batch_size == 256 and list(after.dynamic_batching.preferred_batch_size) == [64, 256]
        assert after.instance_group == before.instance_group and after.input == before.input
    deploy(criteo_exported.exports[1], repository, DeployRun(instances=1, check_rows=0))
    changed = configs(repository, "nasrec_criteo")
    assert [g.count for config in changed for g in config.instance_group] == [1, 1]
    assert [config.max_batch_size for config in changed] == [256, 256]


def test_an_unservable_config_is_refused_with_the_field_at_fault(tmp_path) -> None:
    with pytest.raises(ValueError, match="variant"):
        ServingConfig(variant="cloud")
    with pytest.raises(ValueError, match="tensorrt: needs variant 'production'"):
        ServingConfig(tensorrt=True)
    with pytest.raises(ValueError, match="instance_kind: the local variant runs ONNX Runtime on CPU"):
        ServingConfig(instance_kind="gpu")
    with pytest.raises(ValueError, match=r"batch sizes \[512\] exceed max_batch_size 256"):
        ServingConfig(max_batch_size=256, preferred_batch_sizes=(64,))
    with pytest.raises(ValueError, match=r"^instances, parallel_runs: must be >= 1"):
        ServingConfig(instances=0, parallel_runs=0)
    with pytest.raises(FileNotFoundError, match="is it the output of `nasrec export`"):
        add_version(tmp_path, tmp_path / "repo", "ctr", ServingConfig())
    broken = tmp_path / CONFIG_FILE
    broken.write_text("max_batch_size: many\n")
    with pytest.raises(ValueError, match="not a valid Triton model config"):
        read_config(broken)


def test_a_candidate_that_fails_its_check_never_becomes_a_version(
    criteo_exported: Exported, avazu_exported: Exported, tmp_path
) -> None:
    repository = tmp_path / "repository"
    first = deploy(criteo_exported.exports[0], repository, DeployRun(check_rows=0))
    assert first["version"] == 1 and "check" not in first
    broken = tmp_path / "broken"  # Criteo's transform and config, another dataset's network: it cannot load
    shutil.copytree(criteo_exported.exports[1], broken)
    shutil.copy2(avazu_exported.exports[0] / "model.onnx", broken / "model.onnx")
    with pytest.raises(Exception, match="Got invalid dimensions for input: sparse"):
        deploy(broken, repository, DeployRun(check_rows=8))
    assert versions(repository / "nasrec_criteo") == versions(repository / "nasrec_criteo_ids") == [1]
    assert sorted(p.name for p in repository.iterdir()) == ["nasrec_criteo", "nasrec_criteo_ids"]
    record = json.loads((repository / "nasrec_criteo" / "1" / "export.json").read_text())
    assert record == json.loads((criteo_exported.exports[0] / "export.json").read_text())


def test_deploy_into_a_repository_on_another_mount_point(criteo_exported: Exported, tmp_path) -> None:
    """A cluster mounts the model repository as a volume: its parent is another file system."""
    repository = tmp_path / "volume"
    repository.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(repository)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root here: {mounted.stderr.decode().strip()}")
    try:
        record = deploy(criteo_exported.exports[0], repository, DeployRun(check_rows=16))
        assert record["check"]["events"]["served_version"] == 1
        assert versions(repository / "nasrec_criteo") == versions(repository / "nasrec_criteo_ids") == [1]
        assert sorted(p.name for p in repository.iterdir()) == ["nasrec_criteo", "nasrec_criteo_ids"]
    finally:
        subprocess.run(["umount", str(repository)], check=True)


def test_a_deploy_reaches_every_replica_a_headless_service_name_resolves_to(monkeypatch) -> None:
    """The resolver faked at its boundary: a headless Service's name answers with one address a replica (and
    IPv6 ones in a dual-stack cluster); deploy loads the version into each."""
    import socket

    def resolve(host: str, port: int, type: int = 0) -> list:
        assert (host, port, type) == ("nasrec-triton-replicas", 8001, socket.SOCK_STREAM)
        stream = socket.SOCK_STREAM
        v4 = [(socket.AF_INET, stream, 6, "", (a, port)) for a in ("10.0.3.7", "10.0.1.12", "10.0.3.7")]
        return [*v4, (socket.AF_INET6, stream, 6, "", ("fd00::7", port, 0, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    assert replica_urls("nasrec-triton-replicas:8001") == ["10.0.1.12:8001", "10.0.3.7:8001"]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [(socket.AF_INET6, 1, 6, "", ("fd00::7", 8001, 0, 0))])
    assert replica_urls("nasrec-triton-replicas:8001") == ["[fd00::7]:8001"]
    monkeypatch.undo()
    assert replica_urls("127.0.0.1:8001") == ["127.0.0.1:8001"]
    with pytest.raises(ServingError, match=r"Triton at no-such-host\.invalid:8001: cannot resolve it"):
        replica_urls("no-such-host.invalid:8001")

"""Triton model repositories: config.pbtxt from Triton's ModelConfig protobuf, parsed back; immutable versions."""

from __future__ import annotations

import json
import shutil

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from components.steps.deploy import DeployRun, deploy
from features.transform import FeatureTransform
from serving.repository import (
    CONFIG_FILE,
    PARALLEL_PARAMETER,
    THREADS_PARAMETER,
    ServingConfig,
    add_version,
    read_config,
    remove_version,
    transform_parameter,
    versions,
)
from tests.serving.conftest import Exported


def test_the_local_variant_is_a_python_backend_model_running_onnx_runtime(criteo_exported: Exported, tmp_path) -> None:
    folder = add_version(
        criteo_exported.exports[0], tmp_path, "ctr", ServingConfig(instances=2, onnx_threads=1, parallel_runs=3)
    )
    config = read_config(tmp_path / "ctr" / CONFIG_FILE)
    assert folder == tmp_path / "ctr" / "1"
    assert sorted(p.name for p in folder.iterdir()) == [
        "export.json",
        "model.onnx",
        "model.py",
        "schema.yaml",
        "transform.json",
    ]
    assert config.backend == "python" and not config.platform
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("dense", mc.TYPE_FP32, [13]),
        ("sparse", mc.TYPE_INT64, [26]),
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("probability", mc.TYPE_FP32, [1])]
    assert config.max_batch_size == 4096
    assert list(config.dynamic_batching.preferred_batch_size) == [64, 512]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2)]
    assert [(w.name, w.batch_size) for w in config.model_warmup] == [("batch_1", 1), ("batch_512", 512)]
    assert all(w.inputs["sparse"].zero_data and list(w.inputs["dense"].dims) == [13] for w in config.model_warmup)
    assert config.parameters[THREADS_PARAMETER].string_value == "1"
    assert config.parameters[PARALLEL_PARAMETER].string_value == "3"
    transform = FeatureTransform.load(criteo_exported.exports[0] / "transform.json")
    assert config.parameters[transform_parameter(1)].string_value == transform.sha256()
    assert config.version_policy.latest.num_versions == 1


def test_the_production_variant_runs_triton_onnx_runtime_on_gpus_with_tensorrt(
    criteo_exported: Exported, tmp_path
) -> None:
    serving = ServingConfig(variant="production", instance_kind="gpu", tensorrt=True, preferred_batch_sizes=(256,))
    folder = add_version(criteo_exported.exports[0], tmp_path, "ctr", serving)
    config = read_config(tmp_path / "ctr" / CONFIG_FILE)
    assert config.platform == "onnxruntime_onnx" and not config.backend
    assert config.default_model_filename == "model.onnx" and not (folder / "model.py").exists()
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 1)]
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert list(config.dynamic_batching.preferred_batch_size) == [256]


def test_versions_are_numbered_immutable_and_keep_one_interface(
    criteo_exported: Exported, criteo_retrained: Exported, tmp_path
) -> None:
    repository = tmp_path / "repository"
    for export in criteo_exported.exports:
        add_version(export, repository, "ctr", ServingConfig())
    assert versions(repository / "ctr") == [1, 2]
    with pytest.raises(FileExistsError, match="version 2 exists"):
        add_version(criteo_exported.exports[0], repository, "ctr", ServingConfig(), version=2)
    with pytest.raises(ValueError, match=r"served by 'python'.*'onnxruntime_onnx'"):
        add_version(criteo_exported.exports[0], repository, "ctr", ServingConfig(variant="production"))
    avazu = tmp_path / "avazu"  # another schema's inputs under the same name
    shutil.copytree(criteo_exported.exports[1], avazu)
    record = json.loads((avazu / "export.json").read_text())
    record["metadata"]["input_schema"] = json.dumps({"num_dense": 0, "cardinalities": [10] * 22})
    (avazu / "export.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"inputs or outputs differ from the model's; use a new model name"):
        add_version(avazu, repository, "ctr", ServingConfig())
    assert versions(repository / "ctr") == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avazu", "repository"]  # no staging left beside it

    # retrained on re-ingested data: another transform, the same model name; each version names its own
    add_version(criteo_retrained.exports[0], repository, "ctr", ServingConfig())
    exports = (*criteo_exported.exports, criteo_retrained.exports[0])
    digests = [FeatureTransform.load(export / "transform.json").sha256() for export in exports]
    assert digests[0] == digests[1] != digests[2]
    config = read_config(repository / "ctr" / CONFIG_FILE)
    assert [config.parameters[transform_parameter(v)].string_value for v in (1, 2, 3)] == digests
    remove_version(repository / "ctr", 3)  # a version whose deploy check failed
    assert versions(repository / "ctr") == [1, 2]
    assert transform_parameter(3) not in read_config(repository / "ctr" / CONFIG_FILE).parameters
    with pytest.raises(ValueError, match=r"version: must be above 3, the newest written to .*ctr; got 3"):
        add_version(criteo_retrained.exports[0], repository, "ctr", ServingConfig(), version=3)
    assert add_version(criteo_retrained.exports[0], repository, "ctr", ServingConfig()).name == "4"  # not 3 again


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


def test_a_version_that_fails_its_check_is_taken_out_again(criteo_exported: Exported, ingest_shared, tmp_path) -> None:
    repository = tmp_path / "repository"
    first = deploy(criteo_exported.exports[0], repository, DeployRun(model_name="ctr", check_rows=0))
    assert first["version"] == 1 and "check" not in first
    _, avazu = ingest_shared("avazu")  # rows of other data: the wrong widths for this model
    with pytest.raises(Exception, match="INVALID_ARGUMENT : Got invalid dimensions"):
        deploy(criteo_exported.exports[1], repository, DeployRun(model_name="ctr", check_rows=8), avazu.out_dir)
    assert versions(repository / "ctr") == [1]  # the version served before stays the latest
    assert transform_parameter(2) not in read_config(repository / "ctr" / CONFIG_FILE).parameters

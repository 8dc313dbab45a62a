"""Kubeflow component: the export as the next version in the Triton model repository, checked over gRPC."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def deploy(
    data: Input[Dataset],
    onnx_model: Input[Model],
    repository: str,
    model_name: str,
    variant: str,
    triton_url: str,
    metrics: Output[Metrics],
    report: Output[Markdown],
):
    """Add a version of `model_name` to `repository` (a path this pod sees: on a cluster, the volume Triton
    serves from); load it into `triton_url`, or check it on a local Triton when that is empty."""
    from pathlib import Path

    from components.artifacts import log_metrics, step_log

    with step_log("deploy"):
        from components.steps.deploy import DeployRun
        from components.steps.deploy import deploy as deploy_step

        if not repository:
            raise ValueError("repository: the Triton model repository to deploy into must be given")
        run = DeployRun.from_dict({"model_name": model_name, "variant": variant, "url": triton_url})
        record = deploy_step(Path(onnx_model.path), Path(repository), run, Path(data.path))
        check = record.get("check", {})
        Path(report.path).write_text(
            f"# Deployed\n\n{model_name} version {record['version']} in `{record['repository']}`"
            + (f", loaded into {triton_url}" if triton_url else "")
            + (f"; {check['rows']} test rows answered over gRPC as ONNX Runtime does" if check else "")
            + ".\n"
        )
        log_metrics(metrics, record)

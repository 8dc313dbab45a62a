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
    """Add a version of `model_name` (empty: nasrec_<schema>) to `repository` (a path this pod sees: on a cluster,
    the volume Triton serves from), checked first as a candidate on `triton_url`, or on a local Triton when that is
    empty, then loaded into `triton_url`."""
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
            f"# Deployed\n\n{record['model']} version {record['version']} in `{record['repository']}`"
            + (f", loaded into {triton_url}" if triton_url else "")
            + (
                f"; checked first: {check['rows']} test events, raw and as ids, answered as ONNX Runtime does"
                if check
                else ""
            )
            + ".\n"
        )
        log_metrics(metrics, record)

"""Kubeflow component: the winner as ONNX for Triton, checked against PyTorch on validation rows."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def export(
    data: Input[Dataset],
    winner: Input[Model],
    evaluation: Input[Metrics],
    onnx_model: Output[Model],
    metrics: Output[Metrics],
):
    """Export the winner; the evaluation's test metrics go into the ONNX metadata for later quality gates."""
    from pathlib import Path

    from components.artifacts import log_metrics, step_log

    with step_log("export"):
        from components.steps.export import ExportRun
        from components.steps.export import export as export_step

        paths = (Path(winner.path), Path(data.path), Path(onnx_model.path))
        record = export_step(*paths, ExportRun(), Path(evaluation.path))
        log_metrics(metrics, {"parity": record["parity"], "external_data": record["external_data"]})

"""Kubeflow component: the winner's test metrics and the quality gate; its answer decides deployment."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate(
    data: Input[Dataset],
    winner: Input[Model],
    min_auc: float,
    repository: str,
    model_name: str,
    evaluation: Output[Metrics],
    report: Output[Markdown],
) -> bool:
    """True when the test AUC reaches `min_auc` and the served model's on the same test events (in
    `repository`, if any)."""
    from pathlib import Path

    from components.artifacts import log_metrics, step_log

    with step_log("evaluate"):
        from components.steps.common import training_device
        from components.steps.evaluate import EvaluateRun
        from components.steps.evaluate import evaluate as evaluate_step
        from components.steps.evaluate import report as gate_report

        run = EvaluateRun.from_dict({"min_auc": min_auc, "repository": repository, "model_name": model_name})
        cpu = training_device(0)  # its pod runs the CPU image
        result = evaluate_step(Path(winner.path), Path(data.path), None, run, cpu)
        Path(report.path).write_text(gate_report(result))
        log_metrics(evaluation, result)  # its file is the whole evaluation: export reads the test metrics there
        return result["deploy"]

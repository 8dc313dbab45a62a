"""Kubeflow component: the search's top architectures trained, the best on validation kept."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import CUDA_IMAGE


@dsl.component(base_image=CUDA_IMAGE, install_kfp_package=False)
def finetune(
    data: Input[Dataset],
    history: Input[Dataset],
    epochs: float,
    seed: int,
    gpus: int,
    code_digest: str,
    winner: Output[Model],
    metrics: Output[Metrics],
):
    """Train the search's final round (its top-k and the seed architectures) for `epochs` epochs; the winner, the
    best on validation, is a NASRecNet;
    `gpus` 0: on the CPU, else on CUDA.
    `code_digest` (of the project's source) makes a code change a new cache key."""
    import shutil
    import tempfile
    from pathlib import Path

    from components.artifacts import log_metrics, step_log

    with step_log("finetune"):
        from components.steps.common import training_device
        from components.steps.finetune import FinetuneRun, read_architectures
        from components.steps.finetune import finetune as finetune_step

        run = FinetuneRun.from_dict({"epochs": epochs, "seed": seed, "progress": False})
        architectures = read_architectures(Path(history.path) / "top_k.json")
        with tempfile.TemporaryDirectory() as work:  # the candidates' checkpoints; the winner's is moved out
            result = finetune_step(architectures, Path(data.path), Path(work), run, training_device(gpus))
            shutil.move(Path(work) / "winner", winner.path)
        log_metrics(metrics, result)

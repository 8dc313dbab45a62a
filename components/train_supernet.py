"""Kubeflow component: the weight-sharing supernet, trained on the training split."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import CUDA_IMAGE


@dsl.component(base_image=CUDA_IMAGE, install_kfp_package=False)
def train_supernet(
    data: Input[Dataset],
    space: str,
    steps: int,
    seed: int,
    gpus: int,
    nodes: int,
    job_kind: str,
    node_selector: dict,
    code_digest: str,
    supernet: Output[Model],
    metrics: Output[Metrics],
):
    """Train a supernet over search space `space` for `steps` steps; on the CPU for `gpus` 0, else on CUDA. With
    `nodes` > 1, a distributed `job_kind` job (PyTorchJob or TrainJob) of that many pods trains it, `gpus` each,
    on nodes matching `node_selector`.
    `code_digest` (of the project's source) makes a code change a new cache key."""
    from pathlib import Path

    from components.artifacts import log_metrics, step_log

    with step_log("train_supernet"):
        from components.steps.cluster_training import KubernetesAPI
        from components.steps.common import training_device
        from components.steps.train_supernet import SupernetRun, train_on_cluster
        from components.steps.train_supernet import train_supernet as train_step

        run = SupernetRun.from_dict({"space": space, "steps": steps, "seed": seed, "progress": False})
        if nodes > 1:
            api = KubernetesAPI.in_cluster()
            result = train_on_cluster(
                Path(data.path), Path(supernet.path), run, nodes, gpus, job_kind, api, node_selector
            )
        else:
            result = train_step(Path(data.path), Path(supernet.path), run, training_device(gpus))
        log_metrics(metrics, result)

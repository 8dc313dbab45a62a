"""Kubeflow component: the supernet step's own GPUs, decided before the run spends its time on ingest."""

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def plan_training(gpus: int, nodes: int, job_kind: str) -> int:
    """`gpus`, or 0 when a distributed job of `nodes` pods trains the supernet: the step that starts and follows
    the job then holds no GPU of its own. A request that cannot run (gpus, nodes, job kind) fails here, first."""
    from components.artifacts import step_log

    with step_log("plan_training"):
        from components.steps.cluster_training import supernet_step_gpus

        step_gpus = supernet_step_gpus(gpus, nodes, job_kind)
        print(f"train_supernet: {nodes} node(s), {gpus} GPU(s) each; the step's own pod takes {step_gpus}")
        return step_gpus

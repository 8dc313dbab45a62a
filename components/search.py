"""Kubeflow component: regularised evolution over the supernet's subnets."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from components.images import CUDA_IMAGE


@dsl.component(base_image=CUDA_IMAGE, install_kfp_package=False)
def search(
    data: Input[Dataset],
    supernet: Input[Model],
    population: int,
    generations: int,
    top_k: int,
    max_mflops: float,
    max_latency_ms: float,
    latency_batch: int,
    fitness_steps: int,
    seed: int,
    gpus: int,
    code_digest: str,
    history: Output[Dataset],
    plots: Output[HTML],
    top_architectures: Output[Markdown],
    metrics: Output[Metrics],
):
    """Search with a population of `population` for `generations` generations; candidates are scored after
    `fitness_steps` steps of head fine-tuning; `max_mflops` > 0 rejects costlier architectures, and
    `max_latency_ms` > 0 slower ones (p99 of a `latency_batch`-row request as served, measured on this node);
    `gpus` 0: on the CPU, else on CUDA. `code_digest` (of the project's source) makes a code change a new cache key."""
    import json
    from pathlib import Path

    from components.artifacts import images_page, log_metrics, step_log, top_k_table

    with step_log("search"):
        from components.steps.common import training_device
        from components.steps.search import SearchRun
        from components.steps.search import search as search_step

        run = SearchRun.for_budget(
            population, generations, top_k, max_mflops, fitness_steps, seed, max_latency_ms, latency_batch
        )
        checkpoint = Path(supernet.path) / "checkpoint.pt"
        summary = search_step(checkpoint, Path(data.path), Path(history.path), run, training_device(gpus))
        out = Path(history.path)
        Path(plots.path).write_text(images_page("search", [out / "search_trajectory.png", out / "auc_vs_mflops.png"]))
        Path(top_architectures.path).write_text(top_k_table(json.loads((out / "top_k.json").read_text())))
        log_metrics(metrics, summary)

"""The NASRec pipeline: raw logs -> Feast -> supernet -> search -> fine-tuning -> quality gate -> ONNX -> Triton.

The same definition runs on Kubeflow Pipelines (compiled to `nasrec_pipeline.yaml` beside this file) and on
one machine (`kfp.local`, see `pipelines.local`). Ingest, train_supernet, search and finetune are cached: a
rerun with the same inputs reuses them. Their cache keys follow the data (the fingerprint step's digest of the
raw files, taken on every run) and the code (`code_digest`; on a cluster also the image, tagged by commit).
Evaluate and deploy read and write the served repository, and export records evaluate's figures, so those three
always run.

On a cluster (what `kfp.local` ignores): the raw logs' and the model repository's volumes (k8s/base/common) are
mounted where the steps read them, each step has CPU and memory requests and limits and is retried after a
transient failure, and the training steps tolerate GPU nodes' taint and take `gpu_node_selector`.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Metrics, Model, PipelineTask
from kfp.dsl.pipeline_channel import PipelineChannel

from components.deploy import deploy
from components.evaluate import evaluate
from components.export import export
from components.finetune import finetune
from components.fingerprint import fingerprint
from components.images import SPARK_EXECUTOR_IMAGE
from components.ingest import ingest
from components.plan_training import plan_training
from components.search import search
from components.train_supernet import train_supernet
from features.feast_repo import SPARK_EXECUTOR_TEMPLATE
from pipelines import COMPILED_PIPELINE, DATA_VOLUME, DEPLOY_STEP, FEAST_ROOT, INGEST_WORK_ROOT, MODEL_VOLUME

PIPELINE_NAME = "nasrec"
GPU_RESOURCE = "nvidia.com/gpu"
SPARK_DRIVER = "nasrec-spark-driver"  # the ingest pod's app label (k8s/base/common/spark.yaml)
SPARK_EXECUTOR_POD = "nasrec-spark-executor-pod"  # the ConfigMap of the executors' pod template
RETRIES = 2  # a lost node or a preempted pod; a step's own error fails the same way again


@dataclass(frozen=True)
class PodSize:
    """A step's CPU and memory requests and limits on a cluster."""

    cpu: str
    memory: str
    cpu_limit: str
    memory_limit: str

    def apply(self, task: PipelineTask) -> PipelineTask:
        task.set_cpu_request(self.cpu).set_cpu_limit(self.cpu_limit)
        task.set_memory_request(self.memory).set_memory_limit(self.memory_limit)
        return task.set_retry(RETRIES, backoff_duration="60s", backoff_factor=2.0, backoff_max_duration="600s")


SMALL = PodSize("250m", "512Mi", "1", "1Gi")
DATA = PodSize("2", "8Gi", "4", "16Gi")
TRAINING = PodSize("4", "16Gi", "8", "32Gi")
SERVING = PodSize("1", "4Gi", "2", "8Gi")


def _mount(task: PipelineTask, volume: tuple[str, str]) -> PipelineTask:
    return kubernetes.mount_pvc(task, pvc_name=volume[0], mount_path=volume[1])


def _knows_its_pod(task: PipelineTask) -> PipelineTask:
    """The pod's name, namespace and address in its environment: for what it starts beside itself."""
    for variable, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        kubernetes.use_field_path_as_env(task, variable, field)
    return kubernetes.use_field_path_as_env(task, "POD_IP", "status.podIP")


def _spark_driver(task: PipelineTask) -> PipelineTask:
    """What ingest_engine=spark-k8s needs of the ingest pod, Spark's driver (k8s/base/common/spark.yaml): the label
    its network policy admits executors to, its name, namespace and address, and the executors' pod template."""
    kubernetes.add_pod_label(task, "app.kubernetes.io/name", SPARK_DRIVER)
    _knows_its_pod(task)
    task.set_env_variable("SPARK_EXECUTOR_IMAGE", SPARK_EXECUTOR_IMAGE)
    template = Path(SPARK_EXECUTOR_TEMPLATE)
    return kubernetes.use_config_map_as_volume(task, SPARK_EXECUTOR_POD, str(template.parent), optional=True)


def _on_gpu_nodes(task: PipelineTask, gpus: PipelineChannel, node_selector: dict) -> PipelineTask:
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    return kubernetes.add_node_selector_json(task, node_selector)


class PipelineOutputs(NamedTuple):
    data: Dataset
    supernet: Model
    history: Dataset
    winner: Model
    evaluation: Metrics
    deployed: bool  # the gate's verdict: export and deploy ran (a failure there fails the run)


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="NASRec: search, train and serve a CTR model (Feast -> supernet -> search -> Triton).",
)
def nasrec_pipeline(
    raw_files: list,
    schema: str = "criteo",
    folds: str = "",
    fold: int = 0,
    code_digest: str = "",
    space: str = "ctr",
    supernet_steps: int = 1500,
    population: int = 16,
    generations: int = 4,
    top_k: int = 3,
    max_mflops: float = 0.0,
    max_latency_ms: float = 0.0,
    latency_batch: int = 512,
    fitness_steps: int = 100,
    finetune_epochs: float = 1.0,
    seed: int = 0,
    gpus: int = 0,
    training_nodes: int = 1,
    training_job: str = "PyTorchJob",
    gpu_node_selector: dict = {},  # noqa: B006 (a pipeline parameter's default, never mutated)
    min_auc: float = 0.5,
    repository: str = "",
    model_name: str = "",
    serving_variant: str = "local",
    triton_url: str = "",
    feature_server: str = "",
    ingest_engine: str = "duckdb",
) -> PipelineOutputs:
    """Train and, when the quality gate passes, serve a NASRecNet.

    raw_files: raw log paths the ingest pod sees (on a cluster, under /data); schema: a built-in name or a schema
    YAML path; folds/fold: a row,fold file and the test fold (empty: split by time); code_digest: changes when
    the project's code does (a cache key; run-local, submit and schedule compute it). space: search-space preset;
    supernet_steps; population/generations/top_k/max_mflops (0: no limit)/fitness_steps: the search budget;
    max_latency_ms (0: none)/latency_batch: the serving-latency budget, p99 of a request of that many rows as
    served (ONNX Runtime, one thread), measured where the search runs;
    finetune_epochs; seed; gpus: 0 for the CPU (even where a GPU is present), 1 for a GPU for each training step;
    training_nodes: above 1, on a cluster, the supernet is trained by a distributed job of that many pods
    (training_job: PyTorchJob or TrainJob), `gpus` GPUs each;
    gpu_node_selector: the training pods' node selector on a cluster (submit sets NVIDIA's GPU label for gpus 1).
    min_auc: the gate's floor;
    repository: the Triton model repository served (its latest version, scored on this run's test events, is the
    gate's other bar, and deploy adds the next one); model_name: the served model (empty: nasrec_<schema>);
    serving_variant: local or production; triton_url: a running Triton to check and roll the new version into
    (empty: check it on a local Triton); feature_server: a cluster's Feast feature server, where ingest publishes
    the entity features the served model reads (submit and schedule set k8s/'s); ingest_engine: the offline store
    that joins and materialises in the ingest step: duckdb, spark (Spark on the ingest pod's cores) or spark-k8s
    (Spark's executors as pods of their own; k8s/base/common/spark.yaml).
    """
    digest = fingerprint(raw_files=raw_files)
    digest.set_display_name("Fingerprint the raw logs").set_caching_options(False)
    _mount(SMALL.apply(digest), DATA_VOLUME)
    data = ingest(
        raw_files=raw_files,
        schema=schema,
        folds=folds,
        fold=fold,
        data_digest=digest.output,
        code_digest=code_digest,
        feature_server=feature_server,
        feast_root=FEAST_ROOT,
        engine=ingest_engine,
        work_root=INGEST_WORK_ROOT,
    )
    data.set_display_name("Ingest through Feast")
    _mount(DATA.apply(data), DATA_VOLUME)
    _spark_driver(data)
    plan = plan_training(gpus=gpus, nodes=training_nodes, job_kind=training_job)
    plan.set_display_name("Plan supernet training")
    SMALL.apply(plan)
    supernet = train_supernet(
        data=data.outputs["data"],
        space=space,
        steps=supernet_steps,
        seed=seed,
        gpus=gpus,
        nodes=training_nodes,
        job_kind=training_job,
        node_selector=gpu_node_selector,
        code_digest=code_digest,
    )
    supernet.set_display_name("Train supernet").after(plan)  # its GPU count is the plan's output
    _mount(supernet, DATA_VOLUME)  # a distributed job's data and supernet pass through it
    _knows_its_pod(supernet)
    searched = search(
        data=data.outputs["data"],
        supernet=supernet.outputs["supernet"],
        population=population,
        generations=generations,
        top_k=top_k,
        max_mflops=max_mflops,
        max_latency_ms=max_latency_ms,
        latency_batch=latency_batch,
        fitness_steps=fitness_steps,
        seed=seed,
        gpus=gpus,
        code_digest=code_digest,
    )
    searched.set_display_name("Search architectures")
    tuned = finetune(
        data=data.outputs["data"],
        history=searched.outputs["history"],
        epochs=finetune_epochs,
        seed=seed,
        gpus=gpus,
        code_digest=code_digest,
    )
    tuned.set_display_name("Fine-tune the top architectures")
    _on_gpu_nodes(TRAINING.apply(supernet), plan.output, gpu_node_selector)  # no GPU where a job trains
    for task in (searched, tuned):
        _on_gpu_nodes(TRAINING.apply(task), gpus, gpu_node_selector)
    gate = evaluate(
        data=data.outputs["data"],
        winner=tuned.outputs["winner"],
        min_auc=min_auc,
        repository=repository,
        model_name=model_name,
    )
    gate.set_display_name("Evaluate: quality gate").set_caching_options(False)
    _mount(DATA.apply(gate), MODEL_VOLUME)
    with dsl.If(gate.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a pipeline expression)
        exported = export(
            data=data.outputs["data"], winner=tuned.outputs["winner"], evaluation=gate.outputs["evaluation"]
        )
        exported.set_display_name("Export to ONNX").set_caching_options(False)
        SERVING.apply(exported)
        served = deploy(
            data=data.outputs["data"],
            onnx_model=exported.outputs["onnx_model"],
            repository=repository,
            model_name=model_name,
            variant=serving_variant,
            triton_url=triton_url,
        )
        served.set_display_name(DEPLOY_STEP).set_caching_options(False)
        _mount(SERVING.apply(served), MODEL_VOLUME)
    return PipelineOutputs(
        data=data.outputs["data"],
        supernet=supernet.outputs["supernet"],
        history=searched.outputs["history"],
        winner=tuned.outputs["winner"],
        evaluation=gate.outputs["evaluation"],
        deployed=gate.outputs["Output"],
    )


def compile_pipeline(path: Path = COMPILED_PIPELINE) -> Path:
    """Write the pipeline's Kubeflow YAML (what `nasrec pipeline submit` uploads)."""
    from kfp import compiler

    compiler.Compiler().compile(nasrec_pipeline, str(path))
    return path

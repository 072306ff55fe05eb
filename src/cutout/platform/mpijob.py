"""The training step's Training Operator MPIJob (`kubeflow.org/v1`), from the kubeflow-training SDK models.

One launcher and N workers, each worker with G GPUs (`slotsPerWorker` = G). The workers idle (`sleep`) until
the launcher's `mpirun` starts `python -m cutout.train` on them, one rank per GPU; the Training Operator
gives the launcher the hostfile and the `kubectl exec` agent that mpirun uses. mpirun rather than
`horovodrun`: horovodrun first checks SSH to every host, and the operator's workers speak `kubectl exec`,
not SSH. Locally the same entry point runs under `horovodrun -np N` (`cutout train --workers N`).

Every pod is pinned to the on-demand GPU node pool (node selector and tolerations): a spot node reclaimed
hours into a training run loses the run. Presets for the usual labels (`--node-pool`), each also
overridable:

    gke        cloud.google.com/gke-nodepool: gpu-on-demand   (name your on-demand pool; spot nodes carry
                                                              cloud.google.com/gke-spot=true, never tolerated)
    eks        eks.amazonaws.com/capacityType: ON_DEMAND      (managed node groups; the default)
    karpenter  karpenter.sh/capacity-type: on-demand          (Karpenter NodePools)

All tolerate the `nvidia.com/gpu` taint GPU pools carry. A retried launcher (`runPolicy.backoffLimit`)
continues from the last checkpoint (`--resume`), so give every run its own checkpoint folder.
`cleanPodPolicy: Running` stops the workers when the job ends but keeps the launcher pod, whose logs the
step reads before deleting the job; `ttlSecondsAfterFinished` removes a job whose step died before it could.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubeflow.training.models import (
    KubeflowOrgV1MPIJob,
    KubeflowOrgV1MPIJobSpec,
    KubeflowOrgV1ReplicaSpec,
    KubeflowOrgV1RunPolicy,
)
from kubernetes.client import (
    V1Container,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1ObjectMeta,
    V1PodSpec,
    V1PodTemplateSpec,
    V1ResourceRequirements,
    V1Toleration,
    V1Volume,
    V1VolumeMount,
)

from cutout import __version__
from cutout.platform.names import APP, NAMESPACE
from cutout.platform.pods import (
    ISTIO_INJECT,
    Secrets,
    check_name,
    container_security_context,
    pod_security_context,
    secret_env,
)

API_VERSION, KIND = "kubeflow.org/v1", "MPIJob"
CONTAINER = "mpi"  # the name the Training Operator (and its SDK's log reader) expects
DEFAULT_IMAGE = f"cutout-train:{__version__}"
GPU = "nvidia.com/gpu"
GPU_TOLERATION = V1Toleration(key=GPU, operator="Exists", effect="NoSchedule")


@dataclass(frozen=True)
class NodePool:
    """Where training pods may run: node labels they require and taints they tolerate."""

    node_selector: dict[str, str]
    tolerations: tuple[V1Toleration, ...] = (GPU_TOLERATION,)


NODE_POOLS = {
    "gke": NodePool({"cloud.google.com/gke-nodepool": "gpu-on-demand"}),
    "eks": NodePool({"eks.amazonaws.com/capacityType": "ON_DEMAND"}),
    "karpenter": NodePool({"karpenter.sh/capacity-type": "on-demand"}),
}
DEFAULT_NODE_POOL = "eks"


@dataclass(frozen=True)
class TrainingArgs:
    """What `python -m cutout.train` gets on every rank: `cutout train`'s arguments, as
    `cutout.train.config.TrainConfig.to_argv` writes them (the checkpoint folder one per run, with
    `--resume`, so that a retried job continues)."""

    argv: tuple[str, ...]


@dataclass(frozen=True)
class MPIJobConfig:
    """The job's shape and where it runs."""

    name: str = "cutout-train"
    namespace: str = NAMESPACE
    image: str = DEFAULT_IMAGE
    workers: int = 2
    gpus_per_worker: int = 1
    worker_cpu: str = "8"
    worker_memory: str = "32Gi"
    shm_size: str = "4Gi"  # /dev/shm for NCCL and DataLoader workers (the container default is 64 MiB)
    node_pool: NodePool = field(default_factory=lambda: NODE_POOLS[DEFAULT_NODE_POOL])
    secrets: Secrets = field(default_factory=Secrets)
    backoff_limit: int = 2
    clean_pod_policy: str = "Running"
    ttl_seconds_after_finished: int | None = 86_400
    active_deadline_seconds: int | None = None
    service_account: str | None = None


def build_mpijob(args: TrainingArgs, config: MPIJobConfig) -> KubeflowOrgV1MPIJob:
    """The MPIJob that trains with `args` on `config.workers` × `config.gpus_per_worker` GPUs.

    Raises:
        ValueError: An invalid name, worker or GPU count, backoff limit, or clean-pod policy.
    """
    _check(config)
    labels = {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": "training"}
    spec = KubeflowOrgV1MPIJobSpec(
        slots_per_worker=_slots(config),
        run_policy=KubeflowOrgV1RunPolicy(
            backoff_limit=config.backoff_limit,
            clean_pod_policy=config.clean_pod_policy,
            ttl_seconds_after_finished=config.ttl_seconds_after_finished,
            active_deadline_seconds=config.active_deadline_seconds,
        ),
        mpi_replica_specs={
            "Launcher": _replica(1, _launcher_container(args, config), config, labels, worker=False),
            "Worker": _replica(config.workers, _worker_container(config), config, labels, worker=True),
        },
    )
    metadata = V1ObjectMeta(name=config.name, namespace=config.namespace, labels=labels)
    return KubeflowOrgV1MPIJob(api_version=API_VERSION, kind=KIND, metadata=metadata, spec=spec)


def train_command(args: TrainingArgs) -> list[str]:
    """`python -m cutout.train …` as each rank runs it."""
    return ["python", "-m", "cutout.train", *args.argv]


def mpirun_command(args: TrainingArgs, config: MPIJobConfig) -> list[str]:
    """The launcher's command: one rank per GPU across the workers (Horovod's recommended mpirun flags)."""
    ranks = config.workers * _slots(config)
    return ["mpirun", "-np", str(ranks), "-bind-to", "none", "-map-by", "slot",
            "-x", "NCCL_DEBUG=WARN", "-x", "PYTHONUNBUFFERED=1", "-x", "LD_LIBRARY_PATH", "-x", "PATH",
            "-mca", "pml", "ob1", "-mca", "btl", "^openib",
            *train_command(args)]  # fmt: skip


def _launcher_container(args: TrainingArgs, config: MPIJobConfig) -> V1Container:
    command = mpirun_command(args, config)
    resources = V1ResourceRequirements(requests={"cpu": "500m", "memory": "512Mi"},
                                       limits={"cpu": "1", "memory": "1Gi"})  # fmt: skip
    return _container(config, command[:1], command[1:], resources, mounts=[])


def _worker_container(config: MPIJobConfig) -> V1Container:
    limits = {"cpu": config.worker_cpu, "memory": config.worker_memory}
    if config.gpus_per_worker:
        limits[GPU] = str(config.gpus_per_worker)
    resources = V1ResourceRequirements(requests=dict(limits), limits=limits)
    # The ranks run inside the workers, started by the launcher's mpirun; until then a worker only waits.
    mounts = [V1VolumeMount(name="dshm", mount_path="/dev/shm")]
    return _container(config, ["sleep"], ["infinity"], resources, mounts)


def _container(config: MPIJobConfig, command, args, resources, mounts) -> V1Container:
    env_from, env = secret_env(config.secrets)
    return V1Container(
        name=CONTAINER, image=config.image, command=command, args=args, resources=resources,
        env=[V1EnvVar(name="PYTHONUNBUFFERED", value="1"), *env], env_from=env_from or None,
        security_context=container_security_context(read_only_root=False), volume_mounts=mounts or None,
    )  # fmt: skip


def _replica(replicas: int, container: V1Container, config: MPIJobConfig, labels: dict, worker: bool):
    volumes = None
    if worker:
        shm = V1EmptyDirVolumeSource(medium="Memory", size_limit=config.shm_size)
        volumes = [V1Volume(name="dshm", empty_dir=shm)]
    pod = V1PodSpec(
        containers=[container], node_selector=dict(config.node_pool.node_selector) or None,
        tolerations=list(config.node_pool.tolerations) or None, security_context=pod_security_context(),
        service_account_name=config.service_account, volumes=volumes,
    )  # fmt: skip
    template = V1PodTemplateSpec(
        metadata=V1ObjectMeta(labels=labels, annotations=dict(ISTIO_INJECT)), spec=pod
    )
    return KubeflowOrgV1ReplicaSpec(replicas=replicas, restart_policy="OnFailure", template=template)


def _slots(config: MPIJobConfig) -> int:
    return max(config.gpus_per_worker, 1)  # CPU-only workers run one rank each


def _check(config: MPIJobConfig) -> None:
    check_name(config.name, "MPIJob name")
    check_name(config.namespace, "namespace")
    if config.workers < 1:
        raise ValueError(f"workers must be at least 1, got {config.workers}")
    if config.gpus_per_worker < 0:
        raise ValueError(f"GPUs per worker must be 0 or more, got {config.gpus_per_worker}")
    if config.backoff_limit < 0:
        raise ValueError(f"backoff limit must be 0 or more, got {config.backoff_limit}")
    if config.clean_pod_policy not in ("None", "Running", "All"):
        raise ValueError(f"clean-pod policy must be None, Running or All, got {config.clean_pod_policy!r}")


def parse_toleration(text: str) -> V1Toleration:
    """`key[=value]:Effect` (kubectl's taint syntax) as a toleration; without a value it matches any value.

    Raises:
        ValueError: Not of that form, or an effect Kubernetes does not have.
    """
    spec, sep, effect = text.rpartition(":")
    if not sep or not spec:
        raise ValueError(f"toleration {text!r} is not key[=value]:Effect")
    if effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise ValueError(f"toleration {text!r}: effect must be NoSchedule, PreferNoSchedule or NoExecute")
    key, has_value, value = spec.partition("=")
    if has_value:
        return V1Toleration(key=key, operator="Equal", value=value, effect=effect)
    return V1Toleration(key=key, operator="Exists", effect=effect)

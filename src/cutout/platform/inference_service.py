"""The KServe InferenceService (`serving.kserve.io/v1beta1`), built with the KServe SDK models.

Two custom containers from our serving image: the predictor (`python -m cutout.serve.predictor`, U²-Net
behind KServe's v1/v2 REST) and the feedback transformer (`python -m cutout.serve.transformer`, which scores
each mask and routes the pair to the retraining store or the review queue). The service's name is the
model's name: the transformer forwards to `/v2/models/<name>/infer` on the predictor. KServe passes the
transformer `--predictor_host` itself (the right host in serverless and raw mode alike) unless one is given
here.

`canaryTrafficPercent` (serverless mode) sends that share of requests to the new revision and keeps the rest
on the last ready one; deploying again without it promotes the new revision to all traffic. The same builder
renders the InferenceService in `manifests/`, where the namespace comes from the overlay (`namespace=None`).

Deploy a model version (`models:/cutout/7`), not the alias: with `models:/cutout@champion` a new champion
leaves the spec unchanged, so no new revision starts and the running pods keep the model they loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import (
    V1Container,
    V1ContainerPort,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1HTTPGetAction,
    V1ObjectMeta,
    V1Probe,
    V1ResourceRequirements,
    V1Volume,
    V1VolumeMount,
)

from cutout import __version__
from cutout.platform.names import APP, CHAMPION_URI, MODEL_NAME, NAMESPACE
from cutout.platform.pods import Secrets, check_name, container_security_context, secret_env
from cutout.platform.sdk_models import import_kserve

API_VERSION, KIND = "serving.kserve.io/v1beta1", "InferenceService"
CONTAINER = "kserve-container"  # KServe's name for a custom component's main container
DEFAULT_IMAGE = f"cutout-serve:{__version__}"
HTTP_PORT = 8080  # KServe's model server default
READY_PATH = "/v2/health/ready"


@dataclass(frozen=True)
class Resources:
    """Requests and limits of one container; `gpus` > 0 adds an `nvidia.com/gpu` limit."""

    cpu: str
    memory: str
    cpu_limit: str
    memory_limit: str
    gpus: int = 0

    def requirements(self) -> V1ResourceRequirements:
        """As the Kubernetes model."""
        limits = {"cpu": self.cpu_limit, "memory": self.memory_limit}
        if self.gpus:
            limits["nvidia.com/gpu"] = str(self.gpus)
        return V1ResourceRequirements(requests={"cpu": self.cpu, "memory": self.memory}, limits=limits)


@dataclass(frozen=True)
class InferenceServiceConfig:
    """What the deploy step serves and how."""

    name: str = MODEL_NAME  # = the model name the transformer forwards to
    namespace: str | None = NAMESPACE
    image: str = DEFAULT_IMAGE
    model_uri: str = CHAMPION_URI
    feedback_uri: str = "s3://cutout/feedback"
    threshold: float | None = None  # None: the model version's calibrated one (see cutout.serve.transformer)
    predictor_resources: Resources = field(default_factory=lambda: Resources("1", "2Gi", "2", "4Gi"))
    transformer_resources: Resources = field(default_factory=lambda: Resources("500m", "1Gi", "1", "2Gi"))
    min_replicas: int = 1
    max_replicas: int = 3
    canary_traffic_percent: int | None = None
    predictor_host: str | None = None
    secrets: Secrets = field(default_factory=Secrets)
    service_account: str | None = None


def build_inference_service(config: InferenceServiceConfig) -> Any:
    """The `kserve.V1beta1InferenceService` for `config`.

    Raises:
        ValueError: An invalid name, replica counts (at least 1, min ≤ max), threshold (0 to 1) or canary
            percentage (0 to 100).
    """
    _check(config)
    kserve = import_kserve()
    # Our servers bind 127.0.0.1 unless told otherwise; in a pod they must listen on every interface.
    serving = ["--model_name", config.name, "--host", "0.0.0.0", "--http_port", str(HTTP_PORT)]
    predictor_args = [*serving, "--model-uri", config.model_uri]
    transformer_args = [*serving, "--feedback-uri", config.feedback_uri]
    if config.threshold is not None:
        transformer_args += ["--threshold", str(config.threshold)]
    if config.predictor_host:
        transformer_args += ["--predictor_host", config.predictor_host]
    component = {
        "min_replicas": config.min_replicas, "max_replicas": config.max_replicas,
        "canary_traffic_percent": config.canary_traffic_percent,
        "service_account_name": config.service_account,
        "volumes": [V1Volume(name="tmp", empty_dir=V1EmptyDirVolumeSource(size_limit="1Gi"))],
    }  # fmt: skip
    predictor = kserve.V1beta1PredictorSpec(
        containers=[_container(config, "predictor", predictor_args, config.predictor_resources)], **component
    )
    transformer = kserve.V1beta1TransformerSpec(
        containers=[_container(config, "transformer", transformer_args, config.transformer_resources)],
        **component,
    )
    labels = {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": "serving"}
    return kserve.V1beta1InferenceService(
        api_version=API_VERSION, kind=KIND,
        metadata=V1ObjectMeta(name=config.name, namespace=config.namespace, labels=labels),
        spec=kserve.V1beta1InferenceServiceSpec(predictor=predictor, transformer=transformer),
    )  # fmt: skip


def _container(
    config: InferenceServiceConfig, role: str, args: list[str], resources: Resources
) -> V1Container:
    env_from, env = secret_env(config.secrets)
    probe = V1Probe(
        http_get=V1HTTPGetAction(path=READY_PATH, port=HTTP_PORT),
        initial_delay_seconds=5, period_seconds=10, timeout_seconds=5, failure_threshold=3,
    )  # fmt: skip
    return V1Container(
        name=CONTAINER, image=config.image, command=["python", "-m", f"cutout.serve.{role}"], args=args,
        ports=[V1ContainerPort(name="http1", container_port=HTTP_PORT, protocol="TCP")],
        # Read-only root: downloads and caches go to the /tmp volume (HOME too, for libraries' caches).
        env=[V1EnvVar(name="HOME", value="/tmp"), *env], env_from=env_from or None,
        resources=resources.requirements(), readiness_probe=probe,
        security_context=container_security_context(read_only_root=True),
        volume_mounts=[V1VolumeMount(name="tmp", mount_path="/tmp")],
    )  # fmt: skip


def _check(config: InferenceServiceConfig) -> None:
    check_name(config.name, "InferenceService name")
    if config.namespace is not None:
        check_name(config.namespace, "namespace")
    if config.min_replicas < 1:
        raise ValueError(f"minReplicas must be at least 1 (no cold starts), got {config.min_replicas}")
    if config.max_replicas < config.min_replicas:
        raise ValueError(f"maxReplicas ({config.max_replicas}) is below minReplicas ({config.min_replicas})")
    if config.threshold is not None and not 0.0 <= config.threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {config.threshold}")
    percent = config.canary_traffic_percent
    if percent is not None and not 0 <= percent <= 100:
        raise ValueError(f"canary traffic percent must be between 0 and 100, got {percent}")

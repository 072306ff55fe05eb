"""Pod pieces the MPIJob and the InferenceService share: non-root security, Secrets as environment, names.

Security follows the Kubernetes Pod Security Standard *restricted* profile: non-root (UID 1000, as in our
images), no privilege escalation, every capability dropped, the runtime's default seccomp profile.

Settings reach the containers from two Secrets, never from the manifests (names configurable):

    cutout-mlflow   every key becomes an environment variable (envFrom): MLFLOW_TRACKING_URI, and where the
                    server needs them MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD
    cutout-s3       AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (required keys), AWS_ENDPOINT_URL_S3 and
                    AWS_DEFAULT_REGION (optional keys: MinIO needs the endpoint, AWS does not)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kubernetes.client import (
    V1Capabilities,
    V1EnvFromSource,
    V1EnvVar,
    V1EnvVarSource,
    V1PodSecurityContext,
    V1SeccompProfile,
    V1SecretEnvSource,
    V1SecretKeySelector,
    V1SecurityContext,
)

USER_ID = 1000  # the images' non-root user
ISTIO_INJECT = {"sidecar.istio.io/inject": "false"}
S3_REQUIRED_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_KEYS = ("AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@dataclass(frozen=True)
class Secrets:
    """Names of the Secrets with the MLflow and S3 settings; None leaves one out (e.g. IAM roles for S3)."""

    mlflow: str | None = "cutout-mlflow"
    s3: str | None = "cutout-s3"


def secret_env(secrets: Secrets) -> tuple[list[V1EnvFromSource], list[V1EnvVar]]:
    """The `envFrom` and `env` entries that bring the Secrets' settings into a container."""
    env_from = [V1EnvFromSource(secret_ref=V1SecretEnvSource(name=secrets.mlflow))] if secrets.mlflow else []
    env = []
    if secrets.s3:
        keys = [(key, False) for key in S3_REQUIRED_KEYS] + [(key, True) for key in S3_OPTIONAL_KEYS]
        env = [
            V1EnvVar(name=key, value_from=V1EnvVarSource(
                secret_key_ref=V1SecretKeySelector(name=secrets.s3, key=key, optional=optional or None)))
            for key, optional in keys
        ]  # fmt: skip
    return env_from, env


def pod_security_context() -> V1PodSecurityContext:
    """Non-root pod, files written to volumes owned by the same group."""
    return V1PodSecurityContext(
        run_as_non_root=True, run_as_user=USER_ID, run_as_group=USER_ID, fs_group=USER_ID,
        seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
    )  # fmt: skip


def container_security_context(read_only_root: bool) -> V1SecurityContext:
    """The restricted profile at container level (Knative, under KServe, accepts it only there)."""
    return V1SecurityContext(
        run_as_non_root=True, run_as_user=USER_ID, run_as_group=USER_ID,
        allow_privilege_escalation=False, capabilities=V1Capabilities(drop=["ALL"]),
        read_only_root_filesystem=read_only_root, seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
    )  # fmt: skip


def check_name(name: str, what: str) -> str:
    """A Kubernetes object name that is also a valid label value (DNS-1123 label, at most 63 characters)."""
    if len(name) > 63 or not _DNS_LABEL.fullmatch(name):
        raise ValueError(
            f"{what} {name!r} is not a valid name: lower-case letters, digits and '-', starting and ending "
            "with a letter or digit, at most 63 characters"
        )
    return name


def parse_key_values(items: list[str] | tuple[str, ...], what: str) -> dict[str, str]:
    """`key=value` strings (from the command line) as a dict."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r} is not key=value")
        pairs[key] = value
    return pairs

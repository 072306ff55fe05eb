"""The few Kubernetes API calls the training and deploy steps make, on the official `kubernetes` client.

Custom objects (MPIJobs, InferenceServices) travel as plain dicts: create, get, merge-patch, delete. Pods are
listed by label selector and their logs read whole or followed line by line. Nothing else: the launcher
(`cutout.platform.launcher`) holds the logic, and tests point this seam at a fake API server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
from kubernetes.client.rest import ApiException

REQUEST_TIMEOUT_S = 30  # a stuck API server fails the call instead of hanging the step
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class Resource:
    """A custom resource's REST coordinates."""

    group: str
    version: str
    plural: str
    kind: str


MPIJOBS = Resource("kubeflow.org", "v1", "mpijobs", "MPIJob")
INFERENCE_SERVICES = Resource("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService")


class Kube:
    """Custom objects, pods and pod logs through one `kubernetes.client.ApiClient`."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self.api_client = api_client
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._core = kubernetes.client.CoreV1Api(api_client)

    def create(self, resource: Resource, namespace: str, body: dict) -> dict:
        """Create a custom object; returns it as the server stored it."""
        return self._custom.create_namespaced_custom_object(
            *_coordinates(resource), namespace, resource.plural, body, _request_timeout=REQUEST_TIMEOUT_S
        )

    def get(self, resource: Resource, namespace: str, name: str) -> dict | None:
        """The custom object, or None when there is none of that name."""
        try:
            return self._custom.get_namespaced_custom_object(
                *_coordinates(resource), namespace, resource.plural, name, _request_timeout=REQUEST_TIMEOUT_S
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def patch(self, resource: Resource, namespace: str, name: str, body: dict) -> dict:
        """JSON merge patch (RFC 7386): keys in `body` replace, lists whole; a None value removes the key."""
        return self._custom.patch_namespaced_custom_object(
            *_coordinates(resource),
            namespace,
            resource.plural,
            name,
            body,
            _request_timeout=REQUEST_TIMEOUT_S,
        )

    def delete(self, resource: Resource, namespace: str, name: str) -> bool:
        """Delete the object and, in the background, what it owns (pods); False if it was already gone."""
        try:
            self._custom.delete_namespaced_custom_object(
                *_coordinates(resource), namespace, resource.plural, name,
                propagation_policy="Background", _request_timeout=REQUEST_TIMEOUT_S,
            )  # fmt: skip
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def pods(self, namespace: str, label_selector: str) -> list[kubernetes.client.V1Pod]:
        """The pods whose labels match, e.g. `training.kubeflow.org/job-name=x`."""
        listing = self._core.list_namespaced_pod(
            namespace, label_selector=label_selector, _request_timeout=REQUEST_TIMEOUT_S
        )
        return listing.items

    def pod_log(self, namespace: str, pod: str, container: str) -> str:
        """The container's whole log so far."""
        return self._core.read_namespaced_pod_log(
            pod, namespace, container=container, _request_timeout=REQUEST_TIMEOUT_S
        )

    def follow_pod_log(self, namespace: str, pod: str, container: str) -> Iterator[str]:
        """The container's log line by line as it is written, until the container stops."""
        # No read timeout: a training run can be quiet for longer than any sensible one.
        response = self._core.read_namespaced_pod_log(
            pod, namespace, container=container, follow=True, _preload_content=False,
            _request_timeout=(REQUEST_TIMEOUT_S, None),
        )  # fmt: skip
        try:
            for line in response:
                yield line.decode("utf-8", errors="replace").rstrip("\n")
        finally:
            response.release_conn()


def _coordinates(resource: Resource) -> tuple[str, str]:
    return resource.group, resource.version


def connect(host: str | None = None) -> Kube:
    """A client for the cluster: `host` (tests, proxies), else the pod's service account, else kubeconfig.

    Args:
        host: The API server's URL (`http://127.0.0.1:8001` for `kubectl proxy`); no credentials are sent.
    """
    configuration = kubernetes.client.Configuration()
    if host:
        configuration.host = host
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    else:
        # $KUBECONFIG as it is now (the client reads it once, when imported).
        kubernetes.config.load_kube_config(os.environ.get("KUBECONFIG"), client_configuration=configuration)
    return Kube(kubernetes.client.ApiClient(configuration))


def current_namespace() -> str:
    """This process's namespace: its pod's (in a cluster), else kubeconfig's current one, else default."""
    if SERVICE_ACCOUNT_NAMESPACE.exists():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    try:
        _, context = kubernetes.config.list_kube_config_contexts(os.environ.get("KUBECONFIG"))
    except (kubernetes.config.ConfigException, OSError):
        return "default"
    return context.get("context", {}).get("namespace") or "default"


def error_message(error: Exception) -> str:
    """An API error as one line: the HTTP status and the server's own message."""
    if not isinstance(error, ApiException):
        return str(error)
    body: Any = error.body
    try:
        message = json.loads(body)["message"]
    except (TypeError, ValueError, KeyError):
        message = body.decode(errors="replace") if isinstance(body, bytes) else body
    return f"{error.status} {error.reason}: {message or ''}".strip()

"""Run the training MPIJob and deploy the InferenceService: what the pipeline's train and deploy steps do.

Training: create the MPIJob, stream the launcher's log while waiting for the job's `Succeeded` or `Failed`
condition, fail with the job's reason (and the log's last lines) on failure or timeout, and delete the job
on every path once it was created. A few failed status reads in a row are tolerated (an API server restart
must not kill a run hours in); the job is deleted only when the step gives up on it.

Deploy: create the InferenceService, or merge-patch it when it exists (a canary percentage left out is
removed, so the new revision takes all traffic), then wait until the controller has seen this generation and
reports `Ready`. A deploy that does not become ready is left in place: KServe keeps the last ready revision
serving.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3.exceptions
from kubernetes.client.rest import ApiException

from cutout.platform import mpijob
from cutout.platform.kube import INFERENCE_SERVICES, MPIJOBS, Kube, connect, error_message
from cutout.platform.sdk_models import to_dict

JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
KEPT_LOG_LINES = 10_000
ERROR_LOG_LINES = 20  # log lines quoted in a failure's message
MAX_READ_FAILURES = 5  # consecutive failed status reads before the step gives up
LogSink = Callable[[str], None]


class StepFailed(RuntimeError):
    """The job failed, timed out or vanished, or the service did not become ready; `reason` says which."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class JobResult:
    """A finished MPIJob: its name and the launcher's log (the last `KEPT_LOG_LINES` lines)."""

    name: str
    logs: list[str]


@dataclass(frozen=True)
class Deployment:
    """A ready InferenceService."""

    name: str
    namespace: str
    action: str  # "created" or "patched"
    generation: int | None
    url: str | None


def print_line(line: str) -> None:
    """The default log sink: stdout, flushed (the KFP UI shows a step's stdout)."""
    print(line, flush=True)


def run_mpijob(
    kube: Kube, job: Any, *, timeout_s: float, poll_s: float = 10.0, on_log: LogSink = print_line
) -> JobResult:
    """Create the MPIJob, stream its launcher's log, wait for it to finish, delete it.

    Args:
        kube: The cluster.
        job: The `KubeflowOrgV1MPIJob` (see `cutout.platform.mpijob.build_mpijob`).
        timeout_s: How long to wait for the job to finish.
        poll_s: Seconds between status reads.
        on_log: Called with each line of the launcher's log as it arrives.

    Returns:
        The job's name and the launcher's log.

    Raises:
        StepFailed: `reason` is the job's own (e.g. `MPIJobFailed`) when it failed, else `Timeout`,
            `Deleted`, or `ApiError` (unreadable status); the message ends with the log's last lines.
        ApiException: The job could not be created (nothing was created, so nothing is deleted).
    """
    body = to_dict(job)
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    kube.create(MPIJOBS, namespace, body)
    follower = LauncherLog(kube, namespace, name, on_log, poll_s)
    follower.start()
    try:
        condition = _wait_for_job(kube, namespace, name, timeout_s, poll_s)
        follower.finish(grace_s=max(2 * poll_s, 10.0))  # the rest of the log, now that the launcher stopped
        if condition["type"] == "Succeeded":
            return JobResult(name, list(follower.lines))
        reason = condition.get("reason") or "Failed"
        raise StepFailed(
            reason, f"MPIJob {namespace}/{name} failed: {reason}: {condition.get('message', '')}"
        )
    except StepFailed as failure:
        raise StepFailed(failure.reason, f"{failure}{_tail(follower.lines)}") from failure.__cause__
    finally:
        follower.finish(grace_s=0)
        _delete(kube, namespace, name, on_log)


def _wait_for_job(kube: Kube, namespace: str, name: str, timeout_s: float, poll_s: float) -> dict:
    """The job's terminal condition (`Succeeded` or `Failed`), once it has one."""
    deadline, failures, state = time.monotonic() + timeout_s, 0, "not started"
    while True:
        try:
            job = kube.get(MPIJOBS, namespace, name)
            failures = 0
        except (ApiException, urllib3.exceptions.HTTPError) as error:
            failures += 1
            if failures >= MAX_READ_FAILURES or not _transient(error):
                message = f"cannot read MPIJob {namespace}/{name}: {error_message(error)}"
                raise StepFailed("ApiError", message) from error
            job = {"status": {"conditions": []}}
        if job is None:
            raise StepFailed("Deleted", f"MPIJob {namespace}/{name} was deleted before it finished")
        conditions = [
            c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"
        ]
        terminal = [c for c in conditions if c.get("type") in ("Succeeded", "Failed")]
        if terminal:
            return terminal[-1]
        state = conditions[-1].get("type", state) if conditions else state
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StepFailed("Timeout", f"MPIJob {namespace}/{name} did not finish within {timeout_s:g} s "
                             f"(last state: {state}); deleting it")  # fmt: skip
        time.sleep(min(poll_s, remaining))


def _transient(error: Exception) -> bool:
    """A server-side hiccup or a lost connection, worth another try (a 403 or 400 is not)."""
    return not isinstance(error, ApiException) or error.status in (0, 429) or error.status >= 500


def _delete(kube: Kube, namespace: str, name: str, on_log: LogSink) -> None:
    # Never mask the step's own outcome: a job left behind is removed by its ttlSecondsAfterFinished.
    try:
        kube.delete(MPIJOBS, namespace, name)
    except (ApiException, urllib3.exceptions.HTTPError) as error:
        on_log(f"warning: could not delete MPIJob {namespace}/{name}: {error_message(error)}")


def _tail(lines: collections.deque) -> str:
    last = list(lines)[-ERROR_LOG_LINES:]
    return "\nlast lines of the launcher's log:\n" + "\n".join(last) if last else ""


class LauncherLog(threading.Thread):
    """Follows the launcher container's log: each run of it (a retried launcher restarts the container)."""

    def __init__(self, kube: Kube, namespace: str, job: str, on_log: LogSink, poll_s: float) -> None:
        super().__init__(name=f"log-{job}", daemon=True)  # a stream still open at exit ends with the job
        self.kube, self.namespace, self.on_log, self.poll_s = kube, namespace, on_log, poll_s
        self.selector = f"{JOB_NAME_LABEL}={job},{REPLICA_TYPE_LABEL}=launcher"
        self.lines: collections.deque[str] = collections.deque(maxlen=KEPT_LOG_LINES)
        self._ended = threading.Event()

    def run(self) -> None:
        streamed: set[tuple[str, int]] = set()
        while True:
            ended = self._ended.is_set()  # read before looking, so the last look comes after the job ended
            started = self._started_container()
            if started and started not in streamed:
                streamed.add(started)
                self._stream(started[0])
            elif ended:
                return
            else:
                self._ended.wait(self.poll_s)

    def finish(self, grace_s: float) -> None:
        """The job has ended: read what is left of the log, waiting at most `grace_s` seconds."""
        self._ended.set()
        self.join(grace_s)

    def _started_container(self) -> tuple[str, int] | None:
        """(pod, restart count) of the launcher container once it has started, None before."""
        try:
            pods = self.kube.pods(self.namespace, self.selector)
        except (ApiException, urllib3.exceptions.HTTPError):
            return None  # try again at the next poll
        for pod in pods:
            if pod.status and pod.status.phase in ("Running", "Succeeded", "Failed"):
                statuses = [s for s in pod.status.container_statuses or [] if s.name == mpijob.CONTAINER]
                return pod.metadata.name, statuses[0].restart_count if statuses else 0
        return None

    def _stream(self, pod: str) -> None:
        try:
            for line in self.kube.follow_pod_log(self.namespace, pod, mpijob.CONTAINER):
                self.lines.append(line)
                self.on_log(line)
        except (ApiException, urllib3.exceptions.HTTPError) as error:
            self.on_log(f"warning: launcher log of {pod} interrupted: {error_message(error)}")


def deploy_inference_service(
    kube: Kube, isvc: Any, *, timeout_s: float, poll_s: float = 5.0, on_log: LogSink = print_line
) -> Deployment:
    """Create or patch the InferenceService and wait until it is ready.

    Args:
        kube: The cluster.
        isvc: The `kserve.V1beta1InferenceService` (`cutout.platform.inference_service`), with a namespace.
        timeout_s: How long to wait for `Ready`.
        poll_s: Seconds between status reads.
        on_log: Called with progress messages.

    Raises:
        StepFailed: `Timeout` (with the condition that is not yet true, and why) when it is not ready in time.
        ValueError: The InferenceService has no namespace.
    """
    body = to_dict(isvc)
    name, namespace = body["metadata"]["name"], body["metadata"].get("namespace")
    if not namespace:
        raise ValueError(f"InferenceService {name} needs a namespace to be deployed")
    if kube.get(INFERENCE_SERVICES, namespace, name) is None:
        stored, action = kube.create(INFERENCE_SERVICES, namespace, body), "created"
    else:
        stored, action = kube.patch(INFERENCE_SERVICES, namespace, name, patch_body(body)), "patched"
    generation = stored.get("metadata", {}).get("generation")
    on_log(f"InferenceService {namespace}/{name} {action} (generation {generation}); waiting until ready")
    status = _wait_until_ready(kube, namespace, name, generation, timeout_s, poll_s)
    return Deployment(name, namespace, action, generation, status.get("url"))


def patch_body(body: dict) -> dict:
    """The merge patch that makes an existing InferenceService's metadata labels and spec what `body` says."""
    spec = {component: dict(value) for component, value in body["spec"].items()}
    for component in spec.values():
        component.setdefault("canaryTrafficPercent", None)  # None removes an earlier canary: full rollout
    metadata = {key: body["metadata"][key] for key in ("labels", "annotations") if key in body["metadata"]}
    return {"metadata": metadata, "spec": spec}


def _wait_until_ready(
    kube: Kube, namespace: str, name: str, generation: int | None, timeout_s: float, poll_s: float
) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        current = kube.get(INFERENCE_SERVICES, namespace, name)
        if current is None:
            raise StepFailed("Deleted", f"InferenceService {namespace}/{name} was deleted while deploying")
        status = current.get("status") or {}
        ready, why = readiness(status, generation)
        if ready:
            return status
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StepFailed(
                "Timeout", f"InferenceService {namespace}/{name} not ready within {timeout_s:g} s: {why}"
            )
        time.sleep(min(poll_s, remaining))


def readiness(status: dict, generation: int | None) -> tuple[bool, str]:
    """Whether an InferenceService status says ready for `generation`, and if not, why not."""
    observed = status.get("observedGeneration")
    if generation is not None and (observed is None or observed < generation):
        return False, f"the controller has not yet seen generation {generation} (observed: {observed})"
    conditions = status.get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready and ready.get("status") == "True":
        return True, ""
    blocking = [c for c in conditions if c.get("status") != "True"]
    if not blocking:
        return False, "no Ready condition yet"
    return False, "; ".join(
        f"{c.get('type')}: {c.get('reason', '')} {c.get('message', '')}".strip() for c in blocking
    )


def train_on_cluster(
    args: mpijob.TrainingArgs, config: mpijob.MPIJobConfig, *, timeout_s: float, host: str | None = None
) -> JobResult:
    """Build the MPIJob and run it on the cluster this process is configured for (see `kube.connect`)."""
    return run_mpijob(connect(host), mpijob.build_mpijob(args, config), timeout_s=timeout_s)


def deploy_model(config: Any, *, timeout_s: float, host: str | None = None) -> Deployment:
    """Build the InferenceService from an `InferenceServiceConfig` and deploy it (see `kube.connect`)."""
    from cutout.platform.inference_service import build_inference_service

    return deploy_inference_service(connect(host), build_inference_service(config), timeout_s=timeout_s)

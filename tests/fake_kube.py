"""A small fake Kubernetes API server on 127.0.0.1, for the launcher's tests.

It serves only what `cutout.platform.kube` calls, over real HTTP (so the official client's own HTTP code
runs):

    /apis/kubeflow.org/v1/namespaces/{ns}/mpijobs[/{name}]                      POST, GET, DELETE
    /apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices[/{name}]  POST, GET, PATCH, DELETE
    /api/v1/namespaces/{ns}/pods?labelSelector=…                                 GET
    /api/v1/namespaces/{ns}/pods/{name}/log?container=…[&follow=true]            GET (follow: chunked)

A test scripts what happens: an MPIJob walks through `JobScript.states`, one per status read (the last one
repeats), with a launcher pod whose phase follows the job and whose log is `JobScript.logs`; an
InferenceService becomes Ready `ServiceScript.ready_after` reads after each write, or never. Every request,
create, patch and delete is recorded.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fake_http import LocalHTTPServer

MPIJOBS = ("kubeflow.org", "v1", "mpijobs")
ISVCS = ("serving.kserve.io", "v1beta1", "inferenceservices")
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
_CUSTOM = re.compile(r"^/apis/([^/]+)/([^/]+)/namespaces/([^/]+)/([^/]+)(?:/([^/]+))?$")
_PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
_LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")
_TRUE = ("1", "t", "T", "TRUE", "true", "True")  # what the API server's Go strconv.ParseBool accepts
_POD_PHASE = {"Running": "Running", "Restarting": "Running", "Succeeded": "Succeeded", "Failed": "Failed"}


@dataclass
class JobScript:
    """How every MPIJob created on the server behaves."""

    states: list[str] = field(default_factory=lambda: ["Created", "Running", "Succeeded"])
    reason: str = "MPIJobFailed"
    message: str = "MPIJob has failed because 1 Launcher replica(s) failed."
    logs: list[str] = field(default_factory=lambda: ["epoch 1 loss 0.5", "epoch 2 loss 0.3", "done"])
    line_delay_s: float = 0.005


@dataclass
class ServiceScript:
    """How every InferenceService on the server behaves: Ready after this many reads since the last write."""

    ready_after: int | None = 2
    reason: str = "RevisionMissing"
    message: str = "Revision cutout-predictor-00002 failed with message: Back-off pulling image."


class FakeKube(LocalHTTPServer):
    """The server, its stored objects and what it was asked; a context manager that starts and stops it."""

    def __init__(self) -> None:
        self.job_script = JobScript()
        self.service_script = ServiceScript()
        self.objects: dict[tuple[str, str, str], dict] = {}  # (plural, namespace, name) → object
        self.requests: list[tuple[str, str]] = []  # (method, path?query)
        self.created: list[dict] = []
        self.patches: list[tuple[str, dict]] = []  # (content type, body)
        self.deleted: list[tuple[str, str, str, str | None]] = []  # (plural, namespace, name, propagation)
        self.failing_reads = 0  # the next N reads of custom objects answer 500
        self._reads: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        super().__init__(_handler(self))

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()  # log streams still open end first
        super().__exit__(*exc)

    def job_state(self, namespace: str, name: str) -> str | None:
        """The state the job showed at its last read (None: not created or deleted)."""
        job = self.objects.get(("mpijobs", namespace, name))
        return None if job is None else job["_state"]

    def put_service(self, body: dict, ready: bool = True) -> None:
        """Store an InferenceService as if deployed earlier (generation 1, Ready if asked)."""
        stored = json.loads(json.dumps(body))
        meta = stored["metadata"]
        meta["generation"] = 1
        if ready:
            stored["status"] = _ready_status(stored)
        self.objects[("inferenceservices", meta["namespace"], meta["name"])] = stored

    # --- request handling (called from the handler's threads) ---

    def handle(self, method: str, url: str, body: bytes, content_type: str) -> tuple[int, Any]:
        parts = urlsplit(url)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        with self._lock:
            self.requests.append((method, url))
            if match := _CUSTOM.match(parts.path):
                group, version, namespace, plural, name = match.groups()
                if (group, version, plural) not in (MPIJOBS, ISVCS):
                    return _status(404, "NotFound", f"the server could not find the resource {plural}")
                return self._custom(method, plural, namespace, name, body, content_type, query)
            if (match := _PODS.match(parts.path)) and method == "GET":
                return 200, self._pod_list(match.group(1), query.get("labelSelector", ""))
        return _status(404, "NotFound", f"no route for {method} {parts.path}")

    def _custom(self, method, plural, namespace, name, body, content_type, query) -> tuple[int, Any]:
        key = (plural, namespace, name)
        if method == "POST" and name is None:
            return self._create(plural, namespace, json.loads(body))
        if method == "GET" and name:
            if self.failing_reads > 0:
                self.failing_reads -= 1
                return _status(500, "InternalError", "etcdserver: leader changed")
            if key not in self.objects:
                return _status(404, "NotFound", f'{plural} "{name}" not found')
            return 200, self._read(key)
        if method == "PATCH" and name:
            if key not in self.objects:
                return _status(404, "NotFound", f'{plural} "{name}" not found')
            patch = json.loads(body)
            self.patches.append((content_type, patch))
            stored = self.objects[key]
            _merge(stored, patch)
            stored["metadata"]["generation"] += 1
            self._reads[key] = 0
            return 200, _public(stored)
        if method == "DELETE" and name:
            self.deleted.append((plural, namespace, name, query.get("propagationPolicy")))
            if self.objects.pop(key, None) is None:
                return _status(404, "NotFound", f'{plural} "{name}" not found')
            return _status(200, "Success", "deleted")
        return _status(405, "MethodNotAllowed", f"{method} is not supported here")

    def _create(self, plural: str, namespace: str, obj: dict) -> tuple[int, Any]:
        name = obj["metadata"]["name"]
        key = (plural, namespace, name)
        if key in self.objects:
            return _status(409, "AlreadyExists", f'{plural} "{name}" already exists')
        self.created.append(json.loads(json.dumps(obj)))
        obj["metadata"].update(generation=1, uid=f"uid-{len(self.created)}", namespace=namespace)
        obj["_state"] = None
        self.objects[key] = obj
        self._reads[key] = 0
        return 201, _public(obj)

    def _read(self, key: tuple[str, str, str]) -> dict:
        self._reads[key] = reads = self._reads.get(key, 0) + 1
        obj = self.objects[key]
        if key[0] == "mpijobs":
            states = self.job_script.states
            obj["_state"] = state = states[min(reads, len(states)) - 1]
            obj["status"] = {"conditions": self._job_conditions(states[: states.index(state) + 1])}
        else:
            script = self.service_script
            if script.ready_after is not None and reads >= script.ready_after:
                obj["status"] = _ready_status(obj)
            elif script.ready_after is None:
                not_ready = {
                    "type": "Ready",
                    "status": "False",
                    "reason": script.reason,
                    "message": script.message,
                }
                obj["status"] = {
                    "observedGeneration": obj["metadata"]["generation"],
                    "conditions": [not_ready],
                }
        return _public(obj)

    def _job_conditions(self, seen: list[str]) -> list[dict]:
        current = seen[-1]
        conditions = []
        for state in seen:
            condition = {"type": state, "status": "True" if state in (current, "Created") else "False",
                         "reason": f"MPIJob{state}", "message": f"MPIJob is {state.lower()}."}  # fmt: skip
            if state == "Failed":
                condition.update(reason=self.job_script.reason, message=self.job_script.message)
            conditions.append(condition)
        return conditions

    def _pod_list(self, namespace: str, selector: str) -> dict:
        wanted = dict(term.split("=", 1) for term in selector.split(",") if term)
        pods = [pod for pod in self._pods(namespace) if wanted.items() <= pod["metadata"]["labels"].items()]
        return {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods}

    def _pods(self, namespace: str) -> list[dict]:
        pods = []
        for (plural, ns, name), job in self.objects.items():
            if plural == "mpijobs" and ns == namespace and job["_state"] is not None:
                phase = _POD_PHASE.get(job["_state"], "Pending")
                pods += [_pod(f"{name}-launcher", ns, name, "launcher", phase),
                         _pod(f"{name}-worker-0", ns, name, "worker", "Running")]  # fmt: skip
        return pods

    def log_source(self, namespace: str, pod: str) -> tuple[str, str] | None:
        """(job name, phase) of a launcher pod, or None when there is no such pod."""
        with self._lock:
            for candidate in self._pods(namespace):
                if candidate["metadata"]["name"] == pod:
                    return candidate["metadata"]["labels"][JOB_NAME_LABEL], candidate["status"]["phase"]
        return None

    def job_running(self, namespace: str, job: str) -> bool:
        """Whether the job still exists and has not finished (a followed log stays open meanwhile)."""
        state = self.job_state(namespace, job)
        return state is not None and state not in ("Succeeded", "Failed") and not self._stopping.is_set()


def _handler(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.command == "GET" and (match := _LOG.match(urlsplit(self.path).path)):
                self._log(*match.groups())
                return
            status, payload = fake.handle(self.command, self.path, body, self.headers.get("Content-Type", ""))
            self._send(status, json.dumps(payload).encode(), "application/json")

        do_GET = do_POST = do_PATCH = do_DELETE = _serve

        def _send(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _log(self, namespace: str, pod: str) -> None:
            with fake._lock:
                fake.requests.append(("GET", self.path))
            query = parse_qs(urlsplit(self.path).query)
            source = fake.log_source(namespace, pod)
            if source is None:
                self._send(404, json.dumps(_status(404, "NotFound", f'pods "{pod}" not found')[1]).encode(),
                           "application/json")  # fmt: skip
                return
            if source[1] == "Pending":
                message = f'container "mpi" in pod "{pod}" is waiting to start: ContainerCreating'
                self._send(
                    400, json.dumps(_status(400, "BadRequest", message)[1]).encode(), "application/json"
                )
                return
            lines = [f"{line}\n".encode() for line in fake.job_script.logs]
            if query.get("follow", ["false"])[-1] not in _TRUE:
                self._send(200, b"".join(lines), "text/plain")
                return
            self._follow(namespace, source[0], lines)

        def _follow(self, namespace: str, job: str, lines: list[bytes]) -> None:
            # Chunked, like the API server: each line arrives as it is "written"; the stream ends when the
            # container stops (the job finishes or is deleted).
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for line in lines:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
                time.sleep(fake.job_script.line_delay_s)
            while fake.job_running(namespace, job):
                time.sleep(0.02)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


def _pod(name: str, namespace: str, job: str, replica: str, phase: str) -> dict:
    state = {"Pending": {"waiting": {"reason": "ContainerCreating"}}, "Running": {"running": {}}}.get(
        phase, {"terminated": {"exitCode": 0 if phase == "Succeeded" else 1}}
    )
    status = {"name": "mpi", "image": "cutout-train", "imageID": "", "ready": phase == "Running",
              "restartCount": 0, "state": state}  # fmt: skip
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {JOB_NAME_LABEL: job, REPLICA_TYPE_LABEL: replica}},
        "spec": {"containers": [{"name": "mpi", "image": "cutout-train"}]},
        "status": {"phase": phase, "containerStatuses": [status]},
    }  # fmt: skip


def _ready_status(obj: dict) -> dict:
    meta = obj["metadata"]
    conditions = [{"type": kind, "status": "True"} for kind in ("IngressReady", "PredictorReady", "Ready")]
    return {"observedGeneration": meta["generation"], "conditions": conditions,
            "url": f"http://{meta['name']}.{meta['namespace']}.example.com"}  # fmt: skip


def _merge(target: dict, patch: dict) -> None:
    """RFC 7386 JSON merge patch, in place."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            if not isinstance(target.get(key), dict):
                target[key] = {}
            _merge(target[key], value)
        else:
            target[key] = json.loads(json.dumps(value))


def _public(obj: dict) -> dict:
    return {key: value for key, value in json.loads(json.dumps(obj)).items() if not key.startswith("_")}


def _status(code: int, reason: str, message: str) -> tuple[int, dict]:
    status = "Success" if code < 400 else "Failure"
    return code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": status, "message": message,
                  "reason": reason, "code": code}  # fmt: skip

"""`cutout pipeline submit` and `schedule` against a small fake KFP API server on 127.0.0.1, driven through
the real `kfp.Client` (its generated HTTP client included): what reaches the server is checked as the KFP
API server would, and the CronJob's command line (`cutout pipeline submit --host … --package …`) works."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from google.protobuf.json_format import ParseDict, ParseError
from kfp.pipeline_spec import pipeline_spec_pb2

from cutout.platform import pipelines as client
from cutout.platform.cron import CronError
from fake_http import LocalHTTPServer
from pipelines.training import cutout_training_pipeline

API = "/apis/v2beta1"


class FakeKFP(LocalHTTPServer):
    """The few routes `kfp.Client` uses to submit and schedule; every request and body is recorded.

    Like the real API server it refuses (400) a pipeline spec that its protos do not accept strictly, an
    argument the pipeline has no parameter for, and a cron expression without 6 fields.
    """

    def __init__(self) -> None:
        self.experiments: list[dict] = []
        self.runs: list[dict] = []
        self.recurring_runs: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        super().__init__(_handler(self))

    def handle(self, method: str, url: str, body: dict | None) -> tuple[int, dict]:
        parts = urlsplit(url)
        self.requests.append((method, parts.path))
        if (method, parts.path) == ("GET", f"{API}/healthz"):
            return 200, {"multi_user": False}
        if (method, parts.path) == ("GET", f"{API}/experiments"):
            predicate = json.loads(parse_qs(parts.query)["filter"][0])["predicates"][0]
            wanted = predicate.get("stringValue", predicate.get("string_value"))  # protojson takes both
            return 200, {"experiments": [e for e in self.experiments if e["display_name"] == wanted]}
        if (method, parts.path) == ("POST", f"{API}/experiments"):
            self.experiments.append({**body, "experiment_id": str(uuid.uuid4())})
            return 200, self.experiments[-1]
        if method == "POST" and parts.path in (f"{API}/runs", f"{API}/recurringruns"):
            problem = _spec_problem(body["pipeline_spec"], body["runtime_config"].get("parameters") or {})
            cron = (body.get("trigger") or {}).get("cron_schedule", {}).get("cron")
            if cron is not None and len(cron.split()) != 6:
                problem = f"invalid cron {cron!r}"
            if problem:
                return 400, {"error_message": problem, "code": 3}
            if parts.path.endswith("/runs"):
                self.runs.append({**body, "run_id": str(uuid.uuid4()), "state": "PENDING"})
                return 200, self.runs[-1]
            self.recurring_runs.append({**body, "recurring_run_id": str(uuid.uuid4()), "status": "ENABLED"})
            return 200, self.recurring_runs[-1]
        return 404, {"error_message": f"no route for {method} {parts.path}", "code": 5}


def _spec_problem(document: dict, arguments: dict) -> str | None:
    spec, platform = pipeline_spec_pb2.PipelineSpec(), pipeline_spec_pb2.PlatformSpec()
    try:  # the pipeline spec alone, or with a platform spec beside it (what kfp.Client sends)
        ParseDict(document.get("pipeline_spec", document), spec, ignore_unknown_fields=False)
        ParseDict(document.get("platform_spec", {}), platform, ignore_unknown_fields=False)
    except ParseError as error:
        return f"invalid pipeline spec: {error}"
    unknown = arguments.keys() - spec.root.input_definitions.parameters.keys()
    return f"unrecognized input parameter(s): {', '.join(sorted(unknown))}" if unknown else None


def _handler(fake: FakeKFP) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, answer = fake.handle(self.command, self.path, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args) -> None:  # quiet
            pass

    return Handler


@pytest.fixture
def kfp_server() -> Iterator[FakeKFP]:
    with FakeKFP() as server:
        yield server


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return client.compile_pipeline(cutout_training_pipeline, tmp_path_factory.mktemp("pkg") / "training.yaml")


ARGUMENTS = {"data_uri": "s3://cutout/raw", "feedback_uri": "s3://cutout/feedback", "epochs": 12,
             "gpu_node_selector": {"karpenter.sh/capacity-type": "on-demand"}}  # fmt: skip


def test_submit_creates_the_experiment_once_and_starts_a_run_with_the_arguments(kfp_server, package):
    kfp = client.connect(kfp_server.url)
    first = client.submit(kfp, ARGUMENTS, package, experiment="retraining", run_name="nightly")
    second = client.submit(kfp, ARGUMENTS, package, experiment="retraining")
    assert [run["run_id"] for run in kfp_server.runs] == [first, second]
    assert len(kfp_server.experiments) == 1 and kfp_server.experiments[0]["display_name"] == "retraining"
    run = kfp_server.runs[0]
    assert run["display_name"] == "nightly"
    assert run["experiment_id"] == kfp_server.experiments[0]["experiment_id"]
    assert run["runtime_config"]["parameters"] == ARGUMENTS
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "cutout-training"


def test_submit_without_a_package_compiles_the_pipeline_first(kfp_server):
    client.submit(client.connect(kfp_server.url), ARGUMENTS, cutout_training_pipeline)
    (run,) = kfp_server.runs
    assert "exec-train" in run["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"]


def test_schedule_creates_a_recurring_run_that_does_not_overlap_or_catch_up(kfp_server, package):
    recurring_id = client.schedule(client.connect(kfp_server.url), " 0 0 3 * * *", ARGUMENTS, package)
    (recurring,) = kfp_server.recurring_runs
    assert recurring["recurring_run_id"] == recurring_id
    assert recurring["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert int(recurring["max_concurrency"]) == 1  # int64: JSON carries it as a string
    assert recurring["no_catchup"] is True and recurring["mode"] == "ENABLE"
    assert recurring["runtime_config"]["parameters"] == ARGUMENTS


def test_schedule_refuses_a_five_field_cron_and_sends_nothing(kfp_server, package):
    with pytest.raises(CronError, match="6, seconds first"):
        client.schedule(client.connect(kfp_server.url), "0 3 * * *", ARGUMENTS, package)
    assert kfp_server.recurring_runs == [] and not [r for r in kfp_server.requests if r[0] == "POST"]


def _cutout(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cutout.cli", "pipeline", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, check=False)


def test_the_cronjobs_submit_command_prints_the_run_id(kfp_server, package, tmp_path):
    done = _cutout("submit", "--host", kfp_server.url, "--package", str(package), "--experiment", "gitops",
                   "-p", "data_uri=s3://cutout/raw", "-p", "workers=4", "-p", "deploy_model=false",
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (run,) = kfp_server.runs
    assert done.stdout.strip() == run["run_id"]
    assert run["runtime_config"]["parameters"] == {"data_uri": "s3://cutout/raw", "workers": 4,
                                                   "deploy_model": False}  # fmt: skip


def test_the_schedule_command_prints_the_recurring_run_id(kfp_server, package, tmp_path):
    done = _cutout("schedule", "--cron", "0 30 2 * * SUN", "--host", kfp_server.url, "--package",
                   str(package), "-p", "data_uri=s3://cutout/raw", "--name", "weekly",
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (recurring,) = kfp_server.recurring_runs
    assert done.stdout.strip() == recurring["recurring_run_id"] and recurring["display_name"] == "weekly"


def test_submit_reports_a_refusal_an_unreachable_server_and_a_missing_package_clearly(
    kfp_server, package, tmp_path
):
    pipeline, platform = yaml.safe_load_all(package.read_text())
    del pipeline["root"]["inputDefinitions"]["parameters"]["workers"]  # an older package, without `workers`
    old = tmp_path / "older.yaml"
    old.write_text(yaml.safe_dump_all([pipeline, platform]))
    refused = _cutout("submit", "--host", kfp_server.url, "--package", str(old), "-p", "data_uri=x",
                      "-p", "workers=4", cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 1 and "KFP refused: 400" in refused.stderr and "workers" in refused.stderr
    unreachable = _cutout("submit", "--host", "http://127.0.0.1:9", "--package", str(old), "-p", "data_uri=x",
                          cwd=tmp_path)  # fmt: skip
    assert unreachable.returncode == 1 and "cannot reach KFP" in unreachable.stderr
    missing = _cutout("submit", "--host", kfp_server.url, "--package", str(tmp_path / "none.yaml"),
                      "-p", "data_uri=x", cwd=tmp_path)  # fmt: skip
    assert missing.returncode == 2 and "cutout pipeline compile" in missing.stderr

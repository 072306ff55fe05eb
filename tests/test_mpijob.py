"""The training step on a cluster protects: the MPIJob the Training Operator gets (round trip through the
kubeflow-training SDK models with nothing lost, strict field names, GPUs, the on-demand node pool, istio,
non-root, Secrets, the training arguments), and the launcher against a fake API server over real HTTP:
success with the log streamed, failure with the job's reason, timeout, log retrieval, clean-up."""

from __future__ import annotations

import json
import types

import pytest
import yaml
from kubeflow.training import ApiClient as TrainingApiClient
from kubeflow.training.models import KubeflowOrgV1MPIJob
from kubernetes.client.rest import ApiException
from typer.testing import CliRunner

from cutout.cli import app
from cutout.platform import mpijob
from cutout.platform.kube import MPIJOBS, current_namespace
from cutout.platform.launcher import StepFailed, run_mpijob
from cutout.platform.pods import Secrets
from cutout.platform.sdk_models import UnknownFieldError, from_dict, parse_resource, to_dict
from cutout.train.config import TrainConfig, on_cluster_ranks
from helpers import assert_field_refused

TRAINING = TrainConfig(
    data="s3://cutout/datasets/augmented", checkpoint_dir="s3://cutout/runs/r1/checkpoints",
    run_info="s3://cutout/runs/r1/run.json", model="u2netp", epochs=12, batch_size=16,
)  # fmt: skip
# As `cutout platform mpijob` builds it: the config for GPU ranks, then a flag passed through as it is.
ARGS = mpijob.TrainingArgs((*on_cluster_ranks(TRAINING, gpus=True).to_argv(), "--lr", "0.002"))
CONFIG = mpijob.MPIJobConfig(name="train-r1", namespace="team-a", image="registry.example/cutout-train:1.2",
                             workers=3, gpus_per_worker=4)  # fmt: skip


def _job(args=ARGS, **changes) -> dict:
    config = mpijob.MPIJobConfig(**{**CONFIG.__dict__, **changes})
    return to_dict(mpijob.build_mpijob(args, config))


def _pod(job: dict, replica: str) -> dict:
    return job["spec"]["mpiReplicaSpecs"][replica]["template"]


def _container(job: dict, replica: str) -> dict:
    (container,) = _pod(job, replica)["spec"]["containers"]
    return container


# --- the MPIJob ---


def test_round_trip_through_the_sdk_models_loses_nothing():
    job = _job()
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "MPIJob")
    assert to_dict(from_dict(job, KubeflowOrgV1MPIJob)) == job
    # The SDK's own deserializer reads it back the same (it would silently drop an unknown field).
    response = types.SimpleNamespace(data=json.dumps(job))
    assert to_dict(TrainingApiClient().deserialize(response, "KubeflowOrgV1MPIJob")) == job


@pytest.mark.parametrize(
    ("path", "bad", "message"),
    [
        (["spec"], {"slotsPerWorkers": 4}, "'slotsPerWorkers' (did you mean 'slotsPerWorker'?)"),
        (["spec", "runPolicy"], {"backofLimit": 1}, "spec.runPolicy: KubeflowOrgV1RunPolicy has no field"),
        (["spec", "mpiReplicaSpecs", "Worker", "template", "spec", "containers", 0],
         {"imagePullPolcy": "Always"},
         "Worker.template.spec.containers[0]: V1Container has no field 'imagePullPolcy'"),
        (["spec"], {"slotsPerWorker": "4"}, "spec.slotsPerWorker: expected int, got str"),
        (["spec", "mpiReplicaSpecs", "Launcher", "template", "metadata", "annotations"],
         {"sidecar.istio.io/inject": False}, "expected str, got bool"),
        (["spec", "mpiReplicaSpecs", "Worker", "template", "spec"], {"containers": {"name": "mpi"}},
         "containers: expected a list"),
    ],
)  # fmt: skip
def test_an_unknown_misspelled_or_mistyped_field_is_an_error(path, bad, message):
    assert_field_refused(_job(), path, bad, message)


def test_a_missing_required_field_is_an_error():
    job = _job()
    del _container(job, "Worker")["name"]
    with pytest.raises(UnknownFieldError, match="name"):
        parse_resource(job)


def test_workers_get_their_gpus_and_the_launcher_runs_one_rank_per_gpu():
    job = _job()
    spec = job["spec"]
    assert spec["slotsPerWorker"] == 4
    assert spec["mpiReplicaSpecs"]["Worker"]["replicas"] == 3
    assert spec["mpiReplicaSpecs"]["Launcher"]["replicas"] == 1
    worker, launcher = _container(job, "Worker"), _container(job, "Launcher")
    assert worker["name"] == launcher["name"] == "mpi"
    assert worker["image"] == launcher["image"] == "registry.example/cutout-train:1.2"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert "nvidia.com/gpu" not in launcher["resources"]["limits"]
    command = launcher["command"] + launcher["args"]
    assert command[:3] == ["mpirun", "-np", "12"]
    assert worker["command"] == ["sleep"]  # mpirun starts the ranks in the workers
    shm = {v["name"]: v for v in _pod(job, "Worker")["spec"]["volumes"]}["dshm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in worker["volumeMounts"]


def test_the_training_arguments_reach_cutout_train_as_its_own_parser_reads_them():
    from cutout.train.train import get_args_parser

    launcher = _container(_job(), "Launcher")
    command = launcher["command"] + launcher["args"]
    start = command.index("python")
    assert command[start : start + 3] == ["python", "-m", "cutout.train"]
    args = get_args_parser().parse_args(command[start + 3 :])
    assert (args.data, args.model, args.epochs, args.batch_size) == (TRAINING.data, "u2netp", 12, 16)
    assert (args.checkpoint_dir, args.run_info) == (TRAINING.checkpoint_dir, TRAINING.run_info)
    assert args.resume and args.device == "cuda" and args.lr == 0.002
    assert args.workers == 1  # the local shortcut stays off: mpirun places the ranks


def test_cpu_only_workers_run_one_rank_each_without_gpu_limits():
    job = _job(mpijob.TrainingArgs(tuple(on_cluster_ranks(TRAINING, gpus=False).to_argv())),
               gpus_per_worker=0, workers=2)  # fmt: skip
    launcher = _container(job, "Launcher")
    assert job["spec"]["slotsPerWorker"] == 1
    assert launcher["args"][:2] == ["-np", "2"] and "--device" not in launcher["args"]
    assert "nvidia.com/gpu" not in _container(job, "Worker")["resources"]["limits"]


@pytest.mark.parametrize(
    ("preset", "label"),
    [("gke", ("cloud.google.com/gke-nodepool", "gpu-on-demand")),
     ("eks", ("eks.amazonaws.com/capacityType", "ON_DEMAND")),
     ("karpenter", ("karpenter.sh/capacity-type", "on-demand"))],
)  # fmt: skip
def test_every_pod_is_pinned_to_the_on_demand_gpu_pool(preset, label):
    job = _job(node_pool=mpijob.NODE_POOLS[preset])
    for replica in ("Launcher", "Worker"):
        pod = _pod(job, replica)["spec"]
        assert pod["nodeSelector"] == dict([label])
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert not any("spot" in str(toleration) for toleration in pod["tolerations"])


def test_the_default_pool_is_eks_on_demand():
    assert _pod(_job(), "Worker")["spec"]["nodeSelector"] == {"eks.amazonaws.com/capacityType": "ON_DEMAND"}


def test_run_policy_istio_and_non_root():
    job = _job(backoff_limit=1)
    assert job["spec"]["runPolicy"] == {"backoffLimit": 1, "cleanPodPolicy": "Running",
                                        "ttlSecondsAfterFinished": 86400}  # fmt: skip
    for replica in ("Launcher", "Worker"):
        assert job["spec"]["mpiReplicaSpecs"][replica]["restartPolicy"] == "OnFailure"
        pod = _pod(job, replica)
        assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        security = pod["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 1000
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        container = _container(job, replica)["securityContext"]
        assert container["allowPrivilegeEscalation"] is False
        assert container["capabilities"] == {"drop": ["ALL"]}


def test_mlflow_and_s3_settings_come_from_secrets():
    container = _container(_job(secrets=Secrets(mlflow="tracking", s3="minio")), "Worker")
    assert container["envFrom"] == [{"secretRef": {"name": "tracking"}}]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs["AWS_ACCESS_KEY_ID"] == {"name": "minio", "key": "AWS_ACCESS_KEY_ID"}
    assert refs["AWS_SECRET_ACCESS_KEY"] == {"name": "minio", "key": "AWS_SECRET_ACCESS_KEY"}
    assert refs["AWS_ENDPOINT_URL_S3"]["optional"] is True
    assert not any("value" in e and "AWS" in e["name"] for e in container["env"])  # no secret values inline
    without_s3 = _container(_job(secrets=Secrets(mlflow="tracking", s3=None)), "Worker")
    assert not any(e["name"].startswith("AWS_") for e in without_s3["env"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"workers": 0}, "workers must be at least 1"), ({"name": "Train_R1"}, "not a valid name"),
     ({"gpus_per_worker": -1}, "GPUs per worker"), ({"clean_pod_policy": "Always"}, "clean-pod policy")],
)  # fmt: skip
def test_invalid_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        _job(**changes)


def test_tolerations_parse_from_the_taint_syntax():
    assert mpijob.parse_toleration("dedicated=training:NoSchedule").to_dict() == {
        "key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule",
        "toleration_seconds": None,
    }  # fmt: skip
    assert mpijob.parse_toleration("nvidia.com/gpu:NoExecute").operator == "Exists"
    with pytest.raises(ValueError, match="effect must be"):
        mpijob.parse_toleration("dedicated=training:Sometimes")


# --- `cutout platform mpijob --dry-run` ---

CLI_ARGS = ["platform", "mpijob", "--dry-run", "--data", TRAINING.data, "--checkpoint-dir",
            TRAINING.checkpoint_dir, "--run-info", TRAINING.run_info, "--model", "u2netp", "--epochs", "12",
            "--batch-size", "16",
            "--train-arg", "--lr", "--train-arg", "0.002", "--name", "train-r1", "--namespace", "team-a",
            "--image", "registry.example/cutout-train:1.2", "--workers", "3",
            "--gpus-per-worker", "4"]  # fmt: skip


def test_dry_run_prints_the_mpijob_as_yaml_that_parses_back():
    result = CliRunner().invoke(app, CLI_ARGS)
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    assert to_dict(parse_resource(printed)) == printed == _job()


def test_dry_run_node_selector_and_tolerations_replace_the_preset():
    extra = ["--node-selector", "pool=a100-on-demand", "--toleration", "dedicated=training:NoSchedule"]
    result = CliRunner().invoke(app, CLI_ARGS + extra)
    assert result.exit_code == 0, result.output
    pod = _pod(yaml.safe_load(result.stdout), "Worker")["spec"]
    assert pod["nodeSelector"] == {"pool": "a100-on-demand"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "training",
                                   "effect": "NoSchedule"}]  # fmt: skip


def test_dry_run_refuses_a_bad_option_with_a_message():
    result = CliRunner().invoke(app, [*CLI_ARGS, "--toleration", "dedicated"])
    assert result.exit_code == 2
    assert "key[=value]:Effect" in result.output


# --- the launcher, against a fake API server (the `fake` and `kube` fixtures of conftest.py) ---


def _run(kube, lines: list[str] | None = None, timeout_s: float = 10.0):
    job = mpijob.build_mpijob(ARGS, CONFIG)
    sink = [] if lines is None else lines
    return run_mpijob(kube, job, timeout_s=timeout_s, poll_s=0.05, on_log=sink.append)


def test_a_job_that_succeeds_is_created_streamed_and_deleted(fake, kube):
    fake.job_script.states = ["Created"] + ["Running"] * 40 + ["Succeeded"]
    seen_while: list[str | None] = []
    job = mpijob.build_mpijob(ARGS, CONFIG)

    def on_log(line: str) -> None:
        seen_while.append(fake.job_state("team-a", "train-r1"))

    result = run_mpijob(kube, job, timeout_s=10, poll_s=0.05, on_log=on_log)
    assert result.name == "train-r1"
    assert result.logs == fake.job_script.logs
    assert fake.created == [to_dict(job)]  # exactly the built object reached the server
    assert seen_while[0] == "Running"  # streamed while the job ran, not read afterwards
    assert fake.deleted == [("mpijobs", "team-a", "train-r1", "Background")]
    log_requests = [path for method, path in fake.requests if "/log?" in path]
    assert log_requests and all("container=mpi" in p and "follow=true" in p.lower() for p in log_requests)
    selectors = [path for _, path in fake.requests if path.startswith("/api/v1/namespaces/team-a/pods?")]
    assert selectors and all("launcher" in path for path in selectors)


def test_a_job_that_fails_raises_with_its_reason_and_is_deleted(fake, kube):
    fake.job_script.states = ["Created", "Running", "Running", "Failed"]
    fake.job_script.reason = "BackoffLimitExceeded"
    fake.job_script.message = "launcher restarted 2 times"
    fake.job_script.logs = ["epoch 1", "RuntimeError: CUDA out of memory"]
    with pytest.raises(StepFailed) as failure:
        _run(kube)
    assert failure.value.reason == "BackoffLimitExceeded"
    assert "team-a/train-r1 failed: BackoffLimitExceeded: launcher restarted 2 times" in str(failure.value)
    assert "CUDA out of memory" in str(failure.value)  # the launcher's last lines, for the KFP UI
    assert fake.deleted == [("mpijobs", "team-a", "train-r1", "Background")]


def test_a_job_that_does_not_finish_in_time_raises_and_is_deleted(fake, kube):
    fake.job_script.states = ["Created", "Running"]
    lines: list[str] = []
    with pytest.raises(StepFailed) as failure:
        _run(kube, lines, timeout_s=1.0)
    assert failure.value.reason == "Timeout"
    assert "did not finish within 1 s (last state: Running)" in str(failure.value)
    assert fake.deleted == [("mpijobs", "team-a", "train-r1", "Background")]
    assert fake.job_state("team-a", "train-r1") is None
    assert lines == fake.job_script.logs  # what was logged before the deadline


def test_the_log_is_retrieved_when_the_launcher_finished_between_two_looks(fake, kube):
    fake.job_script.states = ["Created", "Succeeded"]  # never seen running
    lines: list[str] = []
    result = _run(kube, lines)
    assert result.logs == lines == fake.job_script.logs


def test_a_finished_launcher_log_is_read_whole(fake, kube):
    fake.job_script.states = ["Succeeded"]
    kube.create(MPIJOBS, "team-a", _job())
    assert kube.get(MPIJOBS, "team-a", "train-r1")["status"]["conditions"][-1]["type"] == "Succeeded"
    whole = "".join(f"{line}\n" for line in fake.job_script.logs)
    assert kube.pod_log("team-a", "train-r1-launcher", "mpi") == whole


def test_a_pending_launcher_log_is_a_clear_api_error(fake, kube):
    fake.job_script.states = ["Created"]
    kube.create(MPIJOBS, "team-a", _job())
    kube.get(MPIJOBS, "team-a", "train-r1")
    with pytest.raises(ApiException) as error:
        kube.pod_log("team-a", "train-r1-launcher", "mpi")
    assert error.value.status == 400 and "waiting to start" in error.value.body


def test_a_few_failed_status_reads_are_tolerated(fake, kube):
    fake.failing_reads = 2
    assert _run(kube).name == "train-r1"


def test_a_status_that_cannot_be_read_fails_the_step_and_deletes_the_job(fake, kube):
    fake.failing_reads = 100
    with pytest.raises(StepFailed) as failure:
        _run(kube)
    assert failure.value.reason == "ApiError"
    assert "500" in str(failure.value) and "leader changed" in str(failure.value)
    assert fake.deleted == [("mpijobs", "team-a", "train-r1", "Background")]


def test_a_job_it_did_not_create_is_not_deleted(fake, kube):
    kube.create(MPIJOBS, "team-a", _job())  # someone else's job of the same name
    with pytest.raises(ApiException) as error:
        _run(kube)
    assert error.value.status == 409
    assert fake.deleted == []


def test_the_current_namespace_comes_from_the_kubeconfig_context(tmp_path, monkeypatch):
    contexts = [{"name": name, "context": {"cluster": "c", "user": "u", "namespace": f"team-{name}"}}
                for name in ("a", "b")]  # fmt: skip
    kubeconfig = {"apiVersion": "v1", "kind": "Config", "current-context": "b", "contexts": contexts,
                  "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                  "users": [{"name": "u", "user": {}}]}  # fmt: skip
    (tmp_path / "config").write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "config"))
    assert current_namespace() == "team-b"
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    assert current_namespace() == "default"

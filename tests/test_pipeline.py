"""The training pipeline: it compiles to a spec that KFP's own protos accept strictly, with the settings the
platform relies on; `cutout pipeline run --local` goes end to end on a tiny synthetic catalogue and registers
a champion; a failed run still records its outcome; the cron check and the parameter parsing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf.json_format import MessageToDict, ParseDict
from kfp.pipeline_spec import pipeline_spec_pb2
from mlflow.tracking import MlflowClient

from cutout.data.synth import synthesize_dataset
from cutout.platform import pipelines as client
from cutout.platform.cron import CronError, validate_cron
from pipelines.training import cutout_training_pipeline

STEPS = {
    "merge-feedback",
    "clean",
    "cluster",
    "augment",
    "train",
    "evaluate",
    "register-and-promote",
    "deploy",
}


def _cutout(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cutout.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[pipeline_spec_pb2.PipelineSpec, pipeline_spec_pb2.PlatformSpec]:
    """`cutout pipeline compile` in a fresh process, with the image named in the environment."""
    out = tmp_path_factory.mktemp("compiled") / "cutout-training.yaml"
    done = _cutout(
        "pipeline", "compile", "-o", str(out), env={"CUTOUT_PIPELINE_IMAGE": "registry.example/cp:7"}
    )
    assert done.returncode == 0, done.stderr
    pipeline, platform = yaml.safe_load_all(out.read_text())
    # Strictly: an unknown or misspelled field anywhere is an error.
    spec = ParseDict(pipeline, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    return spec, ParseDict(platform, pipeline_spec_pb2.PlatformSpec(), ignore_unknown_fields=False)


def _tasks(spec: pipeline_spec_pb2.PipelineSpec) -> dict[str, pipeline_spec_pb2.PipelineTaskSpec]:
    """Every task of every DAG (the root's, the exit handler's, the conditions'), by name."""
    dags = [spec.root.dag] + [c.dag for c in spec.components.values() if c.HasField("dag")]
    return {name: task for dag in dags for name, task in dag.tasks.items()}


def test_every_step_runs_on_the_pipeline_image_without_installing_kfp(compiled):
    spec, _ = compiled
    executors = spec.deployment_spec["executors"]
    containers = [executor["container"] for executor in executors.values()]
    assert len(containers) == len(STEPS) + 1  # and the exit handler's step
    for container in containers:
        assert container["image"] == "registry.example/cp:7"
        assert "pip install" not in " ".join(container["command"])


def test_caching_is_off_and_the_cluster_steps_retry(compiled):
    tasks = _tasks(compiled[0])
    assert STEPS | {"record-outcome"} <= tasks.keys()
    for name in STEPS | {"record-outcome"}:
        assert not tasks[name].caching_options.enable_cache, name
    retried = {name for name, task in tasks.items() if task.retry_policy.max_retry_count}
    assert retried == {"train", "deploy"}
    assert tasks["train"].retry_policy.backoff_duration.seconds == 60


def test_an_exit_handler_records_the_outcome_after_everything_else(compiled):
    spec, _ = compiled
    exit_task = spec.root.dag.tasks["record-outcome"]
    policy = pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy
    assert exit_task.trigger_policy.strategy == policy.ALL_UPSTREAM_TASKS_COMPLETED
    assert exit_task.inputs.parameters["status"].HasField("task_final_status")
    assert list(exit_task.dependent_tasks) == ["exit-handler-1"]
    inside = spec.components["comp-exit-handler-1"].dag.tasks.keys()
    assert STEPS - {"deploy"} <= inside  # deploy sits in the conditions, inside the handler too


def test_the_parameters_the_platform_engineers_set(compiled):
    parameters = compiled[0].root.input_definitions.parameters
    wanted = {"data_uri", "feedback_uri", "model_variant", "epochs", "workers", "gpus_per_worker",
              "gpu_node_selector", "gpu_tolerations", "routing_threshold", "promotion_margin", "deploy_model",
              "low_res_epochs", "low_res_size", "pretrained", "local"}  # fmt: skip
    assert wanted <= parameters.keys()
    assert not parameters["data_uri"].is_optional  # the only required one
    assert parameters["pretrained"].default_value.string_value == "u2netp"  # the official weights
    assert parameters["model_variant"].default_value.string_value == "u2netp"
    selector = parameters["gpu_node_selector"].default_value.struct_value
    assert dict(selector) == {"eks.amazonaws.com/capacityType": "ON_DEMAND"}  # on-demand, never spot


def test_mlflow_and_s3_settings_come_from_secrets(compiled):
    platform = MessageToDict(compiled[1].platforms["kubernetes"].deployment_spec)
    train = platform["executors"]["exec-train"]
    secrets = {(s["secretName"], e["secretKey"], s.get("optional", False))
               for s in train["secretAsEnv"] for e in s["keyToEnv"]}  # fmt: skip
    assert ("cutout-mlflow", "MLFLOW_TRACKING_URI", False) in secrets
    assert ("cutout-s3", "AWS_SECRET_ACCESS_KEY", False) in secrets
    assert ("cutout-s3", "AWS_ENDPOINT_URL_S3", True) in secrets


# --- running it here ------------------------------------------------------------------------------


TINY = ["model_variant=u2netp", "clean_size=48", "val_fraction=0.2", "augment_copies=1", "epochs=1",
        "input_size=48", "crop=48", "low_res_epochs=1", "low_res_size=32", "batch_size=2",
        "workers=2"]  # fmt: skip


@pytest.mark.slow
def test_a_local_run_goes_end_to_end_and_registers_a_champion(tmp_path):
    synthesize_dataset(str(tmp_path / "raw"), 24, (80, 120), seed=5)
    store = tmp_path / "mlflow.db"
    params = [f"data_uri={tmp_path / 'raw'}", f"feedback_uri={tmp_path / 'feedback'}", *TINY]
    done = _cutout("pipeline", "run", "--local", "--pipeline-root", str(tmp_path / "kfp"),
                   *[x for p in params for x in ("-p", p)], env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}"},
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

    (run,) = (tmp_path / "runs").iterdir()  # the run's folder, beside the raw data
    assert json.loads((run / "outcome.json").read_text())["state"] == "SUCCEEDED"
    for dataset in ("merged", "clean", "clustered", "augmented"):
        assert (run / dataset / "manifest.jsonl").stat().st_size > 0
    mlflow = MlflowClient(f"sqlite:///{store}")
    champion = mlflow.get_model_version_by_alias("cutout", "champion")
    final = json.loads((run / "training" / "run-final.json").read_text())
    assert str(champion.version) == "1" and champion.run_id == final["run_id"]
    assert mlflow.get_run(champion.run_id).data.params["pretrained"].endswith("low-resolution/last.pt")
    assert mlflow.get_run(champion.run_id).data.params["workers"] == "2"  # horovodrun -np 2
    assert "routing_threshold" in champion.tags and float(champion.tags["mean_iou"]) >= 0.0
    service = yaml.safe_load((run / "deploy" / "inference-service.yaml").read_text())  # not deployed, written
    assert "models:/cutout/1" in service["spec"]["predictor"]["containers"][0]["args"]
    assert "local run: not deploying models:/cutout/1" in done.stdout


@pytest.mark.slow
def test_a_failed_local_run_records_its_outcome_and_exits_with_an_error(tmp_path):
    (tmp_path / "raw" / "images").mkdir(parents=True)  # no pairs: the cluster step cannot cluster them
    done = _cutout("pipeline", "run", "--local", "--pipeline-root", str(tmp_path / "kfp"),
                   "-p", f"data_uri={tmp_path / 'raw'}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1
    assert "pipeline failed" in done.stderr
    (run,) = (tmp_path / "runs").iterdir()
    outcome = json.loads((run / "outcome.json").read_text())
    assert outcome["state"] == "FAILED"
    assert not (run / "augmented").exists()


def test_run_refuses_an_unknown_or_mistyped_parameter_with_a_message(tmp_path):
    unknown = _cutout("pipeline", "run", "-p", "data_uri=x", "-p", "epoch=3", cwd=tmp_path)
    assert unknown.returncode == 2 and "no parameter 'epoch'" in unknown.stderr and "epochs" in unknown.stderr
    mistyped = _cutout("pipeline", "run", "-p", "data_uri=x", "-p", "epochs=many", cwd=tmp_path)
    assert mistyped.returncode == 2 and "epochs" in mistyped.stderr and "number_integer" in mistyped.stderr
    missing = _cutout("pipeline", "run", "-p", "epochs=3", cwd=tmp_path)
    assert missing.returncode == 2 and "missing pipeline parameter(s): data_uri" in missing.stderr


def test_parameters_are_typed_as_the_pipeline_declares_them():
    parameters = client.pipeline_parameters(cutout_training_pipeline)
    given = ["epochs=3", "lr=0.01", "deploy_model=false", 'gpu-node-selector={"a": "b"}',
             'gpu_tolerations=[{"key": "gpu", "operator": "Exists"}]']  # fmt: skip
    arguments = client.parse_params(given, parameters)
    assert arguments == {"epochs": 3, "lr": 0.01, "deploy_model": False, "gpu_node_selector": {"a": "b"},
                         "gpu_tolerations": [{"key": "gpu", "operator": "Exists"}]}  # fmt: skip
    with pytest.raises(ValueError, match=r"gpu_node_selector.*dict expected"):
        client.parse_params(["gpu_node_selector=[1]"], parameters)
    with pytest.raises(ValueError, match="not name=value"):
        client.parse_params(["epochs"], parameters)


# --- the recurring run's schedule -------------------------------------------------------------------


def test_a_five_field_cron_is_refused_with_the_six_field_form_it_meant():
    with pytest.raises(CronError) as refused:
        validate_cron("0 3 * * *")
    message = str(refused.value)
    assert "5 fields" in message and "KFP" in message and "6, seconds first" in message
    assert "'0 0 3 * * *'" in message


@pytest.mark.parametrize(
    "expression",
    ["0 0 3 * * *", "0 */15 * * * ?", "30 0 2 1,15 * ?", "0 0 4 ? * MON-FRI", "0 0 0 1 JAN-MAR *", "@daily",
     "@every 6h30m", "  0 0 3  * * *  "],
)  # fmt: skip
def test_six_field_expressions_and_descriptors_are_accepted(expression):
    assert validate_cron(expression) == " ".join(expression.split())


@pytest.mark.parametrize(
    "expression, message",
    [("0 60 3 * * *", "minute '60'"), ("0 0 24 * * *", "hour"), ("0 0 3 0 * *", "day of month"),
     ("0 0 3 * 13 *", "month"), ("0 0 3 * * 8", "day of week"), ("0 0 3 * * * 2030", "7 fields"),
     ("0 0 3 * * MON-", "day of week"), ("0 0 5-2 * * *", "backwards"), ("0 0/0 * * * *", "positive"),
     ("? 0 3 * * *", "second"), ("", "0 fields"), ("@fortnightly", "descriptor")],
)  # fmt: skip
def test_malformed_expressions_are_refused_naming_the_field(expression, message):
    with pytest.raises(CronError, match=message):
        validate_cron(expression)


def test_schedule_refuses_a_five_field_cron_before_contacting_kfp(tmp_path):
    done = _cutout("pipeline", "schedule", "--cron", "0 3 * * *", "--host", "http://127.0.0.1:9",
                   "-p", "data_uri=s3://b/raw", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert "6, seconds first" in done.stderr and "'0 0 3 * * *'" in " ".join(done.stderr.split())

"""Every KFP component's `python_func` on small artifacts, chained as the pipeline chains them.

One tiny synthetic catalogue per module goes through merge (with a retraining store beside it), clean,
cluster, augment, train (one in-process worker), evaluate, register-and-promote and deploy; each fixture
is one component's call and each test checks what that component handed on. Training and deployment on
the cluster run against the fake Kubernetes API (`fake` fixture), with the kubeconfig pointing at it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow
import pytest
import yaml
from kfp.dsl import HTML, Dataset, Metrics, Model, PipelineTaskFinalStatus
from PIL import Image

from components.augment import augment
from components.clean import clean
from components.cluster import cluster
from components.deploy import deploy
from components.evaluate import evaluate
from components.merge import merge_feedback
from components.outcome import record_outcome
from components.register_and_promote import register_and_promote
from components.train import train
from cutout.data.manifest import read_jsonl, read_manifest
from cutout.data.synth import synthesize_dataset
from cutout.serve.feedback import write_pair

RUN = "run-1"
TRAIN = {"model_variant": "u2netp", "epochs": 1, "batch_size": 2, "lr": 2e-3, "warmup_epochs": 0.1,
         "input_size": 48, "crop": 48, "low_res_epochs": 0, "low_res_size": 32, "low_res_lr": 2e-3,
         "pretrained": "", "workers": 1, "gpus_per_worker": 1, "node_selector": {"pool": "gpu-on-demand"},
         "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
         "namespace": "team-a", "train_image": "", "timeout_s": 60.0}  # fmt: skip


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _output(kind, folder: Path, name: str):
    """An output artifact as KFP hands it to a component: a local path in an existing folder."""
    folder.mkdir(parents=True, exist_ok=True)
    return kind(name=name, uri=str(folder / name))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Raw pairs (one photo without a mask), and a feedback root with corrected and auto pairs."""
    root = tmp_path_factory.mktemp("pipeline")
    raw = root / "raw"
    synthesize_dataset(str(raw), 30, (80, 120), seed=3)
    (raw / "images" / "lonely.jpg").write_bytes((raw / "images" / "synth-000000.jpg").read_bytes()[:-1])
    photo = (raw / "images" / "synth-000001.jpg").read_bytes()  # the same photo, sent back by a client
    mask = (raw / "masks" / "synth-000001.png").read_bytes()
    feedback = root / "feedback"
    auto, corrected = str(feedback / "retrain" / "auto"), str(feedback / "retrain" / "corrected")
    write_pair(auto, "a1", photo, "jpg", mask, {"source": "feedback-auto", "score": 0.97})
    new_photo = (raw / "images" / "synth-000002.jpg").read_bytes() + b"\0"  # different bytes, same picture
    write_pair(auto, "a2", new_photo, "jpg", mask, {"source": "feedback-auto", "score": 0.95})
    jpeg_mask = io.BytesIO()
    Image.open(io.BytesIO(mask)).convert("L").save(jpeg_mask, "JPEG", quality=100)
    write_pair(
        corrected, "c1", photo + b"\0\0", "jpg", jpeg_mask.getvalue(), {"source": "feedback-corrected"}
    )
    write_pair(corrected, "c2", b"not kept", "jpg", mask, {"source": "feedback-corrected"})
    (feedback / "retrain" / "corrected" / "images" / "c2.jpg").unlink()  # a record naming a missing photo
    return root


@pytest.fixture(scope="module")
def tracking(workspace: Path):
    """A sqlite MLflow store of this module's own (the module's fixtures share it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workspace / 'mlflow.db'}")
        mlflow.set_tracking_uri(None)
        yield workspace / "mlflow.db"
        while mlflow.active_run() is not None:
            mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def merged(workspace: Path) -> Dataset:
    out = _output(Dataset, workspace / "kfp" / "merge", "merged")
    merge_feedback.python_func(data_uri=str(workspace / "raw"), feedback_uri=str(workspace / "feedback"),
                               work_uri="", run_id=RUN, merged=out)  # fmt: skip
    return out


def test_merge_brings_the_retraining_store_in_deduplicated_and_accounts_for_every_input(workspace, merged):
    run_folder = workspace / "runs" / RUN  # beside the raw data, by default
    assert merged.metadata["uri"] == str(run_folder / "merged")
    assert json.loads(Path(merged.path).read_text())["uri"] == merged.metadata["uri"]  # the pointer
    assert merged.metadata["read"] == {"raw": 31, "corrected": 2, "auto": 2}
    assert merged.metadata["kept"] == {"raw": 30, "corrected": 1, "auto": 1}
    assert merged.metadata["rejected"] == {"duplicate": 1, "missing_image": 1, "missing_mask": 1}
    records = {r["id"]: r for r in read_manifest(merged.metadata["uri"])}
    assert len(records) == 32 and {"corrected-c1", "auto-a2"} <= records.keys()
    assert records["auto-a2"]["feedback_id"] == "a2" and records["auto-a2"]["score"] == 0.95
    assert records["synth-000003"]["product_type"]  # the raw manifest's fields travel on
    rejects = {r["id"]: r for r in read_jsonl(str(run_folder / "merged" / "rejects.jsonl"))}
    assert rejects["auto-a1"]["reason"] == "duplicate"  # the raw copy of that photo came first
    assert rejects["lonely"]["reason"] == "missing_mask"
    assert rejects["corrected-c2"]["reason"] == "missing_image"
    mask = run_folder / "merged" / records["corrected-c1"]["mask"]
    assert Image.open(mask).format == "PNG"  # a JPEG mask became the layout's PNG
    assert (workspace / "feedback" / "retrain" / "auto" / "records" / "a1.json").exists()  # inputs untouched


def test_merge_refuses_to_write_into_its_input(workspace):
    out = _output(Dataset, workspace / "kfp" / "bad", "merged")
    with pytest.raises(ValueError, match="outside its inputs"):
        merge_feedback.python_func(data_uri=str(workspace / "raw"), feedback_uri="",
                                   work_uri=str(workspace / "raw"), run_id="x", merged=out)  # fmt: skip


@pytest.fixture(scope="module")
def cleaned(workspace: Path, merged: Dataset) -> Dataset:
    out = _output(Dataset, workspace / "kfp" / "clean", "cleaned")
    clean.python_func(data=merged, size=48, cleaned=out)
    return out


def test_clean_writes_beside_the_merged_data_and_reports_its_counts(workspace, cleaned):
    assert cleaned.metadata["uri"] == str(workspace / "runs" / RUN / "clean")
    assert cleaned.metadata["kept"] + cleaned.metadata["rejected"] == 32
    assert cleaned.metadata["kept"] >= 28
    assert len(list(read_manifest(cleaned.metadata["uri"]))) == cleaned.metadata["kept"]


@pytest.fixture(scope="module")
def clustered(workspace: Path, cleaned: Dataset) -> tuple[Dataset, HTML]:
    out, sheet = (
        _output(Dataset, workspace / "kfp" / "cluster", "clustered"),
        _output(HTML, workspace / "kfp" / "cluster", "contact_sheet"),
    )
    cluster.python_func(data=cleaned, k=6, val_fraction=0.2, overrides="", clustered=out, contact_sheet=sheet)
    return out, sheet


def test_cluster_splits_the_data_and_its_contact_sheet_is_one_self_contained_page(clustered):
    out, sheet = clustered
    assert out.metadata["splits"]["val"] >= 6 and len(out.metadata["sizes"]) == 6
    page = Path(sheet.path).read_text()
    assert "data:image/" in page and "src='img/" not in page and 'src="img/' not in page


@pytest.fixture(scope="module")
def augmented(workspace: Path, clustered) -> Dataset:
    out = _output(Dataset, workspace / "kfp" / "augment", "augmented")
    augment.python_func(data=clustered[0], copies=1, augmented=out)
    return out


def test_augment_adds_variants_of_the_training_pairs_only(augmented, clustered):
    assert sum(augmented.metadata["train_after"].values()) > clustered[0].metadata["splits"]["train"]
    assert sum(augmented.metadata["val"].values()) == clustered[0].metadata["splits"]["val"]


@pytest.fixture(scope="module")
def trained(workspace: Path, augmented: Dataset, tracking) -> Model:
    out = _output(Model, workspace / "kfp" / "train", "model")
    train.python_func(data=augmented, run_id=RUN, local=True, model=out, **TRAIN)
    return out


@pytest.mark.slow
def test_train_locally_logs_a_model_to_mlflow_and_points_at_it(workspace, trained):
    assert trained.metadata["model_uri"].startswith("models:/")
    assert trained.metadata["checkpoint"] == str(workspace / "runs" / RUN / "training" / "checkpoints" /
                                                 "final" / "last.pt")  # fmt: skip
    assert list(trained.metadata["stages"]) == ["final"]
    assert mlflow.get_run(trained.metadata["run_id"]).data.params["input_size"] == "48"


def test_train_on_the_cluster_runs_each_stage_as_an_mpijob_on_the_gpu_pool(workspace, augmented, fake,
                                                                           monkeypatch):  # fmt: skip
    _kubeconfig(workspace, fake.url, monkeypatch)
    fake.job_script.states = ["Created", "Succeeded"]
    training = workspace / "runs" / RUN / "training-cluster"
    data = Dataset(name="augmented", uri=augmented.uri, metadata={"uri": str(training / "augmented")})
    for stage in ("low-resolution", "final"):  # what the job's rank 0 would have written
        info = {
            "checkpoint": f"s3://b/{stage}/last.pt",
            "run_id": f"r-{stage}",
            "model_uri": f"models:/m-{stage}",
        }
        (training / "training").mkdir(parents=True, exist_ok=True)
        (training / "training" / f"run-{stage}.json").write_text(json.dumps(info))
    out = _output(Model, workspace / "kfp" / "train-cluster", "model")
    train.python_func(data=data, run_id="3f2a9c1e-77aa", local=False, model=out,
                      **{**TRAIN, "low_res_epochs": 2, "workers": 2,
                         "pretrained": "models:/cutout@champion"})  # fmt: skip
    assert out.metadata["run_id"] == "r-final" and list(out.metadata["stages"]) == ["low-resolution", "final"]
    names = [job["metadata"]["name"] for job in fake.created]
    assert names == ["cutout-train-3f2a9c1e-low", "cutout-train-3f2a9c1e-final"]
    final = fake.created[1]
    worker = final["spec"]["mpiReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 2 and final["metadata"]["namespace"] == "team-a"
    assert worker["template"]["spec"]["nodeSelector"] == {"pool": "gpu-on-demand"}
    assert worker["template"]["spec"]["tolerations"] == TRAIN["tolerations"]
    first, command = (
        job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"]
        for job in fake.created
    )
    assert first[first.index("--pretrained") + 1] == "models:/cutout@champion"  # the first stage's start
    assert command[command.index("--pretrained") + 1] == "s3://b/low-resolution/last.pt"
    assert command[command.index("--input-size") + 1] == "48"
    assert [name for _, _, name, _ in fake.deleted] == names  # each job cleaned up


def _kubeconfig(folder: Path, server: str, monkeypatch) -> None:
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
              "clusters": [{"name": "fake", "cluster": {"server": server}}],
              "users": [{"name": "fake", "user": {}}],
              "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}  # fmt: skip
    path = folder / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


@pytest.fixture(scope="module")
def evaluated(workspace: Path, trained: Model, clustered) -> tuple[Metrics, HTML]:
    metrics, report = (
        _output(Metrics, workspace / "kfp" / "evaluate", "metrics"),
        _output(HTML, workspace / "kfp" / "evaluate", "report"),
    )
    evaluate.python_func(model=trained, holdout=clustered[0], metrics=metrics, report=report)
    return metrics, report


@pytest.mark.slow
def test_evaluate_logs_metrics_and_a_self_contained_report(evaluated, clustered, trained):
    metrics, report = evaluated
    assert metrics.metadata["count"] == clustered[0].metadata["splits"]["val"]
    assert 0.0 <= metrics.metadata["mean_iou"] <= 1.0
    assert "data:image/png;base64," in Path(report.path).read_text()
    logged = mlflow.get_run(trained.metadata["run_id"]).data.metrics
    assert logged["eval_mean_iou"] == pytest.approx(metrics.metadata["mean_iou"])


@pytest.fixture(scope="module")
def registered(trained: Model, evaluated, clustered):
    return register_and_promote.python_func(model=trained, metrics=evaluated[0], holdout=clustered[0],
                                            promotion_margin=0.0)  # fmt: skip


@pytest.mark.slow
def test_register_and_promote_makes_the_first_version_champion_with_a_threshold(registered, trained):
    assert registered.version == "1" and registered.promoted is True
    assert registered.model_uri == "models:/cutout/1"
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("cutout", "champion")
    assert str(champion.version) == "1" and champion.run_id == trained.metadata["run_id"]
    assert "routing_threshold" in champion.tags and "holdout" in champion.tags
    # The threshold chosen on the synthetic split, checked on the real photos cutout ships.
    assert champion.tags["routing_on_real"].startswith("threshold ")
    assert "of 200 real photos" in champion.tags["routing_on_real"]


@pytest.mark.slow
def test_a_second_version_needs_the_margin_to_be_promoted(registered, trained, evaluated, clustered):
    second = register_and_promote.python_func(model=trained, metrics=evaluated[0], holdout=clustered[0],
                                              promotion_margin=0.5)  # fmt: skip
    assert second.version == "2" and second.promoted is False
    assert mlflow.MlflowClient().get_model_version_by_alias("cutout", "champion").version == 1


def _deploy_args(workspace: Path, **changes) -> dict:
    return {"model_uri": "models:/cutout/1", "feedback_uri": "s3://cutout/feedback",
            "routing_threshold": -1.0, "canary_percent": 0, "namespace": "team-a", "serve_image": "",
            "data_uri": str(workspace / "raw"), "work_uri": "", "run_id": RUN, "local": True,
            **changes}  # fmt: skip


def test_deploy_locally_writes_the_inference_service_it_would_apply(workspace):
    assert deploy.python_func(**_deploy_args(workspace)) == ""
    service = yaml.safe_load((workspace / "runs" / RUN / "deploy" / "inference-service.yaml").read_text())
    predictor = service["spec"]["predictor"]["containers"][0]
    assert predictor["args"][predictor["args"].index("--model-uri") + 1] == "models:/cutout/1"
    assert "--threshold" not in service["spec"]["transformer"]["containers"][0]["args"]  # the version's own


def test_deploy_on_the_cluster_creates_the_service_and_waits_until_ready(workspace, fake, monkeypatch):
    _kubeconfig(workspace, fake.url, monkeypatch)
    fake.service_script.ready_after = 1
    url = deploy.python_func(**_deploy_args(workspace, local=False, routing_threshold=0.4, canary_percent=10))
    assert url.startswith("http")
    (created,) = fake.created
    assert (created["metadata"]["name"], created["metadata"]["namespace"]) == ("cutout", "team-a")
    transformer = created["spec"]["transformer"]["containers"][0]["args"]
    assert transformer[transformer.index("--threshold") + 1] == "0.4"
    assert created["spec"]["predictor"]["canaryTrafficPercent"] == 10


@pytest.mark.parametrize("state, error", [("SUCCEEDED", None), ("FAILED", "train: MPIJob failed")])
def test_the_exit_handler_records_the_outcome_in_the_run_folder(workspace, state, error):
    status = PipelineTaskFinalStatus(state=state, pipeline_job_resource_name="runs/7",
                                     pipeline_task_name="retrain", error_code=9 if error else None,
                                     error_message=error)  # fmt: skip
    record_outcome.python_func(status=status, data_uri=str(workspace / "raw"), work_uri="", run_id="r-7")
    outcome = json.loads((workspace / "runs" / "r-7" / "outcome.json").read_text())
    assert outcome["state"] == state and outcome["error_message"] == error and outcome["job"] == "runs/7"

"""Training protects: workers that agree, metrics averaged over them, resumable jobs, fine-tuning."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cutout.data.synth import synthesize_dataset
from cutout.model.loader import load_predictor
from cutout.model.weights import read_state_dict
from helpers import official_state_dict

BIN = Path(sys.executable).parent
TINY = [
    "--model",
    "u2netp",
    "--batch-size",
    "2",
    "--input-size",
    "64",
    "--crop",
    "56",
    "--loader-workers",
    "0",
    "--pretrained",  # the Horovod mechanics, from scratch at its rate: fine-tuning has its own tests
    "none",
    "--lr",
    "1e-3",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-data")
    synthesize_dataset(str(root / "train"), 8, size=(80, 80), seed=0)
    synthesize_dataset(str(root / "val"), 5, size=(80, 80), seed=1)  # odd: shards of 3 and 2
    return root


def train_args(data, out, epochs):
    return [str(data / "train"), "--val-data", str(data / "val"), "--epochs", str(epochs), *TINY,
            "--checkpoint-dir", str(out / "checkpoints"), "--log-dir", str(out / "tb"),
            "--no-tracking"]  # fmt: skip


def reports(output: str) -> dict[int, dict]:
    found = [json.loads(line.split("REPORT ", 1)[1]) for line in output.splitlines() if "REPORT " in line]
    return {report["rank"]: report for report in found}


def test_two_horovod_workers_agree_and_average_their_metrics(data, tmp_path):
    command = [BIN / "horovodrun", "-np", "2", "-H", "localhost:2", "--gloo", sys.executable,
               str(Path(__file__).parent / "train_worker.py"), *train_args(data, tmp_path, 2)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    by_rank = reports(result.stdout)
    assert set(by_rank) == {0, 1}
    assert by_rank[0]["weights"] == by_rank[1]["weights"]  # DistributedOptimizer kept them in step
    local = [by_rank[r]["local"] for r in (0, 1)]
    assert [shard["count"] for shard in local] == [3.0, 2.0]  # disjoint shards, nothing padded
    expected_iou = sum(shard["iou_sum"] for shard in local) / 5
    for rank in (0, 1):
        assert by_rank[rank]["last"]["val_iou"] == pytest.approx(expected_iou, abs=1e-9)
    assert (tmp_path / "checkpoints" / "last.pt").exists()  # rank 0 saved


def _final_weights(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(str(checkpoint_dir / "last.pt"))[0]


def _epoch_in(checkpoint: Path) -> int:
    try:
        return read_state_dict(str(checkpoint))[1]["epoch"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


def test_killed_job_resumes_to_the_same_weights(data, tmp_path):
    epochs = 4
    module = [sys.executable, "-m", "cutout.train"]
    whole = subprocess.run(
        [*module, *train_args(data, tmp_path / "whole", epochs)], capture_output=True, timeout=600
    )
    assert whole.returncode == 0, whole.stderr[-2000:]

    interrupted = tmp_path / "interrupted"
    job = subprocess.Popen([*module, *train_args(data, interrupted, epochs)], start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    while _epoch_in(interrupted / "checkpoints" / "last.pt") < 2 and job.poll() is None:
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)  # a lost spot instance: no clean shutdown
    job.wait()
    killed_at = _epoch_in(interrupted / "checkpoints" / "last.pt")
    assert 2 <= killed_at < epochs

    resume = [*module, *train_args(data, interrupted, epochs), "--resume"]
    resumed = subprocess.run(resume, capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, actual = (
        _final_weights(tmp_path / "whole" / "checkpoints"),
        _final_weights(interrupted / "checkpoints"),
    )
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    history = read_state_dict(str(interrupted / "checkpoints" / "last.pt"))[1]["history"]
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))


def test_fine_tuning_starts_from_official_weights(data, tmp_path):
    official = official_state_dict("u2netp", seed=5)
    torch.save(official, tmp_path / "u2netp.pth")
    args = [*train_args(data, tmp_path, 1), "--pretrained", str(tmp_path / "u2netp.pth"), "--lr", "0"]
    result = subprocess.run([sys.executable, "-m", "cutout.train", *args], capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    tuned = _final_weights(tmp_path / "checkpoints")
    learned = [
        name for name in official if not name.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    assert all(
        torch.equal(tuned[name], official[name]) for name in learned
    )  # lr 0: still the official weights


def test_fine_tuning_starts_from_the_registry_champion_or_the_official_weights_while_there_is_none(
    data, tmp_path, mlflow_local, u2netp_checkpoint, capsys
):
    from cutout.platform import registry
    from cutout.platform.tracking import start_run
    from cutout.train import logged_model
    from cutout.train.train import load_pretrained, pin_pretrained

    champion = "models:/cutout@champion"
    # An empty registry: a first scheduled run starts from the official U²-NetP (U²-Net has none built in).
    assert pin_pretrained(champion, variant="u2netp") == "u2netp"
    assert "from the built-in pretrained 'u2netp'" in capsys.readouterr().out
    assert pin_pretrained(champion, variant="u2net") is None
    assert "FROM SCRATCH" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"--pretrained models:/cutout/7: not found in the MLflow registry"):
        load_pretrained("models:/cutout/7", "u2netp")  # a version that does not exist is an error

    with start_run(run_name="champion") as run:
        logged_model.log_model(str(u2netp_checkpoint), onnx=False)
    version = registry.register_model(run.info.run_id, metrics={"mean_iou": 0.9})
    registry.record_promotion("cutout", version, True, {"reason": "first model"})
    assert pin_pretrained(champion) == "models:/cutout/1"  # the run records which version it started from
    assert pin_pretrained(str(u2netp_checkpoint)) == str(u2netp_checkpoint)

    # Two Horovod workers, each fetching the champion from the registry this folder's MLflow default holds.
    args = [*train_args(data, tmp_path, 1), "--pretrained", champion, "--lr", "0", "--workers", "2"]
    result = subprocess.run([sys.executable, "-m", "cutout.train", *args], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "FROM SCRATCH" not in result.stdout
    tuned, start = _final_weights(tmp_path / "checkpoints"), read_state_dict(str(u2netp_checkpoint))[0]
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    learned = [name for name in start if not name.endswith(statistics)]
    assert all(torch.equal(tuned[name], start[name]) for name in learned)  # lr 0: still the champion's


def test_find_batch_size_reports_a_number():
    probe = [
        sys.executable,
        "-m",
        "cutout.train",
        "unused",
        "--find-batch-size",
        "--model",
        "u2netp",
        "--crop",
        "64",
    ]
    result = subprocess.run(probe, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip().rsplit(": ", 1)[1]) >= 1


def test_training_is_tracked_in_mlflow(data, mlflow_local):
    from mlflow.tracking import MlflowClient

    from cutout.data.manifest import manifest_hash
    from cutout.platform.tracking import configure_tracking

    args = [a for a in train_args(data, mlflow_local, 2) if a != "--no-tracking"]
    args += ["--run-info", str(mlflow_local / "run.json")]
    result = subprocess.run([sys.executable, "-m", "cutout.train", *args], capture_output=True, text=True,
                            timeout=600, cwd=mlflow_local)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 2/2  batch 4/4  loss" in result.stdout  # progress within an epoch (8 pairs, batch 2)
    assert "epoch   2" in result.stdout  # and one summary line per epoch
    info = json.loads((mlflow_local / "run.json").read_text())
    assert info["model_uri"].startswith("models:/")
    predictor = load_predictor(info["checkpoint"])  # the checkpoint runs at the size it was trained at
    assert predictor.input_size == 64
    assert predictor.predict(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 64, 64)

    configure_tracking()  # the embedded default under this folder, as the training used
    client = MlflowClient()
    run = client.get_run(info["run_id"])
    assert run.data.params["model"] == "u2netp" and run.data.params["epochs"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_iou")] == [1, 2]
    assert run.data.tags["variant"] == "u2netp"
    assert run.data.tags["data_manifest_sha256"] == manifest_hash(str(data / "train"))
    assert "git_commit" in run.data.tags
    assert [a.path for a in client.list_artifacts(run.info.run_id, "tensorboard")]

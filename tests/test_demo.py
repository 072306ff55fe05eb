"""`make demo` protects the first thing a new user runs: the whole loop, from the official weights through
the pipeline, the review page and the gate, and where its results are; then the README's commands, run as
written in the checkout the demo left.

TINY settings: a few photos, one Horovod worker (the pipeline's own test runs two) training at 48 px, and
a fixed routing threshold of 1.0, so that every served photo goes to review whatever the model says (what
the calibrated threshold routes is the full demo's output to read). A model fine-tuned at 48 px is far
worse on real photos than the official one: here the gate must refuse it, with the intervals recorded.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from mlflow.tracking import MlflowClient

from cutout.data.manifest import read_jsonl
from cutout.demo import DemoSettings, run_demo

TINY = DemoSettings(pairs=24, photo_size=(80, 120), real_photos=6, real_holdout=12, calibration_pairs=6,
                    clean_size=64, copies=0, epochs=1, input_size=48, crop=48, batch_size=4, workers=1,
                    held_out=2, real_shown=1, served=2, new_backdrop=2, new_backdrop_holdout=3,
                    threshold=1.0)  # fmt: skip


REPOSITORY = Path(__file__).resolve().parents[1]
README_SECTIONS = ("## Cutting out photos", "## Training, evaluation and the model registry")


@pytest.fixture(scope="module")
def after_demo(tmp_path_factory):
    """A checkout where `make demo` ran: its `.venv`, the demo in `.cutout/demo`, the default registry."""
    checkout = tmp_path_factory.mktemp("checkout")
    (checkout / ".venv").symlink_to(Path(sys.prefix))
    (checkout / ".cutout").mkdir()
    (checkout / ".cutout" / "mlflow.db").write_bytes(b"the user's registry")  # from before the demo
    result = run_demo(checkout / ".cutout" / "demo", TINY, root=checkout)
    return checkout, result


def test_demo_starts_from_the_official_model_serves_reviews_and_gates_the_retraining(after_demo):
    checkout, result = after_demo
    workdir = checkout / ".cutout" / "demo"

    # A registry that was there before is kept, moved aside.
    [earlier] = (checkout / ".cutout" / "previous").glob("*/mlflow.db")
    assert earlier.read_bytes() == b"the user's registry"

    # The registry started from the built-in model, calibrated on studio photos and made champion; it is
    # the one every command reads by default.
    client = MlflowClient(f"sqlite:///{checkout / '.cutout' / 'mlflow.db'}")
    first = client.get_model_version("cutout", result.first_version)
    assert result.first_version == "1" and first.tags["builtin"] == "u2netp"
    assert float(first.tags["routing_threshold"]) == result.first_threshold
    assert first.tags["promotion.reason"] == "first model: no champion yet"

    # Its cutouts of held-out studio photos and of a real photo, on a page with their IoU.
    assert 0.0 <= result.mean_iou <= 1.0 and result.real_iou > 0.8  # the official model on a real photo
    assert sorted(p.suffix for p in (workdir / "cutouts").glob("*.png")) == [".png"] * 3
    page = Path(result.report).read_text()
    assert page.count("<h2>") == 3 and "Real photos from the holdout" in page
    assert page.count("IoU") >= 3 + 1 + 3  # one per photo and per section

    # Served: two held-out studio photos and two on the new backdrop, all routed to review, corrected there.
    photos = {"00-long_pants", "01-shorts", "checks-00-long_pants", "checks-01-shorts"}
    assert result.routed == dict.fromkeys(photos, "review")
    assert set(result.corrected) == photos and all(changed > 0 for changed in result.corrected.values())
    feedback = workdir / "feedback"
    records = (feedback / "retrain" / "corrected" / "records").glob("*.json")
    saved = {
        (r["request_id"], r["reviewer"], r["action"]) for r in map(json.loads, map(Path.read_text, records))
    }
    assert saved == {(photo, "demo", "save") for photo in photos}
    assert not list((feedback / "review" / "pending").glob("*/item.json"))  # the queue is empty

    # The retraining run fine-tuned the champion on the catalogue + the corrected pairs.
    retrain = result.retrain
    assert retrain.pretrained == "models:/cutout/1" and retrain.version == "2"
    assert result.merged == {"raw": TINY.pairs + TINY.real_photos, "corrected": 4, "auto": 0}
    merged = read_jsonl(str(retrain.folder / "merged" / "manifest.jsonl"))
    merged = [record for record in merged if record["source"].startswith("feedback")]
    assert {(r["request_id"], r["source"], r["domain"]) for r in merged} == {
        (p, "feedback-corrected", "feedback") for p in photos
    }
    assert set(result.corrected_in_merged) == photos
    assert set(result.corrected_in_merged.values()) <= {"train", "val"}  # none dropped by clean or cluster

    # The gate scored both versions on the same photos per domain: the val split, the real holdout and
    # the new-backdrop holdout; trained at 48 px the candidate loses on real photos and is refused.
    assert not retrain.promoted and retrain.reason.startswith("loses")
    assert {"real", "synthetic", "new-backdrop"} <= retrain.intervals.keys()
    assert retrain.intervals["new-backdrop"].endswith("(3)")  # shown, not judged: too few photos
    assert str(client.get_model_version_by_alias("cutout", "champion").version) == "1"
    assert client.get_model_version("cutout", "2").tags["promotion.reason"] == retrain.reason
    assert set(result.before_after) == {"1", "2"}
    assert set(result.seconds) >= {"registry", "serve", "review", "retraining run", "total"}


def readme_commands(readme: Path, sections: tuple[str, ...]) -> list[str]:
    """The shell commands of the README's ```bash blocks in `sections`, continuation lines joined."""
    text = readme.read_text()
    commands = []
    for title in sections:
        section = text.split(title + "\n", 1)[1].split("\n## ", 1)[0]
        for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
            commands += [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return commands


def test_the_readme_commands_run_as_written_after_the_demo(after_demo, s3_endpoint):
    checkout, _ = after_demo
    commands = readme_commands(REPOSITORY / "README.md", README_SECTIONS)
    assert len(commands) >= 12 and all(command.startswith(".venv/bin/cutout ") for command in commands)
    # The S3 example's bucket and photos, on the test endpoint; nothing else is prepared.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "COLUMNS"))}
    env |= {"AWS_ENDPOINT_URL_S3": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")  # fmt: skip
    s3.create_bucket(Bucket="studio")
    photos = sorted((checkout / ".cutout" / "demo" / "photos").glob("*.jpg"))
    for photo in photos:
        s3.upload_file(str(photo), "studio", f"2026-11/{photo.name}")

    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=checkout, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=900)  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    # What the commands were for: cutouts, masks, ONNX files, a trained and registered model, the gate.
    assert len(list((checkout / "cutouts").glob("*.png"))) == len(photos)
    assert len(list((checkout / "masks").glob("*.png"))) == len(photos)
    assert list((checkout / "flat").glob("*.jpg"))
    cut = s3.list_objects_v2(Bucket="studio", Prefix="cutouts/")["Contents"]
    assert len(cut) == len(photos)
    assert (checkout / "u2netp.onnx").is_file() and (checkout / "champion-int8.onnx").is_file()
    client = MlflowClient(f"sqlite:///{checkout / '.cutout' / 'mlflow.db'}")
    newest = client.get_model_version("cutout", "3")
    assert float(newest.tags["mean_iou"]) > 0 and "promotion.reason" in newest.tags

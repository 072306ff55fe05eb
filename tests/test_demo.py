"""`make demo` protects the first thing a new user runs: the whole loop, through the pipeline and the review
page, and where its results are.

TINY settings: one training stage with one worker (the pipeline's own test runs two Horovod workers), and a
fixed routing threshold of 1.0, so that every served photo goes to review whatever the barely trained model
says (what the calibrated threshold routes is the full demo's output to read).
"""

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from cutout.data.manifest import read_jsonl
from cutout.demo import DemoSettings, run_demo

TINY = DemoSettings(pairs=24, photo_size=(80, 120), clean_size=64, copies=0, epochs=0, finish_epochs=1,
                    finish_size=48, batch_size=4, workers=1, held_out=2, served=2, new_backdrop=1,
                    threshold=1.0, retrain_epochs=1, retrain_copies=0)  # fmt: skip


def test_demo_trains_serves_reviews_and_retrains_on_the_corrections(tmp_path):
    result = run_demo(tmp_path, TINY)

    # The first pipeline run: every step wrote its dataset; the model is the champion, with a threshold.
    first, retrain = result.first, result.retrain
    assert json.loads((first.folder / "outcome.json").read_text())["state"] == "SUCCEEDED"
    for step in ("merged", "clean", "clustered", "augmented"):
        assert (first.folder / step / "manifest.jsonl").stat().st_size > 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert first.version == "1" and first.promoted and first.pretrained == "None"  # from scratch
    assert "routing_threshold" in client.get_model_version("cutout", "1").tags

    # The champion's cutouts of the held-out photos, on a page with their IoU.
    assert 0.0 <= result.mean_iou <= 1.0
    assert sorted(p.suffix for p in (tmp_path / "cutouts").iterdir()) == [".png", ".png"]
    assert (tmp_path / "report" / "index.html").read_text().count("IoU") == 3  # the mean and one per photo

    # Served: two held-out photos and one on the new backdrop, all routed to review and corrected there.
    photos = {"00-long_pants", "01-shorts", "new-backdrop-02-short_sleeve_top"}
    assert result.routed == dict.fromkeys(photos, "review")
    assert set(result.corrected) == photos and all(changed > 0 for changed in result.corrected.values())
    feedback = tmp_path / "feedback"
    records = (feedback / "retrain" / "corrected" / "records").glob("*.json")
    saved = {
        (r["request_id"], r["reviewer"], r["action"]) for r in map(json.loads, map(Path.read_text, records))
    }
    assert saved == {(photo, "demo", "save") for photo in photos}
    assert not list((feedback / "review" / "pending").glob("*/item.json"))  # the queue is empty

    # The retraining run fine-tuned the champion on raw + the corrected pairs, which reached its training.
    assert retrain.pretrained == "models:/cutout/1" and retrain.version == "2"
    assert result.merged == {"raw": TINY.pairs, "corrected": 3, "auto": 0}
    merged = read_jsonl(str(retrain.folder / "merged" / "manifest.jsonl"))
    merged = [record for record in merged if record["source"].startswith("feedback")]
    assert {(r["request_id"], r["source"]) for r in merged} == {(p, "feedback-corrected") for p in photos}
    assert set(result.corrected_in_merged) == photos
    assert set(result.corrected_in_merged.values()) <= {"train", "val"}  # none dropped by clean or cluster
    trained = {r["id"] for r in read_jsonl(str(retrain.folder / "augmented" / "manifest.jsonl"))}
    corrected_ids = {r["id"] for r in merged}
    for record in read_jsonl(str(retrain.folder / "clustered" / "manifest.jsonl")):
        if record["id"] in corrected_ids and record["split"] == "train":
            assert record["id"] in trained
    assert client.get_model_version("cutout", "2").tags["promotion.reason"] == retrain.reason
    # The gate scored both versions on the same photos, the synthetic split and the real photos, per domain.
    assert "synthetic (" in retrain.reason and "real (200 photos)" in retrain.reason
    assert "95% interval" in retrain.reason
    tags = client.get_model_version("cutout", "2").tags
    assert {"promotion.real_interval", "promotion.synthetic_interval"} <= tags.keys()
    assert set(result.seconds) >= {"first pipeline run", "serve", "review", "retraining run", "total"}

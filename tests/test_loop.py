"""The loop closes (issue 7), without training: the served model routes a photo it is unsure of to the
review queue and a confident one to the retraining store; a person corrects the doubtful one through the
review API; the next pipeline run's merge step takes both pairs.

All real, on 127.0.0.1: the predictor and the feedback transformer (`cutout serve local`'s
`start_local_service`, a random-weight U²-NetP checkpoint, fixed thresholds), the review server
(`cutout review serve` as its own process), and the merge step's own function.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from cutout.data.io import read_mask
from cutout.data.manifest import read_jsonl
from cutout.data.synth import synthesize_dataset
from cutout.pipeline.merge import merge_feedback
from cutout.serve.local import start_local_service
from helpers import product_photo
from serving import free_port, running

REVIEWER = {"X-Reviewer": "tester"}


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    product_photo(200, 300, seed=seed).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _true_mask(width: int = 200, height: int = 300) -> np.ndarray:
    """What `product_photo` drew: its ellipse."""
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).ellipse((width * 0.25, height * 0.2, width * 0.75, height * 0.85), fill=255)
    return np.asarray(mask)


def _serve_one(checkpoint: Path, feedback: Path, threshold: float, photo: bytes, request_id: str) -> dict:
    """Start the predictor and the transformer, send one v1 request, stop them (which writes the item)."""
    port = free_port()
    with start_local_service(model_uri=str(checkpoint), feedback_uri=str(feedback), port=port,
                             predictor_port=free_port(), threshold=threshold,
                             log_dir=feedback.parent / f"serving-{request_id}"):  # fmt: skip
        body = {"instances": [{"image_b64": base64.b64encode(photo).decode(), "output": "mask"}]}
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/models/cutout:predict", json=body,
                            headers={"X-Request-Id": request_id}, timeout=120)  # fmt: skip
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"][0]


@pytest.fixture
def review_server(tmp_path):
    """`cutout review serve` on a free 127.0.0.1 port (no token: local only), over `<tmp>/feedback`."""
    port = free_port()
    command = [sys.executable, "-m", "cutout.cli", "review", "serve", "--feedback-uri",
               str(tmp_path / "feedback"), "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "CUTOUT_REVIEW_TOKEN"}
    with running(command, port, tmp_path / "review.log", path="/healthz", env=env) as server:
        yield server


def test_a_doubtful_photo_is_corrected_on_the_review_page_and_the_merge_step_takes_it(
    tmp_path, u2netp_checkpoint, review_server
):
    feedback = tmp_path / "feedback"
    doubtful, confident = _jpeg(seed=1), _jpeg(seed=2)
    # The random-weight model is sure of nothing (score 0): a threshold of 0.5 sends its photo to review;
    # a threshold of 0 stands in for a model that is sure, and the transformer accepts the pair.
    score = _serve_one(u2netp_checkpoint, feedback, 0.5, doubtful, "photo-doubtful")["score"]
    assert score < 0.5
    _serve_one(u2netp_checkpoint, feedback, 0.0, confident, "photo-confident")

    # The review page lists the doubtful photo; the reviewer opens it and saves the mask they painted.
    api = httpx.Client(base_url=review_server.url, timeout=30)
    listed = api.get("/api/items").json()
    assert listed["remaining"] == 1
    (item,) = listed["items"]
    assert item["score"] == pytest.approx(score, abs=1e-6) and item["threshold"] == 0.5
    opened = api.get(f"/api/items/{item['id']}", headers=REVIEWER).json()
    assert api.get(f"/api/items/{item['id']}/photo").content == doubtful  # the photo as the client sent it
    predicted = np.asarray(Image.open(io.BytesIO(api.get(f"/api/items/{item['id']}/mask").content)))
    changed = int(np.count_nonzero((predicted >= 128) != (_true_mask() >= 128)))
    png = io.BytesIO()
    Image.fromarray(_true_mask()).save(png, "PNG")
    saved = api.post(f"/api/items/{item['id']}/save", params={"version": opened["version"]},
                     content=png.getvalue(), headers={**REVIEWER, "Content-Type": "image/png"})  # fmt: skip
    assert saved.status_code == 200, saved.text
    assert saved.json()["record"]["changed_pixels"] == changed > 0  # what the reviewer changed
    assert api.get("/api/items").json()["remaining"] == 0

    # The next pipeline run's first step: raw pairs, the corrected pair and the auto-accepted one.
    raw = tmp_path / "raw"
    synthesize_dataset(str(raw), 4, (80, 120), seed=3)
    summary = merge_feedback(str(raw), str(feedback), str(tmp_path / "run" / "merged"))
    assert summary.kept == {"raw": 4, "corrected": 1, "auto": 1} and summary.rejected == {}
    merged = tmp_path / "run" / "merged"
    records = {r["id"]: r for r in read_jsonl(str(merged / "manifest.jsonl"))}
    corrected = records[f"corrected-{item['id']}"]
    assert (corrected["source"], corrected["reviewer"], corrected["request_id"]) == (
        "feedback-corrected", "tester", "photo-doubtful",
    )  # fmt: skip
    assert (merged / corrected["image"]).read_bytes() == doubtful
    assert corrected["checksum"] == hashlib.sha256(doubtful).hexdigest()
    reviewed = read_mask(merged / corrected["mask"])
    assert np.array_equal(reviewed, _true_mask() > 0)  # the reviewer's mask, not the model's
    (auto,) = [r for r in records.values() if r["id"].startswith("auto-")]
    assert (auto["source"], auto["request_id"]) == ("feedback-auto", "photo-confident")
    assert (merged / auto["image"]).read_bytes() == confident
    assert json.loads((merged / "summary.json").read_text())["written"] == 6

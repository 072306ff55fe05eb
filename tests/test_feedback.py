"""Feedback routing: both destinations on a local folder and on S3, write order, failures, drops."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cutout.data import feedback_store
from cutout.data.dataset import PairDataset
from cutout.data.io import encode_image, read_image, read_mask
from cutout.data.transforms import eval_transform
from cutout.platform import storage
from cutout.serve import feedback
from cutout.serve.feedback import FeedbackItem, FeedbackRouter
from helpers import product_photo


@pytest.fixture(params=["local", "s3"])
def feedback_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A feedback root: a local folder or a prefix in a fresh bucket on the local S3 endpoint."""
    if request.param == "local":
        return str(tmp_path / "feedback")
    return request.getfixturevalue("s3_bucket") + "/feedback"


def _item(
    score: float, threshold: float = 0.5, seed: int = 0, size: tuple[int, int] = (60, 90)
) -> FeedbackItem:
    photo = encode_image(product_photo(*size, seed=seed), "JPEG")
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[size[1] // 4 : size[1] * 3 // 4, size[0] // 4 : size[0] * 3 // 4] = 255
    return FeedbackItem(photo=photo, photo_format="JPEG", mask=mask, width=size[0], height=size[1],
                        score=score, threshold=threshold, model_name="cutout", model_version="3",
                        request_id=f"req-{seed}")  # fmt: skip


def _files(root: str) -> list[str]:
    return sorted(uri[len(root) :].lstrip("/") for uri in storage.list_files(root))


def test_routes_each_branch_and_the_merged_manifest_is_a_dataset(feedback_uri: str) -> None:
    good, doubtful = _item(0.9, seed=1), _item(0.2, seed=2)
    router = FeedbackRouter(feedback_uri)
    try:
        assert router.submit(good) and router.submit(doubtful)
        assert router.flush(30)
    finally:
        router.close()
    assert router.stats.written == {"retrain": 1, "review": 1} and router.stats.failed == 0

    store = feedback_store.store_uri(feedback_uri, feedback_store.AUTO)
    assert _files(store) == [f"images/{good.item_id}.jpg", f"masks/{good.item_id}.png",
                             f"records/{good.item_id}.json"]  # fmt: skip
    assert storage.read_bytes(storage.join(store, "images", f"{good.item_id}.jpg")) == good.photo
    assert feedback.merge_records(store) == 1
    (record,) = [
        json.loads(line) for line in storage.read_text(storage.join(store, "manifest.jsonl")).splitlines()
    ]
    assert record["id"] == good.item_id and record["score"] == 0.9 and record["model_version"] == "3"
    assert record["source"] == "feedback-auto" and record["request_id"] == "req-1"
    dataset = PairDataset(store, eval_transform(32))
    image, mask = dataset[0]
    assert image.shape == (3, 32, 32) and mask.shape[-2:] == (32, 32) and mask.sum() > 0

    pending = feedback.list_pending(feedback_uri)
    assert [item["id"] for item in pending] == [doubtful.item_id]
    assert pending[0]["score"] == 0.2 and pending[0]["threshold"] == 0.5 and pending[0]["created"]
    loaded = feedback.load_pending(feedback_uri, doubtful.item_id)
    assert loaded.photo == doubtful.photo
    assert np.array_equal(read_mask(loaded.mask), doubtful.mask > 127)
    assert read_image(loaded.photo).size == (60, 90)


def test_item_json_and_records_are_written_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[str] = []
    real_write = storage.write_bytes

    def recording_write(uri, data, durable=True):  # the real write, with its order noted
        real_write(uri, data, durable)
        written.append(str(uri))

    monkeypatch.setattr(storage, "write_bytes", recording_write)
    root = str(tmp_path / "fb")
    feedback.route_item(root, _item(0.1))
    feedback.route_item(root, _item(0.9))
    assert [Path(uri).name for uri in written[:3]] == ["photo.jpg", "mask.png", "item.json"]
    assert Path(written[5]).parent.name == "records" and len(written) == 6


def test_readers_skip_half_written_items(tmp_path: Path) -> None:
    root = str(tmp_path / "fb")
    feedback.route_item(root, _item(0.1))
    half = tmp_path / "fb" / "review" / "pending" / "20250101T000000Z-abc"
    half.mkdir()
    (half / "photo.jpg").write_bytes(b"partial")  # no item.json yet: still being written
    assert len(feedback.list_pending(root)) == 1
    with pytest.raises(FileNotFoundError):
        feedback.load_pending(root, half.name)


def test_a_damaged_item_does_not_block_the_queue(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = str(tmp_path / "fb")
    feedback.route_item(root, _item(0.1))
    pending = tmp_path / "fb" / "review" / "pending"
    for name, text in (("broken-json", "{not json"), ("wrong-id", json.dumps({"id": "someone-else"}))):
        (pending / name).mkdir()
        (pending / name / "item.json").write_text(text)
    assert len(feedback.list_pending(root)) == 1
    assert "broken-json" in caplog.text and "wrong-id" in caplog.text


@pytest.mark.parametrize("bad", ["", "..", "../x", "a/b", "a\\b", ".hidden", "x" * 129, "a b"])
def test_item_ids_cannot_leave_the_queue(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="invalid item id"):
        feedback.load_pending(str(tmp_path), bad)


def _failures(destination: str) -> float:
    return feedback.WRITE_FAILURES.labels(destination)._value.get()


def test_a_failing_store_is_counted_not_raised(s3_bucket: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")  # a folder cannot be made under a file
    before = _failures("retrain") + _failures("review")
    for root in ("s3://no-such-bucket-cutout/fb", str(blocker / "fb")):
        router = FeedbackRouter(root)
        try:
            assert router.submit(_item(0.9)) and router.submit(_item(0.1))
            assert router.flush(30)
        finally:
            router.close()
        assert router.stats.failed == 2 and router.stats.written == {"retrain": 0, "review": 0}
    assert _failures("retrain") + _failures("review") == before + 4


def test_a_full_queue_drops_and_counts_without_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, real_write = threading.Event(), storage.write_bytes

    def slow_write(uri, data, durable=True):  # a store that hangs until the test lets it go
        gate.wait(30)
        real_write(uri, data, durable)

    monkeypatch.setattr(storage, "write_bytes", slow_write)
    dropped_before = feedback.DROPPED._value.get()
    router = FeedbackRouter(str(tmp_path / "fb"), queue_size=2)
    try:
        assert router.submit(_item(0.9, seed=0))
        deadline = time.monotonic() + 10
        while router._queue.qsize() and time.monotonic() < deadline:  # the writer has taken it and hangs
            time.sleep(0.01)
        start = time.perf_counter()
        accepted = [router.submit(_item(0.9, seed=i)) for i in range(1, 6)]
        assert time.perf_counter() - start < 0.5
        assert accepted == [True, True, False, False, False]
        assert router.stats.dropped == 3 and feedback.DROPPED._value.get() == dropped_before + 3
    finally:
        gate.set()
        assert router.flush(30)
        router.close()
    assert router.stats.written["retrain"] == 3


def test_closed_router_drops_and_array_photos_are_stored_as_png(tmp_path: Path) -> None:
    pixels = np.asarray(product_photo(40, 30))
    mask = np.full((30, 40), 200, np.uint8)
    item = FeedbackItem(photo=pixels, photo_format="", mask=mask, width=40, height=30, score=0.3,
                        threshold=0.5, model_name="cutout", model_version="1")  # fmt: skip
    router = FeedbackRouter(str(tmp_path / "fb"))
    assert router.submit(item) and router.flush(30)
    router.close()
    assert not router.submit(item) and router.stats.dropped == 1
    loaded = feedback.load_pending(str(tmp_path / "fb"), item.item_id)
    assert loaded.meta["photo"] == "photo.png"
    assert np.array_equal(np.asarray(Image.open(__import__("io").BytesIO(loaded.photo))), pixels)

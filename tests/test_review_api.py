"""The review API (`cutout.review.app`): each action, claims and conflicts, auth, traversal, bad uploads.

The app runs in-process through FastAPI's TestClient over a real store: a tmp folder, and once the local
S3 endpoint. Nothing of the store is faked.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from cutout.cli import app as cli_app
from cutout.data.feedback_store import CORRECTED_STORE, REVIEW_REJECTED, pending_uri
from cutout.data.manifest import SOURCE_ACCEPTED, SOURCE_CORRECTED
from cutout.platform import storage
from cutout.review.app import check_binding, create_app
from cutout.review.queue import ReviewQueue
from cutout.serve.feedback import list_pending, merge_records, write_review_item
from helpers import product_photo

W, H = 60, 80
ALICE, BOB = {"X-Reviewer": "alice"}, {"X-Reviewer": "bob"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def predicted_mask(width: int = W, height: int = H) -> np.ndarray:
    """The model's mask: the garment's ellipse, a little too small (what a reviewer would fix)."""
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).ellipse((width * 0.3, height * 0.25, width * 0.7, height * 0.8), fill=255)
    return np.asarray(mask)


def queue_item(feedback: str, item_id: str, score: float, size: tuple[int, int] = (W, H)) -> None:
    photo = io.BytesIO()
    product_photo(*size, seed=len(item_id)).save(photo, "JPEG", quality=90)
    write_review_item(feedback, item_id, photo.getvalue(), "jpg", png(Image.fromarray(predicted_mask(*size))),
                      {"score": score, "threshold": 0.6, "width": size[0], "height": size[1],
                       "model_name": "cutout", "model_version": "3",
                       "created": "2025-01-02T03:04:05.000+00:00"})  # fmt: skip


@pytest.fixture
def feedback(tmp_path: Path) -> str:
    root = str(tmp_path / "feedback")
    for item_id, score in (("item-b", 0.41), ("item-a", 0.12), ("item-c", 0.55)):
        queue_item(root, item_id, score)
    return root


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(feedback: str, clock: FakeClock) -> TestClient:
    return TestClient(create_app(feedback, claim_seconds=600, clock=clock))


def opened(client: TestClient, item_id: str, who: dict = ALICE) -> dict:
    response = client.get(f"/api/items/{item_id}", headers=who)
    assert response.status_code == 200, response.text
    return response.json()


def read_record(feedback: str, item_id: str) -> dict:
    return json.loads(
        storage.read_bytes(storage.join(feedback, CORRECTED_STORE, "records", f"{item_id}.json"))
    )


def stored_mask(feedback: str, item_id: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(storage.read_bytes(
        storage.join(feedback, CORRECTED_STORE, "masks", f"{item_id}.png")))))  # fmt: skip


def painted(mask: np.ndarray) -> np.ndarray:
    """The mask with a 10×12 block at the top left painted as product."""
    corrected = mask.copy()
    corrected[2:14, 3:13] = 255
    return corrected


# --- reading the queue ---------------------------------------------------------------------------


def test_list_is_lowest_score_first_with_a_count(client: TestClient) -> None:
    answer = client.get("/api/items").json()
    assert [item["id"] for item in answer["items"]] == ["item-a", "item-b", "item-c"]
    assert answer["remaining"] == 3
    assert client.get("/api/items", params={"limit": 1}).json()["remaining"] == 3
    assert len(client.get("/api/items", params={"limit": 1}).json()["items"]) == 1


def test_open_item_serves_its_photo_and_mask_and_claims_it(client: TestClient, feedback: str) -> None:
    item = opened(client, "item-a")
    assert (item["width"], item["height"], item["score"]) == (W, H, 0.12)
    assert item["claim"] == {"reviewer": "alice", "seconds_left": 600, "yours": True}
    assert len(item["version"]) == 20
    folder = pending_uri(feedback, "item-a")
    photo = client.get(f"/{item['photo_url']}")
    assert photo.headers["content-type"] == "image/jpeg"
    assert photo.content == storage.read_bytes(storage.join(folder, "photo.jpg"))
    mask = client.get(f"/{item['mask_url']}")
    assert mask.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(mask.content))), predicted_mask())
    listed = {entry["id"]: entry for entry in client.get("/api/items").json()["items"]}
    assert listed["item-a"]["claimed_by"] == "alice" and listed["item-b"]["claimed_by"] is None


def test_openapi_documents_the_api(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path in ("", "/{item_id}", "/{item_id}/photo", "/{item_id}/mask", "/{item_id}/accept",
                 "/{item_id}/reject", "/{item_id}/save", "/{item_id}/release"):  # fmt: skip
        assert f"/api/items{path}" in schema["paths"], path
    assert "image/png" in schema["paths"]["/api/items/{item_id}/save"]["post"]["requestBody"]["content"]


def test_page_is_self_contained(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "Keyboard shortcuts" in page.text
    for asset in ("/static/review.js", "/static/review.css"):
        assert client.get(asset).status_code == 200
    everything = page.text + client.get("/static/review.js").text + client.get("/static/review.css").text
    assert "http://" not in everything and "https://" not in everything, "the page must work offline"
    assert "default-src 'self'" in page.headers["content-security-policy"]


# --- actions -------------------------------------------------------------------------------------


def test_accept_moves_the_pair_to_the_corrected_store(client: TestClient, feedback: str) -> None:
    item = opened(client, "item-a")
    answer = client.post("/api/items/item-a/accept", json={"version": item["version"]}, headers=ALICE)
    assert answer.status_code == 200, answer.text
    record = read_record(feedback, "item-a")
    assert record == answer.json()["record"]
    assert (
        record["source"] == SOURCE_ACCEPTED and record["reviewer"] == "alice" and record["action"] == "accept"
    )
    assert record["changed_pixels"] == 0 and record["score"] == 0.12 and record["model_version"] == "3"
    assert np.array_equal(stored_mask(feedback, "item-a"), predicted_mask())
    assert not storage.exists(pending_uri(feedback, "item-a")), "nothing left in the queue's folder"
    assert [item["id"] for item in list_pending(feedback)] == ["item-b", "item-c"]
    assert client.get("/api/items").json()["remaining"] == 2
    assert merge_records(storage.join(feedback, CORRECTED_STORE)) == 1


def test_reject_keeps_the_item_with_its_reason(client: TestClient, feedback: str) -> None:
    item = opened(client, "item-b")
    body = {"version": item["version"], "reason": "not a product photo"}
    assert client.post("/api/items/item-b/reject", json=body, headers=ALICE).status_code == 200
    folder = storage.join(feedback, REVIEW_REJECTED, "item-b")
    kept = json.loads(storage.read_bytes(storage.join(folder, "item.json")))
    assert kept["reason"] == "not a product photo" and kept["reviewer"] == "alice" and kept["score"] == 0.41
    assert storage.exists(storage.join(folder, "photo.jpg")) and storage.exists(
        storage.join(folder, "mask.png")
    )
    assert "item-b" not in [item["id"] for item in list_pending(feedback)]
    assert not storage.exists(storage.join(feedback, CORRECTED_STORE, "records", "item-b.json"))


@pytest.mark.parametrize("reason", ["", "   "])
def test_reject_needs_a_reason(client: TestClient, feedback: str, reason: str) -> None:
    item = opened(client, "item-b")
    answer = client.post("/api/items/item-b/reject", json={"version": item["version"], "reason": reason},
                         headers=ALICE)  # fmt: skip
    assert answer.status_code in (400, 422) and "reason" in answer.json()["error"]
    assert "item-b" in [item["id"] for item in list_pending(feedback)]


def test_save_stores_the_corrected_mask_and_what_changed(client: TestClient, feedback: str) -> None:
    item = opened(client, "item-c")
    corrected = painted(predicted_mask())
    answer = client.post("/api/items/item-c/save", params={"version": item["version"]},
                         content=png(Image.fromarray(corrected)), headers=ALICE)  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert np.array_equal(stored_mask(feedback, "item-c"), corrected)
    record = read_record(feedback, "item-c")
    expected = int(np.count_nonzero(corrected != predicted_mask()))
    assert record["source"] == SOURCE_CORRECTED and record["reviewer"] == "alice"
    assert record["changed_pixels"] == expected == 120
    assert record["changed_share"] == pytest.approx(expected / (W * H), abs=1e-6)
    assert (
        record["reviewed_at"]
        and record["image"] == "images/item-c.jpg"
        and record["mask"] == "masks/item-c.png"
    )
    photo = storage.read_bytes(storage.join(feedback, CORRECTED_STORE, record["image"]))
    assert Image.open(io.BytesIO(photo)).size == (W, H)
    assert "item-c" not in [item["id"] for item in list_pending(feedback)]


def test_an_rgba_mask_from_a_canvas_is_read_by_its_grey_values(client: TestClient, feedback: str) -> None:
    item = opened(client, "item-c")
    grey = painted(predicted_mask())
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])  # what canvas.toBlob('image/png') sends
    answer = client.post("/api/items/item-c/save", params={"version": item["version"]},
                         content=png(Image.fromarray(rgba, "RGBA")), headers=ALICE)  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert np.array_equal(stored_mask(feedback, "item-c"), grey)


def test_a_turned_photo_takes_a_mask_of_its_upright_size(client: TestClient, feedback: str) -> None:
    # Stored as the client sent it: 80×60 pixels with EXIF orientation 6, i.e. 60×80 upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = io.BytesIO()
    product_photo(H, W).save(photo, "JPEG", exif=exif.tobytes())
    write_review_item(feedback, "turned", photo.getvalue(), "jpg", png(Image.fromarray(predicted_mask())),
                      {"score": 0.05, "width": W, "height": H})  # fmt: skip
    item = opened(client, "turned")
    turned = png(Image.fromarray(np.ascontiguousarray(predicted_mask().T)))
    sideways = client.post("/api/items/turned/save", params={"version": item["version"]}, content=turned,
                           headers=ALICE)  # fmt: skip
    assert sideways.status_code == 422 and f"photo is {W}×{H}" in sideways.json()["error"]
    upright = client.post("/api/items/turned/save", params={"version": item["version"]},
                          content=png(Image.fromarray(painted(predicted_mask()))), headers=ALICE)  # fmt: skip
    assert upright.status_code == 200, upright.text


def test_a_repeated_action_gets_the_first_answer(client: TestClient, feedback: str) -> None:
    item = opened(client, "item-c")
    body = png(Image.fromarray(painted(predicted_mask())))
    first = client.post(
        "/api/items/item-c/save", params={"version": item["version"]}, content=body, headers=ALICE
    )
    again = client.post(
        "/api/items/item-c/save", params={"version": item["version"]}, content=body, headers=ALICE
    )
    assert first.status_code == again.status_code == 200
    assert first.json()["record"] == again.json()["record"]


def test_an_interrupted_action_is_finished_by_a_retry_or_the_sweep(client: TestClient, feedback: str) -> None:
    item = opened(client, "item-a")
    queue = ReviewQueue(feedback)
    # As if a save died after writing its decision and deleting item.json, before the photo and mask.
    record = queue.accept("item-a", "alice", item["version"])
    write_review_item(feedback, "item-a", b"photo", "jpg", b"mask", {"score": 0.12})
    storage.delete(storage.join(pending_uri(feedback, "item-a"), "item.json"))
    assert queue.sweep() == 2
    assert not storage.exists(pending_uri(feedback, "item-a"))
    again = client.post("/api/items/item-a/accept", json={"version": item["version"]}, headers=ALICE)
    assert again.status_code == 200 and again.json()["record"] == record


# --- claims and conflicts ------------------------------------------------------------------------


def test_a_claimed_item_refuses_other_reviewers(client: TestClient, feedback: str, clock: FakeClock) -> None:
    item = opened(client, "item-a")
    seen_by_bob = opened(client, "item-a", BOB)
    assert seen_by_bob["claim"] == {"reviewer": "alice", "seconds_left": 600, "yours": False}
    body = png(Image.fromarray(painted(predicted_mask())))
    for answer in (
        client.post("/api/items/item-a/accept", json={"version": item["version"]}, headers=BOB),
        client.post(
            "/api/items/item-a/reject", json={"version": item["version"], "reason": "x"}, headers=BOB
        ),
        client.post("/api/items/item-a/save", params={"version": item["version"]}, content=body, headers=BOB),
    ):
        assert answer.status_code == 409
        assert "being reviewed by alice" in answer.json()["error"]
    assert "item-a" in [item["id"] for item in list_pending(feedback)]
    clock.now += 601  # the claim lapses: bob may take the item
    assert opened(client, "item-a", BOB)["claim"]["yours"] is True
    assert (
        client.post("/api/items/item-a/accept", json={"version": item["version"]}, headers=BOB).status_code
        == 200
    )
    # alice comes back to an item someone else decided
    late = client.post("/api/items/item-a/accept", json={"version": item["version"]}, headers=ALICE)
    assert late.status_code == 409 and "already accepted by bob" in late.json()["error"]


def test_release_frees_the_item_for_others(client: TestClient) -> None:
    opened(client, "item-a")
    assert client.post("/api/items/item-a/release", headers=BOB).status_code == 204  # not bob's to release
    assert opened(client, "item-a", BOB)["claim"]["yours"] is False
    assert client.post("/api/items/item-a/release", headers=ALICE).status_code == 204
    assert opened(client, "item-a", BOB)["claim"]["yours"] is True


def test_saving_an_item_that_changed_since_it_was_opened_is_refused(
    client: TestClient, feedback: str
) -> None:
    item = opened(client, "item-b")
    # The transformer queues the same id again with a new prediction while alice paints.
    photo = storage.read_bytes(storage.join(pending_uri(feedback, "item-b"), "photo.jpg"))
    write_review_item(feedback, "item-b", photo, "jpg", png(Image.fromarray(255 - predicted_mask())),
                      {"score": 0.3, "width": W, "height": H})  # fmt: skip
    body = png(Image.fromarray(painted(predicted_mask())))
    answer = client.post(
        "/api/items/item-b/save", params={"version": item["version"]}, content=body, headers=ALICE
    )
    assert answer.status_code == 409 and "changed since you opened it" in answer.json()["error"]
    assert not storage.exists(storage.join(feedback, CORRECTED_STORE, "records", "item-b.json"))
    fresh = opened(client, "item-b")
    assert fresh["version"] != item["version"]
    answer = client.post(
        "/api/items/item-b/save", params={"version": fresh["version"]}, content=body, headers=ALICE
    )
    assert answer.status_code == 200


def test_a_second_reviewer_cannot_overwrite_the_first(client: TestClient, feedback: str) -> None:
    item = opened(client, "item-c")
    mine = painted(predicted_mask())
    assert client.post("/api/items/item-c/save", params={"version": item["version"]},
                       content=png(Image.fromarray(mine)), headers=ALICE).status_code == 200  # fmt: skip
    other = client.post("/api/items/item-c/save", params={"version": item["version"]},
                        content=png(Image.fromarray(predicted_mask())), headers=BOB)  # fmt: skip
    assert other.status_code == 409 and "already corrected by alice" in other.json()["error"]
    assert np.array_equal(stored_mask(feedback, "item-c"), mine)


# --- safety --------------------------------------------------------------------------------------


def test_the_api_needs_the_token_when_one_is_set(feedback: str) -> None:
    client = TestClient(create_app(feedback, token="s3cret"))
    assert client.get("/api/items").status_code == 401
    assert client.get("/api/items", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/items", headers={"Authorization": "Basic s3cret"}).status_code == 401
    refused = client.get("/api/items/item-a/photo")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert client.post("/api/items/item-a/accept", json={"version": "x"}, headers=ALICE).status_code == 401
    good = {"Authorization": "Bearer s3cret", **ALICE}
    assert client.get("/api/items", headers=good).json()["remaining"] == 3
    assert client.get("/api/items/item-a", headers=good).status_code == 200
    assert client.get("/").status_code == 200, "the page itself holds no data"


def test_serving_beyond_localhost_needs_a_token(feedback: str, monkeypatch: pytest.MonkeyPatch) -> None:
    check_binding("127.0.0.1", None)
    check_binding("0.0.0.0", "s3cret")
    with pytest.raises(ValueError, match="without a token"):
        check_binding("0.0.0.0", None)
    monkeypatch.delenv("CUTOUT_REVIEW_TOKEN", raising=False)
    result = CliRunner().invoke(cli_app, ["review", "serve", "--feedback-uri", feedback, "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "without a token" in result.output


@pytest.mark.parametrize("item_id", ["..", "...", ".hidden", "item-a.json", "a b", "x" * 129, "%2e%2e",
                                     "..%2F..%2Fsecret", "item-a%00", "é"])  # fmt: skip
def test_malformed_ids_never_reach_the_store(client: TestClient, feedback: str, item_id: str) -> None:
    secret = Path(feedback).parent / "secret"
    secret.write_text("do not serve")
    for method, path in (("GET", ""), ("GET", "/photo"), ("GET", "/mask"), ("POST", "/release")):
        answer = client.request(method, f"/api/items/{item_id}{path}", headers=ALICE)
        assert answer.status_code in (400, 404), (item_id, path, answer.status_code)
        assert b"do not serve" not in answer.content
    answer = client.post(f"/api/items/{item_id}/accept", json={"version": "v"}, headers=ALICE)
    assert answer.status_code in (400, 404)
    assert len(list_pending(feedback)) == 3


def test_an_item_naming_files_outside_its_folder_is_not_served(client: TestClient, feedback: str) -> None:
    (Path(feedback).parent / "secret.png").write_bytes(b"do not serve")
    folder = Path(pending_uri(feedback, "item-a"))
    meta = json.loads((folder / "item.json").read_text())
    (folder / "item.json").write_text(json.dumps({**meta, "photo": "../../../../secret.png"}))
    for path in ("", "/photo"):
        answer = client.get(f"/api/items/item-a{path}", headers=ALICE)
        assert answer.status_code == 404 and b"do not serve" not in answer.content


def test_a_damaged_item_is_404_not_a_server_error(client: TestClient, feedback: str) -> None:
    (Path(pending_uri(feedback, "item-b")) / "item.json").write_text("[1, 2")
    assert client.get("/api/items/item-b", headers=ALICE).status_code == 404
    (Path(pending_uri(feedback, "item-b")) / "item.json").write_text('{"id": "item-b"}')
    answer = client.get("/api/items/item-b/photo")
    assert answer.status_code == 404 and "damaged" in answer.json()["error"]


def test_unknown_items_are_404(client: TestClient) -> None:
    assert client.get("/api/items/no-such-item", headers=ALICE).status_code == 404
    assert client.get("/api/items/no-such-item/mask").status_code == 404
    assert (
        client.post("/api/items/no-such-item/accept", json={"version": "v"}, headers=ALICE).status_code == 404
    )


def test_the_reviewer_must_say_who_they_are(client: TestClient) -> None:
    assert client.get("/api/items/item-a").status_code == 422
    assert client.get("/api/items/item-a", headers={"X-Reviewer": "a/../b"}).status_code == 400


def truncated_png() -> bytes:
    return png(Image.fromarray(predicted_mask()))[:-40]


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims 10 G pixels (its data is tiny): refused before any decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "empty"),
        (b"this is not an image", "not_an_image"),
        (truncated_png(), "truncated"),
        (bomb_png(), "too_many_pixels"),
        (png(Image.new("L", (W + 1, H), 0)), "size"),
        (png(Image.new("L", (H, W), 0)), "size"),
    ],
    ids=["empty", "text", "truncated", "bomb", "wider", "turned"],
)
def test_bad_masks_are_refused_with_a_reason(
    client: TestClient, feedback: str, body: bytes, expected: str
) -> None:
    item = opened(client, "item-a")
    answer = client.post(
        "/api/items/item-a/save", params={"version": item["version"]}, content=body, headers=ALICE
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["reason"] == expected and answer.json()["error"]
    assert "item-a" in [item["id"] for item in list_pending(feedback)], (
        "a refused save leaves the item queued"
    )
    if expected == "size":
        assert f"photo is {W}×{H}" in answer.json()["error"]


def test_oversized_bodies_are_refused_with_413(feedback: str) -> None:
    client = TestClient(create_app(feedback, max_body_bytes=2000))
    item = opened(client, "item-a")
    noisy = np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)  # incompressible: > 2000 bytes
    answer = client.post("/api/items/item-a/save", params={"version": item["version"]},
                         content=png(Image.fromarray(noisy)), headers=ALICE)  # fmt: skip
    assert answer.status_code == 413 and "2,000 bytes" in answer.json()["error"]

    def chunks():  # no Content-Length: the limit applies while the body streams in
        for _ in range(10):
            yield b"x" * 500

    streamed = client.post("/api/items/item-a/save", params={"version": item["version"]}, content=chunks(),
                           headers=ALICE)  # fmt: skip
    assert streamed.status_code == 413
    assert "item-a" in [item["id"] for item in list_pending(feedback)]
    assert client.get("/api/items").status_code == 200, "the server keeps serving"


# --- on S3 ---------------------------------------------------------------------------------------


def test_the_whole_review_on_the_local_s3_endpoint(s3_bucket: str) -> None:
    feedback = f"{s3_bucket}/feedback"
    for item_id, score in (("s3-a", 0.2), ("s3-b", 0.3), ("s3-c", 0.4)):
        queue_item(feedback, item_id, score)
    client = TestClient(create_app(feedback))
    assert [item["id"] for item in client.get("/api/items").json()["items"]] == ["s3-a", "s3-b", "s3-c"]
    a, b, c = (opened(client, item_id) for item_id in ("s3-a", "s3-b", "s3-c"))
    corrected = painted(predicted_mask())
    assert (
        client.post("/api/items/s3-a/accept", json={"version": a["version"]}, headers=ALICE).status_code
        == 200
    )
    assert client.post("/api/items/s3-b/reject", json={"version": b["version"], "reason": "unusable"},
                       headers=ALICE).status_code == 200  # fmt: skip
    saved = client.post("/api/items/s3-c/save", params={"version": c["version"]},
                        content=png(Image.fromarray(corrected)), headers=ALICE)  # fmt: skip
    assert saved.status_code == 200
    assert client.get("/api/items").json() == {"items": [], "remaining": 0}
    assert list(storage.list_files(storage.join(feedback, "review/pending"))) == [], (
        "no pending object is left"
    )
    assert np.array_equal(stored_mask(feedback, "s3-c"), corrected)
    assert read_record(feedback, "s3-c")["changed_pixels"] == 120
    assert (
        json.loads(storage.read_bytes(f"{feedback}/{REVIEW_REJECTED}/s3-b/item.json"))["reason"] == "unusable"
    )
    assert merge_records(storage.join(feedback, CORRECTED_STORE)) == 2
    again = client.post("/api/items/s3-c/save", params={"version": c["version"]},
                        content=png(Image.fromarray(corrected)), headers=ALICE)  # fmt: skip
    assert again.status_code == 200, "a retried save answers as the first"

"""The feedback transformer in front of a real predictor, both `python -m` processes on 127.0.0.1: the
predictor's wire format (v1, v2 through tritonclient and KServe's client), outputs at the photo's size,
routing into the local S3 endpoint (both branches), a failing store that fails no request, 4xx for bad
requests before they reach the predictor, one caller's photo never in another's answer, clean stops."""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import json
import os
import random
import re
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from PIL import Image

from cutout.data import feedback_store
from cutout.data.io import read_image
from cutout.platform import storage
from cutout.serve import feedback, local, transformer
from cutout.serve.photos import CutoutOptions, Photo
from helpers import fresh_bucket, product_photo
from serving import (
    JSON,
    MODEL,
    V1,
    V2,
    Server,
    assert_all_refused,
    assert_cutout_of,
    assert_each_caller_gets_its_own_photo,
    b64,
    decoded,
    encoded,
    free_port,
    post_all,
    start_server,
    stop,
    wait_for,
)

MAX_PIXELS = 1_000_000  # through $CUTOUT_MAX_PIXELS, which both servers read


@pytest.fixture(scope="module")
def s3_feedback(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A feedback prefix in a fresh bucket; the AWS settings are in the environment the servers inherit."""
    with (
        pytest.MonkeyPatch.context() as env,
        fresh_bucket(env, s3_endpoint, tmp_path_factory.mktemp("aws")) as bucket,
    ):
        env.setenv("CUTOUT_MAX_PIXELS", str(MAX_PIXELS))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield f"{bucket}/feedback"


@pytest.fixture(scope="module")
def service(
    u2netp_checkpoint: Path, s3_feedback: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[local.LocalService]:
    """`cutout serve local`'s two processes, routing everything (threshold 0) into the S3 bucket."""
    logs = tmp_path_factory.mktemp("logs")
    ports = {"port": free_port(), "predictor_port": free_port()}
    running = local.start_local_service(
        str(u2netp_checkpoint), s3_feedback, **ports, threshold=0.0, log_dir=logs
    )
    yield running
    running.stop()
    # SIGTERM is a clean stop for both: the transformer writes what it still holds first.
    assert running.transformer.returncode == 0, (logs / "transformer.log").read_text()[-3000:]
    assert running.predictor.returncode == 0, (logs / "predictor.log").read_text()[-3000:]


@pytest.fixture
def start_transformer(service: local.LocalService, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start more transformers in front of the same predictor; they are stopped after the test."""
    started: list[Server] = []
    predictor_port = int(service.predictor_url.rsplit(":", 1)[1])

    def start(feedback_uri: str, threshold: float | None) -> Server:
        port = free_port()
        command = local.transformer_command(feedback_uri, port, predictor_port, threshold)
        started.append(start_server(command, port, tmp_path / f"transformer-{port}.log"))
        wait_for(started[-1])
        return started[-1]

    yield start
    for server in started:
        stop(server, timeout=0)  # at once: there is nothing of value in its queue


# --- requests and checks ------------------------------------------------------------------------------


def post(url: str, path: str, body: dict, request_id: str | None = None) -> httpx.Response:
    headers = {"x-request-id": request_id} if request_id else {}
    return httpx.post(url + path, json=body, headers=headers, timeout=60)


def v2_body(data: list[str], **parameters) -> dict:
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(data)], "data": data}],
            "parameters": parameters}  # fmt: skip


def records_of(store: str, request_id: str, count: int, timeout: float = 30.0) -> list[dict]:
    """The retraining store's records for one request, once all `count` are written."""
    deadline = time.monotonic() + timeout
    while True:
        uris = storage.list_files(feedback_store.records_uri(store), suffixes=(".json",))
        found = [json.loads(storage.read_bytes(uri)) for uri in uris]
        mine = [record for record in found if record["request_id"] == request_id]
        if len(mine) >= count or time.monotonic() > deadline:
            return sorted(mine, key=lambda record: record["created"] + record["id"])
        time.sleep(0.1)


def metric_total(url: str, name: str, label: str = "") -> float:
    """The sum of a metric's samples (whose labels contain `label`) at ``<url>/metrics``."""
    text = httpx.get(url + "/metrics", timeout=10).text
    pattern = rf"^{name}(\{{[^}}]*\}})? ([0-9.e+]+)$"
    return sum(float(m.group(2)) for m in re.finditer(pattern, text, re.M) if label in (m.group(1) or ""))


# --- the wire format and the retraining store -----------------------------------------------------------


def test_v1_answers_like_the_predictor_and_routes_to_retraining(
    service: local.LocalService, s3_feedback: str
) -> None:
    photo_file = encoded(product_photo(210, 320, seed=3), "JPEG")
    photo = Image.open(io.BytesIO(photo_file)).convert("RGB")
    data = b64(photo_file)
    flattened = {"image": {"b64": data}, "output": "cutout", "bg_color": "#00ff00", "crop": True}
    instances = [{"image_b64": data}, {"b64": data, "output": "mask"}, flattened]
    response = post(service.transformer_url, V1, {"instances": instances}, request_id="v1-retrain")
    assert response.status_code == 200, response.text
    # Each instance has its own options: the transformer asked the predictor for each on its own (v2
    # options are per request), so each is compared with the predictor's answer to that instance alone.
    direct = [post(service.predictor_url, V1, {"instances": [one]}).json() for one in instances]
    direct = {
        "model_version": direct[0]["model_version"],
        "predictions": [d["predictions"][0] for d in direct],
    }
    body = response.json()
    assert body["model_name"] == MODEL and body["model_version"] == direct["model_version"]
    assert body["model_version"].startswith("u2netp.ckpt-")
    both = body["predictions"][0]
    assert [set(p) for p in body["predictions"]] == [set(p) for p in direct["predictions"]]
    assert_cutout_of(photo, decoded(both["mask"]), decoded(both["cutout"]))
    assert (both["width"], both["height"]) == photo.size and 0.0 <= both["score"] <= 1.0
    # The predictor's own answer, passed on.
    for ours, theirs in zip(body["predictions"], direct["predictions"], strict=True):
        assert ours["score"] == pytest.approx(theirs["score"], rel=1e-6)  # via the predictor's FP32
        for key in set(ours) & {"mask", "cutout"}:
            assert np.array_equal(np.asarray(decoded(ours[key])), np.asarray(decoded(theirs[key]))), key

    store = feedback_store.store_uri(s3_feedback, feedback_store.AUTO)
    records = records_of(store, "v1-retrain", 3)
    assert len(records) == 3 and {r["threshold"] for r in records} == {0.0}
    for record in records:
        assert record["image"].endswith(".jpg") and record["model_version"] == body["model_version"]
        assert storage.read_bytes(storage.join(store, record["image"])) == photo_file  # the bytes as sent
        assert (record["width"], record["height"]) == photo.size
    masks = {storage.read_bytes(storage.join(store, record["mask"])) for record in records}
    assert masks == {base64.b64decode(both["mask"])}


def test_v2_through_tritonclient_and_kserve_client(service: local.LocalService, s3_feedback: str) -> None:
    photos = [product_photo(200, 300, seed=1), product_photo(333, 250, seed=2)]
    client = triton.InferenceServerClient(url=service.transformer_url.removeprefix("http://"))
    try:
        assert client.is_server_ready() and client.is_model_ready(MODEL)
        images = triton.InferInput("image", [2], "BYTES")
        images.set_data_from_numpy(np.array([b64(encoded(p)).encode() for p in photos], dtype=np.object_),
                                   binary_data=False)  # fmt: skip
        result = client.infer(
            MODEL, [images], parameters={"output": "both"}, headers={"x-request-id": "v2-triton"}
        )
        masks, cutouts, scores = (result.as_numpy(name) for name in ("mask", "cutout", "score"))
        assert scores.dtype == np.float32 and scores.shape == (2,)
        for photo, mask, cutout in zip(photos, masks, cutouts, strict=True):
            assert_cutout_of(photo, decoded(mask), decoded(cutout))
        # UINT8 pixels, binary after the JSON: forwarded as pixels, stored as a PNG of them.
        pixels = triton.InferInput("pixels", [1, 300, 200, 3], "UINT8")
        pixels.set_data_from_numpy(np.asarray(photos[0])[np.newaxis], binary_data=True)
        from_pixels = client.infer(
            MODEL, [pixels], parameters={"output": "mask"}, headers={"x-request-id": "v2-pixels"}
        )
        assert from_pixels.as_numpy("cutout") is None
        # The same mask, up to rounding: this photo was in a batch of two before, now alone.
        difference = np.asarray(decoded(from_pixels.as_numpy("mask")[0]), int) - np.asarray(decoded(masks[0]))
        assert np.abs(difference).max() <= 1
    finally:
        client.close()

    async def kserve_infer():
        rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=60))
        try:
            image = InferInput("image", [1], "BYTES", data=[b64(encoded(photos[1]))])
            parameters = {"output": "cutout", "bg_color": "white"}
            request = InferRequest(model_name=MODEL, parameters=parameters, infer_inputs=[image])
            return await rest.infer(service.transformer_url, request, model_name=MODEL)
        finally:
            await rest.close()

    response = asyncio.run(kserve_infer())
    outputs = {output.name: output for output in response.outputs}
    assert set(outputs) == {"cutout", "score"} and response.model_name == MODEL
    cutout = decoded(outputs["cutout"].data[0])
    assert cutout.mode == "RGB" and cutout.size == photos[1].size  # flattened on white

    store = feedback_store.store_uri(s3_feedback, feedback_store.AUTO)
    assert [r["image"].rsplit(".", 1)[1] for r in records_of(store, "v2-triton", 2)] == ["png", "png"]
    (record,) = records_of(store, "v2-pixels", 1)
    stored = read_image(storage.read_bytes(storage.join(store, record["image"])))
    assert np.array_equal(np.asarray(stored), np.asarray(photos[0]))


def test_photos_with_different_options_go_as_one_request_each_and_come_back_in_order() -> None:
    image = Image.new("RGB", (4, 4))
    options = [CutoutOptions("mask"), CutoutOptions("both"), CutoutOptions("mask"), CutoutOptions("cutout")]
    photos = [Photo(image, option, raw=b"photo %d" % i) for i, option in enumerate(options)]

    groups = transformer.photos_by_options(photos)

    assert groups == [[0, 2], [1], [3]]
    answers = [
        transformer.Prediction(
            [b"m%d" % i for i in group], [b"c%d" % i for i in group], [float(i) for i in group], MODEL, "7"
        )
        for group in groups
    ]
    merged = transformer.merge_predictions(groups, answers)
    assert merged.masks == [b"m0", b"m1", b"m2", b"m3"] and merged.scores == [0.0, 1.0, 2.0, 3.0]
    assert merged.cutouts == [b"c0", b"c1", b"c2", b"c3"] and merged.model_version == "7"


def test_the_predictors_answer_is_freed_once_parsed_not_at_the_next_full_collection(
    service: local.LocalService, tmp_path: Path
) -> None:
    """httpx's response and its stream refer to each other (encode/httpx#3733): unless the transformer
    breaks that cycle, every answer (megabytes of PNGs) and photo sent stays resident until the cyclic
    GC's next full pass, 20-30 MiB of a transformer's memory at rest."""
    host = service.predictor_url.removeprefix("http://")
    model = transformer.FeedbackTransformer(MODEL, host, str(tmp_path / "feedback"))
    photo = product_photo(120, 160, seed=8)
    body = {"instances": [{"image_b64": b64(encoded(photo, "JPEG")), "output": "both"}]}

    async def ask() -> transformer.Prediction:
        try:
            _, prediction = await model.predict(await model.preprocess(body))
            return prediction
        finally:
            await model._http().aclose()

    gc.collect()
    gc.disable()  # the check below is the only collection that sees what the request left behind
    try:
        prediction = asyncio.run(ask())
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if isinstance(o, httpx.Response | httpx.Request)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert read_image(prediction.masks[0]).size == photo.size == read_image(prediction.cutouts[0]).size
    assert left == [], f"reference cycles kept {left} alive"


# --- a failing store --------------------------------------------------------------------------------


def test_a_failing_store_fails_no_request(start_transformer, s3_endpoint: str) -> None:
    url = start_transformer(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/feedback", threshold=None).url
    photo = product_photo(120, 160, seed=5)
    for _ in range(2):
        response = post(url, V1, {"instances": [{"b64": b64(encoded(photo))}, {"b64": b64(encoded(photo))}]})
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions"]) == 2
    deadline = time.monotonic() + 30
    while metric_total(url, "cutout_feedback_write_failures_total") < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric_total(url, "cutout_feedback_write_failures_total") == 4
    assert metric_total(url, "cutout_feedback_written_total") == 0
    # No stored threshold for a model file: the default, 0.5, decided where each item went.
    assert metric_total(url, "cutout_feedback_score_count") == 4


# --- bad requests ---------------------------------------------------------------------------------------


def _bad_requests(count: int, seed: int = 0) -> Iterator[tuple[str, bytes, dict[str, str]]]:
    """Named kinds of bad request first, then random malformed ones up to `count`."""
    rng = random.Random(seed)
    jpeg = encoded(product_photo(120, 160, seed=6), "JPEG")
    good = b64(encoded(product_photo(40, 40)))

    def pixels(shape: list[int], data: list[int]) -> dict:
        return {"name": "pixels", "datatype": "UINT8", "shape": shape, "data": data}

    fixed = [
        (V1, {"instances": [{"image_b64": b64(b"just some text")}]}, JSON),
        (V1, {"instances": [{"b64": b64(jpeg[: len(jpeg) // 2])}]}, JSON),
        (V1, {"instances": [{"b64": b64(encoded(Image.new("RGB", (1001, 1000))))}]}, JSON),
        (V2, {"inputs": [pixels([1001, 1000, 3], [0])]}, JSON),
        (V1, {"instances": [{"image_b64": "@@@ not base64 @@@"}]}, JSON),
        (V1, b"", JSON), (V2, b"", JSON), (V1, b'{"instances": [', JSON), (V2, b'{"inputs": [}', JSON),
        (V1, {"instances": []}, JSON), (V1, {"instances": [{"b64": good, "bgcolor": "red"}]}, JSON),
        (V2, v2_body([good], bg_color="blurple"), JSON), (V2, {"inputs": []}, JSON),
        (V2, {"inputs": [pixels([40, 40], [0] * 1600)]}, JSON),
        (V2, {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [0.5]}]}, JSON),
        (V1, b"<instances/>", {"content-type": "application/xml"}),
        (V2, jpeg, {"content-type": "image/jpeg"}),
        (V1, {"instances": [{"b64": "A" * (21 * 2**20)}]}, JSON),
    ]  # fmt: skip
    for path, body, headers in fixed:
        yield path, json.dumps(body).encode() if isinstance(body, dict) else body, headers
    good_v1 = json.dumps({"instances": [{"image_b64": b64(jpeg)}]}).encode()

    def cut(data: bytes) -> bytes:
        return data[: rng.randint(0, len(data) - 1)]

    junk = [None, 0, -1, 3.5, True, "", "x", [], {}, [1, "a"], {"b64": 1}, [[[]]]]
    makers = [
        lambda: (rng.choice([V1, V2]), rng.randbytes(rng.randint(1, 200)), JSON),
        lambda: (V1, good_v1[: rng.randint(1, len(good_v1) - 2)], JSON),
        lambda: (V1, json.dumps({"instances": [{"b64": b64(cut(jpeg))}]}).encode(), JSON),
        lambda: (V1, json.dumps({"instances": [rng.choice(junk)]}).encode(), JSON),
        lambda: (V2, json.dumps({"inputs": [{"name": rng.choice(["image", "pixels"]),
                 "datatype": rng.choice(["BYTES", "UINT8", "FP32"]), "shape": [rng.randint(-1, 3)],
                 "data": rng.choice(junk)}]}).encode(), JSON),
        lambda: (rng.choice([V1, V2]), good_v1, {"content-type": rng.choice(["text/plain", "image/png"])}),
    ]  # fmt: skip
    for _ in range(count - len(fixed)):
        yield rng.choice(makers)()


def test_bad_requests_get_4xx_before_the_predictor_and_the_transformer_keeps_serving(
    service: local.LocalService,
) -> None:
    reached = metric_total(service.predictor_url, "cutout_http_requests_total", 'route="v')
    answers = post_all(service.transformer_url, _bad_requests(300))
    assert_all_refused(answers)
    assert {status for status, _ in answers} >= {400, 413, 415}
    messages = " ".join(text for _, text in answers[:5])
    for words in ("not_an_image", "truncated", "too_many_pixels", "base64"):
        assert words in messages
    # None of them reached the predictor; a good request still does.
    assert metric_total(service.predictor_url, "cutout_http_requests_total", 'route="v') == reached
    photo = product_photo(90, 130, seed=7)
    response = post(service.transformer_url, V1, {"instances": [{"b64": b64(encoded(photo))}]})
    assert (
        response.status_code == 200 and decoded(response.json()["predictions"][0]["mask"]).size == photo.size
    )


# --- concurrency and the command line ---------------------------------------------------------------------


def test_concurrent_callers_each_get_their_own_photo_back(service: local.LocalService) -> None:
    photos = [product_photo(100 + 17 * i, 80 + 23 * i, seed=10 + i) for i in range(8)]
    assert_each_caller_gets_its_own_photo(service.transformer_url, photos, workers=4)


def test_cutout_serve_local_routes_below_the_threshold_to_review_and_stops_cleanly(
    u2netp_checkpoint: Path, tmp_path: Path
) -> None:
    """`cutout serve local` with threshold 1: the photo goes to review, and SIGTERM stops both servers
    once the transformer has written it."""
    port, predictor_port, root = free_port(), free_port(), str(tmp_path / "feedback")
    command = [sys.executable, "-m", "cutout.cli", "serve", "local", "--model-uri", str(u2netp_checkpoint),
               "--feedback-uri", root, "--port", str(port), "--predictor-port", str(predictor_port),
               "--threshold", "1.0"]  # fmt: skip
    both = start_server(command, port, tmp_path / "local.log")  # clients call the transformer's port
    process = both.process
    try:
        wait_for(Server(f"http://127.0.0.1:{predictor_port}", process, both.log))
        wait_for(both)
        servers = psutil.Process(process.pid).children()
        photo_file = encoded(product_photo(150, 220, seed=4))
        response = post(
            f"http://127.0.0.1:{port}", V2, v2_body([b64(photo_file)], output="mask"), "to-review"
        )
        assert response.status_code == 200, response.text
        os.killpg(process.pid, signal.SIGTERM)  # at once: the queued item must still be written
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:  # the servers run in sessions of their own: stop them one by one
            for child in psutil.Process(process.pid).children():
                child.kill()
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    log = (tmp_path / "local.log").read_text()
    assert (
        f"transformer: http://127.0.0.1:{port}" in log
        and f"predictor:   http://127.0.0.1:{predictor_port}" in log
    )
    assert len(servers) == 2 and not any(server.is_running() for server in servers)
    outputs = {output["name"]: output["data"] for output in response.json()["outputs"]}
    assert outputs["score"][0] < 1.0
    (item,) = feedback.list_pending(root)
    assert item["request_id"] == "to-review" and item["threshold"] == 1.0
    assert item["score"] == pytest.approx(outputs["score"][0], abs=1e-6) and item["model_version"]
    loaded = feedback.load_pending(root, item["id"])
    assert loaded.photo == photo_file and loaded.mask == base64.b64decode(outputs["mask"][0])
    assert not os.path.exists(feedback_store.store_uri(root, feedback_store.AUTO))


def test_the_threshold_defaults_to_the_one_stored_on_the_model_version(mlflow_local: Path) -> None:
    from mlflow.tracking import MlflowClient

    from cutout.platform import registry
    from cutout.platform.names import UNCALIBRATED_THRESHOLD
    from cutout.platform.tracking import configure_tracking
    from cutout.serve.transformer import FeedbackTransformer

    configure_tracking()
    client = MlflowClient()
    client.create_registered_model(MODEL)
    version = str(client.create_model_version(MODEL, source=str(mlflow_local)).version)
    registry.set_routing_threshold(f"models:/{MODEL}/{version}", 0.7)
    model = FeedbackTransformer(MODEL, "127.0.0.1:1", str(mlflow_local / "feedback"))

    async def thresholds() -> list[float]:
        return [await model.threshold_for(MODEL, asked) for asked in (version, "99", "u2netp.ckpt-0a1b2c")]

    # Calibrated; a version the registry does not know; a model file, which has no version to ask about.
    assert asyncio.run(thresholds()) == [0.7, UNCALIBRATED_THRESHOLD, UNCALIBRATED_THRESHOLD]
    fixed = FeedbackTransformer(MODEL, "127.0.0.1:1", str(mlflow_local / "feedback"), threshold=0.25)
    assert asyncio.run(fixed.threshold_for(MODEL, version)) == 0.25

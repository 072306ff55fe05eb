"""The KServe predictor protects: its wire format (v1, v2 through tritonclient and KServe's own client, UINT8
pixels), outputs at each photo's own resolution, readiness only once loaded, 4xx with a message for every
kind of bad input and never a 5xx, one caller's photo never in another's answer, both runtimes, and the
registry's champion. Every server is a real `python -m cutout.serve.predictor` process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import platform
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from PIL import Image

from cutout.compose import product_box
from cutout.model.export import export_model
from cutout.serve.photos import CutoutOptions, Photo
from cutout.serve.predictor import BackgroundRemover
from cutout.serve.server import bound_allocator_growth
from helpers import product_photo
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

MAX_BYTES = 2_000_000
MAX_PIXELS = 1_000_000
MAX_BATCH = 4
LIMITS = [
    "--max-request-bytes",
    str(MAX_BYTES),
    "--max-pixels",
    str(MAX_PIXELS),
    "--max-batch",
    str(MAX_BATCH),
]


# --- servers --------------------------------------------------------------------------------------


def start_predictor(args: list[str], log: Path, cwd: Path | None = None, cli: bool = False) -> Server:
    """Start the predictor (as a module, or through `cutout serve predictor`) on a free port."""
    port = free_port()
    entry = ["-m", "cutout.cli", "serve", "predictor"] if cli else ["-m", "cutout.serve.predictor"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    return start_server([sys.executable, *entry, *args, "--http_port", str(port)], port, log, cwd, env)


@pytest.fixture(scope="module")
def predictor(u2netp_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The PyTorch predictor with small limits, ready; SIGTERM stops it cleanly (status 0)."""
    server = start_predictor(
        ["--model-uri", str(u2netp_checkpoint), *LIMITS], tmp_path_factory.mktemp("logs") / "torch.log"
    )
    try:
        wait_for(server)
        yield server
    finally:
        status = stop(server)
    assert status == 0, server.logs()


# --- requests ---------------------------------------------------------------------------------------


def png_b64(image: Image.Image) -> str:
    return b64(encoded(image))


def post_v1(server: Server, instances: list, timeout: float = 60) -> httpx.Response:
    return httpx.post(server.url + V1, json={"instances": instances}, timeout=timeout)


def v2_body(name: str, datatype: str, shape: list, data: list, **parameters) -> dict:
    body: dict = {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}
    if parameters:
        body["parameters"] = parameters
    return body


def post_v2(server: Server, body: dict, timeout: float = 60) -> httpx.Response:
    return httpx.post(server.url + V2, json=body, timeout=timeout)


def v2_outputs(response: httpx.Response) -> dict[str, list]:
    assert response.status_code == 200, response.text
    return {output["name"]: output["data"] for output in response.json()["outputs"]}


# --- the wire format --------------------------------------------------------------------------------


def test_v1_returns_mask_and_cutout_at_the_photo_resolution(
    predictor: Server, u2netp_checkpoint: Path
) -> None:
    photo = product_photo(210, 320, seed=3)
    data = png_b64(photo)
    response = post_v1(
        predictor,
        [
            {"image_b64": data},
            {"image": {"b64": data}, "output": "mask"},
            {"b64": data, "output": "cutout", "bg_color": "#00ff00", "crop": True},
        ],
    )
    assert response.status_code == 200, response.text
    body = response.json()
    digest = hashlib.sha256(u2netp_checkpoint.read_bytes()).hexdigest()[:12]
    assert body["model_name"] == MODEL and body["model_version"] == f"u2netp.ckpt-{digest}"
    both, mask_only, flattened = body["predictions"]
    mask = decoded(both["mask"])
    assert_cutout_of(photo, mask, decoded(both["cutout"]))
    assert 0.0 <= both["score"] <= 1.0 and (both["width"], both["height"]) == photo.size
    # The three conventions carry the same photo: the same mask and score come back.
    assert set(mask_only) == {"mask", "score", "width", "height"} and mask_only["mask"] == both["mask"]
    assert set(flattened) == {"cutout", "score", "width", "height"} and flattened["score"] == both["score"]
    # Cropped to the product's box, flattened on green: the photo inside the mask, green outside it.
    box = product_box(mask)
    cropped = decoded(flattened["cutout"])
    assert cropped.mode == "RGB" and cropped.size == (box[2] - box[0], box[3] - box[1])
    alpha = np.asarray(mask.crop(box))
    pixels = np.asarray(cropped)
    assert np.array_equal(pixels[alpha == 255], np.asarray(photo.crop(box))[alpha == 255])
    assert (pixels[alpha == 0] == [0, 255, 0]).all()


def test_v2_bytes_through_tritonclient(predictor: Server) -> None:
    photos = [product_photo(200, 300, seed=1), product_photo(333, 250, seed=2)]
    client = triton.InferenceServerClient(url=predictor.url.removeprefix("http://"))
    try:
        assert client.is_server_ready() and client.is_model_ready(MODEL)
        images = triton.InferInput("image", [2], "BYTES")
        texts = np.array([png_b64(photo).encode() for photo in photos], dtype=np.object_)
        images.set_data_from_numpy(texts, binary_data=False)  # base64 text in the JSON
        result = client.infer(MODEL, [images], parameters={"output": "both"})  # answered in binary
        masks, cutouts, scores = (result.as_numpy(name) for name in ("mask", "cutout", "score"))
        assert result.get_response()["model_name"] == MODEL
        assert result.get_response()["model_version"].startswith("u2netp.ckpt-")
        assert scores.dtype == np.float32 and scores.shape == (2,) and ((scores >= 0) & (scores <= 1)).all()
        for photo, mask, cutout in zip(photos, masks, cutouts, strict=True):
            assert_cutout_of(photo, decoded(mask), decoded(cutout))
        # The first photo as UINT8 pixels, raw binary after the JSON: the same mask.
        pixels = triton.InferInput("pixels", [1, 300, 200, 3], "UINT8")
        pixels.set_data_from_numpy(np.asarray(photos[0])[np.newaxis], binary_data=True)
        from_pixels = client.infer(MODEL, [pixels], parameters={"output": "mask"})
        mask = np.asarray(decoded(from_pixels.as_numpy("mask")[0]), np.int16)
        # Within a grey level: a batch of one and a batch of two may round a pixel differently.
        assert np.abs(mask - np.asarray(decoded(masks[0]))).max() <= 1
        assert from_pixels.as_numpy("cutout") is None  # not asked for
    finally:
        client.close()


def test_v2_bytes_through_kserve_rest_client(predictor: Server) -> None:
    photo = product_photo(180, 260, seed=4)

    async def infer():
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=60))
        try:
            assert await client.is_server_ready(predictor.url)
            assert await client.is_model_ready(predictor.url, MODEL)
            request = InferRequest(
                model_name=MODEL,
                parameters={"output": "both", "bg_color": "white"},
                infer_inputs=[InferInput("image", [1], "BYTES", data=[png_b64(photo)])],
            )
            return await client.infer(predictor.url, request, model_name=MODEL)
        finally:
            await client.close()

    response = asyncio.run(infer())
    outputs = {output.name: output for output in response.outputs}
    assert set(outputs) == {"mask", "cutout", "score"} and response.model_name == MODEL
    # KServe's client drops the top-level model_version; the parameters carry it too.
    assert response.parameters["model_version"].startswith("u2netp.ckpt-")
    mask, cutout = decoded(outputs["mask"].data[0]), decoded(outputs["cutout"].data[0])
    assert mask.size == cutout.size == photo.size and cutout.mode == "RGB"  # flattened on white
    alpha = np.asarray(mask)
    assert (np.asarray(cutout)[alpha == 0] == 255).all()
    assert 0.0 <= outputs["score"].data[0] <= 1.0


def test_v2_uint8_pixels_over_json_match_the_encoded_photo(predictor: Server) -> None:
    photo = product_photo(60, 40, seed=5)
    pixels = np.asarray(photo)
    expected = v2_outputs(post_v2(predictor, v2_body("image", "BYTES", [1], [png_b64(photo)], output="mask")))
    nested = v2_outputs(
        post_v2(predictor, v2_body("pixels", "UINT8", [40, 60, 3], pixels.tolist(), output="mask"))
    )
    flat = v2_outputs(
        post_v2(predictor, v2_body("pixels", "UINT8", [1, 40, 60, 3], pixels.reshape(-1).tolist()))
    )
    assert nested["mask"] == flat["mask"] == expected["mask"]
    assert decoded(flat["mask"][0]).size == photo.size and set(flat) == {"mask", "cutout", "score"}
    assert nested["score"] == expected["score"]


# --- readiness ----------------------------------------------------------------------------------------


def _has_open(pid: int, path: Path) -> bool:
    """Whether process `pid` holds `path` open (Linux: its /proc/<pid>/fd links name the file)."""
    for link in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(link) == str(path):
                return True
        except OSError:  # closed meanwhile
            continue
    return False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see the server's open files")
def test_ready_only_once_the_model_is_loaded(u2netp_checkpoint: Path, tmp_path: Path) -> None:
    """The model file is a named pipe that the test fills when it chooses: until then the server listens
    but is not ready, and inference answers 503."""
    pipe = tmp_path / "slow.ckpt"
    os.mkfifo(pipe)
    server = start_predictor(["--model-uri", str(pipe)], tmp_path / "server.log")

    def feed() -> None:
        # The predictor reads the file twice (to hash it, then to load it). A second writer that opened
        # before the first read ended would join that read, so wait for the first reader to close.
        for copy in range(2):
            with open(pipe, "wb") as writer:  # blocks until the server opens the pipe to read
                writer.write(u2netp_checkpoint.read_bytes())
            while copy == 0 and _has_open(server.process.pid, pipe):
                time.sleep(0.01)

    try:
        wait_for(server, "/v2/health/live")
        for path in ("/v2/health/ready", f"/v2/models/{MODEL}/ready", f"/v1/models/{MODEL}"):
            assert httpx.get(server.url + path).status_code == 503, path
        waiting = post_v1(server, [{"b64": png_b64(product_photo(50, 50))}])
        assert waiting.status_code == 503 and "not ready" in waiting.json()["error"]

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        wait_for(server, timeout=60)
        assert httpx.get(f"{server.url}/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
        assert post_v1(server, [{"b64": png_b64(product_photo(50, 50))}]).status_code == 200
        feeder.join(timeout=10)
    finally:
        stop(server)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_sigterm_stops_a_server_whose_model_never_arrives(tmp_path: Path) -> None:
    """The model file is a named pipe that nobody fills: the load hangs, and SIGTERM still stops the
    server at once, with status 0."""
    pipe = tmp_path / "never.ckpt"
    os.mkfifo(pipe)
    server = start_predictor(["--model-uri", str(pipe)], tmp_path / "server.log")
    try:
        wait_for(server, "/v2/health/live")
        assert httpx.get(server.url + "/v2/health/ready").status_code == 503
    finally:
        status = stop(server, timeout=20)  # then SIGKILL: the status would be -9
    assert status == 0, server.logs()


def test_a_model_that_does_not_load_stops_the_server(tmp_path: Path) -> None:
    missing = tmp_path / "missing.ckpt"
    server = start_predictor(["--model-uri", str(missing)], tmp_path / "server.log")
    try:
        assert server.process.wait(timeout=120) == 1
        assert "failed to load" in server.logs() and str(missing) in server.logs()
    finally:
        stop(server)


# --- bad input ---------------------------------------------------------------------------------------


def _photo_bytes() -> bytes:
    return encoded(product_photo(200, 300, seed=7), "JPEG")


GOOD = b64(encoded(product_photo(40, 40)))
# The binary-data extension with a raw JPEG in a BYTES tensor: KServe 0.21 decodes it as UTF-8.
RAW_HEADER = (
    b'{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":8}}]}'
)


def v1_body(*instances) -> dict:
    return {"instances": list(instances)}


def bad(path: str, body: dict | bytes, status: int, *words: str, headers: dict | None = None) -> tuple:
    """A bad request: where it goes, its body, the status it must get, words its message must hold."""
    return path, body, JSON if headers is None else headers, status, words


BIG_PHOTO = b64(encoded(Image.new("RGB", (1001, 1000))))
BAD_INPUTS = {
    "non-image bytes": bad(
        V1, v1_body({"image_b64": b64(b"just some text")}), 400, "instances[0].image_b64", "not_an_image"
    ),
    "truncated photo": bad(
        V1, v1_body({"b64": GOOD}, {"b64": b64(_photo_bytes()[:3000])}), 400, "instances[1].b64", "truncated"
    ),
    "too many pixels": bad(
        V1,
        v1_body({"image": {"b64": BIG_PHOTO}}),
        400,
        "instances[0].image.b64",
        "1,001,000 pixels",
        "too_many_pixels",
    ),
    "too many pixels as UINT8": bad(
        V2,
        v2_body("pixels", "UINT8", [1, 1001, 1000, 3], [0] * 3),
        400,
        "pixels",
        "1,001,000 pixels",
        "too_many_pixels",
    ),
    "not base64": bad(
        V1, v1_body({"image_b64": "@@@ not base64 @@@"}), 400, "instances[0].image_b64", "base64"
    ),
    "empty photo": bad(V2, v2_body("image", "BYTES", [1], [""]), 400, "'image'[0]", "empty"),
    "empty body v1": bad(V1, b"", 400, "body is empty"),
    "empty body v2": bad(V2, b"", 400, "body is empty"),
    "invalid JSON v1": bad(V1, b'{"instances": [', 400, "not valid JSON"),
    "invalid JSON v2": bad(V2, b'{"inputs": [}', 400, "not valid JSON"),
    "JSON that is a list": bad(V1, b"[1, 2, 3]", 400, "JSON object", "instances"),
    "no instances": bad(V1, {"photos": [GOOD]}, 400, "no 'instances'", "'photos'"),
    "instances not a list": bad(V1, {"instances": {"b64": GOOD}}, 400, "'instances' must be a list"),
    "no photos": bad(V1, v1_body(), 400, "instances is empty"),
    "too many photos": bad(V1, v1_body(*[{"b64": GOOD}] * 5), 400, "5 photos", "at most 4"),
    "two photo fields": bad(
        V1, v1_body({"b64": GOOD, "image_b64": GOOD}), 400, "instances[0]", "exactly one of"
    ),
    "unknown field": bad(V1, v1_body({"b64": GOOD, "bgcolor": "red"}), 400, "unknown field 'bgcolor'"),
    "unknown output": bad(
        V1, v1_body({"b64": GOOD, "output": "alpha"}), 400, "instances[0].output", "'alpha'"
    ),
    "unknown colour": bad(
        V2, v2_body("image", "BYTES", [1], [GOOD], bg_color="blurple"), 400, "parameters.bg_color", "blurple"
    ),
    "crop not a boolean": bad(V1, v1_body({"b64": GOOD, "crop": "yes"}), 400, "instances[0].crop"),
    "photo not a string": bad(V1, v1_body({"image_b64": 42}), 400, "instances[0].image_b64", "number"),
    "wrong shape for pixels": bad(
        V2, v2_body("pixels", "UINT8", [40, 40], [0] * 1600), 400, "'pixels'", "shape must be [H, W, 3]"
    ),
    "shape and data disagree": bad(
        V2, v2_body("pixels", "UINT8", [2, 2, 3], [0] * 11), 400, "needs 12 values", "holds 11"
    ),
    "photo count and shape disagree": bad(
        V2, v2_body("image", "BYTES", [2], [GOOD]), 400, "2 photos", "holds 1"
    ),
    "wrong datatype for image": bad(
        V2, v2_body("image", "FP32", [1], [0.5]), 400, "datatype BYTES", "'FP32'"
    ),
    "wrong datatype for pixels": bad(
        V2, v2_body("pixels", "FP32", [1, 1, 3], [0.5] * 3), 400, "datatype UINT8"
    ),
    "pixel values out of range": bad(V2, v2_body("pixels", "UINT8", [1, 1, 3], [0, 256, -1]), 400, "0-255"),
    "pixel values not integers": bad(V2, v2_body("pixels", "UINT8", [1, 1, 3], [0.5, 1, 2]), 400, "integers"),
    "unknown input": bad(V2, v2_body("photo", "BYTES", [1], [GOOD]), 400, "unknown input 'photo'"),
    "v2 body off the schema": bad(
        V2, {"inputs": [{"name": "image", "datatype": "BYTES"}]}, 400, "inputs.0.shape", "inputs.0.data"
    ),
    "unknown output asked for": bad(
        V2, {**v2_body("image", "BYTES", [1], [GOOD]), "outputs": [{"name": "trimap"}]}, 400, "'trimap'"
    ),
    "raw binary BYTES": bad(
        V2,
        RAW_HEADER + b"\x04\x00\x00\x00\xff\xd8\xff\xe0",
        400,
        "UTF-8",
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(RAW_HEADER)),
        },
    ),
    "wrong content type v1": bad(
        V1,
        b"<instances/>",
        415,
        "content type 'application/xml'",
        "JSON",
        headers={"content-type": "application/xml"},
    ),
    "a bare JPEG": bad(
        V2, _photo_bytes(), 415, "content type 'image/jpeg'", headers={"content-type": "image/jpeg"}
    ),
    "payload over the limit": bad(
        V1, v1_body({"b64": "A" * MAX_BYTES}), 413, "bytes", f"limit of {MAX_BYTES:,}"
    ),
    "model repository": bad("/v2/repository/models/cutout/unload", b"", 403, "disabled", headers={}),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_gets_a_4xx_that_names_the_problem(predictor: Server, case: str) -> None:
    path, body, headers, status, words = BAD_INPUTS[case]
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    response = httpx.post(predictor.url + path, content=content, headers=headers, timeout=60)
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_a_streamed_body_over_the_limit_gets_413(predictor: Server) -> None:
    """Without a Content-Length (chunked), the server stops reading once the limit is passed."""

    def chunks() -> Iterator[bytes]:
        yield b'{"instances": [{"b64": "'
        for _ in range(MAX_BYTES // 65536 + 2):
            yield b"A" * 65536

    response = httpx.post(predictor.url + V1, content=chunks(), headers=JSON, timeout=60)
    assert response.status_code == 413 and f"limit of {MAX_BYTES:,}" in response.json()["error"]
    assert post_v1(predictor, [{"b64": GOOD}]).status_code == 200


JUNK = [None, 0, -1, 3.5, True, "", "x", [], {}, [1, "a"], {"b64": 1}, "A" * 50, [[[]]]]
CONTENT_TYPES = [
    "text/plain",
    "image/png",
    "multipart/form-data",
    "application/x-www-form-urlencoded",
    "text/xml",
]


def malformed_requests(count: int, seed: int = 0) -> Iterator[tuple[str, bytes, dict[str, str]]]:
    """`count` requests, each wrong in some way: garbage, cut-off JSON, damaged photos, bad tensors."""
    rng = random.Random(seed)
    photo = _photo_bytes()
    good_v1 = json.dumps({"instances": [{"image_b64": b64(photo)}]}).encode()
    good_v2 = json.dumps(v2_body("image", "BYTES", [1], [b64(photo)])).encode()

    def v1(*instances) -> tuple[str, bytes, dict[str, str]]:
        return V1, json.dumps({"instances": list(instances)}).encode(), JSON

    def v2(body) -> tuple[str, bytes, dict[str, str]]:
        return V2, json.dumps(body).encode(), JSON

    def bad_tensor() -> dict:
        name, datatype = rng.choice(["image", "pixels", "x"]), rng.choice(["BYTES", "UINT8", "FP32", "INT64"])
        shape = [rng.randint(-1, 3) for _ in range(rng.randint(0, 5))]
        return v2_body(name, datatype, shape, rng.choice([rng.choice(JUNK), [rng.choice(JUNK)]]))

    makers = [
        lambda: (rng.choice([V1, V2]), rng.randbytes(rng.randint(1, 300)), JSON),
        lambda: (V1, good_v1[: rng.randint(1, len(good_v1) - 2)], JSON),
        lambda: (V2, good_v2[: rng.randint(1, len(good_v2) - 2)], JSON),
        lambda: v1({"b64": b64(photo[: rng.randint(0, len(photo) * 9 // 10)])}),  # cut short
        lambda: v1({"image_b64": b64(rng.randbytes(rng.randint(1, 2000)))}),  # not a photo
        lambda: (V1, json.dumps({"instances": rng.choice(JUNK)}).encode(), JSON),
        lambda: v1(rng.choice(JUNK)),
        lambda: v1(
            {"b64": GOOD, rng.choice(["output", "crop", "bg_color"]): rng.choice([1, [], "nope", {}])}
        ),
        lambda: v2(bad_tensor()),
        lambda: v2({"inputs": rng.choice(JUNK), "parameters": rng.choice(JUNK)}),
        lambda: (rng.choice([V1, V2]), good_v1, {"content-type": rng.choice(CONTENT_TYPES)}),
        lambda: (rng.choice([V1, V2]), rng.choice([b"", b"   ", b"\n"]), JSON),
    ]
    for _ in range(count):
        yield rng.choice(makers)()


def test_a_thousand_malformed_requests_get_4xx_and_the_server_keeps_serving(predictor: Server) -> None:
    answers = post_all(predictor.url, malformed_requests(1000))
    assert_all_refused(answers)
    # 400 and 415 at least: the generator is not stuck on one kind.
    assert len({status for status, _ in answers}) >= 2

    photo = product_photo(150, 100, seed=8)
    response = post_v1(predictor, [{"b64": png_b64(photo)}])
    assert response.status_code == 200
    assert decoded(response.json()["predictions"][0]["mask"]).size == photo.size

    metrics = httpx.get(predictor.url + "/metrics").text
    refused = re.search(r'cutout_http_requests_total\{code="400",route="v1_predict"\} (\d+)', metrics)
    assert refused and float(refused.group(1)) >= 100
    assert not re.search(r'cutout_http_requests_total\{code="5\d\d",route="v(1_predict|2_infer)"', metrics)
    assert 'request_predict_seconds_count{model_name="cutout"}' in metrics
    assert "cutout_http_request_duration_seconds_bucket" in metrics


# --- concurrency --------------------------------------------------------------------------------------


def test_concurrent_callers_each_get_their_own_photo_back(predictor: Server) -> None:
    photos = [product_photo(120 + 17 * i, 90 + 23 * i, seed=10 + i) for i in range(12)]
    assert_each_caller_gets_its_own_photo(predictor.url, photos, workers=6)


# --- runtimes and the registry ------------------------------------------------------------------------


def test_both_runtimes_give_the_same_cutout(u2netp_checkpoint: Path, tmp_path: Path) -> None:
    """In this process: the checkpoint in PyTorch and its ONNX export in ONNX Runtime; mismatches refused."""
    onnx_file = tmp_path / "u2netp.onnx"
    export_model(str(u2netp_checkpoint), onnx_file)
    photo = Photo(product_photo(240, 320, seed=9), CutoutOptions(output="mask"))
    results, removers = {}, {}
    for runtime, uri in (("torch", u2netp_checkpoint), ("onnx", onnx_file)):
        removers[runtime] = BackgroundRemover(MODEL, str(uri), runtime)
        assert not removers[runtime].ready and removers[runtime].load() and removers[runtime].ready
        results[runtime] = removers[runtime].cut_out([photo])[0]
    assert removers["onnx"].predictor.description.startswith("onnxruntime")
    assert (
        removers["onnx"].model_version
        == f"u2netp.onnx-{hashlib.sha256(onnx_file.read_bytes()).hexdigest()[:12]}"
    )
    masks = [np.asarray(Image.open(io.BytesIO(results[r].mask_png)), np.float32) for r in ("torch", "onnx")]
    assert masks[0].shape == masks[1].shape == (320, 240)
    assert np.abs(masks[0] - masks[1]).mean() < 1.0  # the same network: within a grey level on average
    assert results["onnx"].cutout_png is None and abs(results["onnx"].score - results["torch"].score) < 0.02

    with pytest.raises(ValueError, match="use --runtime onnx"):
        BackgroundRemover(MODEL, str(onnx_file), "torch").load()
    with pytest.raises(ValueError, match=r"needs an \.onnx file"):
        BackgroundRemover(MODEL, str(u2netp_checkpoint), "onnx").load()


def test_the_builtin_official_model_serves_in_both_runtimes() -> None:
    """`--model-uri u2netp`: ONNX Runtime by default, PyTorch on request; the version names its hash."""
    from cutout.data.real import REAL_PHOTOS

    photo = Photo(Image.open(next((REAL_PHOTOS / "images").glob("*.jpg"))).convert("RGB"),
                  CutoutOptions(output="mask"))  # fmt: skip
    default, in_torch = BackgroundRemover(MODEL, "u2netp"), BackgroundRemover(MODEL, "u2netp", "torch")
    masks = []
    for remover in (default, in_torch):
        assert remover.load() and remover.model_version.startswith("u2netp-309c8469258d")
        masks.append(np.asarray(Image.open(io.BytesIO(remover.cut_out([photo])[0].mask_png)), np.float32))
    assert default.predictor.description == "onnxruntime (u2netp.onnx)"
    assert in_torch.predictor.description.startswith("torch")
    assert np.abs(masks[0] - masks[1]).max() <= 1.0  # the same weights: at most a grey level apart


def test_servers_bound_the_allocator_on_glibc() -> None:
    """glibc accepts both settings (mallopt answers 0 to a parameter it does not know)."""
    assert bound_allocator_growth() == (platform.libc_ver()[0] == "glibc")


_FRAGMENTED_HEAP = """
from cutout.serve.server import bound_allocator_growth, trim_heap

def resident_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

bound_allocator_growth()
blocks = [bytearray(b"x") * 300_000 for _ in range(400)]  # under the mmap threshold: from the heap
del blocks[::2]  # every other one freed: holes inside the heap, which glibc only trims at its top
before = resident_mib()
trimmed = trim_heap()
print(before, resident_mib(), trimmed)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trimming_gives_the_holes_of_a_fragmented_heap_back() -> None:
    # In a process of its own: this one's heap is whatever the other tests left.
    result = subprocess.run(
        [sys.executable, "-c", _FRAGMENTED_HEAP], capture_output=True, text=True, check=True
    )
    before, after, trimmed = result.stdout.split()
    assert trimmed == "True"
    assert float(before) - float(after) > 40, result.stdout  # 200 freed blocks of 300 kB: 57 MiB


def test_the_champion_from_a_local_registry(u2netp_checkpoint: Path, mlflow_local: Path) -> None:
    from cutout.platform import registry
    from cutout.platform.tracking import configure_tracking, start_run
    from cutout.train import logged_model

    configure_tracking()
    with start_run(run_name="serve") as run:
        logged_model.log_model(str(u2netp_checkpoint))
    version = registry.register_model(run.info.run_id, metrics={"mean_iou": 0.9})
    registry.record_promotion(MODEL, version, True, {"reason": "first model"})

    # In this process, PyTorch on the checkpoint: the alias resolves to its version number.
    remover = BackgroundRemover(MODEL, "models:/cutout@champion", runtime="torch")
    assert remover.load() and remover.model_version == version
    assert remover.predictor.description.startswith("torch")

    # Served (started through `cutout serve predictor`) on the same store, in ONNX Runtime.
    arguments = ["--model-uri", "models:/cutout@champion", "--runtime", "onnx"]
    server = start_predictor(arguments, mlflow_local / "server.log", cwd=mlflow_local, cli=True)
    try:
        wait_for(server)
        answer = post_v1(server, [{"b64": png_b64(product_photo(100, 100))}])
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == version
        # ONNX serving never loads PyTorch (about 470 MiB of resident memory per replica).
        assert "libtorch" not in Path(f"/proc/{server.process.pid}/maps").read_text()
    finally:
        stop(server)

"""The feedback transformer: in front of the predictor, it validates photos and routes each cutout.

    python -m cutout.serve.transformer --predictor_host 127.0.0.1:8081 --feedback-uri s3://bucket/feedback

Clients call it exactly as they call the predictor (v1 or v2, `cutout.serve.codec`) and get the same
response. Per request:

1. ``preprocess`` decodes and validates the photos with the predictor's codec: a bad request is a 400
   here and never reaches the predictor. A JPEG is decoded at 1/8 of its size (the whole stream is
   still read, so a truncated file is still refused): the transformer never needs its pixels.
2. ``predict`` forwards the photos to the predictor over REST v2 (``/v2/models/<name>/infer``) with
   the client's options, always asking for the mask too (routing stores it): photo files as the client
   sent them (base64 BYTES), pixels as a binary UINT8 tensor. v2 options are per request, so photos of
   a v1 request with different options go as one request per set of options, side by side.
3. ``postprocess`` passes the predictor's PNGs on in the client's protocol (dropping a mask the client
   did not ask for), and hands every (photo, mask, score) to a `FeedbackRouter`: score ≥ threshold →
   the retraining store, below → the review queue. Routing happens on a background thread; a slow or
   failing store never fails or slows the response.

Why the predictor composes the cutouts: it renders them anyway when called directly, and on two
cores every millisecond the transformer spends decoding the full photo, decoding the mask PNG and
encoding the cutout again is taken from the network, so passing the PNGs on keeps what the transformer
adds to the predictor's latency small.

The threshold is ``--threshold`` if given; otherwise the one stored on the registered model version
that made the prediction (`cutout.platform.registry.routing_threshold`, looked up once per version), and
`UNCALIBRATED_THRESHOLD` for a model that has none (a file, or a version never calibrated).

Metrics at ``/metrics``: requests and latency per route (`cutout.serve.server`), KServe's per-step
histograms, the time spent waiting for the predictor, and the routing counters and score histogram of
`cutout.serve.feedback`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import kserve
import numpy as np
import orjson
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput, ModelNotReady
from prometheus_client import Histogram

from cutout.data.io import read_header
from cutout.platform.names import (  # MODEL_NAME: the service's name too
    MODEL_NAME,
    UNCALIBRATED_THRESHOLD,
    version_uri,
)
from cutout.serve import codec
from cutout.serve.feedback import DEFAULT_QUEUE_SIZE, FeedbackItem, FeedbackRouter
from cutout.serve.photos import DEFAULT_LIMITS, CutoutOptions, DecodeLimits, Photo, PhotoResult
from cutout.serve.server import decode_limits, serve_from_args, server_parser

logger = logging.getLogger(__name__)

MAX_REQUEST_ID = 128  # characters of a client's request id kept with a routed item

PREDICTOR_SECONDS = Histogram(
    "cutout_transformer_predictor_seconds", "Time waiting for the predictor's answer",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)  # fmt: skip


@dataclass(frozen=True)
class Incoming:
    """A validated request (each photo with the bytes the client sent, `Photo.raw`), its id and time."""

    request: codec.DecodedRequest
    request_id: str
    received: float


@dataclass(frozen=True)
class Prediction:
    """What the predictor answered: per photo the mask PNG, the cutout PNG (None when the client did
    not ask for one) and the score; and the model that made them."""

    masks: list[bytes]
    cutouts: list[bytes | None]
    scores: list[float]
    model_name: str
    model_version: str


class FeedbackTransformer(kserve.Model):
    """Validates photos, asks the predictor for masks and cutouts, answers, routes every prediction."""

    def __init__(
        self,
        name: str,
        predictor_host: str,
        feedback_uri: str,
        threshold: float | None = None,
        limits: DecodeLimits = DEFAULT_LIMITS,
        timeout: float = 60.0,
        use_ssl: bool = False,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        """Set up the transformer; `load` starts the feedback router.

        Args:
            name: The model name, equal to the predictor's (KServe forwards by name).
            predictor_host: ``host:port`` of the predictor.
            feedback_uri: Root of the retraining store and review queue (local or ``s3://``).
            threshold: Fixed routing threshold; None: the model version's stored one.
            limits: Per-request pixel and batch limits, as the predictor's.
            timeout: Seconds to wait for the predictor.
            use_ssl: Call the predictor over HTTPS.
            queue_size: Routed items that may wait for the store before new ones are dropped.
        """
        super().__init__(name)
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], not {threshold}")
        self.predictor_url = f"{'https' if use_ssl else 'http'}://{predictor_host}/v2/models/{name}/infer"
        self.feedback_uri = feedback_uri
        self.threshold = threshold
        self.limits = limits
        self.timeout = timeout
        self.queue_size = queue_size
        self.router: FeedbackRouter | None = None
        self._client: httpx.AsyncClient | None = None
        self._thresholds: dict[tuple[str, str], float] = {}
        self._thresholds_lock = threading.Lock()

    def load(self) -> bool:
        """Start the feedback router; the transformer holds no model of its own."""
        self.router = FeedbackRouter(self.feedback_uri, self.queue_size)
        self.ready = True
        return self.ready

    def stop(self) -> None:
        """Write what is still queued and stop the router."""
        if self.router is not None:
            self.router.close()

    def validate(self, payload: Any) -> Any:
        # The codec validates everything; KServe's own check would trip over our decoded request.
        return payload

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Incoming:
        """Decode and validate the photos (InvalidInput → 400), keeping the bytes the client sent."""
        received = time.time()
        # Checking a large photo still takes milliseconds: off the event loop, so health checks answer.
        request = await asyncio.to_thread(codec.decode_request, payload, self.limits, True)
        request_id = (headers or {}).get("x-request-id") or request.request_id or uuid.uuid4().hex
        return Incoming(request, str(request_id)[:MAX_REQUEST_ID], received)

    async def predict(
        self, payload: Incoming, headers: dict[str, str] | None = None, response_headers=None
    ) -> tuple[Incoming, Prediction]:
        """Ask the predictor for each photo's mask, score and (if asked for) cutout, over REST v2."""
        photos = payload.request.photos
        groups = photos_by_options(photos)
        answers = await asyncio.gather(
            *(self._ask([photos[i] for i in indices], payload.request_id) for indices in groups)
        )
        return payload, merge_predictions(groups, answers)

    async def _ask(self, photos: list[Photo], request_id: str) -> Prediction:
        """One v2 request for photos that share their options."""
        body, extra = await asyncio.to_thread(predictor_request, photos, request_id)
        with PREDICTOR_SECONDS.time():
            try:
                response = await self._http().post(self.predictor_url, content=body, headers=extra)
            except httpx.HTTPError as error:
                raise ModelNotReady(
                    self.name, f"the predictor at {self.predictor_url} is unreachable: {error}"
                ) from None
        release_stream(response)
        return await asyncio.to_thread(parse_prediction, response, photos)

    async def postprocess(self, result: Any, headers: dict[str, str] | None = None, response_headers=None):
        """Answer in the client's protocol with the predictor's PNGs, and route every photo."""
        incoming, prediction = result
        results = client_results(incoming.request.photos, prediction)
        threshold = await self.threshold_for(prediction.model_name, prediction.model_version)
        self.route(incoming, prediction, threshold)
        return codec.encode_response(
            incoming.request, results, prediction.model_name, prediction.model_version
        )

    def route(self, incoming: Incoming, prediction: Prediction, threshold: float) -> None:
        """Hand every photo of the request to the router; never raises, never waits for a store."""
        if self.router is None:
            return
        photos = zip(incoming.request.photos, prediction.masks, prediction.scores, strict=True)
        for photo, mask, score in photos:
            try:
                item = FeedbackItem(
                    photo=photo.raw if photo.raw is not None else np.asarray(photo.image),
                    photo_format=photo_format(photo.raw), mask=mask, width=photo.size[0],
                    height=photo.size[1], score=score, threshold=threshold,
                    model_name=prediction.model_name, model_version=prediction.model_version,
                    request_id=incoming.request_id, created=incoming.received,
                )  # fmt: skip
            except Exception as error:  # routing must never cost the client its answer
                logger.warning("could not route a photo of request %s: %s", incoming.request_id, error)
                continue
            self.router.submit(item)

    async def threshold_for(self, model_name: str, model_version: str) -> float:
        """The routing threshold for predictions of this model version (looked up once, then cached)."""
        if self.threshold is not None:
            return self.threshold
        key = (model_name, model_version)
        if key not in self._thresholds:
            value = await asyncio.to_thread(stored_threshold, model_name, model_version)
            with self._thresholds_lock:
                self._thresholds[key] = UNCALIBRATED_THRESHOLD if value is None else value
            note = "" if value is not None else " (none stored: the default)"
            logger.info("routing threshold for %s version %s: %.4f%s", model_name, model_version,
                        self._thresholds[key], note)  # fmt: skip
        return self._thresholds[key]

    def _http(self) -> httpx.AsyncClient:
        # Created on first use, inside the server's event loop, and kept: connections are reused.
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout, limits=httpx.Limits(max_keepalive_connections=32)
            )
        return self._client


# --- pieces, as plain functions ------------------------------------------------------------------


def photo_format(original: bytes | None) -> str:
    """Pillow's name of the photo's format, from its header ("" for pixels, stored as PNG)."""
    return "" if original is None else read_header(original).format


def photos_by_options(photos: list[Photo]) -> list[list[int]]:
    """The photos' indices grouped by options, in order of first appearance: one predictor request each."""
    groups: dict[CutoutOptions, list[int]] = {}
    for index, photo in enumerate(photos):
        groups.setdefault(photo.options, []).append(index)
    return list(groups.values())


def forwarded_parameters(options: CutoutOptions) -> dict[str, Any]:
    """The v2 parameters asking the predictor for what the client wants, and always for the mask."""
    parameters: dict[str, Any] = {"output": "both" if options.wants_cutout else "mask", "crop": options.crop}
    if options.bg_color is not None:
        parameters["bg_color"] = "#{:02x}{:02x}{:02x}".format(*options.bg_color)
    return parameters


def predictor_request(photos: list[Photo], request_id: str) -> tuple[bytes, dict[str, str]]:
    """A v2 request for photos that share their options, and its headers.

    Photo files go as the client sent them (base64 BYTES); pixels as a binary UINT8 tensor, not as a
    JSON list of numbers (all photos of a pixels tensor share one size).
    """
    parameters = forwarded_parameters(photos[0].options)
    headers = {"content-type": "application/json", "x-request-id": request_id}
    if all(photo.raw is not None for photo in photos):
        data = [base64.b64encode(photo.raw).decode("ascii") for photo in photos]
        tensor = {"name": codec.V2_IMAGE, "datatype": "BYTES", "shape": [len(data)], "data": data}
        return orjson.dumps({"id": request_id, "inputs": [tensor], "parameters": parameters}), headers
    pixels = np.stack([np.asarray(photo.image, dtype=np.uint8) for photo in photos])
    tensor = {"name": codec.V2_PIXELS, "datatype": "UINT8", "shape": list(pixels.shape),
              "parameters": {"binary_data_size": pixels.nbytes}}  # fmt: skip
    header = orjson.dumps({"id": request_id, "inputs": [tensor], "parameters": parameters})
    headers.update(
        {"content-type": "application/octet-stream", INFERENCE_CONTENT_LENGTH_HEADER: str(len(header))}
    )
    return header + pixels.tobytes(), headers


def release_stream(response: httpx.Response) -> None:
    """Break the reference cycle between a read httpx response and its stream (encode/httpx#3733).

    Left alone, the cycle outlives the request. By then its objects have usually been promoted to the
    oldest garbage-collector generation, so the predictor's answer (megabytes of base64 PNGs) and the
    photo sent stay resident until the next full collection, which a process with many long-lived
    objects runs rarely: the transformer's memory swings with the garbage it holds. With the cycle
    broken, reference counting frees them at once.
    """
    response.stream = httpx.ByteStream(b"")  # the body is read; the stream is never used again


def parse_prediction(response: httpx.Response, photos: list[Photo]) -> Prediction:
    """The predictor's v2 answer for photos that share their options → masks, cutouts and scores; its
    4xx refusals become the client's 400.

    Raises:
        InvalidInput: when the predictor refused the request (its message is passed on).
        ModelNotReady: when it is not ready (503).
        RuntimeError: for any other failure or an answer that does not fit the request.
    """
    if response.status_code != 200:
        message = _error_message(response)
        if response.status_code == 503:
            raise ModelNotReady(MODEL_NAME, f"the predictor is not ready: {message}")
        if 400 <= response.status_code < 500:
            raise InvalidInput(f"the predictor refused the request: {message}")
        raise RuntimeError(f"the predictor failed with {response.status_code}: {message}")
    body = orjson.loads(response.content)
    outputs = {output["name"]: output.get("data") or [] for output in body.get("outputs", [])}
    count, wants_cutout = len(photos), photos[0].options.wants_cutout
    masks, scores = outputs.get("mask", []), outputs.get("score", [])
    cutouts = outputs.get("cutout", []) if wants_cutout else [None] * count
    if not len(masks) == len(scores) == len(cutouts) == count:
        raise RuntimeError(
            f"the predictor returned {len(masks)} masks, {len(cutouts)} cutouts and {len(scores)} scores "
            f"for {count} photos"
        )
    return Prediction(
        masks=[base64.b64decode(mask) for mask in masks],
        cutouts=[None if cutout is None else base64.b64decode(cutout) for cutout in cutouts],
        scores=[float(score) for score in scores], model_name=str(body.get("model_name", MODEL_NAME)),
        model_version=str(body.get("model_version", "")),
    )  # fmt: skip


def merge_predictions(groups: list[list[int]], answers: list[Prediction]) -> Prediction:
    """The answers for each group of photos (`photos_by_options`), back in the request's order."""
    if len(answers) == 1:
        return answers[0]
    order = [index for indices in groups for index in indices]  # the photo each answer is about
    picked = sorted(range(len(order)), key=order.__getitem__)  # the answers, in the photos' order
    masks = [mask for answer in answers for mask in answer.masks]
    cutouts = [cutout for answer in answers for cutout in answer.cutouts]
    scores = [score for answer in answers for score in answer.scores]
    first = answers[0]
    return Prediction([masks[i] for i in picked], [cutouts[i] for i in picked], [scores[i] for i in picked],
                      first.model_name, first.model_version)  # fmt: skip


def _error_message(response: httpx.Response) -> str:
    try:
        return str(orjson.loads(response.content).get("error", ""))[:300] or response.reason_phrase
    except (orjson.JSONDecodeError, AttributeError):
        return response.text[:300] or response.reason_phrase


def client_results(photos: list[Photo], prediction: Prediction) -> list[PhotoResult]:
    """What the client asked for of each photo: the predictor's PNGs, the mask only if it wants it."""
    answers = zip(photos, prediction.masks, prediction.cutouts, prediction.scores, strict=True)
    return [
        PhotoResult(mask if photo.options.wants_mask else None, cutout, score, *photo.size)
        for photo, mask, cutout, score in answers
    ]


def stored_threshold(model_name: str, model_version: str) -> float | None:
    """The threshold stored on a registered model version, or None (a file, or none stored).

    Registered versions are numbers; the predictor reports files as ``<name>-<sha256 prefix>``.
    A registry that cannot be reached is logged and treated as "none stored".
    """
    if not model_version.isdigit():
        return None
    try:
        from cutout.platform.registry import routing_threshold

        return routing_threshold(version_uri(model_version, model_name))
    except Exception as error:  # the transformer must serve even when the registry is away
        logger.warning(
            "no threshold for %s version %s from the registry: %s", model_name, model_version, error
        )
        return None


# --- command line ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """KServe's model-server arguments, ``--host`` and the request limits (`server_parser`), plus ours."""
    parser = server_parser("cutout serve transformer", __doc__.split("\n")[0], MODEL_NAME)
    add = parser.add_argument
    add("--feedback-uri", required=True, help="root of the retraining store and review queue")
    add(
        "--threshold",
        type=float,
        help=f"routing threshold; unset: the model's, else {UNCALIBRATED_THRESHOLD}",
    )
    add("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE,
        help="routed items waiting for the store before new ones are dropped")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and serve the transformer until interrupted; then write what is queued."""
    args = build_parser().parse_args(argv)
    if not args.predictor_host:
        raise SystemExit("--predictor_host is required (host:port of the predictor)")
    model = FeedbackTransformer(
        args.model_name, args.predictor_host, args.feedback_uri, args.threshold, decode_limits(args),
        timeout=args.predictor_request_timeout_seconds, use_ssl=args.predictor_use_ssl,
        queue_size=args.queue_size,
    )  # fmt: skip
    try:
        serve_from_args(model, args)  # SIGTERM: SystemExit(0) once the server has shut down
    finally:
        model.stop()


if __name__ == "__main__":
    main()

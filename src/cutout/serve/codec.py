"""The predictor's wire format: KServe v1 and v2 requests in, cutouts, masks and quality scores out.

Every problem with a request becomes a KServe `InvalidInput` (HTTP 400) whose message says where
(``instances[2].image_b64``, ``inputs[0] 'pixels'``) and what is wrong. This module reads the envelopes;
each photo, its options and its PNGs are `cutout.serve.photos`'s. Nothing here runs the network.

**v1** — ``POST /v1/models/<name>:predict``, ``Content-Type: application/json``::

    {"instances": [
        {"image_b64": "<base64 photo>", "output": "both", "bg_color": "white", "crop": false},
        {"image": {"b64": "<base64 photo>"}},
        {"b64": "<base64 photo>"}
    ]}

    200 → {"predictions": [{"mask": "<base64 PNG>", "cutout": "<base64 PNG>", "score": 0.93,
                            "width": 1000, "height": 1500}],
           "model_name": "cutout", "model_version": "3"}

An instance holds the photo in exactly one of ``image_b64``, ``image: {"b64": …}`` or ``b64`` (the
TensorFlow-serving convention), plus optional options (unknown keys are refused, so a typo is not
silently ignored):

- ``output``: ``"cutout"``, ``"mask"`` or ``"both"`` (default) — which PNGs come back.
- ``bg_color``: a CSS colour name or ``#RRGGBB``; the cutout is then flattened onto it (RGB PNG)
  instead of transparent (RGBA PNG). Default: transparent.
- ``crop``: crop the cutout to the product's box plus a 5 % margin (default false). The mask is
  never cropped.

Photos are JPEG, PNG, WebP, … as base64 (standard alphabet; whitespace and a ``data:…;base64,``
prefix are accepted). A prediction has ``mask`` (8-bit grayscale PNG, 255 = product) and/or
``cutout``, both at the photo's own upright resolution (``width`` × ``height``; a cropped cutout
is smaller), and ``score``, the mask's quality score in [0, 1] (`cutout.evaluate.confidence`).

**v2** — ``POST /v2/models/<name>/infer`` (JSON; send BYTES as base64 text, not the binary-data
extension, which KServe 0.21 decodes as UTF-8). Exactly one input:

- ``image``: datatype ``BYTES``, shape ``[N]`` (or ``[N, 1]``), data: N base64 photos;
- ``pixels``: datatype ``UINT8``, shape ``[H, W, 3]`` or ``[N, H, W, 3]``, RGB values (flat or
  nested lists; the binary-data extension works for UINT8).

Options for all photos go in the request's ``parameters``: ``{"output": "mask", "bg_color":
"#ffffff", "crop": true}`` (other parameters, such as Triton's ``binary_data_output``, pass)::

    200 → {"model_name": "cutout", "model_version": "3", "id": "…", "parameters": {"model_version": "3"},
           "outputs": [{"name": "mask",   "datatype": "BYTES", "shape": [N], "data": ["<base64 PNG>"]},
                       {"name": "cutout", "datatype": "BYTES", "shape": [N], "data": ["<base64 PNG>"]},
                       {"name": "score",  "datatype": "FP32",  "shape": [N], "data": [0.93]}]}

``mask`` or ``cutout`` is left out when ``output`` does not ask for it; ``score`` is always there.
The version is also in the response's ``parameters`` (``{"model_version": "3"}``): KServe 0.21's own
REST client (`InferResponse.from_bytes`) drops the top-level ``model_version``, but keeps those.
A request may name the outputs it wants (``"outputs": [{"name": "score"}]``) and ask for them in
binary (``binary_data_output``), as `tritonclient.http` does by default.

Errors: ``{"error": "<message>"}`` with 400 (bad request), 413 (body over the size limit), 415
(content type other than JSON), 503 (model not loaded yet).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse
from PIL import Image

from cutout.serve.photos import (
    DEFAULT_LIMITS,
    OPTION_KEYS,
    CutoutOptions,
    DecodeLimits,
    Photo,
    PhotoResult,
    check_batch,
    check_pixel_limit,
    decode_photo,
    json_kind,
    parse_options,
    quoted,
)

IMAGE_KEYS = ("image_b64", "image", "b64")
V2_IMAGE, V2_PIXELS = "image", "pixels"


@dataclass(frozen=True)
class DecodedRequest:
    """A request's photos, and what the response must look like (protocol, id, requested outputs)."""

    photos: list[Photo]
    protocol: str  # "v1" or "v2"
    request_id: str | None = None
    v2_request: InferRequest | None = field(default=None, repr=False)


def v1_predict_path(model_name: str) -> str:
    """Where a KServe v1 prediction request goes."""
    return f"/v1/models/{model_name}:predict"


def decode_request(
    payload: Any, limits: DecodeLimits = DEFAULT_LIMITS, preview: bool = False
) -> DecodedRequest:
    """Decode a v1 body (dict, or raw JSON bytes) or a v2 `InferRequest` into photos and options.

    Args:
        payload: What KServe hands a model's ``preprocess``: a dict for v1 JSON, bytes for v1 with a
            content type KServe does not parse itself (``application/json; charset=utf-8``), an
            `InferRequest` for v2.
        limits: Pixel and batch limits.
        preview: Check photo files by decoding them small (`cutout.serve.photos.decode_photo`).

    Returns:
        The decoded request.

    Raises:
        InvalidInput: naming the problem (which instance or input, which field, why).
    """
    if isinstance(payload, InferRequest):
        return decode_v2(payload, limits, preview)
    if isinstance(payload, bytes | bytearray | str):
        payload = _parse_json(payload)
    return decode_v1(payload, limits, preview)


def _parse_json(body: bytes | bytearray | str) -> Any:
    if not body:
        raise InvalidInput("the request body is empty: send a JSON object with 'instances'")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"the request body is not valid JSON: {error}") from None


# --- v1 ----------------------------------------------------------------------------------------


def decode_v1(body: Any, limits: DecodeLimits = DEFAULT_LIMITS, preview: bool = False) -> DecodedRequest:
    """Decode ``{"instances": [...]}`` (see the module docstring).

    Raises:
        InvalidInput: naming the instance and field at fault.
    """
    if not isinstance(body, Mapping):
        raise InvalidInput(f"the request must be a JSON object with 'instances', not {json_kind(body)}")
    if "instances" not in body:
        keys = ", ".join(repr(key) for key in list(body)[:5]) or "none"
        raise InvalidInput(f"the request has no 'instances' list (its keys: {keys})")
    instances = body["instances"]
    if not isinstance(instances, list):
        raise InvalidInput(f"'instances' must be a list of objects, not {json_kind(instances)}")
    check_batch(len(instances), "instances", limits)
    photos = [
        _decode_instance(instance, f"instances[{i}]", limits, preview) for i, instance in enumerate(instances)
    ]
    return DecodedRequest(photos=photos, protocol="v1")


def _decode_instance(instance: Any, where: str, limits: DecodeLimits, preview: bool) -> Photo:
    if not isinstance(instance, Mapping):
        raise InvalidInput(
            f'{where} must be an object like {{"image_b64": "..."}}, not {json_kind(instance)}'
        )
    known = IMAGE_KEYS + OPTION_KEYS
    unknown = [key for key in instance if key not in known]
    if unknown:
        raise InvalidInput(f"{where}: unknown field {quoted(unknown[0])}; known fields: {', '.join(known)}")
    given = [key for key in IMAGE_KEYS if key in instance]
    if len(given) != 1:
        found = f"got {', '.join(given)}" if given else "found none"
        raise InvalidInput(f"{where}: give the photo in exactly one of {', '.join(IMAGE_KEYS)} ({found})")
    key = given[0]
    text, field_name = instance[key], f"{where}.{key}"
    if key == "image":  # the {"b64": ...} convention, one level down
        if not isinstance(text, Mapping) or set(text) != {"b64"}:
            raise InvalidInput(f'{field_name} must be an object {{"b64": "<base64 photo>"}}')
        text, field_name = text["b64"], f"{field_name}.b64"
    return decode_photo(text, field_name, parse_options(instance, where), limits, preview)


# --- v2 ----------------------------------------------------------------------------------------


def decode_v2(
    request: InferRequest, limits: DecodeLimits = DEFAULT_LIMITS, preview: bool = False
) -> DecodedRequest:
    """Decode a v2 request with one input, ``image`` (BYTES, base64) or ``pixels`` (UINT8 H×W×3).

    Raises:
        InvalidInput: naming the input and what is wrong with its name, datatype, shape or data.
    """
    inputs = list(request.inputs or [])
    if len(inputs) != 1:
        names = ", ".join(quoted(tensor.name) for tensor in inputs) or "none"
        raise InvalidInput(
            f"send exactly one input, {V2_IMAGE!r} (BYTES, base64 photos) or {V2_PIXELS!r} "
            f"(UINT8, H×W×3); got {len(inputs)}: {names}"
        )
    tensor = inputs[0]
    options = parse_options(_parameters(request.parameters), "parameters")
    if tensor.name == V2_IMAGE:
        photos = _decode_image_tensor(tensor, options, limits, preview)
    elif tensor.name == V2_PIXELS:
        photos = [Photo(image, options) for image in _decode_pixel_tensor(tensor, limits)]
    else:
        raise InvalidInput(
            f"unknown input {quoted(tensor.name)}: name it {V2_IMAGE!r} (BYTES) or {V2_PIXELS!r} (UINT8)"
        )
    request_id = str(request.id) if request.id else None
    return DecodedRequest(photos=photos, protocol="v2", request_id=request_id, v2_request=request)


def _parameters(parameters: Any) -> dict[str, Any]:
    """The request's options; other parameters (Triton's ``binary_data_output`` …) are KServe's to read."""
    if not isinstance(parameters, Mapping):
        return {}
    return {key: value for key, value in parameters.items() if key in OPTION_KEYS}


def _shape(tensor: InferInput, where: str) -> list[int]:
    shape = list(tensor.shape or [])
    if not all(isinstance(size, int) and size >= 0 for size in shape):
        raise InvalidInput(f"{where}: shape must be a list of non-negative integers, got {quoted(shape)}")
    return shape


def _decode_image_tensor(
    tensor: InferInput, options: CutoutOptions, limits: DecodeLimits, preview: bool
) -> list[Photo]:
    where = f"input {V2_IMAGE!r}"
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"{where} must have datatype BYTES (base64 photos), not {quoted(tensor.datatype)}")
    shape = _shape(tensor, where)
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise InvalidInput(f"{where}: shape must be [N] or [N, 1] (N photos), got {shape}")
    values = _flatten(tensor.data, where)
    if len(values) != shape[0]:
        raise InvalidInput(f"{where}: shape {shape} says {shape[0]} photos but data holds {len(values)}")
    check_batch(len(values), where, limits)
    return [decode_photo(value, f"{where}[{i}]", options, limits, preview) for i, value in enumerate(values)]


def _flatten(data: Any, where: str) -> list[Any]:
    """A BYTES tensor's elements, from a flat or nested list."""
    if isinstance(data, np.ndarray):
        return list(data.reshape(-1))
    if not isinstance(data, list):
        raise InvalidInput(f"{where}: data must be a list, not {json_kind(data)}")
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item, where) if isinstance(item, list) else [item])
    return flat


def _decode_pixel_tensor(tensor: InferInput, limits: DecodeLimits) -> list[Image.Image]:
    where = f"input {V2_PIXELS!r}"
    if tensor.datatype != "UINT8":
        raise InvalidInput(
            f"{where} must have datatype UINT8 (RGB values 0-255), not {quoted(tensor.datatype)}"
        )
    shape = _shape(tensor, where)
    if len(shape) == 3:
        shape = [1, *shape]
    if len(shape) != 4 or shape[3] != 3:
        raise InvalidInput(
            f"{where}: shape must be [H, W, 3] or [N, H, W, 3] (RGB), got {list(tensor.shape)}"
        )
    count, height, width, _ = shape
    if height == 0 or width == 0:
        raise InvalidInput(f"{where}: an image of {width}×{height} pixels has nothing to cut out")
    check_batch(count, where, limits)
    check_pixel_limit(width, height, where, limits)
    pixels = _pixel_array(tensor.data, shape, where)
    return [Image.fromarray(np.ascontiguousarray(pixels[i]), mode="RGB") for i in range(count)]


def _pixel_array(data: Any, shape: list[int], where: str) -> np.ndarray:
    """The UINT8 data as an N×H×W×3 array, after checking its count, type and range."""
    expected = int(np.prod(shape))
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"{where}: data must be a flat or evenly nested list of integers") from None
    if values.size != expected:
        raise InvalidInput(f"{where}: shape {shape} needs {expected:,} values, data holds {values.size:,}")
    if values.dtype == np.uint8:
        return values.reshape(shape)
    if values.dtype.kind not in "iu":
        raise InvalidInput(f"{where}: values must be integers 0-255, got {values.dtype.name} data")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise InvalidInput(f"{where}: values must lie in 0-255, got {values.min()}..{values.max()}")
    return values.astype(np.uint8).reshape(shape)


# --- responses ---------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_v1(results: list[PhotoResult], model_name: str, model_version: str) -> dict[str, Any]:
    """``{"predictions": [...], "model_name": ..., "model_version": ...}`` (see the module docstring)."""
    predictions = []
    for result in results:
        prediction: dict[str, Any] = {}
        if result.mask_png is not None:
            prediction["mask"] = _b64(result.mask_png)
        if result.cutout_png is not None:
            prediction["cutout"] = _b64(result.cutout_png)
        prediction.update(score=result.score, width=result.width, height=result.height)
        predictions.append(prediction)
    return {"predictions": predictions, "model_name": model_name, "model_version": model_version}


def encode_v2(
    results: list[PhotoResult], model_name: str, model_version: str, request: InferRequest | None = None
) -> InferResponse:
    """Outputs ``mask`` and ``cutout`` (BYTES, base64 PNG; only those asked for) and ``score`` (FP32)."""
    count = len(results)
    outputs = []
    for name, pngs in (("mask", [r.mask_png for r in results]), ("cutout", [r.cutout_png for r in results])):
        if all(png is not None for png in pngs) and pngs:
            data = np.array([_b64(png) for png in pngs], dtype=np.object_)
            outputs.append(InferOutput(name=name, shape=[count], datatype="BYTES", data=data))
    scores = np.array([r.score for r in results], dtype=np.float32)
    outputs.append(InferOutput(name="score", shape=[count], datatype="FP32", data=scores))
    binary = bool(request is not None and request.use_binary_outputs)
    return InferResponse(
        response_id=str((request.id if request is not None else None) or uuid.uuid4()),
        model_name=model_name, model_version=model_version, parameters={"model_version": model_version},
        infer_outputs=outputs, use_binary_outputs=binary,
        requested_outputs=request.request_outputs if request is not None else None,
    )  # fmt: skip


def encode_response(request: DecodedRequest, results: list[PhotoResult], model_name: str, model_version: str):
    """The response in the request's protocol: a v1 dict or a v2 `InferResponse`."""
    if request.protocol == "v2":
        return encode_v2(results, model_name, model_version, request.v2_request)
    return encode_v1(results, model_name, model_version)

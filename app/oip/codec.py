"""An inference request's structure, read cheaply before it joins a batch.

The body is a JSON header, then (binary tensor data extension) the tensors' raw bytes, the JSON's
length in `Inference-Header-Content-Length`. What is checked here is structure and sizes: the
datatype and shape, which bytes belong to the input, which outputs to answer and how. Tensor values
are read in the inference thread (`pixels`), so a large tensor never holds the event loop.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from functools import partial
from typing import Any

from starlette.concurrency import run_in_threadpool

from app.core.errors import BodyTooLarge, InvalidInferenceRequest, TooManyImages, UnsupportedContentEncoding
from app.oip.metadata import INPUT_SHAPES, OUTPUT_NAMES, PROBABILITIES

HEADER_LENGTH = "Inference-Header-Content-Length"
ITEM_SIZE = {"FP32": 4, "UINT8": 1}
# A JSON part larger than this is parsed in a worker thread: 64 images as JSON numbers (~0.5 MB)
# take json.loads milliseconds, which would stall every other request on the event loop.
INLINE_JSON_BYTES = 64 * 1024


@dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str  # FP32, UINT8 or BYTES
    shape: tuple[int, ...]
    data: list[Any] | None = None  # the JSON "data", flat or nested, or
    raw: memoryview | None = None  # the binary data after the JSON header

    @property
    def images(self) -> int:
        return self.shape[0]


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0  # > 0: the top k classes as "<value>:<index>:<label>" strings instead


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    input: InputTensor
    outputs: tuple[RequestedOutput, ...]
    timeout_s: float | None = None  # the request's `timeout` parameter (microseconds, as tritonclient sends it)


async def read_request(
    body: bytes, header_length: str | None, encoding: str | None, max_body_bytes: int, max_images: int
) -> InferRequest:
    """Decompress and parse; on the event loop when that is cheap, else in a worker thread."""
    encoding = (encoding or "").strip().lower()
    json_size = _length(header_length) or len(body)
    parse = partial(_decompress_and_parse, body, header_length, encoding, max_body_bytes, max_images)
    if encoding not in ("", "identity") or json_size > INLINE_JSON_BYTES:
        return await run_in_threadpool(parse)
    return parse()


def _decompress_and_parse(
    body: bytes, header_length: str | None, encoding: str, max_body_bytes: int, max_images: int
) -> InferRequest:
    return parse_request(decompress(body, encoding, max_body_bytes), header_length, max_images)


def decompress(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """A gzip or deflate body (tritonclient's `request_compression_algorithm`), at most max_bytes inflated."""
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedContentEncoding(f"Content-Encoding {encoding!r} is not accepted; use gzip or deflate")
    inflater = zlib.decompressobj(wbits=32 + zlib.MAX_WBITS)  # 32+: a gzip or a zlib header, told apart
    try:
        inflated = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise InvalidInferenceRequest(f"the {encoding} body cannot be decompressed: {exc}") from None
    if len(inflated) > max_bytes:  # a small body may inflate to gigabytes: stop at the limit
        raise BodyTooLarge(f"the decompressed request body is larger than the limit of {max_bytes} bytes")
    if not inflater.eof:
        raise InvalidInferenceRequest(f"the {encoding} body is truncated")
    return inflated


def parse_request(body: bytes, header_length: str | None, max_images: int) -> InferRequest:
    json_part, binary = _split(body, header_length)
    try:
        header = json.loads(json_part)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        hint = f" (binary data after the JSON needs the {HEADER_LENGTH} header)" if "Extra data" in str(exc) else ""
        raise InvalidInferenceRequest(f"the inference request is not valid JSON: {exc}{hint}") from None
    if not isinstance(header, dict):
        raise InvalidInferenceRequest("the inference request must be a JSON object")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInferenceRequest("'id' must be a string")
    request_parameters = _parameters(header, "the request")
    binary_output = _flag(request_parameters, "binary_data_output", False, "the request")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        got = f"{len(inputs)} tensors" if isinstance(inputs, list) else f"{inputs!r:.40}"
        raise InvalidInferenceRequest(f"'inputs' must be a list of exactly one tensor, the images; got {got}")
    return InferRequest(
        request_id, _input(inputs[0], binary, max_images), _outputs(header, binary_output), _timeout(request_parameters)
    )


def _timeout(parameters: dict[str, Any]) -> float | None:
    """Triton's request `timeout`: microseconds to wait unrun before the server gives up; absent or 0: none."""
    value = parameters.get("timeout")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInferenceRequest("the request's 'timeout' parameter must be a whole number of microseconds")
    return value / 1_000_000 if value else None


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    size = _length(header_length)
    if size is None or not 0 < size <= len(body):
        raise InvalidInferenceRequest(
            f"{HEADER_LENGTH} must be a length from 1 to the body's {len(body)} bytes; got {header_length!r:.40}"
        )
    return body[:size], memoryview(body)[size:]


def _length(text: str | None) -> int | None:
    digits = (text or "").strip()
    # At most 18 digits: any body length fits, and int() never meets Python's 4,300-digit limit.
    return int(digits) if len(digits) <= 18 and digits.isascii() and digits.isdigit() else None


def _input(spec: object, binary: memoryview, max_images: int) -> InputTensor:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InvalidInferenceRequest("the input must be a JSON object with a string 'name'")
    name, datatype = spec["name"], spec.get("datatype")
    where = f"input {name!r}"
    if not isinstance(datatype, str) or datatype not in INPUT_SHAPES:
        raise InvalidInferenceRequest(f"{where}: datatype {datatype!r} is not accepted; send FP32, UINT8 or BYTES")
    shape = _shape(spec.get("shape"), where)
    accepted = INPUT_SHAPES[datatype]
    if len(shape) < 1 or shape[1:] not in accepted:
        options = " or ".join(str(["N", *dims]).replace("'", "") for dims in accepted)
        raise InvalidInferenceRequest(f"{where}: shape {list(shape)} does not fit {datatype}; send {options}")
    if shape[0] == 0:
        raise InvalidInferenceRequest(f"{where}: the batch is empty (N = 0)")
    if shape[0] > max_images:
        raise TooManyImages(f"{shape[0]} images in one request; at most {max_images} are accepted")
    parameters = _parameters(spec, where)
    _no_shared_memory(parameters, where)
    size, data = parameters.get("binary_data_size"), spec.get("data")
    if size is None:
        if len(binary):
            raise InvalidInferenceRequest(f"{len(binary)} bytes follow the JSON, but no input has 'binary_data_size'")
        if not isinstance(data, list):
            raise InvalidInferenceRequest(f"{where}: give 'data' as a JSON array, or binary data")
        return InputTensor(name, datatype, shape, data=data)
    if data is not None:
        raise InvalidInferenceRequest(f"{where} has both 'data' and 'binary_data_size'")
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise InvalidInferenceRequest(
            f"{where}: binary_data_size is {size!r}, but {len(binary)} bytes follow the JSON header"
        )
    if datatype in ITEM_SIZE and size != (expected := math.prod(shape) * ITEM_SIZE[datatype]):
        raise InvalidInferenceRequest(f"{where}: {datatype} {list(shape)} is {expected} bytes; got {size}")
    return InputTensor(name, datatype, shape, raw=binary)


def _outputs(header: dict[str, Any], binary_default: bool) -> tuple[RequestedOutput, ...]:
    specs = header.get("outputs")
    if not specs:  # absent or empty: every output, in the model's order
        return tuple(RequestedOutput(name, binary_default) for name in OUTPUT_NAMES)
    if not isinstance(specs, list):
        raise InvalidInferenceRequest("'outputs' must be a list")
    chosen: list[RequestedOutput] = []
    for spec in specs:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidInferenceRequest("each requested output must be a JSON object with a string 'name'")
        name = spec["name"]
        if name not in OUTPUT_NAMES:
            raise InvalidInferenceRequest(f"unknown output {name!r}; this model gives {', '.join(OUTPUT_NAMES)}")
        if any(output.name == name for output in chosen):
            raise InvalidInferenceRequest(f"output {name!r} is requested twice")
        where = f"output {name!r}"
        parameters = _parameters(spec, where)
        _no_shared_memory(parameters, where)
        classification = parameters.get("classification", 0)
        if not isinstance(classification, int) or isinstance(classification, bool) or classification < 0:
            raise InvalidInferenceRequest(f"{where}: 'classification' must be a class count")
        if classification and name != PROBABILITIES:
            raise InvalidInferenceRequest(f"{where}: classification applies to {PROBABILITIES!r} only")
        binary = _flag(parameters, "binary_data", binary_default, where)
        chosen.append(RequestedOutput(name, binary, classification))
    return tuple(chosen)


def _shape(value: object, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise InvalidInferenceRequest(f"{where}: 'shape' must be a list of non-negative integers")
    return tuple(value)


def _parameters(spec: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = spec.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidInferenceRequest(f"{where}: 'parameters' must be a JSON object")
    return parameters


def _flag(parameters: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInferenceRequest(f"{where}: parameter {key!r} must be true or false")
    return value


def _no_shared_memory(parameters: dict[str, Any], where: str) -> None:
    if "shared_memory_region" in parameters:
        raise InvalidInferenceRequest(f"{where}: shared memory is not supported; send the data in the body")

"""An input tensor's values -> float32 [N, 28, 28] pixels in [0, 1], in the inference thread.

`plan` gives a batch item's `prepare` (app/core/batching.py): whatever is wrong with the values (a
count that does not match the shape, NaN, a pixel out of range, a file that does not decode) raises
a PixelserveError that fails this request alone, with its 4xx. A BYTES tensor's files are taken
apart and their headers measured first (app/core/upload_cost.py): over the per-request pixel budget is
a 413 before any decoding, and a costly one is decoded in the large-image lane.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Sequence
from functools import partial

import numpy as np
from PIL import Image

from app.core.batch_work import Prepare
from app.core.errors import InvalidImage, InvalidInferenceRequest, PixelserveError
from app.core.inference import to_model_input
from app.core.settings import Settings
from app.core.upload_cost import is_heavy, open_uploads
from app.oip.codec import InputTensor
from app.oip.metadata import SIDE


def plan(tensor: InputTensor, recipe: str, settings: Settings) -> tuple[Prepare, bool]:
    """The tensor's `prepare`, and whether it is heavy (BYTES decoding many pixels: the large-image lane)."""
    if tensor.datatype != "BYTES":
        return partial(to_pixels, tensor, recipe, settings.max_image_pixels), False
    where = f"input {tensor.name!r}"
    files = _files(tensor, where)
    opened, pixels = open_uploads(files, settings, partial(_place, where, len(files)))
    return partial(_images, opened, recipe, settings.max_image_pixels, where), is_heavy(pixels, len(files), settings)


def _place(where: str, count: int, position: int) -> str:
    return f"{where}, element {position + 1} of {count}"


def to_pixels(tensor: InputTensor, recipe: str, max_pixels: int) -> np.ndarray:
    where = f"input {tensor.name!r}"
    if tensor.datatype == "BYTES":
        return _images(_files(tensor, where), recipe, max_pixels, where)
    values = _values(tensor, where)
    if tensor.datatype == "UINT8":
        # Binary UINT8 cannot be out of range; JSON numbers can (NaN fails every comparison).
        if tensor.raw is None and not ((values >= 0) & (values <= 255) & (values == np.round(values))).all():
            raise InvalidInferenceRequest(f"{where}: UINT8 values must be whole numbers from 0 to 255")
        pixels = values.astype(np.float32) / np.float32(255)
    else:
        if not np.isfinite(values).all():
            raise InvalidInferenceRequest(f"{where}: FP32 pixels hold NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:
            raise InvalidInferenceRequest(
                f"{where}: FP32 pixels must lie in [0, 1] (found {low:g} to {high:g}): send raw pixels, light on "
                "dark, scaled to [0, 1] and NOT normalised; the model normalises itself"
            )
        pixels = values.astype(np.float32)  # a copy: torch warns on a read-only view of the body
    return pixels.reshape(tensor.images, SIDE, SIDE)


def _values(tensor: InputTensor, where: str) -> np.ndarray:
    """The numbers, flat: binary data as stored (sizes checked by codec), JSON data as float64."""
    if tensor.raw is not None:
        return np.frombuffer(tensor.raw, dtype="<f4" if tensor.datatype == "FP32" else np.uint8)
    try:
        values = np.asarray(tensor.data, dtype=np.float64)
    except (ValueError, TypeError, OverflowError) as exc:  # strings, objects, ragged nesting, 10**400
        raise InvalidInferenceRequest(f"{where}: 'data' must be numbers, flat or evenly nested ({exc})") from None
    expected = math.prod(tensor.shape)
    if values.size != expected:
        raise InvalidInferenceRequest(f"{where}: shape {list(tensor.shape)} holds {expected} values; got {values.size}")
    return values.reshape(-1)


def _files(tensor: InputTensor, where: str) -> list[bytes]:
    """The encoded image files of a BYTES tensor: length-prefixed binary data, or base64 JSON strings."""
    expected = math.prod(tensor.shape)
    files = _unpack(tensor.raw, expected, where) if tensor.raw is not None else _base64(tensor.data, where)
    if len(files) != expected:
        raise InvalidInferenceRequest(f"{where}: shape {list(tensor.shape)} holds {expected} files; got {len(files)}")
    for position, data in enumerate(files):
        if not data:  # before the headers are read: an empty element is a 422, not an unknown format
            raise InvalidImage(f"{_place(where, len(files), position)}: the file is empty")
    return files


def _unpack(raw: memoryview, expected: int, where: str) -> list[bytes]:
    files: list[bytes] = []
    offset = 0
    while offset < len(raw) and len(files) <= expected:  # past `expected`, the count is wrong anyway
        if offset + 4 > len(raw):
            raise InvalidInferenceRequest(f"{where}: BYTES data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", raw, offset)
        start, end = offset + 4, offset + 4 + length
        if end > len(raw):
            raise InvalidInferenceRequest(
                f"{where}: BYTES element {len(files) + 1} claims {length} bytes; {len(raw) - start} remain"
            )
        files.append(bytes(raw[start:end]))
        offset = end
    return files


def _base64(data: object, where: str) -> list[bytes]:
    # JSON has no bytes: an image file travels as a base64 string (a file is not UTF-8 text).
    try:
        items = np.asarray(data, dtype=object).reshape(-1)
    except ValueError as exc:
        raise InvalidInferenceRequest(
            f"{where}: 'data' must be base64 strings, flat or evenly nested ({exc})"
        ) from None
    files = []
    for position, item in enumerate(items, 1):
        if not isinstance(item, str):
            raise InvalidInferenceRequest(f"{where}: element {position} is not a string; BYTES as JSON are base64")
        try:
            files.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise InvalidInferenceRequest(f"{where}: element {position} is not base64 ({exc})") from None
    return files


def _images(files: Sequence[bytes | Image.Image], recipe: str, max_pixels: int, where: str) -> np.ndarray:
    pixels = np.empty((len(files), SIDE, SIDE), dtype=np.float32)
    for position, data in enumerate(files):
        place = _place(where, len(files), position)
        try:
            pixels[position] = to_model_input(data, recipe, max_pixels)
        except PixelserveError as exc:
            exc.message = f"{place}: {exc.message}"
            raise
    return pixels

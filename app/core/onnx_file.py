"""What model.onnx carries to be checked without torch: a digest of itself and reference outputs.

A model.onnx is a protobuf ModelProto. Its metadata_props (field 14) hold two strings: metadata.json
(the same JSON as model.pt's) and CHECK_KEY, written at export (training/onnx_export.py):

    {"sha256": <SHA-256 of the file's other top-level fields, raw, in file order>,
     "probe": PROBE_NAME, "outputs": <the torch model's probabilities on probe()>}

A file cannot hold its own hash, but it can hold the hash of everything except the field that holds
it: the graph, its initialisers (the weights), opsets and IR version. So a process without torch (the
slim image) can tell a changed initialiser (the digest) and a runtime that computes something else
(the outputs) without model.pt. Reading the fields needs no `onnx` package: the protobuf wire format
is a few lines, read once over the bytes, with every length checked against what is left.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

CHECK_KEY = "pixelserve.check"
PROBE_NAME = "uniform-seed0-6+blank+saturated"
MAX_ONNX_BYTES = 256 * 1024 * 1024  # the shipped networks are ~1 MB; read into memory whole, so bounded
_METADATA_PROPS = 14  # ModelProto.metadata_props: repeated StringStringEntryProto {key = 1; value = 2}


class MalformedOnnx(ValueError):
    """Bytes that are not a protobuf message this reader can walk."""


@dataclass(frozen=True)
class OnnxFile:
    sha256: str  # of every top-level field but metadata_props
    props: dict[str, str]  # metadata_props, key -> value


def probe() -> np.ndarray:
    """[8, 1, 28, 28] float32: six uniform random images (NumPy's PCG64, seed 0: the same on every
    platform and NumPy 2.x), a blank and a saturated one. Made without torch on both sides."""
    images = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    images[6] = 0.0
    images[7] = 1.0
    return images


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise MalformedOnnx("truncated or overlong varint")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def _fields(data: bytes) -> list[tuple[int, int, int, int]]:
    """(field number, start of the field, start of its payload, end) for each top-level field."""
    fields, at = [], 0
    while at < len(data):
        start = at
        tag, at = _varint(data, at)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, end = _varint(data, at)
        elif wire == 2:
            length, at = _varint(data, at)
            end = at + length
        elif wire in (1, 5):
            end = at + (8 if wire == 1 else 4)
        else:  # groups (3, 4) are not in ONNX's schema
            raise MalformedOnnx(f"unsupported wire type {wire}")
        if end > len(data) or number == 0:
            raise MalformedOnnx("a field runs past the end of the file")
        fields.append((number, start, at, end))
        at = end
    return fields


def read_onnx_file(data: bytes) -> OnnxFile:
    digest = hashlib.sha256()
    props: dict[str, str] = {}
    for number, start, payload, end in _fields(data):
        if number != _METADATA_PROPS:
            digest.update(data[start:end])
            continue
        raw = data[payload:end]
        entry = {key: raw[p:e] for key, _, p, e in _fields(raw)}
        try:
            props[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
        except UnicodeDecodeError as exc:
            raise MalformedOnnx("a metadata_props entry is not UTF-8") from exc
    return OnnxFile(sha256=digest.hexdigest(), props=props)


def check_entry(outputs: np.ndarray, sha256: str = "") -> str:
    """The CHECK_KEY value: the reference outputs on probe() and the digest of the rest of the file."""
    return json.dumps({"sha256": sha256, "probe": PROBE_NAME, "outputs": np.asarray(outputs, np.float64).tolist()})


def parse_check(text: str) -> dict[str, Any]:
    """CHECK_KEY's value, validated: a 64-hex digest, this probe, and a finite [8, C] outputs table."""
    check = json.loads(text)
    if not isinstance(check, dict) or check.get("probe") != PROBE_NAME:
        raise ValueError(f"not a {PROBE_NAME} check")
    sha = check.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError("no SHA-256")
    outputs = np.asarray(check.get("outputs"), dtype=np.float64)
    if outputs.ndim != 2 or outputs.shape[0] != len(probe()) or not np.isfinite(outputs).all():
        raise ValueError(f"outputs are not a finite [{len(probe())}, C] table")
    return {"sha256": sha, "outputs": outputs}

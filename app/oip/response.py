"""The answer: `probabilities` FP32 [N, C] and `label` BYTES [N], as JSON or binary tensor data.

Binary outputs follow the JSON in the order the JSON lists them, each output's byte count in its
`parameters.binary_data_size` and the JSON's length in `Inference-Header-Content-Length`, as
tritonclient reads them. BYTES elements are a 4-byte little-endian length, then the UTF-8 text.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from fastapi.responses import Response

from app.core.artifacts import LoadedModel
from app.oip.bodies import InferenceResponse
from app.oip.codec import HEADER_LENGTH, InferRequest, RequestedOutput
from app.oip.metadata import PROBABILITIES


def build_response(model: LoadedModel, request: InferRequest, rows: list[list[float]]) -> Response:
    """rows: the batcher's probabilities [N][C] as Python floats, for the model version that computed them."""
    labels = model.labels
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for requested in request.outputs:
        datatype, shape, values = _tensor(requested, rows, labels)
        output: dict[str, Any] = {"name": requested.name, "datatype": datatype, "shape": shape}
        if requested.binary:
            chunks.append(_binary(datatype, values))
            output["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            output["data"] = values
        outputs.append(output)
    body: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if request.id is not None:
        body["id"] = request.id
    body["outputs"] = outputs
    # Built through the published response model: what leaves is what the OpenAPI document says.
    header = InferenceResponse.model_validate(body).model_dump_json(exclude_none=True).encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        b"".join((header, *chunks)),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


def _tensor(requested: RequestedOutput, rows: list[list[float]], labels: list[str]) -> tuple[str, list[int], list[Any]]:
    """(datatype, shape, flat values) of one output."""
    if requested.classification:  # Triton's classification extension: "<value>:<index>:<label>", likeliest first
        k = min(requested.classification, len(labels))
        # reverse=True keeps the sort stable: tied classes stay in class order.
        top = [(row, sorted(range(len(row)), key=row.__getitem__, reverse=True)[:k]) for row in rows]
        return "BYTES", [len(rows), k], [f"{row[i]}:{i}:{labels[i]}" for row, order in top for i in order]
    if requested.name == PROBABILITIES:
        return "FP32", [len(rows), len(labels)], [p for row in rows for p in row]
    return "BYTES", [len(rows)], [labels[int(np.argmax(row))] for row in rows]  # the same argmax as /predict


def _binary(datatype: str, values: list[Any]) -> bytes:
    if datatype == "FP32":
        return np.asarray(values, dtype="<f4").tobytes()
    encoded = [str(value).encode() for value in values]
    return b"".join(struct.pack("<I", len(item)) + item for item in encoded)

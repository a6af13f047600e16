"""The protocol's bodies as pydantic models, for OpenAPI and for the metadata routes.

Inference requests are not parsed through these (a JSON tensor can hold tens of thousands of
numbers; `codec` reads it with json.loads and numpy); they document the request and response.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

Parameter = str | int | float | bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for a variable dimension (the batch)")
    parameters: dict[str, Parameter] = Field(default_factory=dict)


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(description="the versions that can be named in a URL: the served one")
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Parameter] = Field(default_factory=dict)


class RequestInput(BaseModel):
    name: str = Field(description="any name: the model has one input")
    shape: list[Annotated[int, Field(ge=0)]] = Field(
        min_length=1, max_length=4, description="[N, 1, 28, 28] or [N, 28, 28] (FP32, UINT8); [N] or [N, 1] (BYTES)"
    )
    datatype: Literal["FP32", "UINT8", "BYTES"]
    parameters: dict[str, Parameter] = Field(
        default_factory=dict, description="`binary_data_size`: the tensor is binary data after the JSON"
    )
    data: list[Any] | None = Field(None, description="the values, flat or nested; absent for binary data")


class RequestOutput(BaseModel):
    name: Literal["probabilities", "label"]
    parameters: dict[str, Parameter] = Field(
        default_factory=dict, description="`binary_data`: bool; `classification`: top-k as strings"
    )


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Parameter] = Field(
        default_factory=dict, description="`binary_data_output`: every output as binary data; others ignored"
    )
    # Exactly one: the codec refuses any other count (400), so the schema says so too.
    inputs: list[RequestInput] = Field(min_length=1, max_length=1, description="exactly one: the images")
    outputs: list[RequestOutput] | None = Field(
        None, max_length=2, description="default: every output; each at most once"
    )


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Parameter] | None = Field(None, description="`binary_data_size` for binary data")
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str = Field(description="the model version that computed this answer")
    id: str | None = None
    outputs: list[ResponseOutput]


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its $defs inlined: an OpenAPI requestBody's $refs could not reach them."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved

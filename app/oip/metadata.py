"""What a model takes and gives, in the protocol's terms: one image input, two outputs.

The input is declared once, as `input` FP32 [-1, 1, 28, 28], the tensor the network itself takes.
Two more encodings of the same images are accepted (the datatype tells which), and any input name:
the model has a single input, so a name cannot be ambiguous, and KServe and Triton examples name
theirs differently ("input-0", "INPUT0"). The input's `parameters` spell all of this out, because
the metadata schema itself has no room for alternatives.
"""

from __future__ import annotations

import json

from app.core.artifacts import LoadedModel
from app.core.imaging import ACCEPTED_FORMATS
from app.oip.bodies import ModelMetadata, TensorMetadata

SERVER_NAME = "pixelserve"
EXTENSIONS = ["binary_tensor_data", "classification"]
INPUT_NAME = "input"
PROBABILITIES = "probabilities"
LABEL = "label"
OUTPUT_NAMES = (PROBABILITIES, LABEL)
SIDE = 28

# Per datatype, the accepted shapes after the batch dimension N.
INPUT_SHAPES: dict[str, tuple[tuple[int, ...], ...]] = {
    "FP32": ((1, SIDE, SIDE), (SIDE, SIDE)),
    "UINT8": ((SIDE, SIDE), (1, SIDE, SIDE)),
    "BYTES": ((), (1,)),
}

INPUT_DOC = {
    "FP32": (
        "[N, 1, 28, 28] or [N, 28, 28]: RAW pixels in [0, 1], light ink on a dark background as in the "
        "dataset. Do NOT normalise (no mean/std): the served module normalises itself. Values outside "
        "[0, 1] or NaN are refused (400)."
    ),
    "UINT8": "[N, 28, 28] or [N, 1, 28, 28]: pixels 0..255, light on dark as in the dataset; divided by 255.",
    "BYTES": (
        f"[N] or [N, 1]: encoded image files ({', '.join(ACCEPTED_FORMATS)}) of any size and background, "
        "put through the model's preprocessing recipe like POST /predict uploads. As JSON data, each "
        "element is the file in base64; as binary data, the usual 4-byte little-endian length + bytes."
    ),
    "name": "any input name is accepted: the model has one input, and the datatype selects the encoding",
}

# The protocol's platform names are <project>_<format>; torch.export has none of its own.
_PLATFORMS = {".pt": "pytorch_torchscript", ".pt2": "pytorch_export"}


def platform(model: LoadedModel) -> str:
    return _PLATFORMS.get(model.path.suffix, "pytorch")


def model_metadata(model: LoadedModel, max_images: int) -> ModelMetadata:
    labels = model.labels
    return ModelMetadata(
        name=model.name,
        versions=[model.version],  # only the served version can be asked for by name
        platform=platform(model),
        inputs=[
            TensorMetadata(
                name=INPUT_NAME,
                datatype="FP32",
                shape=[-1, 1, SIDE, SIDE],
                parameters={**INPUT_DOC, "max_batch_size": max_images},
            )
        ],
        outputs=[
            TensorMetadata(
                name=PROBABILITIES,
                datatype="FP32",
                shape=[-1, len(labels)],
                parameters={"description": "every class's probability, in the order of the labels"},
            ),
            TensorMetadata(
                name=LABEL,
                datatype="BYTES",
                shape=[-1],
                parameters={"description": "the likeliest class's name"},
            ),
        ],
        parameters={
            "labels": json.dumps(labels),  # parameter values are scalars: the list as a JSON string
            "preprocessing": model.recipe,
            "architecture": str(model.metadata.get("architecture", "")),
            "dataset": str(model.metadata.get("dataset", "")),
        },
    )

"""Labelled captures as arrays and as IDX files: what an export holds and what training reads.

IDX is the format of the MNIST files themselves (training/data.py's parse_idx reads both): a
big-endian header (0, 0, type 0x08 = unsigned byte, dimensions), the sizes, then the bytes.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.core.captures_store import CaptureStore

IMAGES_FILE = "captures-images-idx3-ubyte"
LABELS_FILE = "captures-labels-idx1-ubyte"
INDEX_FILE = "captures.json"  # the capture ids and the label names, in the files' order


@dataclass(frozen=True)
class LabelledCaptures:
    ids: list[int]
    images: np.ndarray  # uint8 [N, 28, 28], light on dark
    labels: np.ndarray  # int64 [N], indices into the model's labels
    skipped: int  # labelled captures left out: a label this model lacks, or an unreadable file


def labelled_arrays(store: CaptureStore, model: str, labels: Sequence[str]) -> LabelledCaptures:
    """Every labelled capture of `model` whose label is one of `labels` and whose file reads."""
    position = {name: i for i, name in enumerate(labels)}
    ids, images, indices, skipped = [], [], [], 0
    for capture in store.labelled(model):
        if capture["label"] not in position:
            skipped += 1
            continue
        try:
            pixels = store.pixels(capture)
        except (OSError, ValueError):  # removed meanwhile, or a file a crash left short
            skipped += 1
            continue
        ids.append(capture["id"])
        images.append(pixels)
        indices.append(position[capture["label"]])
    stacked = np.stack(images) if images else np.zeros((0, 28, 28), dtype=np.uint8)
    return LabelledCaptures(ids, stacked, np.asarray(indices, dtype=np.int64), skipped)


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file of `array` (1 to 3 dimensions)."""
    data = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, data.ndim) + struct.pack(f">{data.ndim}I", *data.shape)
    return header + data.tobytes()


def export_tar(store: CaptureStore, model: str, labels: Sequence[str]) -> tuple[bytes, int]:
    """A tar of the model's labelled captures as two IDX files and an index; returns (tar, count)."""
    found = labelled_arrays(store, model, labels)
    members = {
        IMAGES_FILE: idx_bytes(found.images),
        LABELS_FILE: idx_bytes(found.labels.astype(np.uint8)),
        INDEX_FILE: json.dumps({"model": model, "labels": list(labels), "ids": found.ids}).encode(),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{model}-captures/{name}")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), len(found.ids)

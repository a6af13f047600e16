"""Datasets as whole tensors, decoded from IDX files (gzipped or raw) that training.datasets finds.

A set is decoded once into a uint8 tensor [N, 28, 28]; batches are sliced from it on the fly,
so no PIL image is ever built per sample per epoch.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from app.core.captures_export import labelled_arrays
from app.core.captures_store import CaptureStore
from app.core.catalogue import DATASETS, FASHION_LABELS, MNIST_LABELS, DatasetSpec, get_dataset_spec
from training.datasets import IDX_SHA256, resolve_dataset

# The specs (labels, pixel statistics, recipe) are the catalogue's: the API knows them too.
__all__ = ["DATASETS", "FASHION_LABELS", "MNIST_LABELS", "DatasetSpec", "get_dataset_spec"]


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 [N, 28, 28], light on dark
    labels: torch.Tensor  # int64 [N]


@dataclass(frozen=True)
class CaptureSplit:
    """A model's labelled captures (app/core/captures_store.py), split for one training run."""

    train: Split  # added to the training set `weight` times
    held_out: Split  # never trained on: capture_accuracy and its floor are measured here
    weight: int
    skipped: int  # labelled captures left out: a label the dataset lacks, or an unreadable file


@dataclass(frozen=True)
class LoadedDataset:
    spec: DatasetSpec
    train: Split
    test: Split
    checksums: dict[str, str]  # file name -> SHA-256 of the bytes read
    captures: CaptureSplit | None = None  # with include_captures


_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPE_UBYTE = 0x08


def parse_idx(raw: bytes) -> torch.Tensor:
    """Decode an IDX file (unsigned bytes only, as MNIST uses) into a uint8 tensor."""
    if len(raw) < 4:
        raise ValueError("not an IDX file: shorter than its header")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != _IDX_DTYPE_UBYTE or not 1 <= ndim <= 3:
        raise ValueError("not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = raw[4 + 4 * ndim :]
    count = 1
    for dim in shape:
        count *= dim
    if len(body) != count:
        raise ValueError(f"IDX body holds {len(body)} bytes, header says {count}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def _read_idx_file(folder: Path, stem: str, expected_sha256: str | None) -> tuple[torch.Tensor, str, str]:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            raw = candidate.read_bytes()
            digest = hashlib.sha256(raw).hexdigest()
            data = gzip.decompress(raw) if candidate.suffix == ".gz" else raw
            # The IDX bytes, not the file's: re-gzipped copies of the official sets must pass too.
            if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
                raise ValueError(
                    f"{candidate}: its IDX bytes do not match the official set's SHA-256 {expected_sha256}; "
                    "replace the file, or delete it to download it again"
                )
            return parse_idx(data), candidate.name, digest
    raise FileNotFoundError(f"{stem}(.gz) not found in {folder}")


def load_idx_folder(folder: Path, spec: DatasetSpec, expected: Mapping[str, str] | None = None) -> LoadedDataset:
    """Load the four standard IDX files from one folder, checked against `expected` (stem -> SHA-256) if given."""
    tensors: dict[str, torch.Tensor] = {}
    checksums: dict[str, str] = {}
    for key, stem in _FILES.items():
        tensor, file_name, digest = _read_idx_file(folder, stem, expected[stem] if expected else None)
        tensors[key] = tensor
        checksums[file_name] = digest
    for split in ("train", "test"):
        images, labels = tensors[f"{split}_images"], tensors[f"{split}_labels"]
        if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
            raise ValueError(f"{folder}: {split} images {tuple(images.shape)} and labels disagree")
    return LoadedDataset(
        spec=spec,
        train=Split(tensors["train_images"], tensors["train_labels"].long()),
        test=Split(tensors["test_images"], tensors["test_labels"].long()),
        checksums=checksums,
    )


def load_dataset(
    name: str, data_dir: Path | None = None, *, data_root: Path | None = None, progress: bool = False
) -> LoadedDataset:
    """`data_dir` as given (the caller's own files: a subset is allowed); otherwise the folder
    training.datasets resolves under `data_root` (downloading if needed), verified file by file."""
    spec = get_dataset_spec(name)
    if data_dir is not None:
        return load_idx_folder(data_dir, spec)
    return load_idx_folder(resolve_dataset(name, data_root, progress=progress), spec, IDX_SHA256[name])


def take_first(split: Split, max_samples: int | None) -> Split:
    if max_samples is None or max_samples >= split.images.shape[0]:
        return split
    return Split(split.images[:max_samples], split.labels[:max_samples])


def is_held_out(capture_id: int, share: float) -> bool:
    """Deterministic by the capture's id: a capture stays on its side of the split in every later job."""
    digest = hashlib.sha256(f"pixelserve-capture:{capture_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def load_captures(store: CaptureStore, model: str, spec: DatasetSpec, held_out: float, weight: int) -> CaptureSplit:
    """The model's labelled captures whose labels are the dataset's, split by is_held_out."""
    found = labelled_arrays(store, model, spec.labels)
    held = torch.tensor([is_held_out(i, held_out) for i in found.ids], dtype=torch.bool)
    images, labels = torch.from_numpy(found.images), torch.from_numpy(found.labels)
    return CaptureSplit(
        train=Split(images[~held], labels[~held]),
        held_out=Split(images[held], labels[held]),
        weight=weight,
        skipped=found.skipped,
    )


def with_captures(split: Split, captures: CaptureSplit | None) -> Split:
    """The training split plus the captures' training part, each capture repeated `weight` times."""
    if captures is None or captures.train.images.shape[0] == 0:
        return split
    images = torch.cat([split.images, captures.train.images.repeat(captures.weight, 1, 1)])
    return Split(images, torch.cat([split.labels, captures.train.labels.repeat(captures.weight)]))

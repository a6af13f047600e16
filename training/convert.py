"""`python -m training.convert models/mnist/1 [...]`: add model.pt2 and model.onnx beside a model.pt, no retraining.

The network is rebuilt from the architecture and normalisation named in the metadata, given the
TorchScript artifact's weights (same state_dict keys as training's ServedModel), and exported with
torch.export (and from that program to ONNX). A file is written only when the rebuilt weights hash
to the metadata's SHA-256, the rebuilt module matches the TorchScript module within 1e-6, and the
written file, loaded as the server loads it, matches it too: within 1e-6 for model.pt2, within the
ONNX Runtime loader's 1e-5 for model.onnx (its own kernels round differently; the file must pass
the check the server makes). Only missing files are written unless --force; `model.pt` itself is
never rewritten: it stays byte for byte what was shipped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.core.artifacts import (
    ONNX,
    ONNX_FILE,
    TORCH_EXPORT,
    ArtifactError,
    LoadedModel,
    load_model,
    read_metadata,
    weights_sha256,
)
from app.core.durable import fsync_dir
from app.core.onnx_runtime import load_onnx
from training.export import (
    ARTIFACT_FILE,
    EXPORTED_FILE,
    FORMATS,
    ServedModel,
    to_exported_program,
    write_exported,
)
from training.loop import Normalize
from training.networks import create_network
from training.onnx_export import onnx_exporter_missing, to_onnx, write_onnx

TOLERANCE = 1e-6
CPU = torch.device("cpu")


class ConversionError(Exception):
    """The TorchScript artifact could not be reproduced faithfully; nothing was written."""


def probe_inputs() -> list[torch.Tensor]:
    """Batches of several sizes, random and at the ends of the pixel range."""
    generator = torch.Generator().manual_seed(0)
    return [
        torch.rand(64, 1, 28, 28, generator=generator),
        torch.rand(1, 1, 28, 28, generator=generator),
        torch.zeros(3, 1, 28, 28),
        torch.ones(2, 1, 28, 28),
    ]


def max_difference(candidate: nn.Module, reference: nn.Module) -> float:
    with torch.inference_mode():
        return max(float((candidate(x) - reference(x)).abs().max()) for x in probe_inputs())


def rebuild(metadata: dict[str, Any], reference: nn.Module) -> ServedModel:
    """ServedModel(Normalize(network)) as training built it, holding the reference's weights."""
    normalization = metadata.get("normalization") or {}
    if not normalization.get("baked_in") or "mean" not in normalization or "std" not in normalization:
        raise ConversionError("the metadata does not describe baked-in normalisation (mean, std)")
    network = create_network(str(metadata["architecture"]), len(metadata["labels"]))
    served = ServedModel(Normalize(network, float(normalization["mean"]), float(normalization["std"])))
    try:
        served.load_state_dict(reference.state_dict(), strict=True)
    except RuntimeError as exc:  # missing or unexpected keys, or shapes: not this architecture
        raise ConversionError(f"the TorchScript weights do not fit {metadata['architecture']}: {exc}") from exc
    served.eval()
    if weights_sha256(served) != metadata["weights_sha256"]:
        raise ConversionError("the rebuilt module's weights do not hash to the metadata's SHA-256")
    difference = max_difference(served, reference)
    if difference > TOLERANCE:
        raise ConversionError(f"the rebuilt module differs from the TorchScript one by {difference:.2e}")
    return served


# What convert can add, and the file each one is.
TARGETS = {TORCH_EXPORT: EXPORTED_FILE, ONNX: ONNX_FILE}


def convert(folder: Path, force: bool = False, formats: tuple[str, ...] = tuple(TARGETS)) -> list[Path]:
    """Write the missing ones of <folder>/model.pt2 and model.onnx from <folder>/model.pt; returns their paths.

    FileExistsError when every one asked for is there already (and not --force)."""
    source = folder / ARTIFACT_FILE
    wanted = [fmt for fmt in formats if force or not (folder / TARGETS[fmt]).exists()]
    if not wanted:
        raise FileExistsError(f"{', '.join(TARGETS[f] for f in formats)}: each exists already (--force replaces)")
    if ONNX in wanted and (missing := onnx_exporter_missing()):
        raise ConversionError(
            f"cannot write {ONNX_FILE}: not installed: {missing} (pip install 'pixelserve[training]')"
        )
    loaded = load_model(source, CPU)  # checks the SHA-256 and a smoke prediction first
    reference = loaded.forward
    if not isinstance(reference, nn.Module):
        raise ConversionError(f"{source} did not load as a module")
    metadata = read_metadata(source)
    served = rebuild(metadata, reference)
    converted_metadata = {
        **metadata,
        "formats": list(FORMATS),
        # Provenance: the program was made later than the training run the rest describes.
        "converted_from": {
            "file": ARTIFACT_FILE,
            "torch_version": torch.__version__,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    }
    program = to_exported_program(served)
    return [_write_checked(folder, fmt, program, converted_metadata, loaded) for fmt in wanted]


def _write_checked(
    folder: Path, fmt: str, program: torch.export.ExportedProgram, metadata: dict[str, Any], reference: LoadedModel
) -> Path:
    """Write one file in a hidden folder beside it (the file name, not a temporary one, names the archive
    inside), load it as the server would, and rename it into place when it matches: readers never see
    half a file or an unchecked one."""
    target = folder / TARGETS[fmt]
    staging = folder / f".convert-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        if fmt == ONNX:
            staged = write_onnx(to_onnx(program), metadata, staging / target.name)
            load_onnx(staged, reference)  # the server's own check: same model, within its tolerance
        else:
            staged = write_exported(program, metadata, staging / target.name)
            written = load_model(staged, CPU).forward  # the server's own checks on the written file
            if not isinstance(written, nn.Module) or not isinstance(reference.forward, nn.Module):
                raise ConversionError(f"{staged} did not load as a module")
            difference = max_difference(written, reference.forward)
            if difference > TOLERANCE:
                raise ConversionError(f"the written program differs from the TorchScript module by {difference:.2e}")
        os.replace(staged, target)
        fsync_dir(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.convert", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="version folders holding model.pt")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    parser.add_argument(
        "--format", choices=list(TARGETS), action="append", dest="formats", help="only this one (repeatable)"
    )
    args = parser.parse_args(argv)
    failed = 0
    for folder in args.folders:
        try:
            paths = convert(folder, force=args.force, formats=tuple(args.formats or TARGETS))
        except (ArtifactError, ConversionError, FileExistsError) as exc:
            print(f"{folder}: not converted: {exc}", file=sys.stderr)
            failed += 1
            continue
        for path in paths:
            print(f"{folder}: wrote {path.name} ({path.stat().st_size} bytes)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

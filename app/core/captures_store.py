"""Captured predictions: PNG files on the shared volume, indexed in the job store's database.

Layout: <captures folder>/<model>/<uuid>.png (the 28x28 model input, 8-bit grey: what GET
/captures/{id}/image returns and what an IDX export holds) and, only when the model's policy
keeps originals, <uuid>.upload (the bytes as sent). The folder defaults to
<model_repository>/.captures, a dot-folder, which the repository never reads as a model. Each file
is written under a temporary name and renamed: a reader sees all of it or nothing. The index row is
inserted after its files; a crash in between leaves an unindexed file, never a row without one.

Retention is per model, by count and by bytes (both files), oldest (lowest id) out first.
"""

from __future__ import annotations

import io
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import delete, func, insert, select, update

from app.core.job_store import JobStore
from app.core.job_tables import captures

Capture = dict[str, Any]
PNG_SUFFIX, UPLOAD_SUFFIX = ".png", ".upload"
RETENTION_CHUNK = 500  # oldest rows examined per query while evicting


@dataclass(frozen=True)
class NewCapture:
    model: str
    version: str
    pixels: np.ndarray  # float32 [28, 28] in [0, 1]
    row: list[float]  # the model's probabilities, in class order
    labels: list[str]
    request_id: str | None
    original: bytes | None
    at: float  # seconds since the epoch, when the answer was computed


def to_png(pixels: np.ndarray) -> bytes:
    """[28, 28] in [0, 1] -> an 8-bit grey PNG (the quantisation IDX files have too)."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8), mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def _write_atomically(path: Path, data: bytes) -> None:
    # No fsync per file: a capture is a sample, and an fsync per request would cost the writer a
    # disk flush each; a crash loses at most the newest files, which readers then skip.
    temporary = path.with_name(f".tmp-{path.name}")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class CaptureStore:
    def __init__(self, jobs: JobStore, root: Path) -> None:
        self.jobs, self.engine, self.root = jobs, jobs.engine, root

    # --- the writer -----------------------------------------------------------------------

    def add(self, new: list[NewCapture]) -> list[int]:
        """Write the files, then index them in one transaction; returns the new ids."""
        values, written = [], []
        try:
            for capture in new:
                folder = self.root / capture.model
                folder.mkdir(parents=True, exist_ok=True)
                stem = uuid.uuid4().hex
                png = to_png(capture.pixels)
                _write_atomically(folder / f"{stem}{PNG_SUFFIX}", png)
                written.append(folder / f"{stem}{PNG_SUFFIX}")
                original = None
                if capture.original is not None:
                    _write_atomically(folder / f"{stem}{UPLOAD_SUFFIX}", capture.original)
                    written.append(folder / f"{stem}{UPLOAD_SUFFIX}")
                    original = f"{capture.model}/{stem}{UPLOAD_SUFFIX}"
                index = int(np.argmax(capture.row))
                values.append(
                    {
                        "model": capture.model,
                        "version": capture.version,
                        "request_id": capture.request_id[:200] if capture.request_id else None,
                        "created_at": capture.at,
                        "prediction": capture.labels[index],
                        "confidence": float(capture.row[index]),
                        "probabilities": [float(p) for p in capture.row],
                        "label": None,
                        "file": f"{capture.model}/{stem}{PNG_SUFFIX}",
                        "original": original,
                        "bytes": len(png) + (len(capture.original) if capture.original is not None else 0),
                    }
                )
            with self.engine.begin() as conn:  # one statement, one commit (an fsync) per batch
                query = insert(captures).returning(captures.c.id, sort_by_parameter_order=True)
                return list(conn.execute(query, values).scalars())
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise

    def enforce_retention(self, model: str, max_count: int, max_bytes: int) -> int:
        """Delete the model's oldest captures until at most max_count and max_bytes remain; returns how many."""
        with self.engine.connect() as conn:
            count, total = conn.execute(
                select(func.count(), func.coalesce(func.sum(captures.c.bytes), 0)).where(captures.c.model == model)
            ).one()
        excess_count, excess_bytes = count - max_count, total - max_bytes
        evicted, after = 0, 0
        while excess_count > 0 or excess_bytes > 0:
            query = (
                select(captures.c.id, captures.c.bytes, captures.c.file, captures.c.original)
                .where(captures.c.model == model, captures.c.id > after)
                .order_by(captures.c.id)
                .limit(RETENTION_CHUNK)
            )
            with self.engine.connect() as conn:
                oldest = conn.execute(query).all()
            if not oldest:
                break
            doomed = []
            for row in oldest:
                if excess_count <= 0 and excess_bytes <= 0:
                    break
                doomed.append(row)
                excess_count, excess_bytes = excess_count - 1, excess_bytes - row.bytes
            after = oldest[-1].id
            evicted += self._delete_rows([(row.id, row.file, row.original) for row in doomed])
        return evicted

    def _delete_rows(self, rows: list[tuple[int, str, str | None]]) -> int:
        """Delete (id, file, original) rows, then their files; returns the rows deleted."""
        if not rows:
            return 0
        with self.engine.begin() as conn:  # rows first: a file is never missing under an index row
            deleted = conn.execute(delete(captures).where(captures.c.id.in_([row[0] for row in rows]))).rowcount
        for _, *names in rows:
            for name in names:
                if name is not None:
                    self.path_of(name).unlink(missing_ok=True)
        return int(deleted)

    # --- the admin API ----------------------------------------------------------------------

    def search(
        self,
        model: str | None = None,
        version: str | None = None,
        label: str | None = None,
        min_confidence: float | None = None,
        max_confidence: float | None = None,
        labelled: bool | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[Capture]:
        """Captures matching every filter given, newest first; `before` (an id) pages on."""
        c = captures.c
        query = select(captures).order_by(c.id.desc()).limit(limit)
        conditions = [
            c.model == model if model is not None else None,
            c.version == version if version is not None else None,
            c.label == label if label is not None else None,
            c.confidence >= min_confidence if min_confidence is not None else None,
            c.confidence <= max_confidence if max_confidence is not None else None,
            None if labelled is None else c.label.is_not(None) if labelled else c.label.is_(None),
            c.id < before if before is not None else None,
        ]
        query = query.where(*[condition for condition in conditions if condition is not None])
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    def get(self, capture_id: int) -> Capture | None:
        if not self.jobs.holds(capture_id):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(captures).where(captures.c.id == capture_id)).mappings().first()
        return dict(row) if row else None

    def set_label(self, capture_id: int, label: str | None) -> Capture | None:
        """The caller checks `label` against the model's labels; None clears it."""
        if not self.jobs.holds(capture_id):
            return None
        with self.engine.begin() as conn:
            conn.execute(update(captures).where(captures.c.id == capture_id).values(label=label))
        return self.get(capture_id)

    def delete(self, capture_id: int) -> bool:
        capture = self.get(capture_id)
        if capture is None:
            return False
        return self._delete_rows([(capture_id, capture["file"], capture["original"])]) == 1

    def labelled(self, model: str) -> list[Capture]:
        """Every labelled capture of `model`, oldest first (retention bounds how many)."""
        query = select(captures).where(captures.c.model == model, captures.c.label.is_not(None)).order_by(captures.c.id)
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    # --- files ----------------------------------------------------------------------------

    def path_of(self, name: str) -> Path:
        """A file named by an index row, refused if it would leave the captures folder."""
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"capture file {name!r} is outside the captures folder")
        return path

    def png(self, capture: Capture) -> bytes:
        return self.path_of(capture["file"]).read_bytes()

    def pixels(self, capture: Capture) -> np.ndarray:
        """The stored input as uint8 [28, 28], light on dark (as IDX files hold it)."""
        with Image.open(io.BytesIO(self.png(capture))) as image:
            array = np.asarray(image.convert("L"), dtype=np.uint8)
        if array.shape != (28, 28):
            raise ValueError(f"capture {capture['id']}: stored image is {array.shape}, not 28x28")
        return array

"""The model repository on disk: <root>/<name>/<version>/model.pt (and/or model.pt2), versions are positive integers.

A model's served version is the one named in <root>/<name>/CURRENT when that file exists (a
publication or an admin's pin), otherwise its highest version. CURRENT is replaced atomically
(temporary file, fsync, rename), so a replica reads the old pointer or the new one, never half.
Folders starting with '.' are staging areas of writers and are never read.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from app.artifacts import TORCHSCRIPT, artifact_file, has_artifact

CURRENT_FILE = "CURRENT"


@dataclass(frozen=True)
class ModelRepository:
    root: Path
    artifact_format: str = TORCHSCRIPT  # which file of a version folder to serve when it holds both

    def model_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".") and self.versions(p.name)
        )

    def versions(self, name: str) -> list[str]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = [p.name for p in folder.iterdir() if p.name.isdigit() and has_artifact(p)]
        return sorted(found, key=int)

    def read_pointer(self, name: str) -> tuple[str | None, bool]:
        """(version named by CURRENT, pinned), or (None, False) without a readable pointer."""
        try:
            pointer = json.loads((self.root / name / CURRENT_FILE).read_text())
            return str(pointer["version"]), bool(pointer.get("pinned", False))
        except (OSError, ValueError, KeyError, TypeError):
            return None, False

    def current_version(self, name: str) -> str | None:
        versions = self.versions(name)
        pointed, _ = self.read_pointer(name)
        if pointed in versions:
            return pointed
        return versions[-1] if versions else None

    def write_pointer(self, name: str, version: str, pinned: bool) -> None:
        """Atomically point the model at `version`. Callers serialise writers (JobStore.model_lock)."""
        folder = self.root / name
        temporary = folder / f".{CURRENT_FILE}.{uuid.uuid4().hex}"
        with temporary.open("w") as handle:
            json.dump({"version": version, "pinned": pinned}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, folder / CURRENT_FILE)
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def artifact_path(self, name: str, version: str) -> Path:
        return artifact_file(self.root / name / version, self.artifact_format)

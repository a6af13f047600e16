"""The model repository on disk: <root>/<name>/<version>/model.pt, versions are positive integers.

A model's served version is the one named in <root>/<name>/CURRENT when that file exists (an
admin's pin or a publication), otherwise its highest version. Folders starting with '.' are
staging areas of writers and are never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ARTIFACT_FILE = "model.pt"
CURRENT_FILE = "CURRENT"


@dataclass(frozen=True)
class ModelRepository:
    root: Path

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
        found = [p.name for p in folder.iterdir() if p.name.isdigit() and (p / ARTIFACT_FILE).is_file()]
        return sorted(found, key=int)

    def current_version(self, name: str) -> str | None:
        pointer = self.root / name / CURRENT_FILE
        if pointer.is_file():
            pinned = pointer.read_text().strip()
            if pinned in self.versions(name):
                return pinned
        versions = self.versions(name)
        return versions[-1] if versions else None

    def artifact_path(self, name: str, version: str) -> Path:
        return self.root / name / version / ARTIFACT_FILE

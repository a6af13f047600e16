"""Writing a benchmark's results: the table under a time stamp and as `<name>-latest.md`, the raw numbers as JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def write_results(folder: Path, name: str, markdown: str, raw: Mapping[str, Any] | None = None) -> list[Path]:
    """Write `<name>-<stamp>.md`, `<name>-<stamp>.json` (when `raw` is given) and `<name>-latest.md`; print each path.

    Each file is staged and renamed: a reader (or a run killed half-way) never leaves half a file, and
    the latest table is either the old one or the new one.
    """
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    outputs = {folder / f"{name}-{stamp}.md": markdown}
    if raw is not None:
        outputs[folder / f"{name}-{stamp}.json"] = json.dumps(raw, indent=2) + "\n"
    outputs[folder / f"{name}-latest.md"] = markdown
    for path, text in outputs.items():
        staging = path.with_name(path.name + ".tmp")
        staging.write_text(text)
        staging.replace(path)
        print(f"wrote {path}")
    return list(outputs)

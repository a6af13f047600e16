"""Log lines in one format for the server and the worker: text (the default) or JSON.

Every line carries the ids of what it is about: the request id (`X-Request-ID`) on every line
logged while a request is handled, the job id on every line of a training job. They travel in
context variables, set where a request or a job starts, so no call has to pass them along.
`PIXELSERVE_LOG_FORMAT=json` writes one JSON object per line, with an access line's fields
(route, model, status, latency...) as keys, for log pipelines.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any, Literal

LogFormat = Literal["text", "json"]
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
job_id: ContextVar[int | None] = ContextVar("job_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_CONTEXT = ("request_id", "job_id")


class _ContextFilter(logging.Filter):
    """Puts the current request and job ids on each record (None when there is none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id.get()
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD and key not in _CONTEXT}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{key}={value}" for key in _CONTEXT if (value := getattr(record, key, None)) is not None]
        extra = [f"{key}={value}" for key, value in _fields(record).items()]
        return " ".join([line, *extra, *ids])


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: value for key in _CONTEXT if (value := getattr(record, key, None)) is not None})
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """The root logger writes to stderr in `log_format`; uvicorn's loggers go through it too."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    formatter.converter = time.gmtime  # times in UTC, as the JSON lines' "Z" says
    handler.setFormatter(formatter)
    handler.addFilter(_ContextFilter())
    handler.set_name("pixelserve")
    root = logging.getLogger()
    # Ours replaces an earlier one of ours (create_app may run twice in a process); anything else
    # attached to the root (a test's log capture, an embedding program's handlers) stays.
    root.handlers = [h for h in root.handlers if h.get_name() != "pixelserve"] + [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):  # their own handlers would print a second, unformatted line
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True

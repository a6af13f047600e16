"""The browser pages: a playground (GET /ui) and an admin console (GET /ui/admin), static files only.

The pages are plain HTML, CSS and ES modules from app/ui/static, read once at import: no build
step, nothing fetched from another host (they work offline and inside the container), and they
speak only the public HTTP API, as any other client does. PIXELSERVE_UI=false answers 404 here.

Every response of these routes carries a strict Content-Security-Policy (only this origin; no
inline script or style; images may be data:/blob: URLs, which the page makes from uploads and
from the API's base64 `input_png`). It is set here, not by a middleware, so the JSON API's
responses stay as they were.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, Header
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException

from app.deps import SettingsDep

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load (a 304 costs a round trip, no bytes): an upgraded server never
    # serves a page with last version's modules, which fixed-lifetime caching would.
    "Cache-Control": "no-cache",
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def _load() -> dict[str, tuple[bytes, str, str]]:
    """name -> (content, content type, ETag) of every file under app/ui/static; nothing else is served."""
    files = {}
    for entry in resources.files("app.ui").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in CONTENT_TYPES:
            content = entry.read_bytes()
            files[entry.name] = (content, CONTENT_TYPES[suffix], f'"{hashlib.sha256(content).hexdigest()[:32]}"')
    return files


FILES = _load()


async def _ui_enabled(settings: SettingsDep) -> None:
    if not settings.ui:
        raise HTTPException(404, "Not Found")  # as if the routes did not exist


router = APIRouter(include_in_schema=False, dependencies=[Depends(_ui_enabled)])


def _file(name: str, if_none_match: str | None) -> Response:
    if name not in FILES:
        raise HTTPException(404, "Not Found")
    content, media_type, etag = FILES[name]
    headers = {**SECURITY_HEADERS, "ETag": etag}
    if if_none_match is not None and etag in (tag.strip() for tag in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(content, media_type=media_type, headers=headers)


IfNoneMatch = Annotated[str | None, Header()]


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui")
async def playground(if_none_match: IfNoneMatch = None) -> Response:
    return _file("index.html", if_none_match)


@router.get("/ui/admin")
async def admin_console(if_none_match: IfNoneMatch = None) -> Response:
    return _file("admin.html", if_none_match)


@router.get("/ui/static/{name}")
async def static_file(name: str, if_none_match: IfNoneMatch = None) -> Response:
    return _file(name, if_none_match)

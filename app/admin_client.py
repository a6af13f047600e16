"""The admin script's HTTP client: the admin routes with the bearer token, errors as one exception."""

from __future__ import annotations

from typing import Any

import httpx


class AdminError(Exception):
    pass


class Admin:
    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.send(method, path, **kwargs)
        return None if response.status_code == 204 else response.json()

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise AdminError(f"{method} {self.http.base_url}{path}: {exc}") from exc
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise AdminError(f"{method} {path}: HTTP {response.status_code}: {message}")
        return response

    def save(self, path: str, params: dict[str, Any] | None, output: str) -> dict[str, Any]:
        """GET a file (a capture's PNG, an export's tar) into `output`."""
        data = self.send("GET", path, params=params).content
        with open(output, "wb") as handle:
            handle.write(data)
        return {"saved": output, "bytes": len(data)}

"""The playground and the admin console in a real browser: Playwright driving Debian's Chromium
against a real uvicorn process (and a real training worker for the admin's job).

The drawing tests serve the shipped models (models/): the tiny test models are trained for seconds
on 2,048 images and misread hand-drawn strokes often enough to make "draw a 1, get 1" flaky; the
shipped ones (99.6% / 93% test accuracy, trained with stroke-width augmentation) read a mouse
stroke reliably. The admin test trains a tiny version into a copy of them.

Screenshots (desktop and phone) go to PIXELSERVE_UI_SCREENSHOTS or a pytest tmp folder, with the
page weight and the time to the first prediction (measured, not asserted) in ui-measurements.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import DATA_ROOT, SHIPPED_MODELS
from tests.processes import ROOT, free_port, spawn, start_replica, stop, wait_ready

CHROMIUM = Path(os.environ.get("PIXELSERVE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
TOKEN = "ui-test-token"
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}
DESKTOP = {"viewport": {"width": 1280, "height": 900}}

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # the API tests below still run; the browser fixture says why the rest cannot
    sync_playwright = None  # type: ignore[assignment]


def _no_browser(reason: str) -> None:
    if os.environ.get("CI"):  # CI installs chromium and playwright (.ci/run): their absence is a failure there
        pytest.fail(f"CI must provide {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        _no_browser("playwright (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        _no_browser(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("PIXELSERVE_UI_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def server_env(repository: Path) -> dict[str, str]:
    return {
        "PIXELSERVE_MODEL_REPOSITORY": str(repository),
        "PIXELSERVE_ADMIN_TOKEN": TOKEN,
        "PIXELSERVE_RELOAD_INTERVAL_S": "0.3",
        "PIXELSERVE_TORCH_THREADS": "1",
        "PIXELSERVE_DATA_DIR": str(DATA_ROOT),
        "PIXELSERVE_POLL_INTERVAL_S": "0.2",
        "PIXELSERVE_MIN_PUBLISH_ACCURACY": "0",  # a 256-image model publishes whatever it scores
    }


def shipped_copy(folder: Path) -> Path:
    """The shipped TorchScript models, copied: the admin test publishes and activates in its copy."""
    shutil.copytree(SHIPPED_MODELS, folder, ignore=shutil.ignore_patterns("*.pt2", "*.onnx", "CURRENT", ".jobs*"))
    return folder


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("ui")
    port = free_port()
    process = start_replica(server_env(shipped_copy(folder / "models")), port, folder / "server.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


class Watched:
    """A page whose console errors, uncaught exceptions and requests are recorded."""

    def __init__(self, browser: Browser, base: str, **context: Any) -> None:
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.base = base
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def check_and_close(self) -> None:
        self.context.close()
        assert self.errors == []
        elsewhere = [u for u in self.requests if not u.startswith((self.base + "/", "data:", "blob:"))]
        assert elsewhere == [], "the pages must not reach any other host"


@pytest.fixture()
def watched(browser: Browser, url: str) -> Iterator[Watched]:
    page = Watched(browser, url, **DESKTOP)
    yield page
    page.check_and_close()


def draw(page: Page, points: list[tuple[float, float]]) -> None:
    """One stroke through `points` (fractions of the canvas) with the mouse."""
    box = page.locator("#pad").bounding_box()
    assert box is not None
    at = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for x, y in at[1:]:
        page.mouse.move(x, y, steps=2)
    page.mouse.up()


def ellipse(rx: float, ry: float, n: int = 48) -> list[tuple[float, float]]:
    import math

    return [(0.5 + rx * math.sin(2 * math.pi * k / n), 0.5 - ry * math.cos(2 * math.pi * k / n)) for k in range(n + 3)]


def answer(page: Page, label: str) -> None:
    expect(page.locator("#status")).to_have_attribute("data-label", label, timeout=15_000)


def test_draw_a_one_and_a_zero(watched: Watched, url: str, shots: Path) -> None:
    page = watched.page
    response = page.goto(f"{url}/", wait_until="load")  # / redirects to /ui
    assert response is not None and page.url == f"{url}/ui"
    assert "default-src 'self'" in response.headers["content-security-policy"]
    expect(page.locator("#model option")).to_have_count(2)
    expect(page.locator("#model")).to_have_value("mnist")
    draw(page, [(0.5, 0.15 + 0.7 * k / 20) for k in range(21)])
    answer(page, "1")
    expect(page.locator("#bars li")).to_have_count(10)
    expect(page.locator("#bars li.best .label")).to_have_text("1")
    expect(page.locator("#saw")).to_be_visible()
    page.locator("#clear").click()
    expect(page.locator("#bars li")).to_have_count(0)
    draw(page, ellipse(0.22, 0.32))
    answer(page, "0")
    assert "ms)" in (page.locator("#status").text_content() or "")  # the request's latency is shown
    page.screenshot(path=shots / "playground-desktop.png", full_page=True)


def test_drop_a_sneaker_then_an_unsupported_file(watched: Watched, url: str, shots: Path) -> None:
    page = watched.page
    weights: list[int] = []
    page.on(
        "requestfinished", lambda r: weights.append(r.sizes()["responseBodySize"] + r.sizes()["responseHeadersSize"])
    )
    page.goto(f"{url}/ui", wait_until="load")
    expect(page.locator("#model option")).to_have_count(2)  # GET /models answered: the page is usable
    first_load_bytes = sum(weights)
    loaded_at = page.evaluate("performance.now()")
    page.select_option("#model", "fashion")
    page.set_input_files("#file", ROOT / "examples" / "sneaker.png")
    answer(page, "Sneaker")
    first_answer_ms = page.evaluate("performance.now()") - loaded_at
    seen = page.locator("#saw")
    expect(seen).to_be_visible()
    assert seen.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [28, 28]
    expect(page.locator("#sent")).to_be_visible()
    page.screenshot(path=shots / "playground-sneaker.png", full_page=True)

    junk = b"this is not an image, just text"
    expected = httpx.post(f"{url}/predict/fashion", content=junk, headers={"Content-Type": "application/octet-stream"})
    assert expected.status_code == 415
    page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": junk})
    expect(page.locator("#error")).to_contain_text(expected.json()["error"])
    expect(page.locator("#saw")).to_be_hidden()
    page.set_input_files("#file", ROOT / "examples" / "sneaker.png")  # nothing broke
    answer(page, "Sneaker")
    expect(page.locator("#error")).to_be_hidden()
    watched.errors[:] = [e for e in watched.errors if "415" not in e]  # the refused upload's own log line
    (shots / "ui-measurements.json").write_text(
        json.dumps({"first_load_bytes": first_load_bytes, "load_to_first_answer_ms": round(first_answer_ms, 1)})
    )
    assert first_load_bytes < 100_000  # no framework, no fonts: the whole playground is a few files


def test_phone_viewport(browser: Browser, url: str, shots: Path) -> None:
    phone = Watched(browser, url, **PHONE)
    page = phone.page
    page.goto(f"{url}/ui", wait_until="load")
    page.select_option("#model", "fashion")
    page.set_input_files("#file", ROOT / "examples" / "sneaker.png")
    answer(page, "Sneaker")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    page.screenshot(path=shots / "playground-phone.png", full_page=True)
    page.goto(f"{url}/ui/admin", wait_until="load")
    expect(page.locator("#token")).to_be_focused()
    page.screenshot(path=shots / "admin-login-phone.png")
    phone.check_and_close()


def test_keyboard_reaches_every_control(watched: Watched, url: str) -> None:
    page = watched.page
    page.goto(f"{url}/ui", wait_until="load")
    expect(page.locator("#model option")).to_have_count(2)
    reached = []
    for _ in range(8):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
    assert reached.index("model") < reached.index("clear") < reached.index("file")
    for control in ("model", "file"):  # every control has a label
        assert page.locator(f"label[for={control}]").count() == 1
    assert page.locator("#status").get_attribute("aria-live") == "polite"


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A server and a training worker sharing a copy of the shipped models and one job store."""
    env = server_env(shipped_copy(tmp_path / "models"))
    port = free_port()
    server = start_replica(env, port, tmp_path / "server.log")
    worker = spawn(["-m", "training.worker"], {**env, "PIXELSERVE_WORKER_ID": "ui"}, tmp_path / "worker.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}", server)
        yield f"http://127.0.0.1:{port}", tmp_path
    finally:
        stop(worker, signal.SIGKILL)
        stop(server)


def test_admin_console_trains_shows_and_rolls_back(browser: Browser, cluster: tuple[str, Path], shots: Path) -> None:
    base, logs = cluster
    admin = Watched(browser, base, **DESKTOP)
    page = admin.page
    page.goto(f"{base}/ui/admin", wait_until="load")
    page.fill("#token", "not-the-token")
    page.click("#login button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("wrong admin token")
    assert page.evaluate("sessionStorage.length") == 0
    admin.errors[:] = [e for e in admin.errors if "403" not in e]  # the refused sign-in's own log line

    page.fill("#token", TOKEN)
    page.click("#login button[type=submit]")
    expect(page.locator("#console")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('pixelserve.adminToken')") == TOKEN
    assert admin.context.cookies() == [] and TOKEN not in page.url
    expect(page.locator("#confusion svg rect.cell")).to_have_count(100)  # the served mnist's plots

    page.fill("#job-model", "mnist")
    page.locator("#job-model").dispatch_event("change")
    page.select_option("#job-architecture", "mlp")
    page.select_option("#job-dataset", "mnist")
    page.fill("#job-epochs", "1")
    page.fill("#job-samples", "256")
    page.locator("#job-augment").uncheck()
    page.click("#train button[type=submit]")
    try:
        expect(page.locator("#watch")).to_have_attribute("data-status", "succeeded", timeout=240_000)
    except AssertionError:
        raise AssertionError((logs / "worker.log").read_text()[-3000:]) from None
    panel = page.locator("#version-panel")
    expect(panel).to_have_attribute("data-version", "2", timeout=30_000)  # ends on the new version's plots
    expect(page.locator("#confusion svg rect.cell")).to_have_count(100)
    expect(page.locator("#loss-curve svg polyline")).to_have_count(1)
    expect(page.locator("#jobs tbody tr").first).to_have_attribute("data-status", "succeeded")
    expect(page.locator("[data-model=mnist] tr.served th")).to_have_text("v2")
    page.screenshot(path=shots / "admin-desktop.png", full_page=True)

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Roll back mnist to version 1").click()
    expect(page.locator("#notice")).to_contain_text("mnist now serves version 1 (pinned)")
    expect(page.locator("[data-model=mnist] tr.served th")).to_have_text("v1")
    detail = httpx.get(f"{base}/models/mnist").json()
    assert detail["served_version"] == "1" and detail["pinned"] is True

    # A rollout from the console: version 2 in the shadow, then promoted.
    page.get_by_role("button", name="Shadow mnist version 2").click()
    expect(page.locator("#notice")).to_contain_text("mnist: version 2 runs in the shadow")
    expect(page.locator("[data-model=mnist] p.rollout")).to_contain_text("v2 runs in the shadow")
    assert httpx.get(f"{base}/models/mnist").json()["rollout"]["shadow"] == "2"
    page.get_by_role("button", name="Promote mnist rollout").click()
    expect(page.locator("#notice")).to_contain_text("mnist now serves version 2")
    expect(page.locator("[data-model=mnist] tr.served th")).to_have_text("v2")
    expect(page.locator("[data-model=mnist] p.rollout")).to_have_count(0)
    page.set_viewport_size(PHONE["viewport"])
    page.screenshot(path=shots / "admin-phone.png", full_page=True)
    admin.check_and_close()


# -- the API the pages use, without a browser ---------------------------------------------------------


def test_include_input_is_what_the_model_saw(url: str) -> None:
    import base64
    import io

    import numpy as np
    from PIL import Image

    from app.core.inference import to_model_input

    sneaker = (ROOT / "examples" / "sneaker.png").read_bytes()
    files = [("file", ("a.png", sneaker, "image/png")), ("file", ("b.png", sneaker, "image/png"))]
    both = httpx.post(f"{url}/predict/fashion?include_input=true", files=files).json()
    assert [answer["label"] for answer in both] == ["Sneaker", "Sneaker"]
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(both[0]["input_png"]))), dtype=np.float32) / 255
    assert seen.shape == (28, 28)
    assert np.abs(seen - to_model_input(sneaker, "garment", 4096 * 4096)).max() <= 0.5 / 255 + 1e-6
    plain = httpx.post(f"{url}/predict/fashion", content=sneaker, headers={"Content-Type": "image/png"}).json()
    assert "input_png" not in plain


def test_version_and_catalogue_routes(url: str) -> None:
    version = httpx.get(f"{url}/models/mnist/versions/1").json()
    assert version["served"] and version["current"] and not version["pinned"]
    assert len(version["metadata"]["confusion_matrix"]) == 10 and version["metadata"]["training"]["history"]
    missing = httpx.get(f"{url}/models/mnist/versions/99")
    assert missing.status_code == 404 and missing.json()["code"] == "version_not_found"
    assert httpx.get(f"{url}/models/mnist/versions/%2e%2e").json()["code"] == "version_not_found"
    catalogue = httpx.get(f"{url}/catalogue").json()
    assert "mlp" in catalogue["architectures"]
    assert {d["name"] for d in catalogue["datasets"]} == {"mnist", "fashion-mnist"}
    static = httpx.get(f"{url}/ui/static/playground.js")
    assert static.headers["content-type"].startswith("text/javascript") and "etag" in static.headers
    again = httpx.get(f"{url}/ui/static/playground.js", headers={"If-None-Match": static.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert httpx.get(f"{url}/ui/static/..%2Fapp.py").status_code == 404
    assert "content-security-policy" not in httpx.get(f"{url}/models").headers  # the pages only


def test_ui_can_be_turned_off() -> None:
    from fastapi.testclient import TestClient

    from app.core.settings import Settings
    from app.main import create_app

    with TestClient(create_app(Settings(model_repository=SHIPPED_MODELS, ui=False))) as client:
        assert client.get("/ui").status_code == 404
        assert client.get("/", follow_redirects=False).status_code == 404
        assert client.get("/ui/static/style.css").status_code == 404
        assert client.get("/catalogue").status_code == 200  # the API stays

"""The review page in headless Chromium (Debian's, driven by Playwright): accept one item with a shortcut,
paint and erase on another, undo a stroke, save, and find the painted pixels in the stored corrected mask.

The server is the real `cutout review serve` on a free 127.0.0.1 port. A screenshot of the page goes to
the test's tmp folder and to `.cutout/test-artifacts/review.png`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cutout.data.feedback_store import CORRECTED_STORE
from cutout.data.manifest import SOURCE_ACCEPTED, SOURCE_CORRECTED
from cutout.platform import storage
from cutout.serve.feedback import list_pending, write_review_item
from helpers import product_photo
from serving import Server, free_port, running

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACT = ROOT / ".cutout" / "test-artifacts" / "review.png"
W, H = 360, 480
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install '.[dev]')"
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium, installed by scripts/install-chromium.sh if it is missing."""
    if not os.path.exists(CHROMIUM):
        script = ROOT / "scripts" / "install-chromium.sh"
        result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
        if not os.path.exists(CHROMIUM):
            pytest.skip(f"chromium could not be installed by {script.name} (exit {result.returncode}): "
                        f"{(result.stdout + result.stderr)[-500:]}")  # fmt: skip
    return CHROMIUM


def predicted_mask() -> np.ndarray:
    mask = Image.new("L", (W, H), 0)
    ImageDraw.Draw(mask).ellipse((W * 0.25, H * 0.2, W * 0.75, H * 0.85), fill=255)
    return np.asarray(mask)


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture
def feedback(tmp_path: Path) -> str:
    root = str(tmp_path / "feedback")
    for item_id, score, seed in (("shirt-doubtful", 0.18, 1), ("dress-doubtful", 0.31, 2)):
        photo = encoded(product_photo(W, H, seed=seed), "JPEG")
        write_review_item(root, item_id, photo, "jpg", encoded(Image.fromarray(predicted_mask()), "PNG"),
                          {"score": score, "threshold": 0.6, "width": W, "height": H, "model_name": "cutout",
                           "model_version": "1"})  # fmt: skip
    return root


@pytest.fixture
def review_server(feedback: str, tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "CUTOUT_REVIEW_TOKEN"}
    command = [sys.executable, "-m", "cutout.cli", "review", "serve", "--feedback-uri", feedback,
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with running(command, port, tmp_path / "review.log", "/healthz", env=env) as server:
        yield server


def to_screen(box: dict, x: float, y: float) -> tuple[float, float]:
    """An image pixel's position on the page, from the editor canvas's bounding box."""
    return box["x"] + x * box["width"] / W, box["y"] + y * box["height"] / H


def stroke(page, box: dict, start: tuple[int, int], end: tuple[int, int]) -> None:
    page.mouse.move(*to_screen(box, *start))
    page.mouse.down()
    page.mouse.move(*to_screen(box, *end), steps=12)
    page.mouse.up()


def test_review_page_accepts_paints_and_saves(chromium: str, review_server: Server, feedback: str,
                                              tmp_path: Path) -> None:  # fmt: skip
    outside: list[str] = []
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 950})
            page.on("pageerror", lambda error: errors.append(str(error)))
            # Offline: anything not from the review server is recorded and refused.
            page.route(lambda url: not url.startswith(review_server.url),
                       lambda route: (outside.append(route.request.url), route.abort()))  # fmt: skip
            page.add_init_script("localStorage.setItem('cutout-reviewer', 'alice')")
            page.goto(review_server.url + "/")
            expect = sync_api.expect

            # The lowest score opens first; "a" accepts it and the next one opens.
            expect(page.locator("#counter")).to_have_text("2 left")
            expect(page.locator("body")).to_have_attribute("data-item", "shirt-doubtful")
            expect(page.locator("#accept")).to_be_enabled()
            page.keyboard.press("a")
            expect(page.locator("#counter")).to_have_text("1 left")
            expect(page.locator("body")).to_have_attribute("data-item", "dress-doubtful")
            expect(page.locator("#save")).to_be_enabled()

            box = page.locator("#editor").bounding_box()
            assert box and box["width"] > 100
            page.locator("#size").fill("20")  # screen pixels
            brush = 20 * W / box["width"]  # in image pixels
            stroke(page, box, (60, 40), (300, 40))  # brush across the background above the garment
            stroke(page, box, (40, 450), (320, 450))  # a stroke along the bottom...
            page.keyboard.press("u")  # ...undone
            page.keyboard.press("e")
            stroke(page, box, (150, 240), (210, 240))  # erase inside the garment
            page.locator("#opacity").fill("60")
            page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
            ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tmp_path / "review.png", ARTIFACT)

            page.locator("#save").click()
            expect(page.locator("#counter")).to_have_text("0 left")
            expect(page.locator("#status")).to_have_attribute("data-state", "done")
        finally:
            browser.close()
    assert not errors, errors
    assert not outside, f"the page asked for things elsewhere: {outside}"

    assert list_pending(feedback) == []
    store = storage.join(feedback, CORRECTED_STORE)
    accepted = json.loads(storage.read_bytes(storage.join(store, "records", "shirt-doubtful.json")))
    assert accepted["source"] == SOURCE_ACCEPTED and accepted["reviewer"] == "alice"
    record = json.loads(storage.read_bytes(storage.join(store, "records", "dress-doubtful.json")))
    assert record["source"] == SOURCE_CORRECTED and record["reviewer"] == "alice"
    mask = np.asarray(Image.open(io.BytesIO(storage.read_bytes(storage.join(store, record["mask"])))))
    before = predicted_mask()
    assert mask.shape == (H, W)
    assert (mask[38:43, 70:290] == 255).all(), "the brush stroke is product now"
    assert (mask[238:243, 160:200] == 0).all(), "the erased stroke is background now"
    assert (mask[440:460, 40:320] == before[440:460, 40:320]).all(), "the undone stroke left no trace"
    changed = np.argwhere(mask != before)
    reach = brush / 2 + 2
    near_brush = (
        (np.abs(changed[:, 0] - 40) <= reach) & (changed[:, 1] >= 60 - reach) & (changed[:, 1] <= 300 + reach)
    )
    near_eraser = (
        (np.abs(changed[:, 0] - 240) <= reach)
        & (changed[:, 1] >= 150 - reach)
        & (changed[:, 1] <= 210 + reach)
    )
    assert (near_brush | near_eraser).all(), "nothing changed outside the strokes"
    assert record["changed_pixels"] == int(np.count_nonzero((mask >= 128) != (before >= 128))) > 4000
    assert ARTIFACT.stat().st_size > 10_000

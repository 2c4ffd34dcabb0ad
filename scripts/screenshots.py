#!/usr/bin/env python3
"""Screenshots of the chat page for the docs: desktop light and dark (1280x800) and a phone
(375x812, drawer closed), written to docs/screenshots/ or the folder given; with
`--features`, three more: the prompt's progress bar, a formula, the versions switcher.

    .venv/bin/python scripts/screenshots.py [OUT_DIR] [--url http://127.0.0.1:7860] [--features]

`--features` starts its own server on the generated `vision` preset (a vision tower that
takes seconds to encode a photo here), so the progress bar is a real one, caught mid-encode.

Without --url it starts its own server on the generated tiny model (as the tests do). The
conversation shown has two turns: the first is imported example text, labelled as such (what
a real Qwen3-VL answer looks like: a Markdown table, folded reasoning), the second is sent
through the page for real, image included, and answered live by the server (the tiny model
has random weights, so its answer is gibberish by design).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}
ALIAS = "vlserve-demo-tiny"


def shapes_png(missing: str | None = None, size=(640, 420)) -> bytes:
    """A synthetic photo: a red circle, a blue square and a yellow triangle on a soft gradient."""
    from PIL import Image, ImageDraw
    w, h = 640, 420
    img = Image.new("RGB", (w, h))
    px = img.load()
    for y in range(h):
        for x in range(w):
            t = (x / w + y / h) / 2
            px[x, y] = (int(236 - 40 * t), int(240 - 22 * t), int(246 - 6 * t))
    d = ImageDraw.Draw(img)
    d.rectangle((0, int(h * .78), w, h), fill=(196, 204, 216))
    if missing != "circle":
        d.ellipse((70, 120, 230, 280), fill=(220, 52, 60))
    if missing != "square":
        d.rectangle((260, 130, 410, 280), fill=(40, 96, 220))
    if missing != "triangle":
        d.polygon([(520, 120), (600, 280), (440, 280)], fill=(246, 196, 40))
    for cx, cy in ((150, 318), (335, 318), (520, 318)):
        d.ellipse((cx - 70, cy - 8, cx + 70, cy + 8), fill=(172, 180, 194))
    if size != (w, h):
        img = img.resize(size, Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def showcase(now_ms: int) -> dict:
    """The sidebar's chats and the illustrated first turn, as a vlserve export."""
    day = 86_400_000
    answer = (
        "Three simple shapes stand on a light table, evenly spaced:\n\n"
        "| Shape | Colour | Position |\n|---|---|---|\n"
        "| Circle | red | left |\n| Square | blue | centre |\n| Triangle | yellow | right |\n\n"
        "Each casts a soft grey shadow, so the light comes from **straight above**.")
    main = {
        "id": "showcase", "title": "Shapes and colours in a photo", "created": now_ms - 60_000,
        "updated": now_ms - 50_000,
        "messages": [
            {"id": "u1", "role": "user", "time": now_ms - 60_000,
             "text": "What shapes are in this picture, and what colours are they?",
             "images": [{"url": data_url(shapes_png()), "name": "shapes.png", "width": 640,
                         "height": 420}]},
            # Example text, labelled as such: no model wrote it and no numbers are claimed.
            {"id": "a1", "role": "assistant", "time": now_ms - 58_000,
             "model": "example answer (imported)",
             "text": answer, "reasoning": "The picture shows three flat shapes...",
             "reasoningMs": 2300},
        ],
    }
    others = [("Read the serial number on this label", 3 * 3_600_000),
              ("Is this weld acceptable?", day + 3_600_000),
              ("Translate the menu in this photo", 3 * day),
              ("Count the pallets in the warehouse", 4 * day),
              ("Compare two circuit board revisions", 12 * day)]
    convs = [main] + [{
        "id": f"other{i}", "title": title, "created": now_ms - ago, "updated": now_ms - ago,
        "messages": [{"id": f"o{i}", "role": "user", "text": title, "time": now_ms - ago}],
    } for i, (title, ago) in enumerate(others)]
    return {"format": "vlserve-chats", "version": 1, "conversations": convs}


def open_page(p, settings: dict):
    """(browser, page, problems): Debian's chromium at desktop size, light, with `settings`."""
    from browser import launch, watch
    browser = launch(p)
    context = browser.new_context(viewport=DESKTOP, color_scheme="light", device_scale_factor=1)
    context.add_init_script(f"localStorage.setItem('vlserve.settings', {json.dumps(json.dumps(settings))})")
    page = context.new_page()
    return browser, page, watch(page)


def shoot(url: str, out_dir: Path) -> list[Path]:
    from playwright.sync_api import expect, sync_playwright
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with sync_playwright() as p:
        browser, page, problems = open_page(p, {"maxTokens": 40, "temperature": 0.7})
        page.goto(url)
        page.get_by_test_id("composer-input").wait_for()
        page.get_by_test_id("import-input").set_input_files(files=[{
            "name": "showcase.json", "mimeType": "application/json",
            "buffer": json.dumps(showcase(int(time.time() * 1000))).encode()}])
        expect(page.locator('[data-testid="message"][data-role="assistant"]')).to_have_count(1)
        # the live turn: an image through the real file chooser, a question, a streamed answer
        page.get_by_test_id("file-input").set_input_files(files=[{
            "name": "shapes-2.png", "mimeType": "image/png",
            "buffer": shapes_png(missing="square", size=(300, 197))}])
        expect(page.get_by_test_id("attachment").locator("img")).to_be_visible()
        page.get_by_test_id("composer-input").fill("And here, which shape is missing?")
        page.get_by_test_id("composer-input").press("Enter")
        expect(page.get_by_test_id("message-stats")).to_have_count(1, timeout=60_000)  # the live answer
        for close in page.locator(".toast-close").all():
            close.click()
        expect(page.get_by_test_id("toast")).to_have_count(0)
        page.get_by_test_id("composer-input").blur()
        page.mouse.move(0, 0)
        page.wait_for_timeout(400)   # let the last fade-ins settle
        paths.append(snap(page, out_dir / "desktop-light.png"))
        page.get_by_test_id("theme-toggle").click()
        # dark: the illustrated answer (table, folded reasoning) from its question down
        page.locator('[data-id="a1"]').evaluate("el => el.scrollIntoView({block: 'start'})")
        page.locator("#scroller").evaluate("el => el.scrollTop -= 96")
        page.mouse.move(640, 400)        # off the toggle: no hover highlight in the picture
        page.evaluate("document.activeElement.blur()")
        page.wait_for_timeout(300)
        paths.append(snap(page, out_dir / "desktop-dark.png"))
        page.get_by_test_id("theme-toggle").click()
        page.set_viewport_size(PHONE)
        page.wait_for_timeout(300)
        page.locator("#scroller").evaluate("el => el.scrollTop = el.scrollHeight")
        page.wait_for_timeout(200)
        paths.append(snap(page, out_dir / "phone.png"))
        return done(browser, problems, paths)


MATH_EXAMPLE = (
    "The worksheet's three formulas, transcribed:\n\n"
    "1. The area under the curve: $$\\int_0^1 x^2\\,dx = \\left[\\frac{x^3}{3}\\right]_0^1 = \\frac{1}{3}$$\n"
    "2. Pythagoras, for the triangle drawn: \\[ a^2 + b^2 = c^2 \\]\n"
    "3. The quadratic formula, with $a \\neq 0$: "
    "$$x = \\frac{-b \\pm \\sqrt{b^2 - 4ac}}{2a}$$\n\n"
    "The margin note reads $e^{i\\pi} + 1 = 0$.")


def shoot_features(url: str, out_dir: Path) -> list[Path]:
    """progress.png (a photo question mid-encode, its estimate from the question before),
    math.png (an imported example answer with TeX), versions.png (an answer regenerated)."""
    from playwright.sync_api import expect, sync_playwright
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with sync_playwright() as p:
        browser, page, problems = open_page(p, {"maxTokens": 24, "temperature": 0.7})
        # no prefill while typing here: it would encode the photo before Send
        page.route("**/v1/chat/prefill", lambda route: route.fulfill(status=404, json={"error": {
            "message": "off", "type": "not_found", "param": None, "code": None}}))
        problems.allow("the server responded with a status of 404")
        page.goto(url)
        page.get_by_test_id("composer-input").wait_for()
        bar = page.get_by_test_id("prompt-progress")
        for n, missing in enumerate(("square", "circle")):
            page.get_by_test_id("file-input").set_input_files(files=[{
                "name": f"shelf-{n + 1}.png", "mimeType": "image/png",
                "buffer": shapes_png(missing=missing, size=(640, 420))}])
            expect(page.get_by_test_id("attachment").locator("img")).to_be_visible()
            page.get_by_test_id("composer-input").fill("Which shape is missing from the shelf?")
            page.get_by_test_id("composer-input").press("Enter")
            expect(bar).to_contain_text("Encoding image 1 of 1", timeout=60_000)
            if n == 1:       # the first photo measured what an image costs: an estimate
                expect(bar).to_contain_text("left")
                page.mouse.move(0, 0)
                paths.append(snap(page, out_dir / "progress.png"))
            expect(page.get_by_test_id("message-stats")).to_have_count(n + 1, timeout=120_000)
        # versions: the last answer regenerated twice ("‹ 3/3 ›")
        for _ in range(2):
            last = page.locator('[data-testid="message"][data-role="assistant"]').last
            last.hover()
            last.get_by_test_id("regenerate-button").click()
            expect(page.get_by_test_id("send-button")).to_be_visible(timeout=60_000)
        last = page.locator('[data-testid="message"][data-role="assistant"]').last
        expect(last.get_by_test_id("version-label")).to_have_text("3/3")
        last.hover()
        page.wait_for_timeout(300)
        paths.append(snap(page, out_dir / "versions.png"))
        # math: example text (no model wrote it), imported and rendered by the page
        page.get_by_test_id("import-input").set_input_files(files=[{
            "name": "math.json", "mimeType": "application/json", "buffer": json.dumps({
                "conversations": [{"id": "math", "title": "Formulas on a worksheet",
                                   "created": int(time.time() * 1000), "updated": int(time.time() * 1000),
                                   "messages": [
                    {"id": "mu", "role": "user", "time": int(time.time() * 1000),
                     "text": "Transcribe the formulas on this worksheet."},
                    {"id": "ma", "role": "assistant", "time": int(time.time() * 1000),
                     "model": "example answer (imported)", "text": MATH_EXAMPLE}]}]}).encode()}])
        page.get_by_test_id("conversation-item").filter(has_text="Formulas on a worksheet").click()
        expect(page.locator(".katex-display")).to_have_count(3)
        for close in page.locator(".toast-close").all():
            close.click()
        page.mouse.move(0, 0)
        page.wait_for_timeout(300)
        paths.append(snap(page, out_dir / "math.png"))
        return done(browser, problems, paths)


def done(browser, problems, paths: list[Path]) -> list[Path]:
    """The shots, unless the page logged an error while they were taken."""
    if problems.unexpected():
        raise RuntimeError(f"the page logged errors: {problems.unexpected()}")
    browser.close()
    return paths


def snap(page, path: Path) -> Path:
    page.screenshot(path=str(path))
    return path


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", nargs="?", default=str(ROOT / "docs" / "screenshots"))
    ap.add_argument("--url", help="use this running server instead of starting one")
    ap.add_argument("--features", action="store_true",
                    help="the progress bar, a formula and the versions switcher instead")
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir)
    take = shoot_features if args.features else shoot
    if args.url:
        return take(args.url, out_dir)
    from conftest import LiveServer
    from vlserve.library.tinymodel import make_model
    with tempfile.TemporaryDirectory() as tmp:
        model, mmproj = make_model(Path(tmp) / "tiny", "vision" if args.features else "tiny")
        server = LiveServer((str(model), str(mmproj)), "--no-warmup", "--alias", ALIAS,
                            log_path=Path(tmp) / "server.log")
        try:
            return take(server.url, out_dir)
        finally:
            server.stop()


if __name__ == "__main__":
    for written in main():
        print(written)

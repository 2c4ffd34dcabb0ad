"""The chat page (webui/) in a real browser against the real server.

Playwright drives Debian's chromium (never a downloaded browser; $VLSERVE_CHROMIUM overrides
the path). Without a browser these tests skip, unless VLSERVE_REQUIRE_BROWSER=1 (CI): then
they fail. Every page records console errors and uncaught exceptions, and a test fails on
any it did not expect by exact message.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import re
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from browser import launch, need_browser, watch
from conftest import LiveServer, ROOT, user
from vlserve.library.tinymodel import make_model

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}
STATUS_ERROR = "Failed to load resource: the server responded with a status of {}"


# ---- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def _browser_first():
    """Skip (or fail) before any server is started for nothing."""
    need_browser()


@pytest.fixture(scope="module")
def browser():
    need_browser()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


def _server(tmp_path_factory, model, *extra):
    return LiveServer(model, "--no-warmup", *extra,
                      log_path=tmp_path_factory.mktemp("webui") / "server.log")


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    s = _server(tmp_path_factory, tiny_model, "--queue-size", "3")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def limited_server(tiny_model, tmp_path_factory):
    """One sequence: one request runs, one may wait (the next gets 503); bodies over
    ~10 KB get 413."""
    s = _server(tmp_path_factory, tiny_model, "--parallel", "1", "--queue-size", "1",
                "--max-body-mb", "0.01")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def thinking_server(tmp_path_factory):
    """A Thinking model, with a second model on disk to switch to."""
    root = tmp_path_factory.mktemp("webui-thinking")
    model, mmproj = make_model(root / "thinking", thinking=True)
    make_model(root / "models" / "small", "small")
    s = LiveServer((str(model), str(mmproj)), "--no-warmup", "--alias", "tiny-thinking",
                   log_path=root / "server.log")
    yield s
    s.stop()


@pytest.fixture
def open_page(browser):
    """open_page(server, settings=..., viewport=..., color_scheme=...) -> a ready page in a
    fresh context (fresh IndexedDB and localStorage). Fails the test on unexpected errors."""
    opened = []

    def open_(server, *, settings=None, viewport=DESKTOP, color_scheme="light", path="/",
              permissions=()):
        context = browser.new_context(viewport=viewport, color_scheme=color_scheme,
                                      permissions=list(permissions))
        if settings is not None:
            context.add_init_script(
                f"localStorage.setItem('vlserve.settings', {json.dumps(json.dumps(settings))})")
        page = context.new_page()
        page.problems = watch(page)
        page.set_default_timeout(15_000)
        opened.append((context, page))
        page.goto(server.url + path)
        wait_ready(page)
        return page

    yield open_
    failures = []
    for context, page in opened:
        failures += page.problems.unexpected()
        context.close()
    assert not failures, f"the page logged errors: {failures}"


def wait_ready(page):
    from playwright.sync_api import expect
    expect(page.locator("html.ready")).to_have_count(1)
    expect(page.locator("#model-dot")).to_have_attribute("data-state", "ready")


# ---- helpers ------------------------------------------------------------------------------------

def png(width=120, height=80, color=(200, 40, 90), noise=False) -> bytes:
    if noise:   # incompressible: a 200x200 noise PNG is ~120 KB
        img = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    else:
        img = Image.new("RGB", (width, height), color)
        img.paste((20, 160, 40), (0, 0, width // 2, height // 2))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def file_payload(name: str, data: bytes) -> dict:
    return {"name": name, "mimeType": "image/png", "buffer": data}


PASTE_JS = """async (b64) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], "pasted.png", { type: "image/png" }));
  const event = new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true });
  document.querySelector('[data-testid="composer-input"]').dispatchEvent(event);
  return event.defaultPrevented;
}"""


def paste_png(page, data: bytes) -> bool:
    return page.evaluate(PASTE_JS, base64.b64encode(data).decode())


def messages(page, role=None):
    selector = '[data-testid="message"]' + (f'[data-role="{role}"]' if role else "")
    return page.locator(selector)


def send(page, text: str) -> None:
    box = page.get_by_test_id("composer-input")
    box.fill(text)
    box.press("Enter")


def wait_answers(page, n: int, timeout=30_000) -> None:
    from playwright.sync_api import expect
    expect(page.get_by_test_id("message-stats")).to_have_count(n, timeout=timeout)
    expect(page.get_by_test_id("send-button")).to_be_visible()


def answer_text(page) -> str:
    return messages(page, "assistant").last.get_by_test_id("message-content").inner_text()


def health(server) -> dict:
    return requests.get(server.url + "/health", timeout=5).json()


def wait_for(predicate, timeout=10.0, interval=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def import_json(page, data: dict, name="chats.json") -> None:
    page.get_by_test_id("import-input").set_input_files(files=[{
        "name": name, "mimeType": "application/json", "buffer": json.dumps(data).encode()}])


def conversation(cid: str, title: str, pairs: list[tuple[str, str]], when: int | None = None) -> dict:
    when = when or int(time.time() * 1000)
    msgs = []
    for i, (question, answer) in enumerate(pairs):
        msgs.append({"id": f"{cid}-u{i}", "role": "user", "text": question, "time": when})
        msgs.append({"id": f"{cid}-a{i}", "role": "assistant", "text": answer, "time": when})
    return {"id": cid, "title": title, "created": when, "updated": when, "messages": msgs}


# ---- tests --------------------------------------------------------------------------------------

def test_page_loads_without_errors(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server)
    expect(page).to_have_title("vlserve")
    expect(page.locator("#empty-state")).to_contain_text("tiny")
    expect(page.locator("#empty-state")).to_contain_text("Drop a photo or paste one")
    expect(page.get_by_test_id("send-button")).to_be_disabled()
    expect(page.get_by_test_id("stop-button")).to_be_hidden()
    for name in ("attach-button", "send-button", "theme-toggle", "settings-button",
                 "sidebar-toggle"):
        assert page.get_by_test_id(name).get_attribute("aria-label"), name
    sidebar, toggle = page.get_by_test_id("sidebar"), page.get_by_test_id("sidebar-toggle")
    expect(sidebar).to_be_visible()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    toggle.click()                           # on a wide screen the list collapses…
    expect(sidebar).to_be_hidden()
    expect(toggle).to_have_attribute("aria-expanded", "false")
    page.goto(server.url + "/chat.html")     # …stays so, also under the page's other address
    wait_ready(page)
    expect(page.get_by_test_id("composer-input")).to_be_focused()   # ready to type
    expect(sidebar).to_be_hidden()
    toggle.click()
    expect(sidebar).to_be_visible()


def test_images_by_chooser_and_paste_then_answer_streams(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server, settings={"maxTokens": 2500})
    bodies = []
    page.on("request", lambda r: bodies.append(r.post_data_json)
            if r.url.endswith("/v1/chat/completions") else None)
    page.get_by_test_id("file-input").set_input_files(files=[file_payload("chosen.png", png())])
    expect(page.get_by_test_id("attachment").locator("img")).to_have_count(1)
    assert paste_png(page, png(90, 60, (30, 90, 200))) is True
    expect(page.get_by_test_id("attachment").locator("img")).to_have_count(2)
    page.get_by_test_id("attachment-remove").first.click()     # remove one, paste it again
    expect(page.get_by_test_id("attachment")).to_have_count(1)
    paste_png(page, png(90, 60, (30, 90, 200)))
    expect(page.get_by_test_id("attachment").locator("img")).to_have_count(2)

    page.evaluate("""() => {   // did the typing indicator ever show? (it lasts milliseconds)
      window.__typing = false;
      new MutationObserver(() => {
        if (document.querySelector('[data-testid="typing-indicator"]')) window.__typing = true;
      }).observe(document.body, { childList: true, subtree: true });
    }""")
    page.get_by_test_id("composer-input").fill("What is in these two pictures?")
    page.get_by_test_id("send-button").click()
    expect(page.get_by_test_id("stop-button")).to_be_visible()
    expect(page.get_by_test_id("attachment")).to_have_count(0)

    lengths = []
    stats = page.get_by_test_id("message-stats")
    while stats.count() == 0:
        lengths.append(page.evaluate("""() => {
          const m = [...document.querySelectorAll('[data-testid="message"][data-role="assistant"]')].pop();
          return m ? m.querySelector('[data-testid="message-content"]').textContent.length : 0;
        }"""))
        page.wait_for_timeout(40)
    final = len(answer_text(page).replace("\n", ""))
    partial = {n for n in lengths if 0 < n < final}
    assert len(partial) >= 3, f"expected the answer to grow visibly, saw lengths {sorted(set(lengths))}"
    assert page.evaluate("window.__typing") is True

    expect(stats).to_contain_text("tok/s")
    expect(stats).to_contain_text("to first token")
    expect(messages(page, "user").get_by_test_id("message-images").locator("img")).to_have_count(2)
    body = bodies[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 2500
    parts = body["messages"][-1]["content"]
    images = [p for p in parts if p["type"] == "image_url"]
    assert len(images) == 2 and all(p["image_url"]["url"].startswith("data:image/png;base64,")
                                    for p in images)
    assert all(p["image_url"]["detail"] == "auto" for p in images)
    assert parts[-1] == {"type": "text", "text": "What is in these two pictures?"}
    # the conversation is listed under its first words
    expect(page.get_by_test_id("conversation-item")).to_have_count(1)
    expect(page.get_by_test_id("conversation-item")).to_contain_text("What is in these two pictures?")


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory):
    """A vision tower big enough that a 448x448 photo takes seconds to encode here."""
    root = tmp_path_factory.mktemp("webui-vision")
    model, mmproj = make_model(root, "vision")
    s = _server(tmp_path_factory, (str(model), str(mmproj)), "--alias", "tiny-vision")
    yield s
    s.stop()


def test_a_slow_photo_prefill_shows_its_progress_then_the_answer(vision_server, open_page):
    from playwright.sync_api import expect
    page = open_page(vision_server, settings={"maxTokens": 4})
    # no prefill while typing: it would encode the photo before Send (and the bar be brief)
    page.route("**/v1/chat/prefill", lambda route: route.fulfill(status=404, json={"error": {
        "message": "off for this test", "type": "not_found", "param": None, "code": None}}))
    page.problems.allow(STATUS_ERROR.format(404))
    bodies = []
    page.on("request", lambda r: bodies.append(r.post_data_json)
            if r.url.endswith("/v1/chat/completions") else None)
    bar = page.get_by_test_id("prompt-progress")
    for turn, color in enumerate([(200, 40, 90), (30, 150, 60)], start=1):
        page.get_by_test_id("file-input").set_input_files(
            files=[file_payload("photo.png", png(448, 448, color))])
        expect(page.get_by_test_id("attachment").locator("img")).to_have_count(1)
        send(page, "What does this photo show?")
        expect(bar).to_be_visible()
        expect(bar).to_contain_text("Encoding image 1 of 1")
        if turn == 2:   # the first photo measured what an image costs here: an estimate
            expect(bar).to_contain_text(re.compile(r"about (a second|\d+ s|\d+ min) left"))
            expect(bar).to_contain_text("tokens cached")      # the first turn is reused
        else:
            expect(bar).to_contain_text("estimating time left")
        assert 0 <= float(bar.locator("progress").get_attribute("value") or 0) < 1
        wait_answers(page, turn)
        expect(bar).to_have_count(0)                           # the answer replaced it
    assert all(b["return_progress"] is True for b in bodies) and len(bodies) == 2


def test_stop_mid_answer_frees_the_server(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server, settings={"maxTokens": 12000}, viewport=PHONE)
    send(page, "Tell me a long story")
    stop = page.get_by_test_id("stop-button")
    expect(stop).to_be_visible()
    scroller = page.locator("#scroller")
    # while the reader is at the bottom, the page follows the answer…
    page.wait_for_function("() => { const s = document.querySelector('#scroller'); "
                           "return s.scrollHeight > s.clientHeight + 300; }")
    gap = "s => s.scrollHeight - s.scrollTop - s.clientHeight"
    assert scroller.evaluate(gap) < 48
    # …but once they scroll up to re-read, it stays where they are
    scroller.evaluate("s => { s.scrollTop = s.scrollTop - 200; }")
    expect(page.locator("#to-bottom")).to_be_visible()
    length = "() => document.querySelectorAll('[data-testid=message-content]')[1].textContent.length"
    top, before = scroller.evaluate("s => s.scrollTop"), page.evaluate(length)
    page.wait_for_function(f"() => ({length})() > {before + 100}")
    assert abs(scroller.evaluate("s => s.scrollTop") - top) <= 1
    page.locator("#to-bottom").click()
    expect(page.locator("#to-bottom")).to_be_hidden()
    page.wait_for_function("() => { const s = document.querySelector('#scroller'); "
                           "return s.scrollHeight - s.scrollTop - s.clientHeight < 48; }")
    stop.click()
    expect(page.get_by_test_id("send-button")).to_be_visible()
    expect(stop).to_be_hidden()
    expect(messages(page, "assistant").last).to_contain_text("Stopped.")
    kept = len(answer_text(page))
    assert kept > 100

    t0 = time.monotonic()
    r = requests.post(server.url + "/v1/chat/completions", timeout=10,
                      json={"messages": [user("hi")], "max_tokens": 5})
    assert r.status_code == 200 and time.monotonic() - t0 < 5, r.text
    state = wait_for(lambda: (h := health(server)) and not h["busy"] and h["queue_depth"] == 0 and h,
                     timeout=5)
    assert state["served"]["cancelled"] >= 1
    page.wait_for_timeout(300)
    assert len(answer_text(page)) == kept     # nothing arrived after Stop


def test_regenerate_replaces_the_last_answer(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server, settings={"maxTokens": 40})
    send(page, "Say something")
    wait_answers(page, 1)
    first_id = messages(page, "assistant").get_attribute("data-id")
    first_text = answer_text(page)
    page.get_by_test_id("regenerate-button").click()
    expect(messages(page, "assistant")).not_to_have_attribute("data-id", first_id)
    wait_answers(page, 1)
    expect(messages(page)).to_have_count(2)          # replaced, not a new turn
    expect(messages(page, "assistant")).to_have_count(1)
    assert answer_text(page) != first_text
    page.reload()
    wait_ready(page)
    expect(messages(page, "assistant")).to_have_count(1)   # and saved that way


def test_edit_last_message_and_resend(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server, settings={"maxTokens": 20})
    send(page, "first wording")
    wait_answers(page, 1)
    old_answer = messages(page, "assistant").get_attribute("data-id")
    page.get_by_test_id("edit-button").click()
    editor = page.get_by_role("textbox", name="Edit message")
    expect(editor).to_be_focused()
    expect(editor).to_have_value("first wording")
    editor.fill("second wording")
    editor.press("Enter")
    expect(messages(page, "assistant")).not_to_have_attribute("data-id", old_answer)
    wait_answers(page, 1)
    expect(messages(page)).to_have_count(2)
    expect(messages(page, "user").get_by_test_id("message-content")).to_have_text("second wording")
    expect(page.get_by_test_id("conversation-item")).to_contain_text("second wording")


def test_enter_sends_and_shift_enter_adds_a_line(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server, settings={"maxTokens": 8})
    box = page.get_by_test_id("composer-input")
    expect(box).to_be_focused()
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    expect(box).to_have_value("line one\nline two")
    expect(messages(page)).to_have_count(0)
    page.keyboard.press("Enter")
    expect(messages(page, "user").get_by_test_id("message-content")).to_have_text("line one\nline two")
    expect(box).to_have_value("")
    wait_answers(page, 1)
    # copy works from the keyboard too: Tab reaches the message's copy button
    page.get_by_test_id("copy-button").last.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("copy-button").last).to_have_attribute("aria-label", "Copied")


def test_conversation_and_image_survive_reload(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server, settings={"maxTokens": 12})
    page.get_by_test_id("file-input").set_input_files(files=[file_payload("keep.png", png(160, 100))])
    expect(page.get_by_test_id("attachment").locator("img")).to_have_count(1)
    send(page, "Remember this picture")
    wait_answers(page, 1)
    answer = answer_text(page)
    page.get_by_test_id("new-chat").click()          # a second chat, so selection matters
    send(page, "Another chat")
    wait_answers(page, 1)
    page.get_by_test_id("conversation-item").filter(has_text="Remember this picture").click()
    expect(page.locator("#chat-title")).to_have_text("Remember this picture")

    page.reload()
    wait_ready(page)
    expect(page.locator("#chat-title")).to_have_text("Remember this picture")
    expect(page.locator(".conv.active")).to_contain_text("Remember this picture")
    expect(messages(page)).to_have_count(2)
    assert answer_text(page) == answer
    img = messages(page, "user").get_by_test_id("message-images").locator("img")
    expect(img).to_have_count(1)
    img.scroll_into_view_if_needed()
    page.wait_for_function("""() => {
      const i = document.querySelector('[data-testid="message-images"] img');
      return i && i.complete && i.naturalWidth === 160;
    }""")
    img.click()                                           # full size in the lightbox
    expect(page.get_by_test_id("lightbox")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_test_id("lightbox")).to_be_hidden()


def test_export_delete_import_round_trip(server, open_page, tmp_path):
    from playwright.sync_api import expect
    page = open_page(server, settings={"maxTokens": 10})
    page.get_by_test_id("file-input").set_input_files(files=[file_payload("a.png", png())])
    expect(page.get_by_test_id("attachment").locator("img")).to_have_count(1)
    send(page, "chat one")
    wait_answers(page, 1)
    page.get_by_test_id("new-chat").click()
    send(page, "chat two")
    wait_answers(page, 1)
    before = page.evaluate("""async () => {
      const db = await new Promise((ok, ko) => { const r = indexedDB.open('vlserve'); r.onsuccess = () => ok(r.result); r.onerror = ko; });
      return await new Promise((ok) => { const r = db.transaction('conversations').objectStore('conversations').getAll(); r.onsuccess = () => ok(r.result); });
    }""")
    assert len(before) == 2

    with page.expect_download() as info:
        page.get_by_test_id("export-all").click()
    path = tmp_path / "export.json"
    info.value.save_as(path)
    exported = json.loads(path.read_text())
    assert exported["format"] == "vlserve-chats"
    assert {c["title"] for c in exported["conversations"]} == {"chat one", "chat two"}

    one = page.get_by_test_id("conversation-item").filter(has_text="chat one")
    one.hover()
    with page.expect_download() as info:
        one.get_by_test_id("conversation-export").click()
    single = json.loads(Path(info.value.path()).read_text())
    assert [c["title"] for c in single["conversations"]] == ["chat one"]
    assert info.value.suggested_filename.startswith("vlserve-chat-one-")

    for _ in range(2):
        item = page.get_by_test_id("conversation-item").first
        item.hover()
        item.get_by_test_id("conversation-delete").click()
        page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_test_id("conversation-item")).to_have_count(0)
    expect(messages(page)).to_have_count(0)

    page.get_by_test_id("import-input").set_input_files(path)
    expect(page.get_by_test_id("conversation-item")).to_have_count(2)
    after = {c["id"]: c for c in page.evaluate("""async () => {
      const db = await new Promise((ok, ko) => { const r = indexedDB.open('vlserve'); r.onsuccess = () => ok(r.result); r.onerror = ko; });
      return await new Promise((ok) => { const r = db.transaction('conversations').objectStore('conversations').getAll(); r.onsuccess = () => ok(r.result); });
    }""")}
    for conv in before:
        restored = after[conv["id"]]
        assert restored["title"] == conv["title"]
        assert [(m["role"], m["text"], [i["url"] for i in m.get("images", [])])
                for m in restored["messages"]] == \
               [(m["role"], m["text"], [i["url"] for i in m.get("images", [])])
                for m in conv["messages"]]
    # importing the same file again merges: nothing is duplicated
    page.get_by_test_id("import-input").set_input_files(path)
    expect(page.get_by_test_id("toast").filter(has_text="already here")).to_be_visible()
    expect(page.get_by_test_id("conversation-item")).to_have_count(2)
    page.get_by_test_id("conversation-item").filter(has_text="chat one").locator(".conv-open").click()
    expect(messages(page, "user").get_by_test_id("message-images").locator("img")).to_have_count(1)


def test_rename_and_search_conversations(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server)
    now = int(time.time() * 1000)
    import_json(page, {"conversations": [
        conversation("c1", "Invoice photo", [("q", "a")], now - 1000),
        conversation("c2", "Broken gear", [("q", "a")], now - 2000),
        conversation("c3", "Gear ratios", [("q", "a")], now - 3000)]})
    items = page.get_by_test_id("conversation-item")
    expect(items).to_have_count(3)
    page.get_by_test_id("conversation-search").fill("gear")
    expect(items).to_have_count(2)
    page.get_by_test_id("conversation-search").fill("nothing like this")
    expect(items).to_have_count(0)
    expect(page.locator("#conversations-empty")).to_contain_text("No chats match")
    page.get_by_test_id("conversation-search").fill("")
    expect(items).to_have_count(3)
    item = items.filter(has_text="Broken gear")
    item.hover()
    item.get_by_test_id("conversation-rename").click()
    box = page.get_by_role("textbox", name="Chat title")
    box.fill("Gearbox, cracked tooth")
    box.press("Enter")
    expect(items.filter(has_text="Gearbox, cracked tooth")).to_have_count(1)
    page.reload()
    wait_ready(page)
    expect(items.filter(has_text="Gearbox, cracked tooth")).to_have_count(1)


def test_busy_server_shows_toast_with_retry(limited_server, open_page):
    from playwright.sync_api import expect
    page = open_page(limited_server, settings={"maxTokens": 8})
    page.problems.allow(STATUS_ERROR.format(503))
    url = limited_server.url + "/v1/chat/completions"
    long = {"messages": [user("occupy")], "max_tokens": 12000, "stream": True}
    running = requests.post(url, json=long, stream=True, timeout=30)
    held = [running]
    try:
        wait_for(lambda: health(limited_server)["busy"])
        queued = requests.post(url, json=long, stream=True, timeout=30)
        held.append(queued)
        assert running.status_code == queued.status_code == 200
        wait_for(lambda: health(limited_server)["queue_depth"] == 1)
        send(page, "Are you free?")
        toast = page.get_by_test_id("toast").filter(has_text="busy")
        expect(toast).to_be_visible()
        expect(toast).to_have_attribute("data-kind", "error")
        expect(toast.get_by_test_id("toast-retry")).to_be_visible()
        # nothing typed is lost: the message is back in the box, no half turn in the chat
        expect(page.get_by_test_id("composer-input")).to_have_value("Are you free?")
        expect(messages(page)).to_have_count(0)
    finally:
        for r in held:
            r.close()
    wait_for(lambda: (h := health(limited_server)) and not h["busy"] and h["queue_depth"] == 0)
    page.get_by_test_id("toast-retry").click()
    wait_answers(page, 1)
    expect(messages(page, "user").get_by_test_id("message-content")).to_have_text("Are you free?")


def test_image_too_large_shows_413_toast(limited_server, open_page):
    from playwright.sync_api import expect
    page = open_page(limited_server)
    page.problems.allow(STATUS_ERROR.format(413))
    page.get_by_test_id("file-input").set_input_files(
        files=[file_payload("noise.png", png(200, 200, noise=True))])
    expect(page.get_by_test_id("attachment").locator("img")).to_have_count(1)
    send(page, "Too big?")
    toast = page.get_by_test_id("toast").filter(has_text="Too large")
    expect(toast).to_be_visible()
    expect(toast).to_have_attribute("data-kind", "error")
    expect(toast).to_contain_text("Remove an image")
    expect(page.get_by_test_id("attachment")).to_have_count(1)     # still there to remove
    toast.get_by_role("button", name="Dismiss notification").click()
    expect(toast).to_have_count(0)


def test_context_too_long_says_what_to_do(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server, settings={"maxTokens": 16384})   # the whole context kept for the answer
    page.problems.allow(STATUS_ERROR.format(400))
    send(page, "hello")
    toast = page.get_by_test_id("toast").filter(has_text="too long")
    expect(toast).to_be_visible()
    expect(toast).to_contain_text("Start a new chat")
    expect(toast).to_contain_text("16384 tokens")                # the server's numbers, kept
    expect(page.get_by_test_id("composer-input")).to_have_value("hello")
    toast.get_by_role("button", name="New chat").click()
    expect(page.locator("#empty-state")).to_be_visible()
    expect(page.get_by_test_id("composer-input")).to_have_value("hello")


def test_unreachable_server_shows_toast(tiny_model, tmp_path_factory, open_page):
    from playwright.sync_api import expect
    gone = _server(tmp_path_factory, tiny_model)
    try:
        page = open_page(gone, settings={"maxTokens": 4})
    finally:
        gone.stop()
    page.problems.allow("net::ERR_CONNECTION_REFUSED")
    send(page, "anyone there?")
    toast = page.get_by_test_id("toast").filter(has_text="Can't reach the server")
    expect(toast).to_be_visible()
    expect(toast.get_by_test_id("toast-retry")).to_be_visible()
    expect(page.get_by_test_id("composer-input")).to_have_value("anyone there?")
    expect(page.locator("#model-dot")).not_to_have_attribute("data-state", "ready")


LOADING = {"status": "loading", "reason": "loading qwen3-vl-8b-instruct (40%)",
           "model": "qwen3-vl-8b-instruct", "queue_depth": 0, "busy": False}


def test_a_message_sent_while_loading_waits_and_goes_at_ready(server, browser):
    """A tiny model loads in milliseconds, too fast to catch for real: here /health answers
    as a loading server does (503 + reason) until the test says it is done, through
    page.route; the chat requests reach the real server."""
    from playwright.sync_api import expect
    loading = threading.Event()
    loading.set()
    chats = []

    def fake_health(route):
        if loading.is_set():
            route.fulfill(status=503, json=LOADING, headers={"Retry-After": "5"})
        else:
            route.continue_()

    def count_chat(route):
        chats.append(route.request.post_data_json)
        route.continue_()

    context = browser.new_context(viewport=DESKTOP)
    context.add_init_script("localStorage.setItem('vlserve.settings', JSON.stringify({maxTokens: 4}))")
    context.route("**/health", fake_health)
    context.route("**/v1/chat/completions", count_chat)
    page = context.new_page()
    problems = watch(page)
    problems.allow(STATUS_ERROR.format(503))
    try:
        page.goto(server.url)
        note = page.get_by_test_id("toast").filter(has_text="The model is loading")
        expect(note).to_be_visible()
        expect(note).to_have_attribute("data-kind", "info")
        expect(note).to_contain_text("loading qwen3-vl-8b-instruct (40%)")
        expect(note).to_contain_text("goes when it's ready")
        expect(page.locator("#model-dot")).to_have_attribute("data-state", "loading")
        send(page, "hi")
        queued = page.get_by_test_id("queued-note")
        expect(queued).to_be_visible()                       # in the chat, marked, waiting
        expect(messages(page, "user")).to_have_count(1)
        expect(page.get_by_test_id("stop-button")).to_be_visible()
        assert chats == []                                   # nothing sent while loading
        loading.clear()                                      # the model is ready
        ready = page.locator('[data-testid="toast"][data-kind="success"]').filter(has_text="tiny is ready")
        expect(ready).to_be_visible(timeout=10_000)
        wait_answers(page, 1)                                # sent at Ready, by itself
        expect(queued).to_have_count(0)
        expect(note).to_have_count(0)
        assert len(chats) == 1 and chats[0]["messages"][-1]["content"][-1]["text"] == "hi"
        assert not problems.unexpected(), problems.unexpected()
    finally:
        context.close()


def test_stop_takes_back_a_message_waiting_for_the_model(server, browser):
    from playwright.sync_api import expect
    context = browser.new_context(viewport=DESKTOP)
    context.route("**/health", lambda route: route.fulfill(status=503, json=LOADING))
    page = context.new_page()
    problems = watch(page)
    problems.allow(STATUS_ERROR.format(503))
    try:
        page.goto(server.url)
        expect(page.locator("#model-dot")).to_have_attribute("data-state", "loading")
        send(page, "take me back")
        expect(page.get_by_test_id("queued-note")).to_be_visible()
        page.get_by_test_id("stop-button").click()
        expect(messages(page)).to_have_count(0)
        expect(page.get_by_test_id("composer-input")).to_have_value("take me back")
        assert not problems.unexpected(), problems.unexpected()
    finally:
        context.close()


def test_a_refused_request_waits_too_and_stale_toasts_go_at_ready(server, browser):
    """The page thought the server ready; the server is gone (the request fails: "Can't
    reach the server"), then comes back loading (a 503 model_not_ready: the question waits
    for Ready instead of being handed back), then ready: every toast about the outage goes."""
    from playwright.sync_api import expect
    phase = {"now": "ok"}
    chats = []

    def fake_health(route):
        if phase["now"] == "down":
            route.abort("connectionrefused")
        elif phase["now"] == "loading":
            route.fulfill(status=503, json=LOADING)
        else:
            route.continue_()

    def fake_chat(route):
        chats.append(phase["now"])
        if phase["now"] == "down":
            route.abort("connectionrefused")
        elif phase["now"] == "loading":
            route.fulfill(status=503, json={"error": {
                "message": "the model is not ready: loading qwen3-vl-8b-instruct (40%)",
                "type": "service_unavailable", "param": None, "code": "model_not_ready"}})
        else:
            route.continue_()

    context = browser.new_context(viewport=DESKTOP)
    context.add_init_script("localStorage.setItem('vlserve.settings', JSON.stringify({maxTokens: 4}))")
    context.route("**/health", fake_health)
    context.route("**/v1/chat/completions", fake_chat)
    page = context.new_page()
    problems = watch(page)
    for allowed in (STATUS_ERROR.format(503), "net::ERR_CONNECTION_REFUSED", "net::ERR_FAILED"):
        problems.allow(allowed)
    try:
        page.goto(server.url)
        wait_ready(page)
        phase["now"] = "down"
        send(page, "anyone there?")
        gone = page.get_by_test_id("toast").filter(has_text="Can't reach the server")
        expect(gone.first).to_be_visible()
        expect(page.get_by_test_id("composer-input")).to_have_value("anyone there?")
        phase["now"] = "ok"
        expect(page.locator('[data-testid="toast"][data-kind="success"]').filter(
            has_text="is ready")).to_be_visible(timeout=10_000)
        expect(gone).to_have_count(0)                            # stale: gone at Ready
        phase["now"] = "loading"           # the page still thinks it ready: the request goes
        page.get_by_test_id("composer-input").press("Enter")
        expect(page.get_by_test_id("queued-note")).to_be_visible()   # refused: it waits
        expect(page.locator("#model-dot")).to_have_attribute("data-state", "loading")
        assert chats == ["down", "loading"]
        phase["now"] = "ok"
        wait_answers(page, 1)                                    # and goes at Ready
        expect(page.get_by_test_id("queued-note")).to_have_count(0)
        for stale in ("still loading", "The model is loading", "Can't reach"):
            expect(page.get_by_test_id("toast").filter(has_text=stale)).to_have_count(0)
        assert chats == ["down", "loading", "ok"]
        assert not problems.unexpected(), problems.unexpected()
    finally:
        context.close()


def test_context_dropped_by_the_server_is_noted(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server, settings={"maxTokens": 8})
    rng = random.Random(7)      # ~20k tokens of words: more than the 16k context
    long = " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8)))
                    for _ in range(9000))
    old = conversation("big", "Long history", [("old question", long)])
    old["messages"][0]["images"] = [{"url": "data:image/png;base64," + base64.b64encode(png()).decode(),
                                     "name": "old.png", "width": 120, "height": 80}]
    import_json(page, {"conversations": [old]})
    expect(messages(page)).to_have_count(2)
    send(page, "and now?")
    wait_answers(page, 1)
    note = messages(page, "assistant").last.locator(".message-note")
    expect(note).to_contain_text("To fit the model's context, 1 older image and 2 older messages were left out.")


def test_dark_mode_toggle(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server)
    html = page.locator("html")
    expect(html).to_have_attribute("data-theme", "light")
    background = "() => getComputedStyle(document.body).backgroundColor"
    light = page.evaluate(background)
    page.get_by_test_id("theme-toggle").click()
    expect(html).to_have_attribute("data-theme", "dark")
    dark = page.evaluate(background)
    assert light != dark and dark == "rgb(23, 25, 30)", (light, dark)
    page.reload()
    wait_ready(page)
    expect(html).to_have_attribute("data-theme", "dark")        # the choice is kept
    system_dark = open_page(server, color_scheme="dark")        # no choice: follow the system
    expect(system_dark.locator("html")).to_have_attribute("data-theme", "dark")


def test_phone_width_has_no_overflow_and_a_drawer(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server, viewport=PHONE)
    wide = "x" * 300 + " | a | b |\n|---|---|\n| " + "long " * 40 + "| cell |\n\n```\n" + "y" * 400 + "\n```"
    import_json(page, {"conversations": [conversation("wide", "Wide content", [("z" * 500, wide)])]})
    expect(messages(page)).to_have_count(2)
    sidebar = page.get_by_test_id("sidebar")
    expect(sidebar).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.evaluate("document.querySelector('#scroller').scrollWidth") <= 375
    page.get_by_test_id("sidebar-toggle").click()
    expect(sidebar).to_be_visible()
    expect(page.get_by_test_id("new-chat")).to_be_focused()
    page.keyboard.press("Escape")
    expect(sidebar).to_be_hidden()
    page.get_by_test_id("sidebar-toggle").click()
    page.get_by_test_id("conversation-item").locator(".conv-open").click()
    expect(sidebar).to_be_hidden()                   # picking a chat closes the drawer
    page.get_by_test_id("settings-button").click()
    expect(page.get_by_test_id("settings-dialog")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.keyboard.press("Escape")
    page.set_viewport_size({"width": 360, "height": 740})    # the narrowest phones supported
    page.wait_for_timeout(100)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    assert page.evaluate("document.querySelector('#scroller').scrollWidth") <= 360


def test_markdown_is_rendered_and_sanitized(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server, permissions=["clipboard-read", "clipboard-write"])
    answer = ("Here you go:\n\n| Part | Count |\n|---|---|\n| bolt | 4 |\n| nut | 4 |\n\n"
              "- first\n- second\n\n```python\ndef area(r):\n    return 3.14 * r * r\n```\n\n"
              '<img src=x onerror="window.__xss=1">\n\n<script>window.__xss=2</script>\n\n'
              '[docs](https://example.com/docs) and <a href="javascript:window.__xss=3">bad</a>')
    import_json(page, {"conversations": [conversation("md", "Markdown", [("show me", answer)])]})
    content = messages(page, "assistant").get_by_test_id("message-content")
    expect(content.locator("table")).to_have_count(1)
    expect(content.locator("table td")).to_have_count(4)
    expect(content.locator("ul > li")).to_have_count(2)
    code = content.locator("pre code")
    expect(code).to_have_class(re.compile(r"\bhljs\b"))
    expect(code.locator(".hljs-keyword")).to_have_count(2)       # def, return
    expect(content.locator("img, script")).to_have_count(0)
    assert page.evaluate("window.__xss") is None
    link = content.get_by_role("link", name="docs")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", re.compile("noopener"))
    expect(content.get_by_text("bad")).not_to_have_attribute("href", re.compile("javascript"))
    copy = content.get_by_test_id("code-copy")
    expect(copy).to_have_count(1)
    expect(messages(page, "assistant").get_by_test_id("copy-button")).to_have_count(1)
    copy.click()
    assert page.evaluate("navigator.clipboard.readText()") == "def area(r):\n    return 3.14 * r * r"
    page.wait_for_timeout(100)
    assert page.evaluate("window.__xss") is None
    # raw HTML in an answer is the text the model wrote, not markup
    expect(content).to_contain_text('<img src=x onerror="window.__xss=1">')
    expect(content).to_contain_text("<script>window.__xss=2</script>")
    assert page.evaluate(ACTIVE_ATTRIBUTES, "[data-testid=message-content]") == []


# Elements under `selector` carrying an attribute a browser would run or fetch: on*, style,
# src, srcset, and any URL that is not http(s)/mailto/#.
ACTIVE_ATTRIBUTES = """(selector) => [...document.querySelectorAll(selector)].flatMap((root) =>
  [root, ...root.querySelectorAll("*")].flatMap((node) => [...node.attributes]
    .filter((a) => /^on|^(style|src|srcset|formaction|action)$/i.test(a.name)
      || (a.name === "href" && !/^(https?:|mailto:|#)/i.test(a.value)))
    .map((a) => `<${node.tagName.toLowerCase()} ${a.name}="${a.value}">`)))"""

# Every answer the sanitizer may be handed while a reply streams: each prefix of these.
HOSTILE_ANSWERS = [
    'Look: <img src=x onerror="window.pwned=1"> and <svg onload=window.pwned=2>',
    "<script>window.pwned=3</script>\n\n<a href=\"javascript:window.pwned=4\" onclick=\"window.pwned=5\">x</a>",
    "<details open ontoggle=window.pwned=6><summary>s</summary></details> <iframe src=javascript:1>",
    "| a | b |\n|---|---|\n| <img src=1 onerror=window.pwned=7> | `<b onclick=1>` |",
    "<style>*{color:red}</style><div style=\"x\" onmouseover=window.pwned=8>hover</div>",
    "![pic](https://example.com/p.png) ![x](javascript:window.pwned=9) <!-- <img src=x onerror=1> -->",
    "```html\n<img src=x onerror=window.pwned=10>\n```\n<math><mi xlink:href=javascript:1>m</mi></math>",
]


def test_every_prefix_of_hostile_answers_renders_inert(server, open_page):
    """What a streaming answer shows at each moment: the renderer on every prefix (tags cut
    anywhere) hands the browser no handler, style, source or script URL, and the page logs
    no CSP violation (the fixture fails on any console error)."""
    page = open_page(server)
    found = page.evaluate("""async (answers) => {
      const inspect = %s;
      const { renderMarkdown } = await import("/static/js/markdown.js");
      const target = document.createElement("div");
      target.id = "prefix-probe";
      document.body.append(target);
      const bad = [];
      for (const answer of answers) {
        for (let i = 1; i <= answer.length; i++) {
          renderMarkdown(target, answer.slice(0, i), { final: i === answer.length });
          for (const hit of inspect("#prefix-probe")) bad.push(`${JSON.stringify(answer.slice(0, i))}: ${hit}`);
        }
      }
      target.remove();
      return bad;
    }""" % ACTIVE_ATTRIBUTES, HOSTILE_ANSWERS)
    assert found == []
    page.wait_for_timeout(100)   # a late error event would reach the fixture's check
    assert page.evaluate("window.pwned") is None


class PacedSSE:
    """A loopback OpenAI-style stream that sends its chunks one at a time, each only when the
    test releases it: the page then paints every partial answer (cut inside a tag), in order,
    with no timing involved."""

    def __init__(self, pieces: list[str]):
        import http.server
        self.pieces = pieces
        self.gates = [threading.Event() for _ in pieces]
        self.requests = 0
        paced = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                paced.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                base = {"id": "chatcmpl-paced", "object": "chat.completion.chunk",
                        "created": 0, "model": "tiny"}

                def event(delta, finish=None, **extra):
                    chunk = {**base, "choices": [{"index": 0, "delta": delta,
                                                  "finish_reason": finish}], **extra}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()

                event({"role": "assistant", "content": ""})
                for gate, piece in zip(paced.gates, paced.pieces):
                    if not gate.wait(30):
                        return
                    event({"content": piece})
                event({}, "stop", timings={"ttft_ms": 1.0, "decode_tokens_per_s": 1.0},
                      usage={"prompt_tokens": 1, "completion_tokens": len(paced.pieces),
                             "total_tokens": 1 + len(paced.pieces)})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/chat/completions"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        for gate in self.gates:
            gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_streamed_raw_html_cut_across_chunks_stays_text(server, open_page):
    """A real stream whose tags are split between chunks: each partial answer is painted (the
    test waits for it) and none of them hands the browser a handler; the final answer shows
    the tags as text. The page's chat request is sent to a paced loopback stream."""
    from playwright.sync_api import expect
    pieces = ['Look: <img src=x on', 'error="window.pwned=1"> then <scr',
              'ipt>window.pwned=2</scr', 'ipt> and <a href="javascript:window.pwned=3" oncl',
              'ick="window.pwned=4">x</a> <svg/onlo', 'ad=window.pwned=5> end']
    paced = PacedSSE(pieces)
    try:
        page = open_page(server)
        page.route("**/v1/chat/completions", lambda route: route.continue_(url=paced.url))
        send(page, "show me raw html")
        content = messages(page, "assistant").get_by_test_id("message-content")
        sofar = ""
        for gate, piece in zip(paced.gates, pieces):
            gate.set()
            sofar += piece
            expect(content).to_have_text(sofar)   # painted as typed, cut tag and all
            assert page.evaluate(ACTIVE_ATTRIBUTES, "#messages") == []
        wait_answers(page, 1)
        expect(content).to_have_text("".join(pieces))
        assert page.evaluate(ACTIVE_ATTRIBUTES, "#messages") == []
        assert page.evaluate("window.pwned") is None
        assert paced.requests == 1
    finally:
        paced.close()


def test_raw_html_in_imported_titles_questions_and_reasoning_stays_text(server, open_page):
    """An imported chat is untrusted: HTML in its title (sidebar, header, tab title), in a
    question, in an answer and in reasoning shows as text; so does a title typed in rename."""
    from playwright.sync_api import expect
    page = open_page(server)
    title = '<img src=x onerror="window.pwned=1">Invoice'
    chat = conversation("html", title, [('<b onclick="window.pwned=2">q</b>',
                                         '<svg onload="window.pwned=3">answer</svg>')])
    chat["messages"][1]["reasoning"] = '<img src=y onerror="window.pwned=4">thinking'
    import_json(page, {"conversations": [chat]})
    item = page.get_by_test_id("conversation-item")
    expect(item).to_contain_text(title)
    item.locator(".conv-open").click()
    expect(page.locator("#chat-title")).to_have_text(title)
    assert page.title() == f"{title} · vlserve"
    expect(messages(page, "user").get_by_test_id("message-content")).to_have_text(
        '<b onclick="window.pwned=2">q</b>')
    expect(messages(page, "assistant").get_by_test_id("message-content")).to_have_text(
        '<svg onload="window.pwned=3">answer</svg>')
    page.locator(".thinking summary").click()
    expect(page.locator(".thinking-body")).to_have_text('<img src=y onerror="window.pwned=4">thinking')
    item.hover()
    page.get_by_test_id("conversation-rename").click()
    renamed = '<iframe src="javascript:window.pwned=5"></iframe>'
    page.locator(".conv-rename").fill(renamed)
    page.locator(".conv-rename").press("Enter")
    expect(page.locator("#chat-title")).to_have_text(renamed)
    expect(item).to_contain_text(renamed)
    assert page.evaluate(ACTIVE_ATTRIBUTES, "#messages, #chat-title, [data-testid=sidebar]") == []
    assert page.evaluate("window.pwned") is None


def test_drop_an_image_on_the_page(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server)
    handle = page.evaluate_handle("""async (b64) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const data = new DataTransfer();
      data.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
      return data;
    }""", base64.b64encode(png()).decode())
    page.dispatch_event("#scroller", "dragenter", {"dataTransfer": handle})
    expect(page.get_by_test_id("drop-overlay")).to_be_visible()
    page.dispatch_event("#scroller", "drop", {"dataTransfer": handle})
    expect(page.get_by_test_id("drop-overlay")).to_be_hidden()
    expect(page.get_by_test_id("attachment").locator("img")).to_have_count(1)


def test_big_photo_is_downscaled_before_upload(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server, settings={"maxTokens": 4})
    bodies = []
    page.on("request", lambda r: bodies.append(r.post_data_json)
            if r.url.endswith("/v1/chat/completions") else None)
    img = Image.frombytes("RGB", (3000, 2000), os.urandom(3000 * 2000 * 3))
    exif = Image.Exif()
    exif[0x0112] = 6             # a phone held upright: stored landscape, shown rotated 90°
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=exif)
    page.get_by_test_id("file-input").set_input_files(
        files=[{"name": "photo.jpg", "mimeType": "image/jpeg", "buffer": buf.getvalue()}])
    expect(page.get_by_test_id("attachment").locator("img")).to_have_count(1, timeout=20_000)
    send(page, "big")
    wait_answers(page, 1)
    url = next(p for p in bodies[0]["messages"][-1]["content"] if p["type"] == "image_url")["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (1024, 1536)     # long side 1536, and upright as the phone showed it


def test_thinking_model_shows_collapsed_reasoning(thinking_server, open_page):
    from playwright.sync_api import expect
    page = open_page(thinking_server, settings={"maxTokens": 40})
    send(page, "Think about it")
    wait_answers(page, 1)
    thinking = messages(page, "assistant").get_by_test_id("thinking")
    expect(thinking).to_have_count(1)
    expect(thinking).not_to_have_attribute("open", "")
    assert thinking.evaluate("d => d.open") is False
    assert len(thinking.locator(".thinking-body").text_content().strip()) > 10
    expect(thinking.locator("summary")).to_have_text(re.compile(r"^Thought for \d+ s$"))
    thinking.locator("summary").click()
    expect(thinking.locator(".thinking-body")).to_be_visible()


def test_model_selector_switches_with_progress(thinking_server, open_page):
    from playwright.sync_api import expect
    page = open_page(thinking_server)
    page.get_by_test_id("settings-button").click()
    dialog = page.get_by_test_id("settings-dialog")
    expect(dialog).to_be_visible()
    select = page.get_by_test_id("model-select")
    listed = {m["id"] for m in requests.get(thinking_server.url + "/v1/models", timeout=5).json()["data"]}
    assert listed == {"tiny-thinking", "qwen3vl-small-f32"}
    expect(select.locator("option")).to_have_count(2)
    expect(select).to_have_value("tiny-thinking")
    expect(select).to_be_enabled()
    select.select_option("qwen3vl-small-f32")
    expect(page.get_by_test_id("model-progress")).to_be_visible()
    toast = page.get_by_test_id("toast").filter(has_text="Model switched")
    expect(toast).to_be_visible(timeout=30_000)
    expect(toast).to_have_attribute("data-kind", "success")
    expect(page.get_by_test_id("model-progress")).to_have_js_property("value", 1)
    expect(page.locator("#model-progress-text")).to_contain_text("Loaded qwen3vl-small-f32")
    loaded = [m["id"] for m in requests.get(thinking_server.url + "/v1/models", timeout=5).json()["data"]
              if m["loaded"]]
    assert loaded == ["qwen3vl-small-f32"]
    expect(page.locator("#model-name")).to_have_text("qwen3vl-small-f32")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()


@pytest.fixture(scope="module")
def upstream(tiny_model, tmp_path_factory):
    """Another vlserve, serving the tiny model as "tiny-up": an upstream for a gateway."""
    s = _server(tmp_path_factory, tiny_model, "--alias", "tiny-up")
    yield s
    s.stop()


def test_choosing_an_upstream_model_sends_there_without_loading(tiny_model, upstream,
                                                                tmp_path_factory, open_page):
    from playwright.sync_api import expect
    mixed = _server(tmp_path_factory, tiny_model, "--upstream", f"up={upstream.url}")
    try:
        page = open_page(mixed, settings={"maxTokens": 40})
        page.get_by_test_id("settings-button").click()
        select = page.get_by_test_id("model-select")
        expect(select.locator("option")).to_have_text(["tiny (loaded)", "tiny-up (up)"])
        served = health(upstream)["served"]["length"]
        select.select_option("tiny-up")
        expect(page.get_by_test_id("toast").filter(has_text="Model chosen")).to_be_visible()
        expect(page.locator("#model-info")).to_contain_text("served by up")
        expect(page.get_by_test_id("model-progress")).to_be_hidden()   # nothing to load
        expect(page.locator("#model-name")).to_have_text("tiny-up")
        page.keyboard.press("Escape")
        send(page, "hello upstream")
        wait_answers(page, 1)
        assert health(upstream)["served"]["length"] == served + 1   # answered there
        assert health(mixed)["served"]["length"] == 0               # not here
    finally:
        mixed.stop()


def test_a_pure_gateway_serves_the_page(upstream, tmp_path_factory, open_page):
    from playwright.sync_api import expect
    gateway = _server(tmp_path_factory, None, "--upstream", f"up={upstream.url}")
    try:
        # ready: /health is ok while an upstream is up
        page = open_page(gateway, settings={"maxTokens": 40})
        expect(page.locator("#model-name")).to_have_text("tiny-up")
        served = health(upstream)["served"]["length"]
        send(page, "hello through the gateway")
        wait_answers(page, 1)
        assert answer_text(page)
        assert health(upstream)["served"]["length"] == served + 1
    finally:
        gateway.stop()


def test_settings_are_kept_and_sent(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server)
    bodies = []
    page.on("request", lambda r: bodies.append(r.post_data_json)
            if r.url.endswith("/v1/chat/completions") else None)
    page.get_by_test_id("settings-button").click()
    page.get_by_test_id("system-prompt").fill("You are terse.")
    page.get_by_test_id("max-tokens").fill("6")
    page.get_by_test_id("temperature").evaluate(
        "el => { el.value = '0.3'; el.dispatchEvent(new Event('input', { bubbles: true })); }")
    page.get_by_test_id("image-detail").select_option("low")
    page.keyboard.press("Escape")
    page.reload()
    wait_ready(page)
    page.get_by_test_id("settings-button").click()
    expect(page.get_by_test_id("system-prompt")).to_have_value("You are terse.")
    expect(page.get_by_test_id("max-tokens")).to_have_value("6")
    expect(page.get_by_test_id("image-detail")).to_have_value("low")
    page.keyboard.press("Escape")
    page.get_by_test_id("file-input").set_input_files(files=[file_payload("s.png", png())])
    expect(page.get_by_test_id("attachment").locator("img")).to_have_count(1)
    send(page, "hello")
    wait_answers(page, 1)
    body = bodies[0]
    assert body["messages"][0] == {"role": "system", "content": "You are terse."}
    assert body["max_tokens"] == 6 and body["temperature"] == 0.3
    assert body["model"] == "tiny"
    assert body["messages"][1]["content"][0]["image_url"]["detail"] == "low"


def test_api_key_dialog_on_401(server, open_page):
    """A 401 on a chat request (a key revoked while the page is open): routed, so that exactly
    the first chat request gets it; the real key flow is test_api_key_for_real."""
    from playwright.sync_api import expect
    page = open_page(server, settings={"maxTokens": 6})
    page.problems.allow(STATUS_ERROR.format(401))
    seen = []

    def handle(route):
        seen.append(route.request.headers.get("authorization"))
        if len(seen) == 1:
            route.fulfill(status=401, content_type="application/json", body=json.dumps(
                {"error": {"message": "invalid API key", "type": "authentication_error",
                           "param": None, "code": "invalid_api_key"}}))
        else:
            route.continue_()

    page.route("**/v1/chat/completions", handle)
    send(page, "secret question")
    dialog = page.get_by_test_id("api-key-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("invalid API key")
    key = page.get_by_test_id("api-key-input")
    expect(key).to_be_focused()
    key.fill("sk-test-123")
    key.press("Enter")
    expect(dialog).to_be_hidden()
    wait_answers(page, 1)
    assert seen == [None, "Bearer sk-test-123"]
    assert page.evaluate("localStorage.getItem('vlserve.apiKey')") == "sk-test-123"
    page.unroute("**/v1/chat/completions")


def test_screenshots_script_writes_three_pngs(server, browser, tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    from screenshots import main
    # its own thread: Playwright's sync API allows one running instance per thread, and the
    # module's browser fixture holds this one
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        written=main([str(tmp_path), "--url", server.url])))
    worker.start()
    worker.join(120)
    written = result["written"]
    sizes = {p.name: Image.open(p).size for p in written}
    assert sizes == {"desktop-light.png": (1280, 800), "desktop-dark.png": (1280, 800),
                     "phone.png": (375, 812)}


def test_api_key_for_real(tiny_model, tmp_path_factory, browser):
    """A server that requires a key: the page (open) asks for it at the first 401, keeps it,
    and everything works with it — also after a reload."""
    from playwright.sync_api import expect
    server = _server(tmp_path_factory, tiny_model, "--api-key", "page-secret-123")
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        page.problems = watch(page)
        page.problems.allow(STATUS_ERROR.format(401))
        page.goto(server.url)
        dialog = page.get_by_test_id("api-key-dialog")
        expect(dialog).to_be_visible()
        page.get_by_test_id("api-key-input").fill("wrong-key-0000")
        page.get_by_test_id("api-key-input").press("Enter")
        expect(dialog).to_be_visible()                      # asked again: not valid
        page.get_by_test_id("api-key-input").fill("page-secret-123")
        page.get_by_test_id("api-key-input").press("Enter")
        expect(dialog).to_be_hidden()
        wait_ready(page)
        page.evaluate("localStorage.setItem('vlserve.settings', JSON.stringify({maxTokens: 4}))")
        page.reload()
        wait_ready(page)                                    # the kept key: no dialog
        send(page, "hello with a key")
        wait_answers(page, 1)
        assert page.evaluate("localStorage.getItem('vlserve.apiKey')") == "page-secret-123"
        assert not page.problems.unexpected()
        assert "page-secret-123" not in server.log()
    finally:
        context.close()
        server.stop()


def test_tool_calls_and_results_are_shown_and_sent_back(server, open_page):
    """An imported agent conversation (OpenAI's shapes): the answer's calls show their name
    and pretty arguments, the tool's result says which call it answers and shows its
    screenshot; nothing in them becomes markup; a follow-up sends the calls and the result
    back as OpenAI messages, and the server answers."""
    from playwright.sync_api import expect
    page = open_page(server, settings={"maxTokens": 8})
    when = int(time.time() * 1000)
    hostile = '<img src=x onerror="window.pwned=1">'
    chat = {"id": "agent", "title": "Agent", "created": when, "updated": when, "messages": [
        {"id": "u1", "role": "user", "text": "Press OK.", "time": when},
        {"id": "a1", "role": "assistant", "text": "Pressing it.", "time": when, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {
                "name": "tap", "arguments": json.dumps({"x": 12, "label": hostile})}}]},
        {"id": "t1", "role": "tool", "tool_call_id": "call_1", "text": f"done {hostile}",
         "time": when, "images": [{"url": "data:image/png;base64,"
                                   + base64.b64encode(png(64, 48)).decode(), "name": "screen"}]},
        {"id": "a2", "role": "assistant", "text": "Done.", "time": when}]}
    import_json(page, {"conversations": [chat]})
    page.get_by_test_id("conversation-item").locator(".conv-open").click()
    call = page.get_by_test_id("tool-call")
    expect(call.locator(".tool-call-name")).to_have_text("tap")
    expect(call.locator(".tool-call-args")).to_have_text(
        json.dumps({"x": 12, "label": hostile}, indent=2))
    result = messages(page, "tool")
    expect(result.locator(".message-role")).to_have_text("Result of tap")
    expect(result.get_by_test_id("message-content")).to_have_text(f"done {hostile}")
    expect(result.locator("img")).to_have_count(1)
    assert page.evaluate(ACTIVE_ATTRIBUTES, "[data-testid=tool-calls], .tool-result-text") == []
    sent = []
    page.route("**/v1/chat/completions",
               lambda route: (sent.append(route.request.post_data_json), route.continue_()))
    send(page, "And now?")
    wait_answers(page, 1)
    history = sent[0]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant", "user"]
    assert history[1]["tool_calls"] == [{"id": "call_1", "type": "function", "function": {
        "name": "tap", "arguments": json.dumps({"x": 12, "label": hostile})}}]
    assert history[2]["tool_call_id"] == "call_1"
    assert [p["type"] for p in history[2]["content"]] == ["image_url", "text"]
    assert page.evaluate("window.pwned") is None


def test_streamed_tool_call_deltas_are_assembled(server, open_page):
    """An answer streamed as tool-call deltas (a client's own server, or a gateway upstream
    that calls tools): the call shows with its name and its arguments, joined and pretty."""
    from playwright.sync_api import expect
    page = open_page(server, settings={"maxTokens": 8})

    def event(delta, finish=None):
        return "data: " + json.dumps({"id": "chatcmpl-x", "object": "chat.completion.chunk",
                                      "created": 1, "model": "tiny", "choices": [{
                                          "index": 0, "delta": delta, "logprobs": None,
                                          "finish_reason": finish}]}) + "\n\n"
    head = {"index": 0, "id": "call_9", "type": "function",
            "function": {"name": "read_meter", "arguments": ""}}
    body = "".join([event({"role": "assistant", "content": ""}), event({"tool_calls": [head]}),
                    *(event({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                      for piece in ('{"meter": "AB', '123", "va', 'lue": 42}')),
                    event({}, "tool_calls"), "data: [DONE]\n\n"])
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, body=body, headers={"Content-Type": "text/event-stream"}))
    send(page, "Read the meter.")
    call = page.get_by_test_id("tool-call")
    expect(call.locator(".tool-call-name")).to_have_text("read_meter")
    expect(call.locator(".tool-call-args")).to_have_text(
        json.dumps({"meter": "AB123", "value": 42}, indent=2))
    expect(page.get_by_test_id("send-button")).to_be_visible()
    expect(messages(page, "assistant").locator(".message-note")).to_have_count(0)


# ---- prefill while typing -----------------------------------------------------------------------

def test_the_photo_is_prefilled_while_the_question_is_typed(tiny_model, tmp_path_factory,
                                                           open_page):
    """Attach, wait until the prefill is done, type, send: the answer's numbers show no
    image encoded and only the question evaluated."""
    from playwright.sync_api import expect
    s = _server(tmp_path_factory, tiny_model, "--prefill-protect", "0")
    try:
        page = open_page(s, settings={"maxTokens": 4})
        with page.expect_response(lambda r: r.url.endswith("/v1/chat/prefill")) as posted:
            page.get_by_test_id("file-input").set_input_files(
                files=[file_payload("shelf.png", png(160, 100, (10, 120, 60)))])
        answer = posted.value.json()
        assert posted.value.status == 202 and answer["accepted"] is True, answer
        done = requests.get(f"{s.url}/v1/chat/prefill/{answer['id']}?wait=30", timeout=40).json()
        assert done["state"] == "done" and done["images_encoded"] == 1, done
        page.get_by_test_id("composer-input").fill("How many boxes are on the top shelf?")
        page.get_by_test_id("send-button").click()
        stats = page.get_by_test_id("message-stats")
        expect(stats).to_have_count(1, timeout=30_000)
        detail = stats.get_attribute("title")
        assert "encoded" not in detail, detail   # images encoded: 0
        evaluated = int(re.search(r"\((\d+) tokens evaluated\)", detail).group(1))
        prompt = int(re.search(r"(\d+) → ", stats.text_content()).group(1))
        assert evaluated <= (prompt - done["prompt_tokens"]) + 16, (evaluated, prompt, done)
    finally:
        s.stop()


def test_prefills_follow_the_draft_and_are_dropped_with_it(server, open_page):
    """Typing pauses send the draft again; removing the image, or opening another chat,
    drops the prefill on the server."""
    from playwright.sync_api import expect
    page = open_page(server)
    calls = []
    page.on("request", lambda r: calls.append((r.method, r.post_data_json if r.method == "POST"
                                               else r.url.rsplit("/", 1)[-1]))
            if "/v1/chat/prefill" in r.url else None)
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/prefill")) as first:
        page.get_by_test_id("file-input").set_input_files(files=[file_payload("a.png", png())])
    prefill_id = first.value.json()["id"]
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/prefill")):
        page.get_by_test_id("composer-input").press_sequentially("How many", delay=20)
    posts = [body for method, body in calls if method == "POST"]
    assert len(posts) == 2   # the attach, then one after the typing paused (not per key)
    draft = posts[-1]["messages"][-1]
    assert [p["type"] for p in draft["content"]] == ["image_url", "text"]
    assert draft["content"][-1]["text"] == "How many" and "stream" not in posts[-1]
    second = json.loads(requests.get(server.url + "/health", timeout=5).text)["prefills"]
    assert second["waiting"] + second["running"] <= 1
    with page.expect_request(lambda r: r.method == "DELETE"):
        page.get_by_test_id("attachment-remove").click()
    expect(page.get_by_test_id("attachment")).to_have_count(0)
    deleted = [target for method, target in calls if method == "DELETE"]
    assert deleted and deleted[-1] != prefill_id   # the newer one, not the superseded one
    # another image, then a new chat: dropped too
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/prefill")):
        page.get_by_test_id("file-input").set_input_files(files=[file_payload("b.png", png())])
    with page.expect_request(lambda r: r.method == "DELETE"):
        page.keyboard.press("Control+Shift+O")


def test_a_prefill_answered_after_its_draft_was_dropped_is_dropped_too(server, open_page):
    """The race the test above ran into once in CI: a new chat while the prefill's POST is on
    its way (its id not known yet). The POST is held until the new chat is open; when its
    answer comes, the page deletes that prefill on the server."""
    page = open_page(server)
    held, deleted = [], []
    page.route("**/v1/chat/prefill",     # the first POST is held; any later one goes on
               lambda route: route.continue_() if held else held.append(route))
    page.on("request", lambda r: deleted.append(r.url.rsplit("/", 1)[-1])
            if r.method == "DELETE" and "/v1/chat/prefill/" in r.url else None)
    page.get_by_test_id("file-input").set_input_files(files=[file_payload("c.png", png())])
    while not held:                  # the handler runs inside Playwright calls: let it
        page.wait_for_timeout(20)
    page.keyboard.press("Control+Shift+O")             # dropped before its id is known
    with page.expect_response(lambda r: r.request.method == "DELETE") as gone:
        held[0].continue_()
    assert gone.value.ok
    prefill_id = gone.value.url.rsplit("/", 1)[-1]
    assert held[0].request.response().json()["id"] == prefill_id and deleted == [prefill_id]
    state = requests.get(f"{server.url}/v1/chat/prefill/{prefill_id}", timeout=5)
    assert state.status_code == 404 or state.json()["state"] in ("cancelled", "done", "dropped")


def test_a_server_without_prefill_is_asked_once_and_the_page_works(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server, settings={"maxTokens": 4})
    page.problems.allow("404")   # the browser logs the refused fetch
    asked = []

    def older_server(route):
        asked.append(route.request.url)
        route.fulfill(status=404, json={"error": {"message": "not found", "type":
                                                  "not_found_error", "param": None,
                                                  "code": "not_found"}})
    page.route("**/v1/chat/prefill", older_server)
    with page.expect_response("**/v1/chat/prefill"):
        page.get_by_test_id("file-input").set_input_files(files=[file_payload("a.png", png())])
    page.get_by_test_id("composer-input").press_sequentially("What", delay=20)
    page.get_by_test_id("file-input").set_input_files(files=[file_payload("b.png", png(90))])
    expect(page.get_by_test_id("attachment").locator("img")).to_have_count(2)
    page.get_by_test_id("send-button").click()
    expect(page.get_by_test_id("message-stats")).to_have_count(1, timeout=30_000)
    assert len(asked) == 1, asked
    expect(page.get_by_test_id("toast")).to_have_count(0)


def test_the_demo_model_says_its_answers_are_noise(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server)
    banner = page.get_by_test_id("demo-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Random weights")


# ---- issue 20: math, versions, files, per-chat settings, search, /docs --------------------------

MATH_ANSWER = (
    "The area is $$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$\n\n"
    "Pythagoras: \\[ a^2+b^2=c^2 \\] and Euler \\(e^{i\\pi}+1=0\\), with $x_1 + x_2$ inline.\n\n"
    "It costs $5 and $10. Code stays code: `$not math$`\n\n```\n$$also not$$\n```\n\n"
    "Hostile: $\\href{javascript:window.__xss=1}{click}$ and $\\url{javascript:window.__xss=2}$ "
    "and $\\htmlClass{x}{y}$ and $<img src=x onerror=window.__xss=3>$")

# What a formula must never carry: a handler, a script or image, a link to anything
INERT_MATH = """(selector) => [...document.querySelectorAll(selector)]
  .flatMap((root) => [root, ...root.querySelectorAll("*")]).flatMap((node) => [...node.attributes].filter((a) => /^on/i.test(a.name) || /^(src|srcset|href|xlink:href)$/i.test(a.name))
    .map((a) => `<${node.tagName.toLowerCase()} ${a.name}="${a.value}">`)
  .concat(/^(script|img|a|iframe|object)$/i.test(node.tagName) ? [`<${node.tagName}>`] : []))"""


def test_formulas_are_rendered_with_katex_protected_from_markdown_and_inert(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server)
    import_json(page, {"conversations": [conversation("tex", "Math", [("integrate", MATH_ANSWER)])]})
    content = messages(page, "assistant").get_by_test_id("message-content")
    expect(content.locator(".katex-display")).to_have_count(2)       # $$…$$ and \[…\]
    annotations = content.locator("annotation").all_text_contents()   # KaTeX keeps the source
    assert "\\int_0^1 x^2\\,dx = \\frac{1}{3}" in annotations          # backslashes intact
    assert "a^2+b^2=c^2" in annotations and "e^{i\\pi}+1=0" in annotations
    assert "x_1 + x_2" in annotations                                  # underscores intact
    # KaTeX's own SVG (a radical) is drawn as KaTeX styles it, not as one of the page's icons
    import_json(page, {"conversations": [conversation("root", "Root", [("root", "$$\\sqrt{2}$$")])]})
    page.get_by_test_id("conversation-item").filter(has_text="Root").click()
    radical = messages(page, "assistant").locator(".katex svg path").first
    assert radical.evaluate("p => getComputedStyle(p).fill") != "none"
    assert radical.evaluate("p => p.closest('svg').getBoundingClientRect().width") > 20
    page.get_by_test_id("conversation-item").filter(has_text="Math").click()
    expect(content).to_contain_text("It costs $5 and $10.")           # money is not math
    expect(content.locator("code").first).to_have_text("$not math$")
    expect(content.locator("pre code")).to_contain_text("$$also not$$")
    # untrusted TeX: \href, \url and \htmlClass are refused (trust off), raw HTML is text
    formulas = content.locator(".math-inline, .math-display, .math-block")
    expect(formulas).to_have_count(8)                                 # 4 + the 4 hostile ones
    assert page.evaluate(INERT_MATH, "[data-testid=message-content] :is(.math-inline, .math-display, .math-block)") == []
    page.wait_for_timeout(100)
    assert page.evaluate("window.__xss") is None


def test_a_streamed_half_formula_never_flickers_into_an_error(server, open_page):
    page = open_page(server)
    seen = page.evaluate("""async (answer) => {
      const { renderMarkdown } = await import("/static/js/markdown.js");
      const target = document.createElement("div");
      target.className = "markdown";
      document.body.append(target);
      const errors = [];
      for (let i = 1; i < answer.length; i++) {
        renderMarkdown(target, answer.slice(0, i), { final: false });
        if (target.querySelector(".katex-error")) errors.push(answer.slice(0, i));
      }
      renderMarkdown(target, answer, { final: true });
      const done = target.querySelectorAll(".katex").length;
      target.remove();
      return { errors, done };
    }""", "So $$\\frac{a+b}{\\sqrt{c}}$$ and \\(\\alpha_1^2\\) then $\\mathbb{R}^n$.")
    assert seen == {"errors": [], "done": 3}


def test_versions_by_edit_and_by_regenerate_with_the_switcher(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server, settings={"maxTokens": 6, "temperature": 1.5})
    send(page, "first question")
    wait_answers(page, 1)
    send(page, "second question")
    wait_answers(page, 2)
    answers = messages(page, "assistant")
    first_answer = answers.nth(0).get_by_test_id("message-content").inner_text()
    # regenerate the FIRST answer: the old one (and the turn after it) stay as version 1
    answers.nth(0).hover()
    answers.nth(0).get_by_test_id("regenerate-button").click()
    wait_answers(page, 1)
    expect(messages(page)).to_have_count(2)
    switcher = messages(page, "assistant").nth(0).get_by_test_id("versions")
    expect(switcher.get_by_test_id("version-label")).to_have_text("2/2")
    switcher.get_by_test_id("version-prev").click()
    expect(switcher.get_by_test_id("version-label")).to_have_text("1/2")
    expect(messages(page)).to_have_count(4)                 # the second turn is back too
    assert messages(page, "assistant").nth(0).get_by_test_id("message-content").inner_text() \
        == first_answer
    expect(messages(page, "user").nth(1)).to_contain_text("second question")
    # edit the FIRST question (not only the last): a new version from there on
    question = messages(page, "user").nth(0)
    question.hover()
    question.get_by_test_id("edit-button").click()
    page.get_by_label("Edit message").fill("edited first question")
    page.get_by_label("Edit message").press("Enter")
    wait_answers(page, 1)
    expect(messages(page)).to_have_count(2)
    user_versions = messages(page, "user").nth(0).get_by_test_id("versions")
    expect(user_versions.get_by_test_id("version-label")).to_have_text("2/2")
    expect(messages(page, "user").nth(0)).to_contain_text("edited first question")
    user_versions.get_by_test_id("version-prev").click()
    expect(messages(page, "user").nth(0)).to_contain_text("first question")
    expect(messages(page)).to_have_count(4)
    expect(messages(page, "assistant").nth(0).get_by_test_id("version-label")).to_have_text("1/2")
    # the versions survive a reload, and an export/import round trip keeps them
    page.reload()
    wait_ready(page)
    expect(messages(page, "user").nth(0).get_by_test_id("version-label")).to_have_text("1/2")
    kept = page.evaluate("""async () => {
      const store = await import("/static/js/store.js");
      const { normalizeImport } = await import("/static/js/transfer.js");
      const [conv] = await store.getAllConversations();
      const [back] = normalizeImport(JSON.parse(JSON.stringify({ conversations: [conv] })));
      const shape = (messages) => messages.map((m) => [m.role, m.text,
        m.versions ? { version: m.version, versions: m.versions.map((t) => t && shape(t)) } : null]);
      return [JSON.stringify(shape(conv.messages)), JSON.stringify(shape(back.messages))];
    }""")
    assert kept[0] == kept[1] and "edited first question" in kept[0]


def pdf_bytes(pages: int) -> bytes:
    images = [Image.new("RGB", (300, 200), (40 * n % 255, 120, 200)) for n in range(pages)]
    buf = io.BytesIO()
    images[0].save(buf, "PDF", save_all=True, append_images=images[1:], resolution=72)
    return buf.getvalue()


def test_a_pdf_becomes_page_images_and_a_csv_a_text_part(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server, settings={"maxTokens": 4})
    bodies = []
    page.on("request", lambda r: bodies.append(r.post_data_json)
            if r.url.endswith("/v1/chat/completions") else None)
    csv = "part,count\nbolt,4\nnut,4\n"
    page.get_by_test_id("file-input").set_input_files(files=[
        {"name": "invoice.pdf", "mimeType": "application/pdf", "buffer": pdf_bytes(2)},
        {"name": "parts.csv", "mimeType": "text/csv", "buffer": csv.encode()}])
    expect(page.get_by_test_id("attachment").locator("img")).to_have_count(2, timeout=20_000)
    expect(page.locator('[data-testid="attachment"][data-kind="file"]')).to_contain_text("parts.csv")
    send(page, "Check the invoice against the parts list.")
    wait_answers(page, 1)
    parts = bodies[-1]["messages"][-1]["content"]
    images = [p for p in parts if p["type"] == "image_url"]
    texts = [p["text"] for p in parts if p["type"] == "text"]
    assert len(images) == 2 and all(p["image_url"]["url"].startswith("data:image/png;base64,")
                                    for p in images)
    assert texts == [f"File parts.csv:\n```\n{csv}\n```", "Check the invoice against the parts list."]
    expect(messages(page, "user").get_by_test_id("message-images").locator("img")).to_have_count(2)
    expect(messages(page, "user").get_by_test_id("message-file")).to_contain_text("parts.csv")


def test_file_limits_say_what_was_kept(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server)
    page.get_by_test_id("file-input").set_input_files(files=[
        {"name": "manual.pdf", "mimeType": "application/pdf", "buffer": pdf_bytes(9)}])
    note = page.get_by_test_id("toast").filter(has_text="Only the first pages were added")
    expect(note).to_contain_text("“manual.pdf” has 9 pages; the first 8 were added")
    expect(page.get_by_test_id("attachment").locator("img")).to_have_count(8, timeout=20_000)
    page.get_by_test_id("file-input").set_input_files(files=[
        {"name": "huge.log", "mimeType": "text/plain", "buffer": b"x" * (300 * 1024)},
        {"name": "tool.exe", "mimeType": "application/octet-stream", "buffer": b"MZ\x00\x01"},
        {"name": "bad.txt", "mimeType": "text/plain", "buffer": b"\xff\xfe\x00bad"}])
    expect(page.get_by_test_id("toast").filter(has_text="text files up to 256 KB")).to_be_visible()
    expect(page.get_by_test_id("toast").filter(has_text="“tool.exe”: only images, PDFs and text files")).to_be_visible()
    expect(page.get_by_test_id("toast").filter(has_text="“bad.txt” is not UTF-8 text")).to_be_visible()
    expect(page.locator('[data-testid="attachment"][data-kind="file"]')).to_have_count(0)


def test_a_chats_own_settings_go_with_that_chat_only(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server, settings={"maxTokens": 4})
    bodies = []
    page.on("request", lambda r: bodies.append(r.post_data_json)
            if r.url.endswith("/v1/chat/completions") else None)
    # chat A: its own system prompt and sampling, set before its first message
    page.get_by_test_id("chat-settings-button").click()
    dialog = page.get_by_test_id("chat-settings-dialog")
    dialog.get_by_test_id("chat-system-prompt").fill("You are chat A.")
    dialog.get_by_test_id("chat-top_k").fill("7")
    dialog.get_by_test_id("chat-seed").fill("42")
    dialog.get_by_test_id("chat-min_p").fill("3")               # out of range: not kept
    page.keyboard.press("Escape")
    send(page, "hello A")
    wait_answers(page, 1)
    a = bodies[-1]
    assert a["messages"][0] == {"role": "system", "content": "You are chat A."}
    assert a["top_k"] == 7 and a["seed"] == 42 and "min_p" not in a and a["max_tokens"] == 4
    # chat B: the defaults only; then a default set in Settings reaches both chats
    page.locator("#new-chat").click()
    send(page, "hello B")
    wait_answers(page, 1)
    b = bodies[-1]
    assert b["messages"][0]["role"] == "user" and "top_k" not in b and "seed" not in b
    page.get_by_test_id("settings-button").click()
    page.locator("details.more-sampling summary").click()
    page.get_by_test_id("default-top_p").fill("0.5")
    page.keyboard.press("Escape")
    send(page, "again B")
    wait_answers(page, 2)
    assert bodies[-1]["top_p"] == 0.5 and "top_k" not in bodies[-1]
    page.get_by_test_id("conversation-item").filter(has_text="hello A").click()
    send(page, "again A")
    wait_answers(page, 2)
    again = bodies[-1]
    assert again["messages"][0]["content"] == "You are chat A." and again["top_k"] == 7
    assert again["top_p"] == 0.5
    page.get_by_test_id("chat-settings-button").click()      # the dialog shows what it keeps
    expect(dialog.get_by_test_id("chat-top_k")).to_have_value("7")
    expect(dialog.get_by_test_id("chat-top_p")).to_have_attribute("placeholder", "Default: 0.5")


def test_search_finds_a_word_inside_the_messages(server, open_page):
    from playwright.sync_api import expect
    page = open_page(server)
    import_json(page, {"conversations": [
        conversation("s1", "Shelf audit", [("count the boxes", "There are 12 boxes of zirconium screws.")]),
        conversation("s2", "Lunch", [("what is this", "A sandwich.")]),
    ]})
    box = page.get_by_test_id("conversation-search")
    box.fill("zirconium")
    items = page.get_by_test_id("conversation-item")
    expect(items).to_have_count(1)
    expect(items).to_contain_text("Shelf audit")
    expect(items.get_by_test_id("conversation-snippet")).to_contain_text("boxes of zirconium screws")
    box.fill("sandwich")
    expect(items).to_have_count(1)
    expect(items).to_contain_text("Lunch")
    box.fill("lunch")                                    # a title match: no snippet needed
    expect(items.get_by_test_id("conversation-snippet")).to_have_count(0)
    box.fill("nothing like this")
    expect(items).to_have_count(0)


def test_docs_renders_the_api_with_no_network(server, browser):
    from playwright.sync_api import expect
    context = browser.new_context(viewport=DESKTOP)
    outside = []

    def only_this_server(route):
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_this_server)
    page = context.new_page()
    problems = watch(page)
    try:
        response = page.goto(server.url + "/docs")
        assert response.status == 200
        assert "script-src 'self';" in response.headers["content-security-policy"]
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("vlserve")
        expect(page.locator(".opblock-summary-path").filter(has_text="/v1/chat/completions").first).to_be_visible()
        page.locator(".opblock-summary-path").filter(has_text="/v1/chat/completions").first.click()
        expect(page.get_by_text("return_progress").first).to_be_attached()
        assert outside == [] and not problems.unexpected(), (outside, problems.unexpected())
    finally:
        context.close()

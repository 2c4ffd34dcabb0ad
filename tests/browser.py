"""Playwright helpers shared by the page tests and scripts/screenshots.py: Debian's chromium
(never a downloaded browser), and pages that record every console error and page error."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps",
    "--disable-domain-reliability", "--no-first-run", "--metrics-recording-only",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
]


def chromium_path() -> str | None:
    """$VLSERVE_CHROMIUM when set (only it: a wrong path must not pass unnoticed), else
    /usr/bin/chromium (Debian's package), else a chromium on PATH."""
    configured = os.environ.get("VLSERVE_CHROMIUM")
    candidates = [configured] if configured else [
        "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def launch(playwright):
    path = chromium_path()
    if path is None:
        raise FileNotFoundError("no chromium found (set VLSERVE_CHROMIUM or install Debian's chromium)")
    return playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)


@dataclass
class Problems:
    """Console errors and uncaught exceptions of one page."""
    errors: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)   # exact substrings a test expects

    def allow(self, text: str) -> None:
        self.allowed.append(text)

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in self.allowed)]


def watch(page) -> Problems:
    problems = Problems()
    page.on("console", lambda msg: problems.errors.append(f"console.{msg.type}: {msg.text}")
            if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.errors.append(f"pageerror: {exc}"))
    return problems

"""Playwright helpers shared by the page tests and scripts/screenshots.py: Debian's chromium
(never a downloaded browser), and pages that record every console error and page error."""

from __future__ import annotations

import os
import shutil
import subprocess
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


REQUIRE = os.environ.get("VLSERVE_REQUIRE_BROWSER") == "1"   # CI: a missing browser fails


def need_browser() -> None:
    """Skip the calling test when Playwright or Chromium is missing, on a developer's machine
    only: with VLSERVE_REQUIRE_BROWSER=1 (CI) that is a failure, never a silent skip."""
    import pytest
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "the playwright package is not installed (pip install -e '.[dev]')"
    if reason is None and chromium_path() is None:
        configured = os.environ.get("VLSERVE_CHROMIUM")
        reason = (f"VLSERVE_CHROMIUM={configured} is not an executable" if configured else
                  "no chromium found: install Debian's chromium (apt-get install chromium) "
                  "or set VLSERVE_CHROMIUM")
    if reason is not None:
        if REQUIRE:
            pytest.fail(f"VLSERVE_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


LAUNCHED: dict[str, str] = {}   # path -> version of every chromium the tests started


def launch(playwright):
    path = chromium_path()
    if path is None:
        raise FileNotFoundError("no chromium found (set VLSERVE_CHROMIUM or install Debian's chromium)")
    browser = playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
    LAUNCHED.setdefault(path, chromium_version(path) or browser.version)
    return browser


@dataclass
class Problems:
    """Console errors and uncaught exceptions of one page."""
    errors: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)   # exact substrings a test expects

    def allow(self, text: str) -> None:
        self.allowed.append(text)

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in self.allowed)]


# Chromium logs some CSP violations to the console and not others (it changed in 156 for
# inline handlers parsed inside DOMPurify's inert document): every violation the page's
# document hears about is made a console error, so a test fails on it in any version.
CSP_LISTENER = """document.addEventListener("securitypolicyviolation", (e) => console.error(
  `CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`));"""


def chromium_version(path: str | None = None) -> str | None:
    """What `chromium --version` prints (e.g. "Chromium 156.0.8078.114 built on Debian…")."""
    path = path or chromium_path()
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{path} (version unknown: {exc})"
    return out.stdout.strip() or f"{path} (version unknown)"


def watch(page) -> Problems:
    problems = Problems()
    page.add_init_script(CSP_LISTENER)
    page.on("console", lambda msg: problems.errors.append(f"console.{msg.type}: {msg.text}")
            if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.errors.append(f"pageerror: {exc}"))
    return problems

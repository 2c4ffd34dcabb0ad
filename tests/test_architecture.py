"""The layers of docs/architecture.md hold: setup.cfg's import-linter contracts are kept by the
code, and they do fail when broken (checked on a temporary copy with a bad import)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vlserve"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the vlserve package under `root` (first on the path there)."""
    env = dict(os.environ, PYTHONPATH=str(root), COLUMNS="200")
    code = ("import sys, vlserve; from importlinter.cli import lint_imports; "
            f"assert vlserve.__file__.startswith({str(root)!r}), vlserve.__file__; "
            "sys.exit(lint_imports(config_filename='setup.cfg', no_cache=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env, text=True,
                          capture_output=True, timeout=300)


def test_the_code_keeps_every_contract():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 3 kept, 0 broken." in done.stdout, done.stdout


@pytest.fixture
def copy(tmp_path) -> Path:
    shutil.copytree(PACKAGE, tmp_path / "vlserve",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    return tmp_path


def add_line(path: Path, line: str) -> None:
    """`line` after the module's `from __future__` import (every module has one)."""
    text = path.read_text()
    anchor = "from __future__ import annotations\n"
    assert anchor in text, path
    path.write_text(text.replace(anchor, anchor + line + "\n", 1))


@pytest.mark.parametrize("module, line, broken", [
    # chat sits below web: a request shape must not know the Flask app
    ("chat/protocol.py", "from ..web import app", "Layers"),
    # the engine and the operations layer are independent of each other
    ("engine/worker.py", "from ..ops import metrics", "Layers"),
    # Flask only in the HTTP layers
    ("library/gpu.py", "import flask", "Flask only in"),
    # two modules of one package importing each other
    ("chat/context.py", "from . import template", "No import cycles"),
])
def test_a_bad_import_breaks_its_contract(copy, module, line, broken):
    if module == "chat/context.py":   # make it a cycle: template imports context as well
        add_line(copy / "vlserve/chat/template.py", "from . import context")
    add_line(copy / "vlserve" / module, line)
    done = lint_imports(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    verdicts = [line for line in done.stdout.splitlines() if line.startswith(broken)]
    assert verdicts and verdicts[0].endswith(" BROKEN"), done.stdout


def test_no_module_is_a_grab_bag():
    """Modules stay small enough to own one thing (none as large as the 580-line grab bag
    that api.py and openapi.py were); routes stay thin."""
    sizes = {p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines())
             for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) < 580, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    routes = {"web/chat.py", "web/models.py", "web/admin.py", "web/page.py"}
    assert all(sizes[r] <= 250 for r in routes if r in sizes), \
        {r: sizes[r] for r in routes if r in sizes}

"""Where vlserve keeps models when not told (--models-dir): in a source checkout, its
`models/` folder (the README's layout); installed as a package (pip, pipx, uv tool), the
per-user data folder that platformdirs names (Linux `~/.local/share/vlserve/models`, macOS
`~/Library/Application Support/vlserve/models`). Never inside the installed package: what is
downloaded or generated outlives an upgrade, and site-packages may not be writable."""

from __future__ import annotations

from pathlib import Path

import platformdirs

ROOT = Path(__file__).resolve().parent.parent.parent   # the folder holding the package
DEMO_FOLDER = "tiny"   # the generated demo model's folder inside the models folder


def checkout() -> Path | None:
    """The source checkout this vlserve runs from (server.py, an editable install), if any:
    site-packages never holds vlserve's setup.cfg and server.py."""
    return ROOT if (ROOT / "setup.cfg").is_file() and (ROOT / "server.py").is_file() else None


def default_models_dir() -> Path:
    root = checkout()
    return root / "models" if root else platformdirs.user_data_path("vlserve") / "models"


def demo_dir(models_dir: str | Path) -> Path:
    """Where the demo model is generated: a folder of the models folder, which the choice of
    a model at start-up passes over (a random-weight model is never picked by itself)."""
    return Path(models_dir) / DEMO_FOLDER

"""What the routes read of the app: its shared state (settings, worker, library, caches,
gateway) and the loaded model's id."""

from __future__ import annotations

from flask import current_app

from ..engine.worker import Worker
from ..library.disk import Library


def get() -> dict:
    """The app's shared state (create_app builds it)."""
    return current_app.extensions["vlserve"]


def worker() -> Worker:
    return get()["worker"]


def library() -> Library:
    return get()["library"]


def model_id() -> str:
    """The loaded model's id (or the one being loaded)."""
    return worker().model or get()["settings"].model_id

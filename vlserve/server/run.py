"""Runs the app: gunicorn (one worker process) by default, Flask's server with --dev.

One process because the model lives in it. Its event loop reads every request whole, under
deadlines, before the app runs in one of --http-threads threads (bridge.py says why); threads
so that streams do not block each other. The app (and so the model) is created inside the
worker after the fork: llama.cpp's threads and GPU handles do not survive a fork.
"""

from __future__ import annotations

import logging

from gunicorn.app.base import BaseApplication

from ..config import Settings

log = logging.getLogger("vlserve")


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self):
        s = self.settings
        for key, value in {
            "bind": [bind_address(s.host, s.port)],
            "workers": 1,
            "worker_class": "vlserve.server.bridge.Worker",   # gunicorn's asyncio worker
            "asgi_lifespan": "off",    # the app has no startup or shutdown hooks
            "http_protocols": "h1",    # the head deadline is HTTP/1's (bridge.Connection)
            # Heartbeat timeout of the worker process (and the longest a request body may
            # stall); requests have their own timeouts.
            "timeout": 120,
            "graceful_timeout": 10,
            "keepalive": 5,
            "loglevel": s.log_level,
            "accesslog": None,          # vlserve logs one line per request itself
            "proc_name": "vlserve",
        }.items():
            self.cfg.set(key, value)
        if s.certfile:
            self.cfg.set("certfile", s.certfile)
            self.cfg.set("keyfile", s.keyfile)
        # gunicorn >= 25.1 opens a control socket at one fixed per-user path: two vlserve
        # instances would fight over it, and its "add workers" command would load the model
        # a second time. vlserve has exactly one worker.
        if "control_socket_disable" in self.cfg.settings:
            self.cfg.set("control_socket_disable", True)

    def load(self):
        from ..web.app import create_app
        from .bridge import ThreadedApp
        s = self.settings
        return ThreadedApp(create_app(s), threads=s.http_threads, body_timeout=s.body_timeout,
                           body_min_rate=s.body_min_rate, max_body=s.max_body_bytes)


def run(settings: Settings) -> None:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
    scheme = "https" if settings.certfile else "http"
    url = f"{scheme}://{bind_address(host, settings.port)}/"
    log.info("vlserve: chat page at %s  (OpenAI API: %sv1)", url, url)
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        if settings.api_keys or settings.api_key_file:
            log.info("listening on %s: API keys are required", settings.host)
        else:
            log.warning("!" * 78)
            log.warning("listening on %s WITHOUT an API key: anyone who can reach this "
                        "address can use the model and load or unload models. Set "
                        "--api-key or --api-key-file.", settings.host)
            log.warning("!" * 78)
    if settings.dev:
        from ..web.app import create_app
        tls = (settings.certfile, settings.keyfile) if settings.certfile else None
        create_app(settings).run(host=settings.host, port=settings.port, threaded=True,
                                 ssl_context=tls)
    else:
        _Gunicorn(settings).run()

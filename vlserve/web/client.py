"""Whether a request's client is still there: the one thing the server tells the app beyond
WSGI. Under gunicorn the server puts a Future under `GONE` in the environ (server/bridge.py
sets it when the event loop sees the hang-up); under Flask's server the socket is asked."""

from __future__ import annotations

import select
import socket

GONE = "vlserve.client_gone"   # environ key: a Future, done once the client has left


def client_gone(environ: dict) -> bool:
    """True when the client of this request has closed its connection (asked while a request
    waits for its answer). Under gunicorn the event loop saw the hang-up (bridge.py); under
    Flask's server (--dev, tests) the kernel is asked whether the peer hung up (POLLRDHUP)
    rather than the socket read: a TLS socket cannot be peeked at, and a client sends
    nothing else while it waits."""
    gone = environ.get(GONE)
    if gone is not None:
        return gone.done()
    sock = environ.get("werkzeug.socket") or environ.get("gunicorn.socket")
    if sock is None:
        return False
    try:
        fd = sock.fileno()
    except (OSError, ValueError):
        return True        # closed already
    if fd < 0:
        return True
    if hasattr(select, "POLLRDHUP"):   # Linux
        poller = select.poll()
        poller.register(fd, select.POLLRDHUP)
        return any(mask & (select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL)
                   for _, mask in poller.poll(0))
    try:               # elsewhere: a plain socket that reads as EOF has been closed
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError, ValueError):   # no data; or TLS: unknown
        return False
    except OSError:
        return True

"""The Flask app under gunicorn's asyncio worker: each request is read in full, under
deadlines, by the event loop before it takes one of the --http-threads threads.

Why not gunicorn's threaded worker (gthread): it hands a connection to a thread as soon as its
first bytes arrive, and the thread then reads the rest of the head and the body with no
deadline. Clients that send a byte every few seconds hold every thread, and /health gets no
answer. Here (gunicorn's `gasgi` worker, still one process: the model lives in it):

- the request head must be complete within --header-timeout of the connection opening (on a
  kept-alive connection, of the previous answer); bytes trickling in do not extend it. Past
  it: a 408 and the connection closed (closed silently when nothing at all came).
- the body must be complete within --body-timeout plus one second for every --body-min-rate
  bytes received (Apache mod_reqtimeout's rule: a big upload at a fair rate passes, a trickle
  does not). Past it: a 408, connection closed. The body is held in memory, at most
  --max-body-mb of it (Flask answers 413 beyond), and the app gets it whole.
- only then does a2wsgi run the Flask app in one of --http-threads threads; the response goes
  out as it is made (each SSE event is written when the app yields it).
- a client that leaves is seen by the event loop (the ASGI `http.disconnect`):
  `web.client.client_gone(environ)` tells a waiting request, and the app's next write raises
  `ClientGone`, so a stream's generator is closed (GeneratorExit), as under a threaded server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading

from a2wsgi.wsgi import WSGIMiddleware, WSGIResponder
from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.workers import gasgi

from ..errors import RequestTimeoutError
from ..web.client import GONE

log = logging.getLogger("vlserve.access")

TOO_SLOW, LEFT = object(), object()   # what reading a body may come to instead of the body


class ClientGone(OSError):
    """Written to a client that has closed its connection (as a socket write would fail)."""


def _timeout_body(message: str) -> bytes:
    return json.dumps(RequestTimeoutError(message).to_dict()).encode()


# ---- the connection: gasgi's, with a deadline for the request head ---------------------------

class Connection(ASGIProtocol):
    """gunicorn's asyncio HTTP/1 connection plus a deadline for the request head. gasgi has
    none: it waits for a head as long as bytes keep coming. Hand-written (a subclass) because
    no setting or library adds one; it uses gasgi's own keep-alive timer hook, close and
    wake-up, hence gunicorn's pinned major version."""

    def __init__(self, worker):
        super().__init__(worker)
        self._head_timer = None
        self._head_bytes = 0

    def connection_made(self, transport):
        super().connection_made(transport)
        self._start_head_clock()

    def _arm_keepalive_timer(self):
        # Called when a kept-alive connection starts waiting for its next request: the next
        # head has its deadline too (gasgi's keep-alive timeout, when shorter, still applies).
        super()._arm_keepalive_timer()
        self._start_head_clock()

    def data_received(self, data):
        if self._head_timer is not None:
            self._head_bytes += len(data)
        super().data_received(data)

    def _on_headers_complete(self):
        self._stop_head_clock()
        return super()._on_headers_complete()

    def connection_lost(self, exc):
        self._stop_head_clock()
        super().connection_lost(exc)

    def _start_head_clock(self):
        self._stop_head_clock()
        self._head_bytes = 0
        self._head_timer = self.worker.loop.call_later(self.worker.header_timeout,
                                                       self._head_too_slow)

    def _stop_head_clock(self):
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self):
        self._head_timer = None
        if self._closed:
            return
        if self._head_bytes:   # part of a request came: say why it is refused
            body = _timeout_body(f"the request head did not arrive within "
                                 f"{self.worker.header_timeout:g} seconds")
            self._safe_write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json"
                             b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (len(body), body))
            log.info("closed a connection whose request head was not complete within %gs "
                     "(%d bytes came)", self.worker.header_timeout, self._head_bytes)
        self._close_transport()
        if self._request_ready is not None:   # wake the connection's loop so that it ends, as
            self._request_ready.set()         # gasgi's own keep-alive timeout does


class Worker(gasgi.ASGIWorker):
    """gunicorn's asyncio worker serving `Connection`s."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout = self.app.settings.header_timeout

    def init_process(self):
        # gasgi builds each connection from its module's ASGIProtocol and has no setting for
        # another class; this process runs this one worker only.
        gasgi.ASGIProtocol = Connection
        super().init_process()


# ---- the app: body read under its deadline, then a2wsgi's thread ------------------------------

class ThreadedApp(WSGIMiddleware):
    """a2wsgi's WSGI-in-ASGI adapter (a pool of `threads` threads), reading each request body
    in full first, and telling the app when its client has left."""

    def __init__(self, app, *, threads: int, body_timeout: float, body_min_rate: float,
                 max_body: int):
        super().__init__(app, workers=threads)
        self.body_timeout, self.body_min_rate, self.max_body = \
            body_timeout, body_min_rate, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        body, complete = await self._read_body(scope, receive, loop)
        if body is TOO_SLOW:
            return await self._too_slow(scope, send, loop.time() - t0)
        if body is LEFT:   # nobody to answer
            log.info("%s %s 499 %.0fms left_before_the_body_arrived=1", scope["method"],
                     scope["path"], (loop.time() - t0) * 1000)
            return
        gone = concurrent.futures.Future()
        # Only a body read to its end leaves the connection to tell a hang-up; one left
        # unread (over --max-body-mb: the app answers 413 at once) is not read further.
        watcher = loop.create_task(_watch(receive, gone)) if complete else None

        async def replay():   # the body, whole; then nothing until the client leaves
            nonlocal body
            if body is not None:
                message, body = {"type": "http.request", "body": body, "more_body": False}, None
                return message
            await asyncio.wrap_future(gone)
            return {"type": "http.disconnect"}

        try:
            await _Responder(self.app, self.executor, self.send_queue_size, gone)(
                _framed(scope, body), replay, send)
        except ClientGone:
            pass
        finally:
            if watcher is not None:
                watcher.cancel()
            # over (or cancelled: the connection is being torn down): a thread still running
            _set(gone)   # must not write any more

    async def _read_body(self, scope, receive, loop) -> tuple[bytearray | object, bool]:
        """(the body or TOO_SLOW or LEFT, whether it was read to its end)."""
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return bytearray(), False   # refused (413) by the app from the header alone
        body, start = bytearray(), loop.time()
        while True:
            credit = len(body) / self.body_min_rate if self.body_min_rate else 0
            left = start + self.body_timeout + credit - loop.time()
            if left <= 0:
                return TOO_SLOW, False
            try:
                # At most a minute per wait: gasgi ends a receive() that waits longer than
                # gunicorn's timeout (120 s) with http.disconnect, which would read as a
                # client that left.
                message = await asyncio.wait_for(receive(), min(left, 60))
            except asyncio.TimeoutError:
                continue
            if message["type"] == "http.disconnect":
                return LEFT, False
            body += message.get("body", b"")
            if len(body) > self.max_body:
                return body, False   # more than the app takes: it answers 413
            if not message.get("more_body", False):
                return body, True

    async def _too_slow(self, scope, send, seconds: float):
        message = f"the request body did not arrive within {self.body_timeout:g} seconds"
        if self.body_min_rate:
            message += f" plus one for every {self.body_min_rate / 1024:g} KiB received"
        body = _timeout_body(message)
        await send({"type": "http.response.start", "status": 408,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
        log.info("%s %s 408 %.0fms body_too_slow=1", scope["method"], scope["path"],
                 seconds * 1000)


class _Responder(WSGIResponder):
    """a2wsgi's responder, changed where it cannot do what a threaded server does:

    - after the client left, the app thread's next write raises ClientGone (a2wsgi queues it
      for a sender that writes into the void, and once the send queue is full or its task is
      cancelled, blocks that thread for good), so the response iterable is closed at once;
    - a write hands its message to the event loop without waiting for the loop to take it
      (a2wsgi waits, one thread-to-loop round trip per SSE event: measured, a 256-token
      stream of the tiny model took 60% longer); at most `send_queue_size` messages wait."""

    def __init__(self, app, executor, send_queue_size, gone: concurrent.futures.Future):
        super().__init__(app, executor, send_queue_size)
        self.gone = gone
        self.room = threading.Semaphore(send_queue_size)
        # a thread waiting for room is let go when the client leaves
        gone.add_done_callback(lambda _: self.room.release(send_queue_size + 1))

    def send(self, message):   # in the app's thread
        self.room.acquire()
        if self.gone.done():
            raise ClientGone("the client closed the connection")
        self.loop.call_soon_threadsafe(self.send_queue.put_nowait, message)

    async def sender(self, send):   # in the event loop
        try:
            while (message := await self.send_queue.get()) is not None:
                await send(message)
                self.room.release()
        except BaseException:   # nothing more goes out: the thread must not wait for room
            _set(self.gone)
            raise

    def wsgi(self, environ, start_response):
        environ[GONE] = self.gone
        return super().wsgi(environ, start_response)


async def _watch(receive, gone: concurrent.futures.Future) -> None:
    """Marks `gone` when the connection reports the client's hang-up."""
    while (await receive())["type"] != "http.disconnect":
        pass
    _set(gone)


def _set(gone: concurrent.futures.Future) -> None:
    """Marks `gone` (once; only ever from the event loop's thread)."""
    if not gone.done():
        gone.set_result(None)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1").strip()
    return None


def _framed(scope, body) -> dict:
    """A chunked request, now read whole, as one with a Content-Length: a WSGI app reads
    the body by its length (a2wsgi's environ has no wsgi.input_terminated)."""
    if _header(scope, b"transfer-encoding") is None:
        return scope
    headers = [(k, v) for k, v in scope["headers"]
               if k not in (b"transfer-encoding", b"content-length")]
    return {**scope, "headers": headers + [(b"content-length", str(len(body)).encode())]}

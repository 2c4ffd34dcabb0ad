"""Slow clients on the real server (gunicorn, real llama.cpp): connections that trickle their
request head or body hold no HTTP thread, so /health and the API keep answering; a head past
--header-timeout is closed, a body slower than --body-timeout / --body-min-rate gets a 408,
a big body at a good rate passes, and streams still flush each event as it is made."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import pytest
import requests

from conftest import LiveServer, user

TRICKLERS = 64
HEALTH_WITHIN = 3.0    # seconds /health has to answer while the tricklers hold their sockets
HEALTH_TRIES = 4
SHORT = 2              # seconds: --header-timeout and --body-timeout of the deadlines server
SLACK = 6              # seconds past a deadline within which its connection must be answered


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """Default deadlines (10 s head, 30 s body): the tricklers stay open through the test."""
    s = LiveServer(tiny_model, "--no-warmup", "--parallel", "1",
                   log_path=tmp_path_factory.mktemp("slow") / "server.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def strict(tiny_model, tmp_path_factory):
    """Short deadlines, and a body rate a loopback client easily beats."""
    s = LiveServer(tiny_model, "--no-warmup", "--parallel", "1",
                   "--header-timeout", str(SHORT), "--body-timeout", str(SHORT),
                   "--body-min-rate", "64", log_path=tmp_path_factory.mktemp("strict") / "s.log")
    yield s
    s.stop()


def pace(seconds: float) -> None:
    """The sending rate of a slow client (never used to order events)."""
    time.sleep(seconds)


class Tricklers:
    """`n` connections that sent `first` and then send one more byte of `rest` each,
    every `every` seconds, from a background thread, until stopped."""

    def __init__(self, port: int, n: int, first: bytes, rest: bytes, every: float = 0.5):
        self.socks = [socket.create_connection(("127.0.0.1", port), timeout=10)
                      for _ in range(n)]
        for sock in self.socks:
            sock.sendall(first)
        self.rest, self.every = rest, every
        self.rounds = 0
        self._round = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        i = 0
        while not self._stop.wait(self.every) and i < len(self.rest):
            for sock in self.socks:
                try:
                    sock.send(self.rest[i:i + 1])
                except OSError:
                    pass   # closed by the server: the tests check which
            i += 1
            with self._round:
                self.rounds += 1
                self._round.notify_all()

    def wait_round(self, timeout: float = 10):
        """Until the tricklers have sent one more byte each."""
        with self._round:
            target = self.rounds + 1
            assert self._round.wait_for(lambda: self.rounds >= target, timeout), \
                "the tricklers stopped"

    def still_open(self) -> int:
        """Connections the server has neither closed nor answered."""
        n = 0
        for sock in self.socks:
            sock.setblocking(False)
            try:
                sock.recv(1)   # data or EOF: answered or closed
            except BlockingIOError:
                n += 1
            except OSError:
                pass
            finally:
                sock.setblocking(True)
        return n

    def stop(self):
        self._stop.set()
        self._thread.join()
        for sock in self.socks:
            sock.close()


def health_answers_while(server, tricklers: Tricklers):
    """/health answers within HEALTH_WITHIN on every try, the tricklers trickling between
    the tries and all of them still held open by the server."""
    for _ in range(HEALTH_TRIES):
        tricklers.wait_round()
        t0 = time.monotonic()
        try:
            r = requests.get(server.url + "/health", timeout=HEALTH_WITHIN)
        except requests.Timeout:
            raise AssertionError(f"/health did not answer within {HEALTH_WITHIN}s while "
                                 f"{TRICKLERS} slow clients were connected") from None
        assert r.status_code == 200, r.text
        print(f"/health answered in {time.monotonic() - t0:.3f}s")
    assert tricklers.still_open() == TRICKLERS


def test_health_answers_while_64_clients_trickle_their_headers(server):
    tricklers = Tricklers(server.port, TRICKLERS, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                          b"X-Slow: " + b"a" * 1000)
    try:
        health_answers_while(server, tricklers)
    finally:
        tricklers.stop()


def test_health_answers_while_64_clients_trickle_their_bodies(server):
    body = json.dumps({"messages": [user("hi")], "max_tokens": 1}).encode()
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode())
    tricklers = Tricklers(server.port, TRICKLERS, head + body[:1], body[1:])
    try:
        health_answers_while(server, tricklers)
        # and the API too: a chat request is answered meanwhile
        r = requests.post(server.url + "/v1/chat/completions", timeout=30,
                          json={"messages": [user("hi")], "max_tokens": 2})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    finally:
        tricklers.stop()


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_head_trickled_past_the_header_deadline_is_closed(strict):
    """Bytes keep coming, every 0.2 s, yet the connection is closed at the deadline:
    trickling does not extend it."""
    tricklers = Tricklers(strict.port, 1, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                          b"X-Slow: " + b"a" * 1000, every=0.2)
    try:
        t0 = time.monotonic()
        answer = read_until_closed(tricklers.socks[0], SHORT + SLACK)
        assert time.monotonic() - t0 < SHORT + SLACK
        assert tricklers.rounds >= 3, "the client was still sending when it was closed"
        status, _, rest = answer.partition(b"\r\n")
        assert status == b"HTTP/1.1 408 Request Timeout", answer
        error = json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["code"] == "request_timeout" and set(error) == {
            "message", "type", "param", "code"}
    finally:
        tricklers.stop()


def test_a_connection_that_sends_nothing_is_closed_at_the_header_deadline(strict):
    sock = socket.create_connection(("127.0.0.1", strict.port), timeout=10)
    try:
        assert read_until_closed(sock, SHORT + SLACK) == b""
    finally:
        sock.close()


def test_a_body_slower_than_the_minimum_rate_gets_408(strict):
    body = json.dumps({"messages": [user("x" * 3000)], "max_tokens": 1}).encode()
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode())
    # 5 bytes/s: far below 64 KiB/s, so the deadline stays near --body-timeout
    tricklers = Tricklers(strict.port, 1, head + body[:1], body[1:], every=0.2)
    try:
        answer = read_until_closed(tricklers.socks[0], SHORT + SLACK)
    finally:
        tricklers.stop()
    head_out, _, payload = answer.partition(b"\r\n\r\n")
    assert head_out.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in head_out.lower()
    error = json.loads(payload)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
    # the app never saw it: no request line for it in the app's log, only the server's note
    assert "/v1/chat/completions 408" in strict.log()


def test_a_big_body_at_a_good_rate_passes_beyond_the_body_timeout(strict):
    """3 MiB at about 1 MiB/s: longer than --body-timeout, but each 64 KiB received buys a
    second more (--body-min-rate 64), so the request is answered."""
    body = json.dumps({"messages": [user("hi")], "max_tokens": 2}).encode()
    body += b" " * (3 * 1024 * 1024 - len(body))   # JSON allows the trailing blanks
    sock = socket.create_connection(("127.0.0.1", strict.port), timeout=30)
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nConnection: close\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode())
        t0 = time.monotonic()
        for i in range(0, len(body), 64 * 1024):
            sock.sendall(body[i:i + 64 * 1024])
            pace(1 / 16)
        sent_for = time.monotonic() - t0
        answer = read_until_closed(sock, 30)
    finally:
        sock.close()
    assert sent_for > SHORT, "the body took less than --body-timeout: nothing was proven"
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["usage"]["completion_tokens"] == 2


def test_a_stream_arrives_event_by_event(server):
    """Each SSE event reaches the client while the answer is still being generated: the
    third content event is read while the engine is still busy with the same answer."""
    r = requests.post(server.url + "/v1/chat/completions", stream=True, timeout=30, json={
        "messages": [user("go on")], "max_tokens": 12000, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events, pending = [], b""
    # Held until the end: a chunk iterator left for the garbage collector closes the
    # connection when collected (urllib3 discards a response read only in part), which the
    # server rightly takes for a client that left, and the answer ends at a random moment.
    chunks = r.iter_content(chunk_size=None)   # as the chunks arrive
    try:
        for piece in chunks:
            pending += piece
            while b"\n\n" in pending:
                event, pending = pending.split(b"\n\n", 1)
                events.append(event)
            if sum(b'"content"' in e for e in events) >= 4:
                break
        health = requests.get(server.url + "/health", timeout=5).json()
        assert health["cache"]["sequences"]["busy"] == 1, "the answer was already complete"
    finally:
        r.close()
    assert all(e.startswith(b"data: {") for e in events)
    first = json.loads(events[0][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_sigterm_lets_a_running_request_finish(tiny_model, tmp_path):
    """Graceful shutdown: a request in flight when the server is told to stop is answered,
    then the server exits."""
    s = LiveServer(tiny_model, "--no-warmup", "--parallel", "1", log_path=tmp_path / "s.log")
    try:
        results = []
        client = threading.Thread(target=lambda: results.append(requests.post(
            s.url + "/v1/chat/completions", timeout=30,
            json={"messages": [user("count")], "max_tokens": 1000, "temperature": 1})))
        client.start()
        end = time.monotonic() + 10
        while not requests.get(s.url + "/health", timeout=5).json()["busy"]:
            assert not results, "the request ended before it could be seen running"
            assert time.monotonic() < end, "the request never started"
            time.sleep(0.02)   # polling for the request to start
        os.kill(s.proc.pid, signal.SIGTERM)
        client.join(30)
        assert results and results[0].status_code == 200, s.log()
        assert results[0].json()["usage"]["completion_tokens"] > 0
        assert s.proc.wait(20) == 0, s.log()
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
        s._log.close()

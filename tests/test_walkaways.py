"""Clients that walk away from a non-streamed request, on the real server (gunicorn, real
llama.cpp): queued or running, their request ends on the server within a second — the queue
place, the sequence and the HTTP thread are freed — whatever the engine is doing."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import requests

from conftest import LiveServer, user

WITHIN = 1.0   # seconds for the server to notice and free everything


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    s = LiveServer(tiny_model, "--no-warmup", "--parallel", "1", "--http-threads", "4",
                   "--queue-size", "4", log_path=tmp_path_factory.mktemp("walk") / "server.log")
    yield s
    s.stop()


def open_request(server, body: dict) -> socket.socket:
    """A raw HTTP request whose client can vanish at any moment (close the socket)."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def long_body(stream=False) -> dict:
    return {"messages": [user("Write a very long story.")], "max_tokens": 4000,
            "temperature": 1, "stream": stream}


def health(server) -> dict:
    return requests.get(server.url + "/health", timeout=5).json()


def close_wait(server) -> int:
    """Sockets of the server's port that the client closed and the server has not: each
    is a request still held by a server thread."""
    port = f"{server.port:04X}"
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].rsplit(":", 1)[1] == port and fields[3] == "08":   # CLOSE_WAIT
                count += 1
    return count


def wait_until(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < end, f"not within {timeout}s: {what}"
        time.sleep(0.02)


def busy_sequences(server) -> int:
    return health(server)["cache"]["sequences"]["busy"]


def test_queued_clients_that_leave_free_their_place_and_thread_within_a_second(server):
    before = health(server)["served"]["cancelled"]
    running = open_request(server, long_body(stream=True))   # holds the one sequence
    wait_until(lambda: busy_sequences(server) == 1, 10, "the long request is running")
    queued = [open_request(server, long_body()) for _ in range(2)]
    wait_until(lambda: health(server)["queue_depth"] == 2, 10, "both requests are queued")
    for sock in queued:
        sock.close()
    t0 = time.monotonic()
    wait_until(lambda: health(server)["queue_depth"] == 0 and close_wait(server) == 0,
               WITHIN, "queued walk-aways answered and their sockets closed")
    assert time.monotonic() - t0 <= WITHIN
    assert health(server)["served"]["cancelled"] == before + 2
    assert busy_sequences(server) == 1          # the running request was not disturbed
    running.close()
    wait_until(lambda: busy_sequences(server) == 0, WITHIN, "the stream's sequence freed")
    # every HTTP thread is free again: four requests at once (--http-threads 4) are served
    answers = [open_request(server, {"messages": [user("hi")], "max_tokens": 2})
               for _ in range(4)]
    for sock in answers:
        assert sock.recv(12).startswith(b"HTTP/1.1 200"), "a thread was still held"
        sock.close()


def test_running_client_that_leaves_stops_generating_within_a_second(server):
    before = health(server)["served"]
    sock = open_request(server, long_body())
    wait_until(lambda: busy_sequences(server) == 1, 10, "the request is running")
    sock.close()
    wait_until(lambda: busy_sequences(server) == 0 and close_wait(server) == 0, WITHIN,
               "the walk-away's sequence and socket freed")
    after = health(server)["served"]
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["tokens_generated"] - before["tokens_generated"] < 4000


def test_health_and_models_answer_at_once_after_many_walk_aways(server):
    """Every HTTP thread but one held by clients that then leave while queued or running:
    nothing is left held, so /health and /v1/models answer at once, not after the
    walk-aways' generations (4000 tokens each)."""
    socks = [open_request(server, long_body()) for _ in range(3)]
    wait_until(lambda: busy_sequences(server) == 1, 10, "one is running")
    for sock in socks:
        sock.close()
    wait_until(lambda: health(server)["queue_depth"] == 0 and busy_sequences(server) == 0
               and close_wait(server) == 0, WITHIN, "all walk-aways freed")
    t0 = time.monotonic()
    assert requests.get(server.url + "/v1/models", timeout=5).status_code == 200
    assert time.monotonic() - t0 < 1


def test_a_tls_client_that_leaves_is_noticed_too(tiny_model, tmp_path):
    """Over HTTPS the socket cannot be peeked at: the server asks the kernel whether the
    peer hung up. A finished answer is a 200; a client that leaves frees its sequence."""
    import ssl

    from conftest import self_signed_certificate
    cert, key = self_signed_certificate(tmp_path, cn="127.0.0.1", san="IP:127.0.0.1")
    server = LiveServer(tiny_model, "--no-warmup", "--parallel", "1", "--certfile", cert,
                        "--keyfile", key, log_path=tmp_path / "server.log")
    context = ssl.create_default_context(cafile=cert)

    def tls_request(body: dict) -> ssl.SSLSocket:
        data = json.dumps(body).encode()
        sock = context.wrap_socket(socket.create_connection(("127.0.0.1", server.port), 10),
                                   server_hostname="127.0.0.1")
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\n"
                     + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        return sock

    def busy() -> int:
        return requests.get(server.url + "/health", timeout=5, verify=cert
                            ).json()["cache"]["sequences"]["busy"]
    try:
        done = tls_request({"messages": [user("hi")], "max_tokens": 3})
        assert done.recv(12).startswith(b"HTTP/1.1 200")
        done.close()
        leaving = tls_request(long_body())
        wait_until(lambda: busy() == 1, 10, "the request is running")
        leaving.close()
        wait_until(lambda: busy() == 0, WITHIN, "the walk-away's sequence freed")
    finally:
        server.stop()

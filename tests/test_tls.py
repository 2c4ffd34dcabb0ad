"""--certfile/--keyfile: gunicorn serves the API over HTTPS with the given certificate."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests

from conftest import ROOT, free_port, self_signed_certificate, user


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return self_signed_certificate(tmp_path_factory.mktemp("tls"), cn="127.0.0.1",
                                   san="IP:127.0.0.1")


def test_https_with_the_given_certificate(tiny_model, certificate, tmp_path):
    cert, key = certificate
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py"), "serve", "--model", tiny_model[0], "--mmproj",
         tiny_model[1], "--port", str(port), "--no-warmup", "--threads", "2",
         "--models-dir", str(tmp_path), "--certfile", str(cert), "--keyfile", str(key)],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    url = f"https://127.0.0.1:{port}"
    try:
        for _ in range(300):
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if requests.get(url + "/health", verify=str(cert), timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        r = requests.post(url + "/v1/chat/completions", verify=str(cert), timeout=30,
                          json={"messages": [user("hi")], "max_tokens": 2})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        with pytest.raises(requests.ConnectionError):   # plain http is not served
            requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
        assert f"https://127.0.0.1:{port}/" in (tmp_path / "server.log").read_text()
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def test_certfile_without_keyfile_is_a_usage_error(certificate):
    r = subprocess.run([sys.executable, str(ROOT / "server.py"), "serve", "--demo",
                        "--certfile", str(certificate[0])], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "--certfile and --keyfile go together" in r.stderr

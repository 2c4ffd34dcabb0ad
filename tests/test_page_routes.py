"""How the page is served: / and /chat.html, its static files, the security headers, and a
clear 404 where no page is installed. (The page itself is tested in a browser: test_webui.)"""

from __future__ import annotations

import pytest


@pytest.fixture
def page_client(make_app, tmp_path):
    (tmp_path / "js").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>vlserve</title>")
    (tmp_path / "js" / "main.js").write_text("export {};")
    (tmp_path.parent / "secret.txt").write_text("not for you")
    return make_app(webui_dir=str(tmp_path)).test_client()


@pytest.mark.parametrize("path", ["/", "/chat.html"])
def test_page_is_served_with_a_strict_policy(page_client, path):
    r = page_client.get(path)
    assert r.status_code == 200 and b"<title>vlserve</title>" in r.data
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-eval" not in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "no-referrer"


def test_docs_is_the_shipped_swagger_ui_open_with_keys_and_scripts_self_only(make_app):
    """/docs: the package's own page (vendored Swagger UI, nothing from a CDN), open like
    /openapi.json when keys are on; inline styles allowed there (Swagger UI sets them), inline
    or foreign scripts not. (It is rendered in a browser in test_webui.)"""
    client = make_app(api_keys=("sk-test",)).test_client()
    r = client.get("/docs")
    assert r.status_code == 200 and b'src="/static/vendor/swagger-ui-bundle.js"' in r.data
    assert b"http" not in r.data.split(b"<body>")[0]           # no other origin in the head
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "style-src 'self' 'unsafe-inline';" in csp
    assert "connect-src 'self'" in csp and "unsafe-eval" not in csp
    assert client.get("/static/vendor/swagger-ui-bundle.js").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/v1/models").status_code == 401          # the API itself is not open


def test_static_files_and_no_way_out_of_the_folder(page_client):
    r = page_client.get("/static/js/main.js")
    assert r.status_code == 200 and r.mimetype in ("text/javascript", "application/javascript")
    assert r.headers.get("ETag")
    for path in ("/static/../secret.txt", "/static/%2e%2e/secret.txt", "/static/nope.js"):
        r = page_client.get(path)
        assert r.status_code == 404 and r.get_json()["error"]["type"] == "not_found_error"


def test_api_answers_are_not_given_the_page_policy(page_client):
    r = page_client.get("/v1/models")
    assert "Content-Security-Policy" not in r.headers
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_without_a_page_the_root_says_where_the_api_is(make_app, tmp_path):
    client = make_app(webui_dir=str(tmp_path / "none")).test_client()
    r = client.get("/")
    assert r.status_code == 404 and "/v1" in r.get_json()["error"]["message"]

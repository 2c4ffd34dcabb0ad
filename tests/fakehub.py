"""A loopback stand-in for the Hugging Face Hub: a real HTTP server serving folders as model repos.

Only what huggingface_hub 2.4 uses to list a repo and download a file from it:

- `GET /api/models/{repo}[/revision/{rev}]`  model info; `siblings` is the file list
  (what `HfApi.model_info`, and so `vlserve.library.hub.list_repo_files`, reads)
- `GET /api/models/{repo}/tree/{rev}[/{path}]`  the tree listing (`HfApi.list_repo_files`)
- `HEAD /{repo}/resolve/{rev}/{file}`  metadata: X-Repo-Commit, ETag, Content-Length; for an
  "LFS" file (a .gguf, as Qwen's .gitattributes has it) also X-Linked-Etag (its sha256, as the
  Hub gives) and X-Linked-Size. A regular file's ETag is its git blob sha1, as on the Hub.
- `GET /{repo}/resolve/{rev}/{file}`  the bytes; `Range: bytes=N-` / `bytes=N-M` -> 206
- with `add_repo(..., cdn=True)`, both answer an LFS file with a 302 to
  `http://localhost:{port}/cdn/{repo}/{file}` (another origin, as the Hub's CDN is: the
  token is not sent there), which serves the bytes with Range support and no Hub headers

No X-Xet-* header or xet Link is ever sent, so huggingface_hub stays on plain HTTP (hf-xet
is installed but only used when the server advertises it). Errors carry the Hub's
X-Error-Code header (RepoNotFound, RevisionNotFound, EntryNotFound), which huggingface_hub
maps to its exception classes.

Every request is recorded (method, path, query, headers), and the body bytes sent per file
counted, for tests to assert on; faults can be injected: a status for matching requests, a GET
cut off after N bytes of body, a wrong X-Linked-Etag, Range headers ignored (`ranges = False`).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_PIECE = 64 * 1024


def _is_lfs(filename: str) -> bool:
    """Stored with LFS (Xet) on the Hub: GGUF files are, READMEs and configs are not."""
    return filename.lower().endswith(".gguf")


@dataclass(frozen=True)
class Request:
    method: str
    path: str                 # decoded, without the query string
    query: dict
    headers: dict             # lower-case names

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class _Repo:
    root: Path
    commit: str
    revisions: frozenset
    cdn: bool = False


@dataclass
class _Fault:
    status: int
    path_contains: str
    method: str | None
    error_code: str | None
    message: str
    times: int | None         # None: every matching request
    skip: int = 0             # matching requests let through before the first failure


@dataclass
class _Cut:
    filename: str
    after: int
    times: int | None         # None: every GET of the file
    seen: list = field(default_factory=list)


class FakeHub:
    """`with FakeHub() as hub: hub.add_repo("Qwen/X", folder); ... hub.url ...`"""

    def __init__(self):
        self.requests: list[Request] = []
        self._repos: dict[str, _Repo] = {}
        self._faults: list[_Fault] = []
        self._cuts: list[_Cut] = []
        self._etags: dict[str, str] = {}
        self._sent: dict[str, int] = {}
        self.ranges = True        # False: ignore Range headers, answer 200 with the whole file
        self._lock = threading.Lock()
        self._sha: dict[tuple, str] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- content ---

    def add_repo(self, repo_id: str, root: Path, *, commit: str = "a" * 40,
                 revisions: tuple[str, ...] = ("main",), cdn: bool = False) -> None:
        """Serve `root` (recursively) as `repo_id`; answers for `revisions` and `commit`.
        `cdn`: LFS files are redirected to the loopback "CDN" at another origin."""
        self._repos[repo_id] = _Repo(Path(root), commit, frozenset(revisions) | {commit}, cdn)

    # --- faults and records ---

    def fail(self, status: int, *, path_contains: str = "", method: str | None = None,
             error_code: str | None = None, message: str = "injected",
             times: int | None = None, skip: int = 0) -> None:
        """Answer `status` to requests whose path contains `path_contains` (all by default),
        once `skip` of them have been let through."""
        self._faults.append(_Fault(status, path_contains, method, error_code, message, times,
                                   skip))

    def cut_after(self, filename: str, nbytes: int, *, times: int | None = 1) -> None:
        """The first `times` GETs of `filename` (every one if None) send their full
        Content-Length but only `nbytes` of body, then close the connection (cleanly: the client
        sees a short body). Cuts apply in the order they were added: `cut_after(f, a)` then
        `cut_after(f, b, times=None)` cuts the first GET after a bytes and all others after b."""
        self._cuts.append(_Cut(filename, nbytes, times))

    def set_linked_etag(self, filename: str, etag: str) -> None:
        """Send `etag` as the X-Linked-Etag of `filename` instead of its sha256."""
        self._etags[filename] = etag

    def sent(self, filename: str) -> int:
        """Bytes of `filename`'s body sent so far (since the last reset)."""
        with self._lock:
            return self._sent.get(filename, 0)

    @property
    def count(self) -> int:
        return len(self.requests)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._faults.clear()
            self._cuts.clear()
            self._etags.clear()
            self._sent.clear()
            self.ranges = True

    def downloads(self, filename: str) -> list[Request]:
        """The GETs of a file's bytes (from the Hub or its CDN), in order."""
        return [r for r in self.requests
                if r.method == "GET" and ("/resolve/" in r.path or r.path.startswith("/cdn/"))
                and r.path.endswith("/" + filename)]

    def heads(self, filename: str) -> list[Request]:
        """The metadata requests (HEAD /resolve/) for a file, in order."""
        return [r for r in self.requests
                if r.method == "HEAD" and "/resolve/" in r.path and r.path.endswith("/" + filename)]

    # --- used by the handler ---

    def _record(self, req: Request) -> None:
        with self._lock:
            self.requests.append(req)

    def _fault_for(self, req: Request) -> _Fault | None:
        with self._lock:
            for f in self._faults:
                if f.path_contains in req.path and (f.method is None or f.method == req.method):
                    if f.skip > 0:
                        f.skip -= 1
                        continue
                    if f.times is not None:
                        if f.times <= 0:
                            continue
                        f.times -= 1
                    return f
        return None

    def _cut_for(self, filename: str) -> int | None:
        with self._lock:
            for c in self._cuts:
                if c.filename == filename and (c.times is None or c.times > 0):
                    if c.times is not None:
                        c.times -= 1
                    return c.after
        return None

    def _count_sent(self, filename: str, n: int) -> None:
        with self._lock:
            self._sent[filename] = self._sent.get(filename, 0) + n

    def _digest(self, path: Path, kind: str) -> str:
        """sha256 of the file (an LFS oid) or its git blob sha1, cached by size and mtime."""
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns, kind)
        if key not in self._sha:
            data = path.read_bytes()
            self._sha[key] = (hashlib.sha256(data).hexdigest() if kind == "sha256" else
                              hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        return self._sha[key]


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that hangs up (a test interrupting a download) is no error of the server's."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"    # keep-alive, as the Hub; huggingface_hub pools connections
    timeout = 10                     # idle keep-alive connections do not pin a thread forever
    fake: FakeHub

    def log_message(self, *args) -> None:  # quiet: tests read `requests` instead
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    # --- routing ---

    def _serve(self, body: bool) -> None:
        parts = urlsplit(self.path)
        req = Request(self.command, unquote(parts.path), parse_qs(parts.query),
                      {k.lower(): v for k, v in self.headers.items()})
        self.fake._record(req)
        fault = self.fake._fault_for(req)
        if fault is not None:
            return self._error(fault.status, fault.error_code, fault.message)
        raw = parts.path   # routed undecoded: revision refs/pr/1 arrives as refs%2Fpr%2F1
        if raw.startswith("/api/models/"):
            return self._api(raw[len("/api/models/"):], body)
        if raw.startswith("/cdn/"):
            return self._cdn(unquote(raw[len("/cdn/"):]), body)
        m = re.match(r"^/(?P<repo>.+?)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$", raw)
        if m:
            return self._resolve(unquote(m["repo"]), unquote(m["rev"]), unquote(m["file"]), body)
        self._error(404, None, "no such route")

    def _api(self, rest: str, body: bool) -> None:
        rev = "main"
        tree = None
        if "/tree/" in rest:
            rest, _, tail = rest.partition("/tree/")
            rev, _, tree = tail.partition("/")
        elif "/revision/" in rest:
            rest, _, rev = rest.partition("/revision/")
        rest, rev, tree = unquote(rest), unquote(rev), None if tree is None else unquote(tree)
        repo = self._repo(rest, rev)
        if repo is None:
            return
        files = sorted(p for p in repo.root.rglob("*") if p.is_file())
        if tree is not None:
            prefix = tree.strip("/")
            listing = [{"type": "file", "path": rel, "size": p.stat().st_size, "oid": "0" * 40}
                       for p in files
                       if (rel := p.relative_to(repo.root).as_posix()).startswith(prefix)]
            return self._json(listing, body)
        info = {"_id": "fake", "id": rest, "sha": repo.commit, "private": False,
                "siblings": [{"rfilename": p.relative_to(repo.root).as_posix()} for p in files]}
        self._json(info, body)

    def _resolve(self, repo_id: str, rev: str, filename: str, body: bool) -> None:
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        path = repo.root / filename
        if not path.is_file():
            return self._error(404, "EntryNotFound", "Entry not found",
                               {"X-Repo-Commit": repo.commit})
        size = path.stat().st_size
        headers = {"X-Repo-Commit": repo.commit}
        if _is_lfs(filename):
            oid = self.fake._etags.get(filename) or self.fake._digest(path, "sha256")
            headers.update({"ETag": f'"{oid}"', "X-Linked-Etag": f'"{oid}"',
                            "X-Linked-Size": str(size)})
            if repo.cdn:
                port = self.server.server_address[1]
                location = f"http://localhost:{port}/cdn/{quote(repo_id)}/{quote(filename)}"
                return self._redirect(location, headers)
        else:
            headers["ETag"] = f'"{self.fake._digest(path, "sha1")}"'
        self._send_file(path, filename, headers, body)

    def _cdn(self, rest: str, body: bool) -> None:
        """The CDN: bytes by repo and file name, with Range support and no Hub headers."""
        for repo_id, repo in self.fake._repos.items():
            if rest.startswith(repo_id + "/") and (repo.root / rest[len(repo_id) + 1:]).is_file():
                filename = rest[len(repo_id) + 1:]
                return self._send_file(repo.root / filename, filename, {}, body)
        self._error(404, None, "no such object")

    def _send_file(self, path: Path, filename: str, headers: dict, body: bool) -> None:
        size = path.stat().st_size
        headers = {**headers, "Accept-Ranges": "bytes" if self.fake.ranges else "none"}
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng and body and self.fake.ranges:
            m = _RANGE.match(rng.strip())
            if not m or int(m[1]) >= size:
                return self._error(416, None, "Range not satisfiable",
                                   {"Content-Range": f"bytes */{size}"})
            start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if not body:
            return
        cut = self.fake._cut_for(filename)
        stop = end + 1 if cut is None else min(end + 1, start + cut)
        with path.open("rb") as f:
            f.seek(start)
            pos = start
            while pos < stop:
                chunk = f.read(min(_PIECE, stop - pos))
                self.wfile.write(chunk)
                self.fake._count_sent(filename, len(chunk))
                pos += len(chunk)
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True   # the server then shuts the socket down: a short body

    # --- replies ---

    def _repo(self, repo_id: str, rev: str) -> _Repo | None:
        repo = self.fake._repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if rev not in repo.revisions:
            self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
            return None
        return repo

    def _redirect(self, location: str, headers: dict) -> None:
        self.send_response(302)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _json(self, payload, body: bool) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, status: int, code: str | None, message: str,
               extra: dict | None = None) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

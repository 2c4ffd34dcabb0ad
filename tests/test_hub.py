"""vlserve.library.hub against a loopback fake of the Hub (tests/fakehub.py): no test needs the internet.

Every test runs with HF_HOME in a temp folder and huggingface_hub's import-time copies of
paths and switches pointed there too, so no token, cache or setting of the machine leaks in.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import socket
import time
from pathlib import Path

import pytest
from fakehub import FakeHub
from huggingface_hub import constants

from vlserve.library import hub
from vlserve.library.hub import ModelFilesError, find_local, match_files, pick_pair, pull

REPO = "Qwen/Qwen3-VL-2B-Instruct-GGUF"
MODEL = "Qwen3VL-2B-Instruct-Q4_K_M.gguf"
MMPROJ = "mmproj-Qwen3VL-2B-Instruct-F16.gguf"
MODEL_GLOB, MMPROJ_GLOB = "*Q4_K_M*.gguf", "mmproj*F16*.gguf"
TOKEN = "hf_fakeTokenForTests0123456789"

# huggingface_hub's http_get writes a download to disk in DOWNLOAD_CHUNK_SIZE (10 MiB) pieces
# and resumes from the last whole piece, so a resume is only visible (Range: bytes=N-, N > 0)
# for a model bigger than one piece, cut after the first piece.
CHUNK = constants.DOWNLOAD_CHUNK_SIZE
MODEL_SIZE = CHUNK + 2 * 1024 * 1024
CUT_AT = CHUNK + 1024 * 1024


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def part_of(dest: Path, filename: str = MODEL) -> Path:
    """Where vlserve keeps a download in progress."""
    return dest / ".cache" / "vlserve" / f"{filename}.part"


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory) -> Path:
    """A GGUF repo as Qwen lays one out: quants, an mmproj, a README."""
    root = tmp_path_factory.mktemp("repo")
    (root / MODEL).write_bytes(os.urandom(MODEL_SIZE))
    (root / MMPROJ).write_bytes(os.urandom(300_000))
    (root / "Qwen3VL-2B-Instruct-Q8_0.gguf").write_bytes(os.urandom(1000))
    (root / "mmproj-Qwen3VL-2B-Instruct-Q8_0.gguf").write_bytes(os.urandom(1000))
    (root / "README.md").write_text("# a model\n")
    return root


@pytest.fixture
def hf_env(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "hf-home"
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                "HF_ENDPOINT", "HF_OIDC_RESOURCE", "TQDM_POSITION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    # huggingface_hub copied these from the environment when it was imported.
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    # With telemetry on, the first request's user agent fetches an "agent harness" list from
    # huggingface.co itself (constants.ENDPOINT, not the endpoint passed in): not here.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    return home


@pytest.fixture
def fake_hub(hf_env, repo_dir, monkeypatch):
    with FakeHub() as fake:
        fake.add_repo(REPO, repo_dir, revisions=("main", "v1"))
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"network connection attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- environment -----------------------------------------------------------------------------


def test_endpoint_and_offline_are_read_at_call_time(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert hub.endpoint() == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example/")
    assert hub.endpoint() == "https://hf-mirror.example"
    for value, expected in (("1", True), ("TRUE", True), ("yes", True), ("On", True),
                            ("0", False), ("", False), ("no", False)):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert hub.is_offline() is expected
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert hub.is_offline() is False


# --- matching --------------------------------------------------------------------------------

FILES = ["README.md", "Qwen3VL-8B-Instruct-Q4_K_M.gguf", "sub/qwen3-vl-8b-instruct-q4_k_m.gguf",
         "Qwen3VL-8B-Instruct-Q8_0.gguf", "Qwen3VL-8B-Instruct-F16.gguf",
         "mmproj-Qwen3VL-8B-Instruct-F16.gguf", "mmproj-Qwen3VL-8B-Instruct-Q8_0.gguf",
         "llava-7b-mmproj-f16.gguf", "Qwen3VL-8B-Instruct-Q4_K_M.bin"]


def test_match_is_case_insensitive_and_finds_renamed_files():
    assert match_files(FILES, "*Q4_K_M*.gguf") == [
        "Qwen3VL-8B-Instruct-Q4_K_M.gguf", "sub/qwen3-vl-8b-instruct-q4_k_m.gguf"]
    assert match_files(FILES, "*q4_k_m*.GGUF") == match_files(FILES, "*Q4_K_M*.gguf")


def test_model_pattern_never_matches_an_mmproj():
    assert match_files(FILES, "*F16*.gguf") == ["Qwen3VL-8B-Instruct-F16.gguf"]
    assert all("mmproj" not in f for f in match_files(FILES, "*.gguf"))
    assert all("mmproj" not in f for f in match_files(FILES, "*"))
    assert match_files(FILES, "mmproj*F16*.gguf") == ["mmproj-Qwen3VL-8B-Instruct-F16.gguf"]
    assert match_files(FILES, "*mmproj*f16*") == ["llava-7b-mmproj-f16.gguf",
                                                   "mmproj-Qwen3VL-8B-Instruct-F16.gguf"]


def test_only_gguf_files_match():
    assert "Qwen3VL-8B-Instruct-Q4_K_M.bin" not in match_files(FILES, "*Q4_K_M*")
    assert match_files(FILES, "README*") == []


def test_pick_pair_finds_both():
    assert pick_pair(FILES, "*Q8_0*.gguf", "mmproj*Q8_0*.gguf", "Qwen/X") == (
        "Qwen3VL-8B-Instruct-Q8_0.gguf", "mmproj-Qwen3VL-8B-Instruct-Q8_0.gguf")


def test_pick_pair_nothing_matches_lists_the_repos_ggufs():
    with pytest.raises(ModelFilesError) as err:
        pick_pair(FILES, "*Q5_K_M*.gguf", MMPROJ_GLOB, "Qwen/X")
    msg = str(err.value)
    assert "Qwen/X" in msg and "'*Q5_K_M*.gguf'" in msg
    for name in ("Qwen3VL-8B-Instruct-Q4_K_M.gguf", "Qwen3VL-8B-Instruct-Q8_0.gguf",
                 "mmproj-Qwen3VL-8B-Instruct-F16.gguf"):
        assert name in msg
    assert "README.md" not in msg and ".bin" not in msg
    with pytest.raises(ModelFilesError, match="no .gguf files"):
        pick_pair(["README.md", "model.safetensors"], MODEL_GLOB, MMPROJ_GLOB, "Qwen/X")


def test_pick_pair_among_several_is_deterministic():
    files = ["b/X-UD-Q4_K_M.gguf", "X-Q4_K_M.gguf", "a/x-q4_k_m.gguf", "X-Q4_K_M-v2.gguf",
             "mmproj-X-F16.gguf", "mmproj-F16.gguf"]
    picks = {pick_pair(list(order), MODEL_GLOB, MMPROJ_GLOB, "Qwen/X")
             for order in itertools.permutations(files)}
    # shortest base name first, then alphabetical (case-insensitively), then the full path
    assert picks == {("X-Q4_K_M.gguf", "mmproj-F16.gguf")}


def test_find_local_ignores_partials_caches_subfolders_and_empty_files(tmp_path):
    assert find_local(tmp_path / "missing", MODEL_GLOB, MMPROJ_GLOB) is None
    (tmp_path / "model-Q4_K_M.gguf.incomplete").write_bytes(b"x")
    (tmp_path / ".cache/huggingface/download").mkdir(parents=True)
    (tmp_path / ".cache/huggingface/download/model-Q4_K_M.gguf").write_bytes(b"x")
    (tmp_path / ".cache/vlserve").mkdir(parents=True)
    (tmp_path / ".cache/vlserve/model-Q4_K_M.gguf.part").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/model-Q4_K_M.gguf").write_bytes(b"x")
    (tmp_path / "empty-Q4_K_M.gguf").write_bytes(b"")
    (tmp_path / "mmproj-F16.gguf").write_bytes(b"x")
    assert find_local(tmp_path, MODEL_GLOB, MMPROJ_GLOB) is None
    (tmp_path / "My-Renamed-q4_k_m.GGUF").write_bytes(b"x")
    assert find_local(tmp_path, MODEL_GLOB, MMPROJ_GLOB) == (
        tmp_path / "My-Renamed-q4_k_m.GGUF", tmp_path / "mmproj-F16.gguf")


# --- pull: downloads -------------------------------------------------------------------------


def test_pull_downloads_both_files(fake_hub, repo_dir, tmp_path):
    dest = tmp_path / "models" / "qwen3-vl-2b"
    model, mmproj = pull(REPO, MODEL_GLOB, MMPROJ_GLOB, dest, progress=False)
    assert (model, mmproj) == (dest / MODEL, dest / MMPROJ)
    assert sha256(model) == sha256(repo_dir / MODEL)
    assert sha256(mmproj) == sha256(repo_dir / MMPROJ)
    assert find_local(dest, MODEL_GLOB, MMPROJ_GLOB) == (model, mmproj)
    gets = [r.path for r in fake_hub.requests if r.method == "GET" and "/resolve/" in r.path]
    # the model first
    assert gets == [f"/{REPO}/resolve/main/{MODEL}", f"/{REPO}/resolve/main/{MMPROJ}"]
    assert all(r.header("authorization") is None for r in fake_hub.requests)  # no token anywhere


def test_pull_uses_the_revision_and_sends_hf_token(fake_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path, revision="v1", progress=False)
    paths = [r.path for r in fake_hub.requests]
    assert paths[0] == f"/api/models/{REPO}/revision/v1"
    resolves = [p for p in paths if "/resolve/" in p]
    assert resolves and all(p.startswith(f"/{REPO}/resolve/v1/") for p in resolves)
    assert {r.header("authorization") for r in fake_hub.requests} == {f"Bearer {TOKEN}"}


def test_pull_fetches_only_what_is_missing(fake_hub, repo_dir, tmp_path):
    (tmp_path / "my-own-q4_k_m.gguf").write_bytes(b"GGUF a model a person put here")
    model, mmproj = pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path, progress=False)
    assert model == tmp_path / "my-own-q4_k_m.gguf"
    assert sha256(mmproj) == sha256(repo_dir / MMPROJ)
    assert fake_hub.downloads(MODEL) == []


def test_interrupted_download_resumes_with_a_range_request(fake_hub, repo_dir, tmp_path):
    fake_hub.cut_after(MODEL, CUT_AT)
    try:
        model, _ = pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path, progress=False)
    except ModelFilesError:  # in case a huggingface_hub version gives up instead: pull again
        model, _ = pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path, progress=False)
    assert sha256(model) == sha256(repo_dir / MODEL)
    ranges = [r.header("range") for r in fake_hub.downloads(MODEL)]
    assert ranges[0] is None
    resumed = [int(r[len("bytes="):-1]) for r in ranges[1:] if r and r.endswith("-")]
    assert resumed and 0 < resumed[0] <= CUT_AT, ranges
    assert not list(tmp_path.rglob("*.incomplete")) and not list(tmp_path.rglob("*.part"))


def test_download_that_keeps_failing_is_reported_then_works_next_time(fake_hub, repo_dir,
                                                                       tmp_path, monkeypatch):
    # huggingface_hub retries a broken transfer 5 times, a second apart: skip the waits.
    monkeypatch.setattr("huggingface_hub.file_download.time.sleep", lambda s: None)
    fake_hub.cut_after(MODEL, 1000, times=6)
    with pytest.raises(ModelFilesError, match="interrupted.*run it again") as err:
        pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path, progress=False)
    assert MODEL in str(err.value)
    assert find_local(tmp_path, MODEL_GLOB, MMPROJ_GLOB) is None
    assert not (tmp_path / MODEL).exists()  # nothing half-written where the server looks
    model, _ = pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path, progress=False)
    assert sha256(model) == sha256(repo_dir / MODEL)
    assert not part_of(tmp_path).exists()


# --- pull: resuming across runs --------------------------------------------------------------


def interrupted_pull(fake: FakeHub, dest: Path, monkeypatch) -> int:
    """A pull that gets the model's first CUT_AT bytes, then loses the network for longer than
    http_get's retries (each later GET is cut after 1000 bytes, less than a piece, so they add
    nothing): it fails, and the .part keeps what arrived. Returns the .part's size, with the
    fake hub's records and faults reset."""
    monkeypatch.setattr("huggingface_hub.file_download.time.sleep", lambda s: None)
    fake.cut_after(MODEL, CUT_AT)
    fake.cut_after(MODEL, 1000, times=None)
    with pytest.raises(ModelFilesError, match="interrupted.*run it again"):
        pull(REPO, MODEL_GLOB, MMPROJ_GLOB, dest, progress=False)
    assert len(fake.downloads(MODEL)) == 6  # the first GET, then http_get's 5 retries
    assert not (dest / MODEL).exists() and find_local(dest, MODEL_GLOB, MMPROJ_GLOB) is None
    done = part_of(dest).stat().st_size
    assert 0 < done <= CUT_AT
    fake.reset()
    return done


def assert_resumed(fake: FakeHub, dest: Path, model: Path, done: int, source: Path) -> None:
    assert [r.header("range") for r in fake.downloads(MODEL)] == [f"bytes={done}-"]
    assert fake.sent(MODEL) == MODEL_SIZE - done   # only the rest went over the wire
    assert model == dest / MODEL and sha256(model) == sha256(source)
    assert not part_of(dest).exists() and not part_of(dest).with_suffix(".part.json").exists()


def test_interrupted_pull_resumes_in_the_next_run(fake_hub, repo_dir, tmp_path, monkeypatch,
                                                  caplog):
    done = interrupted_pull(fake_hub, tmp_path, monkeypatch)
    assert done == CHUNK
    caplog.set_level(logging.INFO, logger="vlserve.hub")
    model, mmproj = pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path, progress=False)
    assert_resumed(fake_hub, tmp_path, model, done, repo_dir / MODEL)
    assert f"resuming {MODEL} at {done} of {MODEL_SIZE} bytes" in caplog.text
    assert sha256(mmproj) == sha256(repo_dir / MMPROJ)
    assert [r.header("range") for r in fake_hub.downloads(MMPROJ)] == [None]


def test_killed_pull_resumes_in_the_next_run(fake_hub, repo_dir, tmp_path, monkeypatch):
    # Ctrl-C (or a kill) once the first 10 MiB piece is written: nothing cleans the .part up.
    real_http_get = hub.http_get

    class Killed:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.f.write(data)
            self.written += len(data)
            # on disk as it arrives, not only when the file is closed
            assert part_of(tmp_path).stat().st_size == self.written
            if self.written >= CHUNK:
                raise KeyboardInterrupt

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(hub, "http_get", lambda url, f, **kw: real_http_get(url, Killed(f), **kw))
    with pytest.raises(KeyboardInterrupt):
        pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path, progress=False)
    done = part_of(tmp_path).stat().st_size
    assert done == CHUNK and not (tmp_path / MODEL).exists()
    monkeypatch.setattr(hub, "http_get", real_http_get)
    fake_hub.reset()
    model, _ = pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path, progress=False)
    assert_resumed(fake_hub, tmp_path, model, done, repo_dir / MODEL)


@pytest.fixture
def own_hub(hf_env, tmp_path, monkeypatch):
    """A fake hub serving a repo of this test's own, which the test may change."""
    root = tmp_path / "own-repo"
    root.mkdir()
    (root / MODEL).write_bytes(os.urandom(MODEL_SIZE))
    (root / MMPROJ).write_bytes(os.urandom(1000))
    with FakeHub() as fake:
        fake.add_repo(REPO, root)
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake, root


def test_partial_of_another_version_is_discarded(own_hub, tmp_path, monkeypatch, caplog):
    fake, root = own_hub
    dest = tmp_path / "dest"
    interrupted_pull(fake, dest, monkeypatch)
    # The repo gets a new version of the file, of the same size: its etag changes.
    (root / MODEL).write_bytes(os.urandom(MODEL_SIZE))
    st = (root / MODEL).stat()
    os.utime(root / MODEL, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    caplog.set_level(logging.INFO, logger="vlserve.hub")
    model, _ = pull(REPO, MODEL_GLOB, MMPROJ_GLOB, dest, progress=False)
    assert [r.header("range") for r in fake.downloads(MODEL)] == [None]  # from byte 0
    assert fake.sent(MODEL) == MODEL_SIZE
    assert sha256(model) == sha256(root / MODEL)
    assert "discarding" in caplog.text and "resuming" not in caplog.text


def test_partial_without_its_record_is_discarded(fake_hub, repo_dir, tmp_path):
    part_of(tmp_path).parent.mkdir(parents=True)
    part_of(tmp_path).write_bytes(b"not the model" * 1000)
    model, _ = pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path, progress=False)
    assert [r.header("range") for r in fake_hub.downloads(MODEL)] == [None]
    assert sha256(model) == sha256(repo_dir / MODEL)


def test_complete_partial_is_installed_without_downloading(fake_hub, repo_dir, tmp_path,
                                                           monkeypatch):
    # As if killed after the last byte arrived but before the file was moved into place.
    done = interrupted_pull(fake_hub, tmp_path, monkeypatch)
    with part_of(tmp_path).open("ab") as f:
        f.write((repo_dir / MODEL).read_bytes()[done:])
    model, _ = pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path, progress=False)
    assert fake_hub.downloads(MODEL) == [] and len(fake_hub.heads(MODEL)) == 1
    assert sha256(model) == sha256(repo_dir / MODEL)


def test_server_ignoring_the_range_still_gives_the_right_file(fake_hub, repo_dir, tmp_path,
                                                              monkeypatch):
    done = interrupted_pull(fake_hub, tmp_path, monkeypatch)
    fake_hub.ranges = False   # answers the Range request with 200 and the whole file
    model, _ = pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path, progress=False)
    assert [r.header("range") for r in fake_hub.downloads(MODEL)] == [f"bytes={done}-"]
    assert fake_hub.sent(MODEL) == MODEL_SIZE
    assert sha256(model) == sha256(repo_dir / MODEL)


def test_sha256_mismatch_deletes_the_download(fake_hub, tmp_path):
    wrong = hashlib.sha256(b"some other bytes").hexdigest()
    fake_hub.set_linked_etag(MODEL, wrong)
    with pytest.raises(ModelFilesError, match="sha256") as err:
        pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path, progress=False)
    assert MODEL in str(err.value) and wrong in str(err.value) and "run it again" in str(err.value)
    assert not (tmp_path / MODEL).exists() and not part_of(tmp_path).exists()
    assert find_local(tmp_path, MODEL_GLOB, MMPROJ_GLOB) is None
    assert fake_hub.downloads(MMPROJ) == []


@pytest.fixture
def cdn_hub(hf_env, repo_dir, monkeypatch):
    """The Hub as it serves Xet/LFS files: the resolve URL redirects to a CDN elsewhere."""
    with FakeHub() as fake:
        fake.add_repo(REPO, repo_dir, cdn=True)
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake


def test_cdn_download_keeps_the_token_on_the_hub_and_renews_an_expired_link(
        cdn_hub, repo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr("huggingface_hub.file_download.time.sleep", lambda s: None)
    cdn_hub.cut_after(MODEL, CUT_AT)
    # http_get's retry after the cut finds the signed link expired.
    cdn_hub.fail(403, path_contains="/cdn/", message="Request has expired", skip=1, times=1)
    model, mmproj = pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path, progress=False)
    assert sha256(model) == sha256(repo_dir / MODEL)
    assert sha256(mmproj) == sha256(repo_dir / MMPROJ)
    gets = cdn_hub.downloads(MODEL)
    assert all(r.path.startswith("/cdn/") for r in gets)
    assert [r.header("range") for r in gets] == [None, f"bytes={CHUNK}-", f"bytes={CHUNK}-"]
    assert len(cdn_hub.heads(MODEL)) == 2      # a fresh link from the Hub after the 403
    for r in cdn_hub.requests:
        assert r.header("authorization") == (None if r.path.startswith("/cdn/")
                                             else f"Bearer {TOKEN}"), r.path


def test_cdn_refusal_says_to_run_again(cdn_hub, tmp_path):
    cdn_hub.fail(403, path_contains="/cdn/", message="Request has expired")
    with pytest.raises(ModelFilesError, match="download server localhost answered HTTP 403.*"
                                              "run it again") as err:
        pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path, progress=False)
    assert MODEL in str(err.value)


def test_progress_false_silences_the_bars(fake_hub, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("TQDM_POSITION", "-1")  # huggingface_hub: show bars even without a TTY
    pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path / "quiet", progress=False)
    assert MMPROJ not in capfd.readouterr().err
    pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path / "loud", progress=True)
    assert MMPROJ in capfd.readouterr().err


# --- pull: files already there, offline ------------------------------------------------------


def put_pair(dest: Path) -> tuple[Path, Path]:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "renamed-Q4_K_M.gguf").write_bytes(b"model")
    (dest / "MMPROJ-f16.gguf").write_bytes(b"mmproj")
    return dest / "renamed-Q4_K_M.gguf", dest / "MMPROJ-f16.gguf"


def test_files_present_means_no_network(fake_hub, tmp_path, no_network):
    pair = put_pair(tmp_path)
    assert pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path) == pair
    assert fake_hub.count == 0


def test_offline_with_files_present_returns_them(hf_env, tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pair = put_pair(tmp_path)
    assert pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path) == pair


def test_offline_and_missing_says_what_to_put_where(hf_env, tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    dest = tmp_path / "models" / "qwen"
    with pytest.raises(ModelFilesError) as err:
        pull(REPO, MODEL_GLOB, MMPROJ_GLOB, dest, revision="v1")
    msg = str(err.value)
    for part in ("offline", "HF_HUB_OFFLINE", str(dest), MODEL_GLOB, MMPROJ_GLOB,
                 f"https://huggingface.co/{REPO}", "v1"):
        assert part in msg, part
    (dest / MODEL).parent.mkdir(parents=True)
    (dest / MODEL).write_bytes(b"model")
    with pytest.raises(ModelFilesError) as err:
        pull(REPO, MODEL_GLOB, MMPROJ_GLOB, dest)
    assert MMPROJ_GLOB in str(err.value) and MODEL_GLOB not in str(err.value)


def test_offline_since_import_is_explained(fake_hub, tmp_path, monkeypatch):
    # HF_HUB_OFFLINE was set when huggingface_hub was imported and has been unset since.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelFilesError, match="offline mode.*when the process started"):
        pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path)
    assert fake_hub.count == 0


# --- pull: failures --------------------------------------------------------------------------


def test_unreachable_endpoint_fails_fast_and_names_it(hf_env, tmp_path, monkeypatch):
    url = closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", url)
    start = time.monotonic()
    with pytest.raises(ModelFilesError) as err:
        pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path)
    assert time.monotonic() - start < 3
    msg = str(err.value)
    assert f"could not reach {url}" in msg and "HF_ENDPOINT" in msg and "HF_HUB_OFFLINE" in msg
    assert str(tmp_path) in msg


def test_unknown_repo_is_named(fake_hub, tmp_path):
    with pytest.raises(ModelFilesError) as err:
        pull("Qwen/No-Such-Repo-GGUF", MODEL_GLOB, MMPROJ_GLOB, tmp_path)
    assert "Qwen/No-Such-Repo-GGUF" in str(err.value) and "not found" in str(err.value)
    assert fake_hub.url in str(err.value)


def test_invalid_repo_id_is_explained(hf_env, tmp_path, no_network):
    with pytest.raises(ModelFilesError, match="invalid repo id 'not a repo!'"):
        pull("not a repo!", MODEL_GLOB, MMPROJ_GLOB, tmp_path)


def test_unknown_revision_is_named(fake_hub, tmp_path):
    with pytest.raises(ModelFilesError, match="no revision 'nope'"):
        pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path, revision="nope")


def test_no_matching_quant_lists_what_the_repo_has(fake_hub, tmp_path):
    with pytest.raises(ModelFilesError) as err:
        pull(REPO, "*Q5_K_M*.gguf", MMPROJ_GLOB, tmp_path)
    assert MODEL in str(err.value) and "Qwen3VL-2B-Instruct-Q8_0.gguf" in str(err.value)
    assert fake_hub.downloads(MMPROJ) == []  # nothing is fetched unless both are there


def test_401_mentions_hf_token_and_never_shows_it(fake_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fake_hub.fail(401, path_contains="/api/models/", message="Invalid username or password.")
    with pytest.raises(ModelFilesError) as err:
        pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path)
    msg = str(err.value)
    assert "HF_TOKEN" in msg and REPO in msg and "401" in msg
    assert TOKEN not in msg and TOKEN not in repr(err.value.__cause__)


def test_gated_file_mentions_hf_token(fake_hub, tmp_path):
    fake_hub.fail(403, path_contains="/resolve/", error_code="GatedRepo",
                  message="Access to model is restricted")
    with pytest.raises(ModelFilesError) as err:
        pull(REPO, MODEL_GLOB, MMPROJ_GLOB, tmp_path)
    assert "HF_TOKEN" in str(err.value) and "403" in str(err.value)


def test_list_repo_files(fake_hub):
    assert hub.list_repo_files(REPO) == sorted(
        ["README.md", MODEL, MMPROJ, "Qwen3VL-2B-Instruct-Q8_0.gguf",
         "mmproj-Qwen3VL-2B-Instruct-Q8_0.gguf"])

"""Fetching a GGUF model + mmproj pair from a Hugging Face repo (or a mirror) into a folder.

Files are chosen by glob on their names, not by exact name, so a repo that renames its files
(or a person who renames a download) is still matched. Files already in the folder win: then
nothing touches the network.

Downloads resume across runs. huggingface_hub's `hf_hub_download` only resumes within one call
(a dropped connection is retried with a Range request a few times) and deletes its temporary
file when it gives up, so an interrupted `vlserve pull` (Ctrl-C, a kill, a network down for
longer than those retries) would start a multi-GB file from zero. Here each file is downloaded
into `<dest_dir>/.cache/vlserve/<filename>.part`, next to a sidecar (`.part.json`) that records
the file's ETag, size and commit; the next run picks the `.part` up with `Range: bytes=N-` when
the sidecar matches the file the Hub serves now, and discards it (never splices) when it does
not. A complete file is checked (size; sha256 when the ETag is one, as the Hub's X-Linked-Etag
of an LFS file is) and only then renamed into `<dest_dir>/<filename>`. The transfer itself is
still huggingface_hub's building blocks (`hf_hub_url`, `get_hf_file_metadata`,
`build_hf_headers`, `file_download.http_get`), so its token handling (HF_TOKEN,
`hf auth login`), in-call retries and progress bars are kept; only the file it writes into is
vlserve's.

Every failure a person can fix is a `ModelFilesError` whose message says what to do. Messages
name repos, endpoints, files and folders; never a token.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import logging
import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    FileMetadataError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import WeakFileLock, build_hf_headers
from huggingface_hub.utils import tqdm as hf_tqdm

try:  # private: whether a redirect target is still the Hub (then the token may follow it)
    from huggingface_hub.utils._http import _is_same_or_hub_host
except ImportError:  # pragma: no cover - a later huggingface_hub 2.x without it
    def _is_same_or_hub_host(url: str, target: str) -> bool:
        a, b = urlsplit(url), urlsplit(target)
        return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)

log = logging.getLogger("vlserve.hub")

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = ("1", "true", "yes", "on")
_MMPROJ = "mmproj"
# How many of a repo's .gguf names an error message lists before it gives a count instead.
_MAX_LISTED = 40
# What huggingface_hub and the transport raise, as far as this module is concerned: its HTTP
# errors (HfHubHTTPError is an httpx2.HTTPError), transport errors, offline mode and local-file
# errors (OSError), a bad repo id or a reply that is not the Hub's JSON (ValueError, KeyError,
# TypeError). Anything else is a bug and should surface as one.
_HUB_ERRORS = (httpx2.HTTPError, httpx2.InvalidURL, OSError, ValueError, KeyError, TypeError)
# Partial downloads and their sidecars, under dest_dir (a folder, so find_local never sees them).
_WORK_DIR = Path(".cache") / "vlserve"
# The Hub's X-Linked-Etag of an LFS (or Xet) file is the file's sha256.
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Statuses a CDN gives for a signed download link that has expired between http_get's retries.
_LINK_EXPIRED = (401, 403, 410)


class ModelFilesError(RuntimeError):
    """The model files cannot be had; the message says why and what a person can do."""


def is_offline() -> bool:
    """HF_HUB_OFFLINE, read now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def endpoint() -> str:
    """HF_ENDPOINT (a mirror), read now; huggingface_hub's own copy is frozen at import time,
    so every call below passes this explicitly."""
    return (os.environ.get("HF_ENDPOINT", "").strip() or DEFAULT_ENDPOINT).rstrip("/")


def list_repo_files(repo_id: str, revision: str | None = None) -> list[str]:
    """Every file path in the repo at `revision` (default branch if None), sorted.

    One `GET /api/models/{repo}[/revision/{rev}]?expand=siblings` with a timeout and no
    retries, rather than `HfApi.list_repo_files`: that one pages through the tree API with
    no timeout at all and retries connection errors with back-off (~23 s before a person
    without a network is told anything).
    """
    return _list_files(repo_id, revision)


def match_files(files: list[str], pattern: str) -> list[str]:
    """The .gguf paths whose base name matches `pattern` (a glob, case-insensitive), sorted.

    A pattern that does not mention "mmproj" never matches a projector: "*F16*.gguf" for an
    F16 text model must not pick "mmproj-…-F16.gguf". (Projectors are named "mmproj-…" by
    Qwen and llama.cpp's converter, "…-mmproj-f16.gguf" by some older repos: both are caught.)
    """
    pat = pattern.lower()
    allow_mmproj = _MMPROJ in pat
    out = []
    for path in files:
        name = _basename(path).lower()
        if not name.endswith(".gguf") or (_MMPROJ in name and not allow_mmproj):
            continue
        if fnmatch.fnmatchcase(name, pat):
            out.append(path)
    return sorted(out)


def pick_pair(files: list[str], model_glob: str, mmproj_glob: str,
              repo_id: str) -> tuple[str, str]:
    """The model and the mmproj file among a repo's `files`; ModelFilesError if one is missing."""
    return _pick_one(files, model_glob, repo_id), _pick_one(files, mmproj_glob, repo_id)


def find_local(dest_dir: Path, model_glob: str, mmproj_glob: str) -> tuple[Path, Path] | None:
    """The pair already in `dest_dir` (not its subfolders), or None if either file is missing."""
    dest_dir = Path(dest_dir)
    names = _local_names(dest_dir)
    model, mmproj = _pick(names, model_glob), _pick(names, mmproj_glob)
    if model is None or mmproj is None:
        return None
    return dest_dir / model, dest_dir / mmproj


def pull(repo_id: str, model_glob: str, mmproj_glob: str, dest_dir: Path, *,
         revision: str | None = None, progress: bool = True) -> tuple[Path, Path]:
    """The (model, mmproj) pair in `dest_dir`, downloading from the Hub whatever is missing.

    Files already there are used as they are, with no network call at all (a file a person
    put there is theirs; it is not checked against the repo). Downloads go to
    `.cache/vlserve/<filename>.part` inside `dest_dir`, are resumed from there by the next
    call if interrupted, and are moved into place only once complete and checked.
    """
    dest_dir = Path(dest_dir)
    names = _local_names(dest_dir)
    have_model, have_mmproj = _pick(names, model_glob), _pick(names, mmproj_glob)
    if have_model is not None and have_mmproj is not None:
        return dest_dir / have_model, dest_dir / have_mmproj
    if is_offline():
        raise ModelFilesError(_offline_message(repo_id, model_glob, mmproj_glob, dest_dir,
                                               revision, have_model, have_mmproj))

    files = _list_files(repo_id, revision, dest_dir)
    # Only what is missing is fetched: a model a person already has is not downloaded again
    # because the repo spells its name differently.
    model = None if have_model else _pick_one(files, model_glob, repo_id)
    mmproj = None if have_mmproj else _pick_one(files, mmproj_glob, repo_id)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ModelFilesError(f"cannot create {dest_dir}: {_short(err)}") from err
    bar = None if progress else _SilentBar
    model_path, mmproj_path = (
        dest_dir / have if have else _download(repo_id, name, revision, dest_dir, bar)
        for have, name in ((have_model, model), (have_mmproj, mmproj)))  # model first
    return model_path, mmproj_path


# --- helpers ---------------------------------------------------------------------------------


class _SilentBar(hf_tqdm):
    """huggingface_hub's bar, always off: a per-call switch, unlike disable_progress_bars(),
    which is process-wide and would also silence other threads' downloads."""

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _pick(files: list[str], pattern: str) -> str | None:
    """The one match to use: the shortest base name, then alphabetical, so a repo (or folder)
    with "X-Q4_K_M.gguf" and "X-UD-Q4_K_M.gguf" gives the same answer every time."""
    matches = match_files(files, pattern)
    if not matches:
        return None
    return min(matches, key=lambda p: (len(_basename(p)), _basename(p).lower(), p))


def _pick_one(files: list[str], pattern: str, repo_id: str) -> str:
    found = _pick(files, pattern)
    if found is None:
        raise ModelFilesError(f"no file in {repo_id} matches {pattern!r}; {_describe(files)}")
    return found


def _describe(files: list[str]) -> str:
    """The repo's .gguf files, so a person sees which quants exist."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
    if not ggufs:
        return "it has no .gguf files (is it a GGUF repo?)"
    listed = ", ".join(ggufs[:_MAX_LISTED])
    more = f" and {len(ggufs) - _MAX_LISTED} more" if len(ggufs) > _MAX_LISTED else ""
    return f"it has: {listed}{more}"


def _local_names(dest_dir: Path) -> list[str]:
    """Complete-looking files directly in dest_dir. Partial downloads live under
    `.cache/vlserve/` as `*.part` (older versions: `.cache/huggingface/download/`, as
    `*.incomplete`), a folder, so skipped; an empty file is never a model (a placeholder, or a
    copy that failed at once)."""
    if not dest_dir.is_dir():
        return []
    out = []
    for p in dest_dir.iterdir():
        if p.name.endswith(".incomplete") or not p.is_file():
            continue
        try:
            if p.stat().st_size > 0:
                out.append(p.name)
        except OSError:  # vanished or unreadable between listing and stat
            continue
    return out


def _list_files(repo_id: str, revision: str | None, dest_dir: Path | None = None) -> list[str]:
    ep = endpoint()
    try:
        info = HfApi(endpoint=ep).model_info(repo_id, revision=revision, expand=["siblings"],
                                             timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except _HUB_ERRORS as err:
        raise _explain(err, ep=ep, repo_id=repo_id, revision=revision, dest_dir=dest_dir,
                       doing=f"listing {repo_id}") from err
    return sorted(s.rfilename for s in info.siblings or [])


def _download(repo_id: str, filename: str, revision: str | None, dest_dir: Path,
              bar: type | None) -> Path:
    """The repo's `filename` as `dest_dir/filename`, downloaded into a `.part` file that outlives
    the process, so that an interrupted download is resumed by the next call.

    Xet: Qwen's GGUF repos are Xet-backed, which `hf_hub_download` would fetch with hf_xet
    (chunk-level dedup, but no partial file another run could pick up). Their resolve URL still
    answers with a redirect to a CDN that serves the plain bytes with Range support, and that is
    what is downloaded here: vlserve trades Xet's dedup for resumability across runs.
    """
    ep = endpoint()
    final = dest_dir / filename
    part = dest_dir / _WORK_DIR / f"{filename}.part"
    sidecar = part.with_name(f"{part.name}.json")
    log.info("fetching %s from %s/%s into %s", filename, ep, repo_id, dest_dir)
    try:
        url = hf_hub_url(repo_id, filename, revision=revision, endpoint=ep)
        part.parent.mkdir(parents=True, exist_ok=True)
        # Two pulls into one folder must not append to one .part. (Where flock does nothing, as on
        # some network filesystems, the size and sha256 checks still catch a garbled file.)
        with WeakFileLock(part.with_name(f"{part.name}.lock")):
            while True:
                meta, headers = _metadata(url, ep)
                if (meta.size is not None and final.is_file()
                        and final.stat().st_size == meta.size):
                    # Done by a pull that held the lock before this one (or, for a file in a
                    # subfolder, which find_local does not look at, by an earlier run).
                    return final
                start = _prepare_part(part, sidecar, meta, filename, repo_id, revision)
                try:
                    _transfer(meta, part, start, headers, filename, bar)
                except HfHubHTTPError as err:
                    # A CDN link is signed and expires: a retry of http_get's after a long
                    # outage can be refused. Ask the Hub for a fresh link, as long as each
                    # round gets further.
                    if _from_elsewhere(err, url) and _size(part) > start:
                        log.info("download link for %s refused (HTTP %s) after %d bytes; "
                                 "asking %s for a new one", filename, err.response.status_code,
                                 _size(part), ep)
                        continue
                    raise
                break
            _finish(part, sidecar, final, meta, filename, repo_id)
    except _HUB_ERRORS as err:
        raise _explain(err, ep=ep, repo_id=repo_id, revision=revision, filename=filename,
                       dest_dir=dest_dir, doing=f"downloading {filename} from {repo_id}") from err
    return final


def _metadata(url: str, ep: str):
    """The file's metadata (a HEAD that follows the Hub's own redirects but not the one to a
    CDN; its `location` is then the CDN link) and the headers for fetching its bytes."""
    meta = get_hf_file_metadata(url, token=None, timeout=constants.HF_HUB_ETAG_TIMEOUT,
                                endpoint=ep)
    # As hf_hub_download: without these, the server is not a Hub (or a proxy mangled it).
    if meta.commit_hash is None:
        raise FileMetadataError(f"the answer for {url} has no X-Repo-Commit header")
    if meta.etag is None:
        raise FileMetadataError(f"the answer for {url} has no ETag")
    headers = build_hf_headers()  # the token of HF_TOKEN / `hf auth login`, if any
    if not _is_same_or_hub_host(url, meta.location):
        headers.pop("authorization", None)  # a signed CDN link: the token stays on the Hub
    return meta, headers


def _prepare_part(part: Path, sidecar: Path, meta, filename: str, repo_id: str,
                  revision: str | None) -> int:
    """How many bytes of the file `part` already holds: those of an earlier run if its sidecar
    says they are of this very file (same ETag and size), else none (the .part is removed)."""
    have = _size(part)
    if have:
        old = _read_json(sidecar)
        same = old.get("etag") == meta.etag and old.get("size") == meta.size
        if not same or (meta.size is not None and have > meta.size):
            log.info("discarding %d bytes of an earlier download of %s: a different version "
                     "of the file (etag %s, now %s)", have, filename, old.get("etag"), meta.etag)
            part.unlink()
            have = 0
    # Written before any byte is appended, so a .part never holds bytes its sidecar does not
    # describe. The commit is for people reading it; the ETag names the content.
    record = {"repo": repo_id, "revision": revision, "filename": filename,
              "commit": meta.commit_hash, "etag": meta.etag, "size": meta.size}
    tmp = sidecar.with_name(f"{sidecar.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, sidecar)
    if have:
        log.info("resuming %s at %d of %s bytes", filename, have,
                 meta.size if meta.size is not None else "?")
    return have


def _transfer(meta, part: Path, start: int, headers: dict, filename: str,
              bar: type | None) -> None:
    """The rest of the file, from byte `start`, appended to `part` by huggingface_hub's
    http_get: `Range: bytes=start-`, its own retries (each one resuming with a Range request)
    and its progress bar, which starts at `start`. If the server ignores the Range (answers 200),
    http_get truncates the file and takes the whole body."""
    if meta.size is not None:
        _warn_if_short_of_space(part.parent, meta.size - start, filename)
    try:
        with _FlushingWriter(io.FileIO(part, "ab")) as f:
            http_get(meta.location, f, resume_size=start, headers=headers,
                     expected_size=meta.size, displayed_filename=filename, tqdm_class=bar)
            os.fsync(f.fileno())  # complete: durable before it is renamed into place
    except OSError as err:
        if meta.size is not None and _size(part) > meta.size:
            part.unlink(missing_ok=True)  # more bytes than the file has: cannot be resumed
        if err.errno is None and str(err).startswith("Consistency check failed"):
            raise ModelFilesError(
                f"downloading {filename} failed: the server sent a different number of bytes "
                f"than the {meta.size} it announced; run it again") from err
        raise


def _finish(part: Path, sidecar: Path, final: Path, meta, filename: str, repo_id: str) -> None:
    """Check the complete .part and move it to `final`; a bad one is deleted."""
    got = _size(part)
    if meta.size is not None and got != meta.size:
        _discard(part, sidecar)
        raise ModelFilesError(f"downloading {filename} from {repo_id} gave {got} bytes, not the "
                              f"{meta.size} announced; the partial file was deleted: run it again")
    etag = meta.etag.lower()
    if _SHA256.match(etag):
        log.info("verifying the sha256 of %s", filename)
        with part.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != etag:
            _discard(part, sidecar)
            raise ModelFilesError(
                f"{filename} from {repo_id} failed its sha256 check (expected {etag}, got "
                f"{digest}), so the download was deleted: run it again; if this repeats, the "
                f"server ({endpoint()}) serves a corrupt file")
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, final)  # same filesystem: dest_dir/.cache/vlserve is inside dest_dir
    sidecar.unlink(missing_ok=True)


class _FlushingWriter(io.BufferedWriter):
    """Hands every write to the OS at once, so the bytes received before a kill or a Ctrl-C are
    in the .part file (http_get writes pieces of constants.DOWNLOAD_CHUNK_SIZE, 10 MiB, as they
    arrive: at most one piece in memory is lost). A flush, not an fsync: what the kernel has
    survives the process; only a machine crash could garble the tail, and then the size and
    sha256 checks delete the file rather than install it."""

    def write(self, data) -> int:
        n = super().write(data)
        self.flush()
        return n


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _discard(part: Path, sidecar: Path) -> None:
    part.unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)


def _warn_if_short_of_space(folder: Path, need: int, filename: str) -> None:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < need:
        log.warning("%s needs %d more bytes but %s has %d free; the download will stop when "
                    "the disk is full (free some space and run it again to resume)",
                    filename, need, folder, free)


def _from_elsewhere(err: HfHubHTTPError, url: str) -> bool:
    """Whether `err` is a refusal from a host that is not the Hub's (a CDN's expired link)."""
    response = getattr(err, "response", None)
    if response is None or response.status_code not in _LINK_EXPIRED:
        return False
    target = _request_url(response)
    return target is not None and not _is_same_or_hub_host(url, target)


def _request_url(response) -> str | None:
    try:
        return str(response.request.url)
    except RuntimeError:  # a response built without its request
        return None

def _offline_message(repo_id: str, model_glob: str, mmproj_glob: str, dest_dir: Path,
                     revision: str | None, have_model: str | None,
                     have_mmproj: str | None) -> str:
    if have_model is None and have_mmproj is None:
        lacks = "the model"
        what = f"a file matching {model_glob!r} and one matching {mmproj_glob!r}"
    elif have_model is None:
        lacks, what = "the model", f"a file matching {model_glob!r}"
    else:
        lacks, what = f"the mmproj for {have_model}", f"a file matching {mmproj_glob!r}"
    rev = f" (revision {revision})" if revision else ""
    put = "both" if have_model is None and have_mmproj is None else "it"
    return (f"offline (HF_HUB_OFFLINE is set) and {dest_dir} lacks {lacks}: download {what} "
            f"from {endpoint()}/{repo_id}{rev} and put {put} in {dest_dir}, "
            f"or unset HF_HUB_OFFLINE")


def _chain(err: BaseException) -> list[BaseException]:
    """err and what caused it, outermost first: huggingface_hub wraps a failed metadata request
    in LocalEntryNotFoundError `from` the real error."""
    out: list[BaseException] = []
    while err is not None and err not in out:
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def _first(chain: list[BaseException], kinds) -> BaseException | None:
    return next((e for e in chain if isinstance(e, kinds)), None)


def _short(err: BaseException) -> str:
    """One line of an error: huggingface_hub's messages run to several paragraphs."""
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return (text or type(err).__name__)[:300]


def _explain(err: BaseException, *, ep: str, repo_id: str, doing: str,
             revision: str | None = None, filename: str | None = None,
             dest_dir: Path | None = None) -> ModelFilesError:
    """A huggingface_hub / transport exception -> a ModelFilesError a person can act on."""
    chain = _chain(err)
    place = f"place the files in {dest_dir} yourself" if dest_dir else "place the files yourself"
    http = _first(chain, HfHubHTTPError)
    if http is not None and getattr(http, "response", None) is not None:
        target = _request_url(http.response)
        if filename is not None and target is not None and not _is_same_or_hub_host(ep, target):
            # The CDN the Hub redirected to, not the Hub: most likely a signed link that expired
            # while http_get was retrying. The next run asks for a new one.
            return ModelFilesError(
                f"{doing} failed: the download server {urlsplit(target).hostname} answered "
                f"HTTP {http.response.status_code} ({_short(http)}); run it again to resume "
                f"where it stopped")
        return ModelFilesError(_http_message(http, ep=ep, repo_id=repo_id, revision=revision,
                                             filename=filename))
    if _first(chain, OfflineModeIsEnabled) is not None:
        # HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) was set when huggingface_hub was imported,
        # and it keeps that setting even if the variable has been unset since.
        return ModelFilesError(
            f"{doing} failed: huggingface_hub is in offline mode (HF_HUB_OFFLINE or "
            f"TRANSFORMERS_OFFLINE was set when the process started); restart without it, or "
            f"{place}")
    net = _first(chain, (httpx2.TransportError, httpx2.InvalidURL))
    if net is not None:
        if filename is not None and isinstance(net, (httpx2.ReadError, httpx2.RemoteProtocolError,
                                                     httpx2.ReadTimeout)):
            return ModelFilesError(
                f"{doing} was interrupted ({_short(net)}) after huggingface_hub's own retries; "
                f"run it again to resume where it stopped")
        return ModelFilesError(
            f"could not reach {ep} while {doing} ({_short(net)}): check the network, set "
            f"HF_ENDPOINT for a mirror, or set HF_HUB_OFFLINE=1 and {place}")
    meta = _first(chain, FileMetadataError)
    if meta is not None:
        return ModelFilesError(
            f"{ep} does not answer like a Hugging Face Hub while {doing} ({_short(meta)}); "
            f"if HF_ENDPOINT is set, check that it points at a Hub mirror")
    if _first(chain, HFValidationError) is not None:
        return ModelFilesError(f"invalid repo id {repo_id!r}: expected owner/name, "
                               f"as in {ep}/Qwen/Qwen3-VL-8B-Instruct-GGUF")
    if filename is not None and _first(chain, OSError) is not None:
        return ModelFilesError(f"{doing} failed: {_short(_first(chain, OSError))} "
                               f"(disk full, or {dest_dir} not writable?)")
    return ModelFilesError(f"{doing} at {ep} failed: {type(err).__name__}: {_short(err)}")


def _http_message(err: HfHubHTTPError, *, ep: str, repo_id: str, revision: str | None,
                  filename: str | None) -> str:
    status = err.response.status_code
    code = err.response.headers.get("X-Error-Code")
    page = f"{ep}/{repo_id}"
    if status in (401, 403) or isinstance(err, GatedRepoError):
        # The Hub answers 401 both for a gated/private repo without a (valid) token and for a
        # repo that does not exist, when the request carries no token.
        return (f"{ep} refused access to {repo_id} (HTTP {status}): it is gated or private, "
                f"the token is invalid, or the repo does not exist. Check the name; for a gated "
                f"repo accept its terms at {page} and set HF_TOKEN to a read token of that "
                f"account (or run `hf auth login`)")
    if code == "RevisionNotFound" or isinstance(err, RevisionNotFoundError):
        return f"{repo_id} has no revision {revision or 'main'!r} at {ep} (see {page})"
    if code == "EntryNotFound" or isinstance(err, RemoteEntryNotFoundError):
        return f"{filename} is not in {repo_id} at {ep} (anymore?); see {page}"
    if status == 404:
        return (f"repo {repo_id} not found at {ep} (HTTP 404): check the name (owner/name, as in "
                f"{page}); a private repo also needs HF_TOKEN")
    return (f"{ep} answered HTTP {status} for {repo_id}"
            f"{f' ({filename})' if filename else ''}: {_short(err)}; try again later")

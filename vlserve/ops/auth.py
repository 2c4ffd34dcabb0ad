"""API keys with scopes: who may chat, who may load models, who may read metrics.

Keys come from `--api-key` (every scope) and `--api-key-file` (lines `NAME:KEY[:SCOPES]`).
Only their SHA-256 digests are kept in memory, and a presented key is compared with every
digest in constant time, so neither a memory dump nor response timing gives a key away.
With no key configured the server is open (the default bind is loopback only).

The page, its files and /health stay open: a browser must load the page to be asked for a
key, and a load balancer must see health without one.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, g, request

from ..errors import APIError, AuthenticationError

SCOPES = ("chat", "admin", "metrics")
DEFAULT_SCOPES = frozenset({"chat"})
OPEN_ENDPOINTS = {"api.health", "openapi.document", "webui.page", "webui.docs", "webui.static"}
# What each blueprint's routes need; a route of no listed blueprint needs "admin".
BLUEPRINT_SCOPES = {"api": "chat", "admin": "admin", "metrics": "metrics"}


class PermissionDeniedError(APIError):
    status = 403
    type = "permission_error"
    code = "insufficient_scope"


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the line, never a key."""


@dataclass(frozen=True)
class Key:
    name: str
    digest: bytes = b""
    scopes: frozenset[str] = DEFAULT_SCOPES

    def __repr__(self) -> str:  # never print even the digest
        return f"Key({self.name!r}, scopes={sorted(self.scopes)})"


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class KeyRing:
    def __init__(self, keys: list[Key]):
        self._keys = tuple(keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, presented: str) -> Key | None:
        """The key whose secret this is, or None; looks at every key whatever matches."""
        digest, found = _digest(presented), None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


def load_keys(api_keys: tuple[str, ...] = (), key_file: str | None = None) -> KeyRing:
    keys = [Key(f"key{i + 1}" if len(api_keys) > 1 else "cli", _digest(k), frozenset(SCOPES))
            for i, k in enumerate(api_keys) if k]
    if key_file:
        keys += parse_key_file(Path(key_file))
    return KeyRing(keys)


def parse_key_file(path: Path) -> list[Key]:
    """`NAME:KEY[:SCOPES]` per line, scopes comma-separated (default chat); blank lines and
    lines starting with # are skipped."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the API key file {path}: {exc}") from None
    keys, names = [], set()
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keys.append(_parse_line(line, f"{path}:{n}"))
        if keys[-1].name in names:
            raise KeyFileError(f"{path}:{n}: the key name {keys[-1].name!r} is used twice")
        names.add(keys[-1].name)
    return keys


def _parse_line(line: str, where: str) -> Key:
    parts = line.split(":")
    if len(parts) not in (2, 3) or not parts[0].strip() or not parts[1].strip():
        raise KeyFileError(f"{where}: expected NAME:KEY or NAME:KEY:SCOPES")
    name, secret = parts[0].strip(), parts[1].strip()
    if len(secret) < 8:
        raise KeyFileError(f"{where}: the key of {name!r} is shorter than 8 characters")
    scopes = frozenset(s.strip() for s in parts[2].split(",") if s.strip()) \
        if len(parts) == 3 else DEFAULT_SCOPES
    unknown = scopes - set(SCOPES)
    if unknown or not scopes:
        raise KeyFileError(f"{where}: unknown scopes {sorted(unknown)} for {name!r}; "
                           f"use some of {', '.join(SCOPES)}")
    return Key(name, _digest(secret), scopes)


def presented_key() -> str | None:
    """`Authorization: Bearer KEY` (what the OpenAI SDK sends) or `x-api-key: KEY`."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.headers.get("x-api-key") or None


def scopes() -> frozenset[str]:
    """The scopes of this request's key; every scope when the server has no keys."""
    granted = g.get("key_scopes")
    return frozenset(SCOPES) if granted is None else granted


def may(scope: str) -> bool:
    """Whether this request may do what `scope` guards (beyond its route's own scope)."""
    return scope in scopes()


def required_scope() -> str | None:
    """The scope the matched route needs; None for open routes and CORS preflights."""
    if request.method == "OPTIONS" or request.endpoint in OPEN_ENDPOINTS:
        return None
    if request.endpoint is None:  # no such route: let the 404 answer
        return None
    return BLUEPRINT_SCOPES.get(request.blueprint or "", "admin")


def init_app(app: Flask, keys: KeyRing) -> None:
    @app.before_request
    def authenticate():
        g.key_name = None
        g.key_scopes = None   # None: no keys configured, everything is allowed
        scope = required_scope()
        if not keys or scope is None:
            return
        secret = presented_key()
        key = keys.check(secret) if secret else None
        if key is None:
            error = AuthenticationError(
                "a valid API key is required: send it as 'Authorization: Bearer KEY'"
                if secret is None else "this API key is not valid")
            error.headers = {"WWW-Authenticate": 'Bearer realm="vlserve"'}
            raise error
        g.key_name, g.key_scopes = key.name, key.scopes
        g.log["key"] = key.name   # an operator's label, never the key itself
        if scope not in key.scopes:
            raise PermissionDeniedError(
                f"the key {key.name!r} may not use this endpoint (it needs the {scope!r} "
                f"scope; the key has {', '.join(sorted(key.scopes))})")

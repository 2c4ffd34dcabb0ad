"""The audit log (`--audit-log FILE`): one JSON object per line for every API request (/v1/…
and /admin/…): who (key name, client address), what (route, model, image hashes and sizes,
token counts), how it went (status, finish reason, timings). Never prompt text, images or
answers unless `--log-content`. docs/audit-log.md documents every field.

Lines go through their own logger, `vlserve.audit`, which does not propagate: they never
reach the console log. The RotatingFileHandler's lock serializes the request threads'
writes and the rotation; one gunicorn worker process writes the file, so no other process
rotates it underneath.

With `--log-content`, the chat answer (web.answer) puts
`content(req, images, answer, reasoning)` into the request's record as "content":

    {"messages": [{"role": "user", "content": [{"type": "text", "text": "…"},
                                               {"type": "image", "sha256": "…"}]}],
     "answer": "…", "reasoning": "…" or None}

the messages as the client sent them, each image replaced by its sha256 (as in "images").
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from logging.handlers import RotatingFileHandler
from pathlib import Path

from flask import Flask

from ..chat.protocol import ChatRequest, TextPart

logger = logging.getLogger("vlserve.audit")
logger.propagate = False          # audit lines stay out of the console log
logger.setLevel(logging.INFO)

# API paths only: the page's files, /health and /metrics are polled and would drown the
# requests that matter.
AUDITED_PREFIXES = ("/v1/", "/admin/")
# Copied from the request's record as they are (null when the request has none).
RECORD_FIELDS = ("key", "client", "method", "route", "status", "duration_ms", "model",
                 "backend", "stream", "images", "prompt_tokens", "completion_tokens",
                 "cached_tokens", "image_tokens", "finish_reason", "response_cache")
IMAGE_FIELDS = ("sha256", "bytes", "width", "height")
TIMING_FIELDS = ("ttft_ms", "prompt_ms", "predicted_ms", "decode_tokens_per_s",
                 "image_encode_ms")


class AuditLog:
    def __init__(self, path: str, *, max_bytes: int, backups: int, log_content: bool):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Opened now, not on the first request: an unwritable path stops the start.
        self.handler = RotatingFileHandler(path, maxBytes=max(1, max_bytes),
                                           backupCount=backups, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(message)s"))
        # Several apps in one process (tests) share the logger; each file gets its own lines.
        self.handler.addFilter(lambda rec: getattr(rec, "audit_log", None) is self)
        self.log_content = log_content
        logger.addHandler(self.handler)

    def observe(self, record: dict) -> None:
        if not (record.get("path") or "").startswith(AUDITED_PREFIXES):
            return
        # ASCII JSON: a lone surrogate from a client's JSON cannot make the write fail.
        line = json.dumps(entry(record, self.log_content), separators=(",", ":"))
        logger.info("%s", line, extra={"audit_log": self})

    def close(self) -> None:
        logger.removeHandler(self.handler)
        self.handler.close()


def entry(record: dict, log_content: bool = False) -> dict:
    """A request's record -> its audit line (as a dict)."""
    line = {"time": _iso(record.get("time"))}
    line.update((name, record.get(name)) for name in RECORD_FIELDS)
    if line["images"] is not None:
        line["images"] = [{k: image.get(k) for k in IMAGE_FIELDS} for image in line["images"]]
    line["cancelled"] = bool(record.get("cancelled"))
    timings = record.get("timings")
    line["timings"] = ({k: timings.get(k) for k in TIMING_FIELDS}
                       if isinstance(timings, dict) else None)
    if log_content:
        found = record.get("content") or {}
        line.update(messages=_scrub(found.get("messages")), answer=found.get("answer"),
                    reasoning=found.get("reasoning"))
    return line


def _iso(epoch: float | None) -> str:
    when = datetime.now(timezone.utc) if epoch is None else \
        datetime.fromtimestamp(epoch, timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _scrub(value):
    """Any data: URL left in the messages becomes a placeholder: even with content logging,
    the file must not grow by whole images (content() already puts hashes in their place)."""
    if isinstance(value, str) and value.startswith("data:") and ";base64," in value[:100]:
        return "[data URL omitted]"
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    return value


def content(req: ChatRequest, images: dict, answer: str | None, reasoning: str | None = None,
            tool_calls: list[dict] | None = None) -> dict:
    """What `--log-content` adds to the record: the messages as sent, each image replaced
    by its sha256 (`images` maps the request's ImageParts to their PreparedImages), and the
    answer (its tool calls included)."""
    def part(p) -> dict:
        if isinstance(p, TextPart):
            return {"type": "text", "text": p.text}
        image = images.get(p)
        return {"type": "image", "sha256": image.sha256 if image is not None else None}

    def message(m) -> dict:
        out = {"role": m.role, "content": [part(p) for p in m.parts]}
        if m.tool_calls:
            out["tool_calls"] = [c.template_dict() for c in m.tool_calls]
        if m.tool_call_id is not None:
            out["tool_call_id"] = m.tool_call_id
        return out
    record = {"messages": [message(m) for m in req.messages], "answer": answer,
              "reasoning": reasoning or None}
    if tool_calls:
        record["tool_calls"] = tool_calls
    return record


def init_app(app: Flask, settings) -> AuditLog | None:
    """Write the audit log when `settings.audit_log` names a file; a second call on the
    same app returns what the first made."""
    state = app.extensions["vlserve"]
    if not settings.audit_log:
        return None
    if "audit" not in state:
        state["audit"] = audit = AuditLog(
            settings.audit_log, max_bytes=int(settings.audit_max_mb * 1024 * 1024),
            backups=settings.audit_backups, log_content=settings.log_content)
        state["observers"].append(audit.observe)
    return state["audit"]

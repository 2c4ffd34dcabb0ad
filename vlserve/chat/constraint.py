"""`response_format`: what the answer must be, compiled before the request is queued.

`{"type": "json_object"}` and `{"type": "json_schema", "json_schema": {"name", "schema",
"strict"}}` become a `Constraint`: an llguidance grammar (JSON, compact: no whitespace between
tokens, so a model cannot wander in blank space) that the engine applies to every token of
the answer (`engine.guide`). A schema llguidance cannot compile is a 400 that names the part
refused; so is, with `strict: true`, a keyword it does not implement. Without `strict` (false
by default, as in OpenAI's API) such keywords are ignored: the answer is still JSON, valid
for every keyword that is enforced.

Why llguidance: measured on the real 151,936-token Qwen vocabulary, its token mask costs about
0.2 ms per token where llama.cpp's own grammar sampler costs about 20 ms (docs/benchmarks.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import llguidance

from .fields import Field, bad

TYPES = ("text", "json_object", "json_schema")
# No whitespace between JSON tokens: a model cannot loop on blanks, and the answer is the
# same JSON a program would write.
COMPACT = {"whitespace_flexible": False}
MAX_SCHEMA_BYTES = 256 * 1024


@dataclass(frozen=True)
class Constraint:
    """A compiled answer format: `grammar` is llguidance's (JSON text), `name` what the
    client called it (for logs), `param` the request field it came from (for errors).
    `start`: the grammar holds the answer from its first token (`now`), or from the moment
    the model opens a tool call (`trigger`: tool_choice auto); `never`: there is no
    grammar, and no tool call may open (tool_choice none)."""
    grammar: str | None
    name: str
    param: str = "response_format"
    start: str = "now"


def compile_schema(schema: Any, *, strict: bool, name: str, param: str) -> Constraint:
    """A JSON schema as a Constraint, or a 400 naming what llguidance refused."""
    if not isinstance(schema, dict):
        raise bad("the schema must be a JSON object", param)
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise bad(f"the schema is larger than {MAX_SCHEMA_BYTES // 1024} KiB", param)
    options = {**COMPACT, "lenient": not strict}
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=options)
    except ValueError as exc:
        raise bad(f"the schema cannot be compiled: {exc}", param) from None
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if failed:
        hint = " (set strict to false to ignore unimplemented keywords)" \
            if strict and "Unimplemented" in messages[0] else ""
        raise bad(f"the schema cannot be enforced: {messages[0]}{hint}", param)
    return Constraint(grammar, name)


def parse_response_format(value: Any) -> Constraint | None:
    """The request's `response_format`: None for text (or absent), else a Constraint."""
    if value is None:
        return None
    param = "response_format"
    if not isinstance(value, dict):
        raise bad("response_format must be an object with a 'type'", param)
    kind = value.get("type")
    if kind not in TYPES:
        raise bad(f"response_format type must be one of {', '.join(TYPES)}; got {kind!r}",
                  f"{param}.type")
    if kind == "text":
        return None
    if kind == "json_object":
        return compile_schema({"type": "object"}, strict=True, name="json_object", param=param)
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise bad("json_schema must be an object with 'name' and 'schema'",
                  f"{param}.json_schema")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise bad("json_schema needs a non-empty string 'name'", f"{param}.json_schema.name")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise bad("strict must be true or false", f"{param}.json_schema.strict")
    schema = spec.get("schema", {})
    return compile_schema(schema, strict=strict is True, name=name,
                          param=f"{param}.json_schema.schema")


@dataclass(frozen=True)
class ResponseFormat(Field):
    """The `response_format` field (parsed by `parse_response_format`)."""

    def read(self, body: dict) -> Constraint | None:
        return parse_response_format(body.get(self.name))

    def schema(self) -> dict:
        string = {"type": "string"}
        return self._described({"type": ["object", "null"], "required": ["type"],
                                "properties": {
            "type": {"enum": list(TYPES)},
            "json_schema": {"type": "object", "required": ["name"], "properties": {
                "name": string, "description": string,
                "schema": {"type": "object", "description": "A JSON Schema (objects, arrays, "
                           "enums, required, additionalProperties, pattern, format, $defs/$ref, "
                           "anyOf, min/max lengths and items)."},
                "strict": {"type": ["boolean", "null"], "description": "True: a keyword that "
                           "cannot be enforced is a 400. False (default): it is ignored."}}}}})

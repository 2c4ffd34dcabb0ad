"""A request's fields, each declared once: a declaration reads its field from an untrusted
JSON body (the check, the conversion, the error that names the field) and describes itself
as JSON Schema (type, range or choices, default, description).

`protocol` declares the chat request's fields with these and parses with them; the OpenAPI
document (`web.openapi`) publishes the same declarations' schemas, so the parser and the
document cannot disagree about a type, a limit or a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequestError


def bad(message: str, param: str | None) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def text(value: str, param: str) -> str:
    """JSON may carry lone UTF-16 surrogates (\\ud800) that no tokenizer can encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad("the text is not valid Unicode (it has a lone surrogate)", param) from None
    return value


def nullable(schema: dict) -> dict:
    """`schema` or null (3.1 style: a type list), for fields where null means the default."""
    out = dict(schema)
    kind = out.get("type")
    out["type"] = [kind, "null"] if isinstance(kind, str) else [*kind, "null"]
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


def object_schema(properties: dict, required: list[str] | None = None, **more) -> dict:
    """An object's JSON Schema; `required` None: every property is."""
    return {"type": "object", "required": list(properties) if required is None else required,
            "properties": properties, **more}


def _plain(number: float) -> float:
    """A limit as JSON Schema shows it: 2, not 2.0 (the same number to a validator)."""
    return int(number) if isinstance(number, float) and number.is_integer() else number


@dataclass(frozen=True)
class Field:
    """A top-level field of a request body, by `name`."""
    name: str
    description: str = field(default="", kw_only=True)

    def read(self, body: dict) -> Any:
        raise NotImplementedError

    def schema(self) -> dict:
        raise NotImplementedError

    def _described(self, schema: dict) -> dict:
        return {**schema, "description": self.description} if self.description else schema


@dataclass(frozen=True)
class Number(Field):
    """A number within [lo, hi]; absent or null: `default`. `hi` None: the caller gives it
    (a server setting), and the schema shows no maximum. Bools are not numbers (though
    Python says so); an integer field takes no fraction (8, not 8.0)."""
    lo: float
    hi: float | None
    default: float | None = None
    integer: bool = field(default=False, kw_only=True)

    def read(self, body: dict, *, hi: float | None = None):
        value = body.get(self.name)
        if value is None:
            return self.default
        kinds = (int,) if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            kind = "an integer" if self.integer else "a number"
            raise bad(f"'{self.name}' must be {kind}, got {type(value).__name__}", self.name)
        hi = self.hi if hi is None else hi
        if not self.lo <= value <= hi:
            raise bad(f"'{self.name}' must be between {self.lo} and {hi}, got {value}",
                      self.name)
        return value

    def schema(self) -> dict:
        out = {"type": "integer" if self.integer else "number", "minimum": _plain(self.lo)}
        if self.hi is not None:
            out["maximum"] = _plain(self.hi)
        if self.default is not None:
            out["default"] = _plain(self.default)
        return nullable(self._described(out))


@dataclass(frozen=True)
class DefaultOnly(Number):
    """A number the API defines a range of, of which this server supports only the default
    (`n`): any other valid value is refused as unsupported."""

    def read(self, body: dict, *, hi: float | None = None):
        value = super().read(body, hi=hi)
        if value != self.default:
            raise bad(f"only {self.name}={self.default} is supported", self.name)
        return value

    def schema(self) -> dict:
        return {**super().schema(), "minimum": self.default, "maximum": self.default}


@dataclass(frozen=True)
class Flag(Field):
    """A boolean, strictly: null is not false here, and absent is `default`."""
    default: bool = False

    def read(self, body: dict) -> bool:
        value = body.get(self.name, self.default)
        if not isinstance(value, bool):
            raise bad(f"'{self.name}' must be a boolean", self.name)
        return value

    def schema(self) -> dict:
        return self._described({"type": "boolean", "default": self.default})


@dataclass(frozen=True)
class Choice(Field):
    """One of `choices` (a name -> its meaning, which `read` returns); absent, null or
    empty: `default`."""
    choices: dict[str, Any]
    default: str

    def read(self, body: dict) -> Any:
        value = body.get(self.name) or self.default
        if not isinstance(value, str) or value not in self.choices:
            raise bad(f"'{self.name}' must be one of {', '.join(self.choices)}", self.name)
        return self.choices[value]

    def schema(self) -> dict:
        return nullable(self._described({"type": "string", "enum": sorted(self.choices),
                                         "default": self.default}))


@dataclass(frozen=True)
class Text(Field):
    """A string (valid Unicode), or absent or null: None."""

    def read(self, body: dict) -> str | None:
        value = body.get(self.name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise bad(f"'{self.name}' must be a string", self.name)
        return text(value, self.name)

    def schema(self) -> dict:
        return nullable(self._described({"type": "string"}))


@dataclass(frozen=True)
class Texts(Field):
    """A non-empty string or a list of up to `most` of them; absent or null: none."""
    most: int

    def read(self, body: dict) -> tuple[str, ...]:
        value = body.get(self.name)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if (not isinstance(value, list) or len(value) > self.most
                or not all(isinstance(s, str) and s for s in value)):
            raise bad(f"'{self.name}' must be a non-empty string or a list of up to "
                      f"{self.most} non-empty strings", self.name)
        return tuple(text(s, self.name) for s in value)

    def schema(self) -> dict:
        one = {"type": "string", "minLength": 1}
        return self._described({"oneOf": [one, {"type": "array", "maxItems": self.most,
                                                "items": dict(one)}, {"type": "null"}]})


@dataclass(frozen=True)
class Options(Field):
    """An object of boolean options (name -> description), each true or false (absent or
    null: false); the object absent or null: all false. Other keys are left to other
    servers (OpenAI adds options over time)."""
    options: dict[str, str]

    def read(self, body: dict) -> dict[str, bool]:
        value = body.get(self.name)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise bad(f"'{self.name}' must be an object", self.name)
        for name in self.options:
            if value.get(name) is not None and not isinstance(value[name], bool):
                raise bad(f"'{self.name}.{name}' must be true or false", f"{self.name}.{name}")
        return {name: bool(value.get(name)) for name in self.options}

    def schema(self) -> dict:
        return nullable(self._described({"type": "object", "properties": {
            name: {"type": "boolean", "default": False, "description": doc}
            for name, doc in self.options.items()}}))

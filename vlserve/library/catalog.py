"""The models vlserve knows by name (catalog.toml + the user's models/catalog.toml), how much
memory each needs, and which one fits this machine. Pure data and arithmetic: downloading
is hub.py's, what is on disk is disk.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import tomllib

from .cpuspeed import CPU, largest_usable

GB = 10**9
USER_CATALOG = "catalog.toml"      # in the models directory
# Compute buffers, the CUDA/Metal context and llama.cpp's own allocations: measured around
# 0.4-0.9 GB for 2B-8B models at 16k context; 1 GB keeps the estimate on the safe side.
OVERHEAD_BYTES = 1 * GB


class CatalogError(ValueError):
    """A catalog file is malformed, or a name matches no entry."""


@dataclass(frozen=True)
class Entry:
    id: str
    repo: str
    params_b: float
    ctx: int
    layers: int
    kv_heads: int
    head_dim: int
    size_gb: dict[str, float]
    mmproj_gb: dict[str, float]
    thinking: bool = False
    aliases: tuple[str, ...] = ()
    model_pattern: str = "*{quant}*.gguf"
    mmproj_pattern: str = "mmproj*{mmproj}*.gguf"

    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)

    def globs(self, quant: str, mmproj: str) -> tuple[str, str]:
        return (self.model_pattern.format(quant=quant),
                self.mmproj_pattern.format(mmproj=mmproj))

    def dirname(self) -> str:
        """Where its files go under the models directory: the repo's name."""
        return self.repo.rsplit("/", 1)[-1]

    def kv_bytes(self, n_ctx: int) -> int:
        """An f16 K and V cache for every layer at n_ctx tokens."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 2 * n_ctx

    def weight_bytes(self, quant: str) -> int:
        """The language model's file (what decoding reads per token); unknown quants: F16."""
        return int(self.size_gb.get(quant, self.size_gb.get("F16", 0.0)) * GB)

    def memory_needed(self, quant: str, mmproj: str, n_ctx: int | None = None) -> int:
        """Bytes to run it with every layer on one device; unknown quants count as F16."""
        proj = self.mmproj_gb.get(mmproj, max(self.mmproj_gb.values(), default=0.0))
        return (self.weight_bytes(quant) + int(proj * GB) + self.kv_bytes(n_ctx or self.ctx)
                + OVERHEAD_BYTES)


@dataclass(frozen=True)
class Catalog:
    entries: tuple[Entry, ...]
    quant: str = "Q4_K_M"
    mmproj: str = "F16"
    sources: tuple[str, ...] = field(default=())

    def find(self, name: str) -> Entry | None:
        key = name.strip().lower()
        return next((e for e in self.entries if key in (n.lower() for n in e.names())), None)

    def get(self, name: str) -> Entry:
        entry = self.find(name)
        if entry is None:
            known = ", ".join(e.aliases[0] if e.aliases else e.id for e in self.entries)
            raise CatalogError(f"no catalog model is called {name!r}; known: {known}")
        return entry

    def fitting(self, budget_bytes: int, *, quant: str | None = None,
                thinking: bool = False) -> tuple[list[Entry], list[Entry]]:
        """(the models of the kind asked for, those whose needs fit the budget), each
        smallest first."""
        quant = quant or self.quant
        kind = sorted((e for e in self.entries if e.thinking == thinking),
                      key=lambda e: e.memory_needed(quant, self.mmproj))
        if not kind:
            raise CatalogError("the catalog has no model of that kind")
        return kind, [e for e in kind if e.memory_needed(quant, self.mmproj) <= budget_bytes]

    def choose(self, budget_bytes: int, *, quant: str | None = None, thinking: bool = False,
               cpu: CPU | None = None) -> tuple[Entry, bool]:
        """The largest model of the kind asked for whose needs fit the budget — on a CPU
        (`cpu`), the largest of those whose estimated decode speed is usable — and whether
        any fits (when none does: the smallest, False — the caller warns)."""
        quant = quant or self.quant
        kind, fitting = self.fitting(budget_bytes, quant=quant, thinking=thinking)
        if not fitting:
            return kind[0], False
        if cpu is None:
            return fitting[-1], True
        pick = largest_usable([(e.id, e.weight_bytes(quant)) for e in fitting], cpu)
        return self.get(pick), True


def load(models_dir: Path | None = None) -> Catalog:
    """The built-in catalog, with the entries of `<models_dir>/catalog.toml` added on top
    (same id = replaced) and its [defaults] taking precedence."""
    base = tomllib.loads(resources.files(__package__).joinpath("catalog.toml").read_text())
    sources, defaults = ["built-in"], dict(base.get("defaults", {}))
    entries = {e["id"]: e for e in base.get("model", [])}
    user = models_dir / USER_CATALOG if models_dir else None
    if user and user.is_file():
        try:
            extra = tomllib.loads(user.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise CatalogError(f"{user} is not valid TOML: {exc}") from None
        defaults.update(extra.get("defaults", {}))
        entries.update({e.get("id"): e for e in extra.get("model", [])})
        sources.append(str(user))
    return Catalog(tuple(_entry(raw, defaults, sources[-1]) for raw in entries.values()),
                   quant=defaults.get("quant", "Q4_K_M"), mmproj=defaults.get("mmproj", "F16"),
                   sources=tuple(sources))


def _entry(raw: dict, defaults: dict, source: str) -> Entry:
    try:
        return Entry(
            id=str(raw["id"]), repo=str(raw["repo"]), params_b=float(raw["params_b"]),
            ctx=int(raw.get("ctx", 8192)), layers=int(raw["layers"]),
            kv_heads=int(raw["kv_heads"]), head_dim=int(raw.get("head_dim", 128)),
            size_gb={str(k): float(v) for k, v in raw.get("size_gb", {}).items()},
            mmproj_gb={str(k): float(v) for k, v in raw.get("mmproj_gb", {}).items()},
            thinking=bool(raw.get("thinking", False)),
            aliases=tuple(str(a) for a in raw.get("aliases", ())),
            model_pattern=str(raw.get("model_pattern", defaults.get("model_pattern",
                                                                     "*{quant}*.gguf"))),
            mmproj_pattern=str(raw.get("mmproj_pattern", defaults.get(
                "mmproj_pattern", "mmproj*{mmproj}*.gguf"))))
    except (KeyError, TypeError, ValueError) as exc:
        raise CatalogError(f"catalog entry {raw.get('id')!r} in {source} is incomplete or "
                           f"malformed ({type(exc).__name__}: {exc}); needs id, repo, "
                           "params_b, layers, kv_heads") from None

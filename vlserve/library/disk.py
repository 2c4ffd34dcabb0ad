"""What is on disk: every GGUF + mmproj pair under the models directory, paired by name and
checked by shape, and the lookup from a name a person types to a pair of files.

Only GGUF headers are read (ggufmeta: milliseconds even for a multi-GB model), cached by
size and mtime.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .catalog import Catalog, Entry
from .ggufmeta import read_header

log = logging.getLogger("vlserve.library")

# Quant and precision tags in file names: ignored when pairing a model with its mmproj.
_QUANT_TAG = re.compile(r"^(i?q\d(_[0-9a-z]+)*|f16|f32|bf16|fp16|fp32|mxfp4)$")
_SEPARATORS = re.compile(r"[-_.\s]+")


class PairingError(ValueError):
    """A model and a projector that cannot work together; the message names both files."""


@dataclass(frozen=True)
class GGUFInfo:
    kind: str                # "model" | "mmproj"
    arch: str
    width: int | None        # text: embedding width; mmproj: projection output width
    name: str | None         # general.name
    template: str | None     # text models: tokenizer.chat_template


@dataclass(frozen=True)
class LocalModel:
    id: str
    model: Path
    mmproj: Path
    entry: Entry | None      # the catalog entry it was pulled for, if any

    @property
    def size_bytes(self) -> int:
        return self.model.stat().st_size + self.mmproj.stat().st_size

    @property
    def weight_bytes(self) -> int:
        """The language model's file: what decoding reads per token."""
        return self.model.stat().st_size

    @property
    def thinking(self) -> bool:
        if self.entry is not None:
            return self.entry.thinking
        return "thinking" in self.model.name.lower()


def read_info(path: Path) -> GGUFInfo:
    stat = path.stat()
    return _read_info(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _read_info(path: str, size: int, mtime: int) -> GGUFInfo:
    try:
        fields, _ = read_header(path)
    except Exception as exc:  # bad magic, truncated, unknown types, unreadable…
        raise PairingError(f"{Path(path).name} is not a readable GGUF file ({exc})") from None
    value = fields.get

    arch = value("general.architecture") or "?"
    if arch == "clip" or value("general.type") == "mmproj":
        return GGUFInfo("mmproj", arch, value("clip.vision.projection_dim"), value("general.name"),
                        None)
    return GGUFInfo("model", arch, value(f"{arch}.embedding_length"), value("general.name"),
                    value("tokenizer.chat_template"))


def check_pair(model: Path, mmproj: Path) -> None:
    """Refuse a swapped or mismatched pair before llama.cpp sees it (it would fail with a
    width mismatch deep in its log, or worse)."""
    m, p = read_info(model), read_info(mmproj)
    if m.kind == "mmproj":
        raise PairingError(f"{model.name} is a vision projector (mmproj), not a text model: "
                           "pass it as --mmproj and the model GGUF as --model")
    if p.kind != "mmproj":
        raise PairingError(f"{mmproj.name} is a text model, not a vision projector (mmproj): "
                           f"use the mmproj-*.gguf file that comes with {model.name}")
    if m.width and p.width and m.width != p.width:
        raise PairingError(
            f"{mmproj.name} does not belong to {model.name}: the projector outputs "
            f"{p.width}-wide embeddings but the model's embedding width is {m.width}. Use the "
            "mmproj file from the same Hugging Face repository as the model.")


def name_tokens(path: Path) -> list[str]:
    """A file name's words without extension, 'mmproj' and quant tags, for pairing."""
    words = _SEPARATORS.split(path.stem.lower())
    return [w for w in words if w and w != "mmproj" and not _QUANT_TAG.match(w)]


def _affinity(model: Path, mmproj: Path) -> int:
    """How alike two names are: the length of their common word prefix, then shared words."""
    a, b = name_tokens(model), name_tokens(mmproj)
    prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return prefix * 100 + len(set(a) & set(b))


def pair_directory(files: list[Path]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Pair the text models in one directory with its projectors: only projectors of the
    right width qualify; among those the most alike name wins (several quants of one model
    share one mmproj). Returns the pairs and a note for each model left without one."""
    infos = {}
    for f in files:
        try:
            infos[f] = read_info(f)
        except PairingError as exc:
            log.warning("skipping %s", exc)
    projectors = [f for f, i in infos.items() if i.kind == "mmproj"]
    pairs, notes = [], []
    for model in sorted(f for f, i in infos.items() if i.kind == "model"):
        width = infos[model].width
        fitting = [p for p in projectors if not width or infos[p].width in (None, width)]
        if not fitting:
            notes.append(f"{model}: no mmproj with embedding width {width} next to it")
            continue
        pairs.append((model, max(fitting, key=lambda p: (_affinity(model, p), p.name))))
    return pairs, notes


def discover(models_dir: Path, catalog: Catalog | None = None,
             aliases: dict[Path, str] | None = None) -> tuple[list[LocalModel], list[str]]:
    """Every servable pair under `models_dir` (recursively; download caches skipped).
    Ids are file stems unless `aliases` names a model file; duplicates get the folder name."""
    by_dir: dict[Path, list[Path]] = {}
    for f in sorted(Path(models_dir).rglob("*.gguf")) if Path(models_dir).is_dir() else []:
        if ".cache" not in f.relative_to(models_dir).parts:
            by_dir.setdefault(f.parent, []).append(f)
    found, notes, seen = [], [], set()
    for folder, files in by_dir.items():
        pairs, dir_notes = pair_directory(files)
        notes += dir_notes
        for model, mmproj in pairs:
            mid = (aliases or {}).get(model.resolve()) or model.stem
            if mid in seen:
                mid = f"{folder.name}/{mid}"
            seen.add(mid)
            found.append(LocalModel(mid, model, mmproj, _entry_for(folder, catalog)))
    return found, notes


def _entry_for(folder: Path, catalog: Catalog | None) -> Entry | None:
    if catalog is None:
        return None
    return next((e for e in catalog.entries if e.dirname().lower() == folder.name.lower()),
                None)


def resolve(name: str, models: list[LocalModel], catalog: Catalog | None = None,
            quant: str | None = None) -> LocalModel | None:
    """The local model a name means: its id (case-insensitive), else its file name, else a
    catalog name/alias whose files are on disk (the preferred quant first). Ids first: a
    model dropped in under another's file name (the demo's, say) is still its own model.
    Never a path: clients send these names, and a name is only ever compared, never opened."""
    key = name.strip()
    by_id = (m for m in models if key.lower() == m.id.lower())
    by_file = (m for m in models if key.lower() in (m.model.name.lower(), m.model.stem.lower()))
    found = next(by_id, None) or next(by_file, None)
    if found is not None:
        return found
    entry = catalog.find(key) if catalog else None
    if entry is None:
        return None
    mine = [m for m in models if m.entry == entry]
    want = (quant or catalog.quant).lower()
    return next((m for m in mine if want in m.model.name.lower()), mine[0] if mine else None)


class Library:
    """The models a running server can switch between: the one it was started with (even
    outside the models directory) and every pair found under the models directory,
    rescanned on each call so files dropped in while it runs appear."""

    def __init__(self, models_dir: Path, catalog: Catalog | None = None,
                 pinned: LocalModel | None = None, quant: str | None = None):
        self.models_dir = Path(models_dir)
        self.catalog = catalog
        self.pinned = pinned
        self.quant = quant

    def models(self) -> list[LocalModel]:
        aliases = {self.pinned.model.resolve(): self.pinned.id} if self.pinned else {}
        found, _ = discover(self.models_dir, self.catalog, aliases)
        if self.pinned is None:
            return found
        pinned = next((m for m in found if m.model.resolve() == self.pinned.model.resolve()),
                      self.pinned)
        return [pinned] + [m for m in found if m is not pinned]

    def get(self, name: str) -> LocalModel | None:
        return resolve(name, self.models(), self.catalog, self.quant)

"""Which model `vlserve serve` starts with, and getting its files: a path, a local model's
id, a catalog name (downloaded when missing), or — with no --model — the largest model that
fits this machine's memory (on a CPU: the largest of those that would also decode at a
usable speed, `cpuspeed`): one already on disk first, else the catalog's pick, pulled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from . import catalog, cpuspeed, gpu
from .disk import LocalModel, PairingError, discover, pair_directory, resolve

log = logging.getLogger("vlserve")


class StartupError(Exception):
    """Nothing to serve; the message says what to do."""


@dataclass(frozen=True)
class Choice:
    model: Path
    mmproj: Path
    entry: catalog.Entry | None = None


def memory_budget() -> gpu.Memory:
    """Where the weights will live: GPU memory when this llama.cpp build can offload to a
    GPU that was found, otherwise RAM."""
    memory = gpu.detect_memory()
    if memory.kind != "cpu" and not gpu.gpu_offload_supported():
        return gpu.system_memory()
    return memory


def cpu_speed(threads: int) -> cpuspeed.CPU:
    """This machine's CPU as the speed estimate sees it (probed; tests replace this)."""
    return cpuspeed.probe(threads)


def choose(name: str | None, mmproj: str | None, *, models_dir: Path, quant: str | None,
           exclude: Path | None = None, threads: int = 1) -> Choice:
    """`threads`: what llama.cpp will decode with, for the CPU's speed estimate."""
    known = catalog.load(models_dir)
    if name is None:
        if mmproj:
            raise StartupError("--mmproj needs --model")
        return _auto(known, models_dir, quant, exclude, threads)
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf" or path.exists():
        return _from_path(path, Path(mmproj).expanduser() if mmproj else None)
    if mmproj:
        raise StartupError("--mmproj goes with a --model that is a GGUF file path")
    found, _ = discover(models_dir, known)
    local = resolve(name, found, known, quant)
    if local is not None:
        return Choice(local.model, local.mmproj, local.entry)
    entry = known.find(name)
    if entry is None:
        raise StartupError(
            f"{name!r} is not a GGUF file, a model in {models_dir} or a catalog name. Local: "
            f"{', '.join(m.id for m in found) or 'none'}. Catalog: "
            f"{', '.join(e.aliases[0] if e.aliases else e.id for e in known.entries)}.")
    return pull(entry, known, models_dir, quant)


def _from_path(model: Path, mmproj: Path | None) -> Choice:
    if not model.is_file():
        raise StartupError(f"model file not found: {model}")
    if mmproj is None:
        try:
            pairs, _ = pair_directory(sorted(model.parent.glob("*.gguf")))
        except PairingError as exc:
            raise StartupError(str(exc)) from None
        mmproj = next((p for m, p in pairs if m.resolve() == model.resolve()), None)
        if mmproj is None:
            raise StartupError(f"no matching mmproj next to {model}: pass --mmproj PATH (the "
                               "vision projector from the same repository as the model)")
    elif not mmproj.is_file():
        raise StartupError(f"mmproj file not found: {mmproj}")
    return Choice(model, mmproj)


def _auto(known: catalog.Catalog, models_dir: Path, quant: str | None,
          exclude: Path | None, threads: int) -> Choice:
    """Nothing named: the largest model on disk that fits (and on a CPU decodes at a usable
    speed), else the catalog's pick."""
    memory = memory_budget()
    cpu = None
    if memory.kind == "cpu":
        cpu = cpu_speed(threads)
        log.info("a CPU only: %s (probed); models are chosen by their estimated decode speed "
                 "too", cpu.describe())
    found, _ = discover(models_dir, known)
    if exclude is not None:   # the generated demo model is never picked by itself
        found = [m for m in found if exclude.resolve() not in m.model.resolve().parents]
    if found:
        local = _largest_fitting(found, memory.free, cpu)
        why = "fits"
        if cpu is not None:
            log.info("estimated decode speed here: %s", cpuspeed.explain(
                [(m.id, m.weight_bytes) for m in sorted(found, key=lambda m: m.size_bytes)], cpu))
            why = "decodes at a usable speed (else the smallest) and fits"
        log.info("serving %s, the largest model in %s that %s %s of %s (%s free)", local.id,
                 models_dir, why, memory.name, gpu.format_bytes(memory.total),
                 gpu.format_bytes(memory.free))
        return Choice(local.model, local.mmproj, local.entry)
    quant = quant or known.quant
    entry, fits = known.choose(memory.free, quant=quant, cpu=cpu)
    if cpu is not None:
        _, fitting = known.fitting(memory.free, quant=quant)
        log.info("estimated decode speed here: %s", cpuspeed.explain(
            [(e.id, e.weight_bytes(quant)) for e in fitting], cpu))
    need = entry.memory_needed(quant, known.mmproj)
    message = (f"{entry.id} ({gpu.format_bytes(need)} at {entry.ctx} tokens of context) for "
               f"{memory.name}: {gpu.format_bytes(memory.free)} free of "
               f"{gpu.format_bytes(memory.total)}")
    if fits:
        log.info("no model in %s: choosing %s", models_dir, message)
    else:
        log.warning("no catalog model fits; trying the smallest, %s", message)
    return pull(entry, known, models_dir, quant)


def _largest_fitting(models: list[LocalModel], budget: int,
                     cpu: cpuspeed.CPU | None) -> LocalModel:
    """The largest that fits `budget` (on a CPU, of those the largest usable); when none
    fits, the smallest."""
    by_size = sorted(models, key=lambda m: m.size_bytes)
    fitting = [m for m in by_size if m.size_bytes + catalog.OVERHEAD_BYTES <= budget]
    if not fitting:
        return by_size[0]
    if cpu is None:
        return fitting[-1]
    pick = cpuspeed.largest_usable([(m.id, m.weight_bytes) for m in fitting], cpu)
    return next(m for m in fitting if m.id == pick)


def pull(entry: catalog.Entry, known: catalog.Catalog, models_dir: Path,
         quant: str | None = None, mmproj: str | None = None, revision: str | None = None,
         progress: bool = True) -> Choice:
    """The entry's files in models_dir/<repo name>/, downloaded when missing."""
    from . import hub  # huggingface_hub takes a while to import; only pulls need it
    model_glob, mmproj_glob = entry.globs(quant or known.quant, mmproj or known.mmproj)
    try:
        model, proj = hub.pull(entry.repo, model_glob, mmproj_glob,
                               models_dir / entry.dirname(), revision=revision,
                               progress=progress)
    except hub.ModelFilesError as exc:
        raise StartupError(f"{exc}\nTo try vlserve without a model, run: bash start.sh "
                           "--demo (a generated tiny model with random weights).") from None
    return Choice(model, proj, entry)

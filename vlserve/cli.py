"""Command line: `vlserve serve …` (also `python server.py serve …`).

Every option can also come from an environment variable named VLSERVE_<OPTION>.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from .config import Settings, default_threads
from .images import ImageLimits

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / "models" / "tiny"
DEMO_WARNING = ("DEMO MODEL: serving a generated tiny Qwen3-VL with RANDOM WEIGHTS — its "
                "answers are gibberish. Pass --model and --mmproj to serve a real model.")


def option(*decls, **kw):
    """A click option that also reads VLSERVE_<NAME> and says so in --help."""
    name = decls[0].lstrip("-").replace("-", "_").upper()
    return click.option(*decls, envvar=f"VLSERVE_{name}", show_envvar=True,
                        show_default=True, **kw)


@click.group(context_settings={"help_option_names": ["-h", "--help"],
                               "max_content_width": 100})
def main():
    """vlserve: an offline OpenAI-compatible server for Qwen3-VL vision-language models."""


@main.command()
@option("--model", type=click.Path(dir_okay=False), help="Text model GGUF.")
@option("--mmproj", type=click.Path(dir_okay=False), help="Vision projector (mmproj) GGUF.")
@option("--alias", "model_alias", help="Model id shown in /v1/models (default: file name).")
@option("--demo", is_flag=True, help="Serve the generated tiny random-weight model.")
@option("--host", default="127.0.0.1", help="Address to bind (0.0.0.0 exposes it on the LAN).")
@option("--port", type=click.IntRange(1, 65535), default=7860, help="Port to listen on.")
@option("--ctx-size", "n_ctx", type=click.IntRange(0), default=8192,
        help="Context length in tokens (0 = the model's training length).")
@option("--n-gpu-layers", type=click.IntRange(-1), default=None,
        help="Layers to offload to the GPU (-1 = all). Default: all on CUDA/Metal builds, else 0.")
@option("--threads", type=click.IntRange(1), default=default_threads(),
        help="CPU threads for generation.")
@option("--threads-batch", type=click.IntRange(1), default=None,
        help="CPU threads for prompt processing (default: --threads).")
@option("--batch-size", "n_batch", type=click.IntRange(32), default=2048,
        help="Logical batch size for prompt processing.")
@option("--ubatch-size", "n_ubatch", type=click.IntRange(32), default=512,
        help="Physical micro-batch size.")
@option("--flash-attn", type=click.Choice(["auto", "on", "off"]), default="auto",
        help="Flash attention.")
@option("--image-min-tokens", type=click.IntRange(0), default=0,
        help="Minimum tokens per image (0 = projector default).")
@option("--image-max-tokens", type=click.IntRange(0), default=0,
        help="Maximum tokens per image (0 = projector default).")
@option("--image-cache-mb", type=click.IntRange(0), default=512,
        help="Memory for recent image embeddings, so an image already seen is not encoded "
             "again (0 = off).")
@option("--no-repack", is_flag=True,
        help="Disable CPU weight repacking (needed for quantized models on some virtual CPUs).")
@option("--no-warmup", is_flag=True, help="Skip the warm-up requests at start.")
@option("--seed", type=int, default=-1, help="Default sampling seed (-1 = random).")
@option("--queue-size", type=click.IntRange(1), default=8,
        help="Requests allowed to wait for the engine before answering 503.")
@option("--timeout", "request_timeout", type=click.FloatRange(1), default=600.0,
        help="Seconds a request may take from arrival to its last token.")
@option("--max-body-mb", type=click.FloatRange(0.01), default=64.0,
        help="Largest request body in MiB (413 beyond).")
@option("--max-images", type=click.IntRange(0), default=32,
        help="Images per request, the conversation's earlier turns included.")
@option("--max-image-mb", type=click.FloatRange(0.01), default=20.0,
        help="Largest decoded image file in MiB.")
@option("--max-image-pixels", type=click.IntRange(1), default=50_000_000,
        help="Largest image in pixels (decompression-bomb guard).")
@option("--image-max-side", type=click.IntRange(16), default=1024,
        help="Images are resized so their long side is at most this.")
@option("--image-max-short-side", type=click.IntRange(16), default=768,
        help="…and their short side at most this.")
@option("--decoded-image-cache-mb", type=click.IntRange(0), default=128,
        help="Memory for decoded uploads, so images a client resends each turn are not "
             "decoded again (0 = off).")
@option("--max-tokens-cap", type=click.IntRange(0), default=0,
        help="Largest max_tokens a client may ask for (0 = the context size).")
@option("--http-threads", type=click.IntRange(1), default=16,
        help="HTTP threads (concurrent connections, streams included).")
@option("--dev", is_flag=True, help="Use Flask's development server instead of gunicorn.")
@option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
        default="info", help="Log level.")
def serve(**opts):
    """Serve the OpenAI-compatible API (and the page) for one GGUF + mmproj pair."""
    settings = settings_from_options(opts)
    setup_logging(settings.log_level)
    if settings.demo:
        logging.getLogger("vlserve").warning(DEMO_WARNING)
    from .serving import run
    run(settings)


@main.command(add_help_option=False,
              context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args):
    """Benchmark vlserve against raw llama-cpp-python and peers (scripts/bench.py; --help)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench import main as bench_main
    bench_main(list(args))


def settings_from_options(opts: dict) -> Settings:
    mb = 1024 * 1024
    images = ImageLimits(max_bytes=int(opts.pop("max_image_mb") * mb),
                         max_pixels=opts.pop("max_image_pixels"),
                         max_long_side=opts.pop("image_max_side"),
                         max_short_side=opts.pop("image_max_short_side"),
                         max_images=opts.pop("max_images"))
    opts["max_body_bytes"] = int(opts.pop("max_body_mb") * mb)
    opts["repack"] = not opts.pop("no_repack")
    opts["warmup"] = not opts.pop("no_warmup")
    if opts["demo"] or not (opts["model"] or opts["mmproj"]):
        opts.update(_demo_model(opts))
    elif not (opts["model"] and opts["mmproj"]):
        raise click.UsageError("--model and --mmproj go together (a vision model needs both)")
    return Settings(images=images, **opts)


def _demo_model(opts: dict) -> dict:
    """No model given: generate (once) and serve the tiny random-weight model."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_tiny_model import make_model
    model, mmproj = make_model(DEMO_DIR)
    return {"model": str(model), "mmproj": str(mmproj), "demo": True,
            "model_alias": opts.get("model_alias") or "vlserve-demo-tiny"}


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

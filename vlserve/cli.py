"""Command line: `vlserve serve …` (also `python server.py serve …`).

Every option can also come from an environment variable named VLSERVE_<OPTION>.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from .config import Settings, auto_parallel, default
from .chat.images import ImageLimits
from .options import option
from .chat.remote import RemotePolicy
from .gateway.upstream import UpstreamSpecError, parse_specs
from .library.places import demo_dir

DEMO_WARNING = ("DEMO MODEL: serving a generated tiny Qwen3-VL with RANDOM WEIGHTS — its "
                "answers are gibberish. Run without --demo (or with --model 8b, a GGUF path…) "
                "to serve a real model.")


@click.group(context_settings={"help_option_names": ["-h", "--help"],
                               "max_content_width": 100})
def main():
    """vlserve: an offline OpenAI-compatible server for Qwen3-VL vision-language models."""


class AutoOrCount(click.ParamType):
    """`auto` (resolved by `auto()`) or a whole number from `low` to `high`."""
    name = "auto|N"

    def __init__(self, what: str, low: int, high: int, auto, hint: str):
        self.what, self.low, self.high, self.auto, self.hint = what, low, high, auto, hint

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        if value is None or str(value).strip().lower() == "auto":
            return self.auto()
        try:
            n = int(value)
        except ValueError:
            self.fail(f"{value!r} is not 'auto' or a number of {self.what}", param, ctx)
        if not self.low <= n <= self.high:
            self.fail(self.hint, param, ctx)
        return n


# None: as many layers as fit in free GPU memory (decided when the model loads)
GPU_LAYERS = AutoOrCount("layers", -1, 1_000_000, lambda: None,
                         "use -1 for all layers, 0 for none")
MiB = 1024 * 1024
IMAGE_LIMITS = ImageLimits()   # the defaults of the image options
PARALLEL = AutoOrCount("sequences", 1, 64, auto_parallel, "use 1 to 64 sequences")


@main.command()
@option("--model", help="What to serve: a GGUF path, the id of a model in --models-dir, or a "
        "catalog name such as 8b or qwen3-vl-4b-thinking (downloaded if missing). Default: the "
        "largest model on disk that fits this machine, else the largest catalog model that "
        "fits, downloaded.")
@option("--mmproj", type=click.Path(dir_okay=False),
        help="Vision projector GGUF (default: the mmproj next to --model, paired by name).")
@option("--quant", help="Catalog quant to prefer, e.g. Q4_K_M, Q8_0, F16 (default: the "
        "catalog's, Q4_K_M).")
@option("--models-dir", type=click.Path(file_okay=False), default=default("models_dir"),
        help="Where downloaded and dropped-in models live (each GGUF next to its mmproj).")
@option("--alias", "model_alias", help="Model id shown in /v1/models (default: file name).")
@option("--demo", is_flag=True, help="Serve the generated tiny random-weight model.")
@option("--keep-alive", type=click.FloatRange(0), default=default("keep_alive"),
        help="Unload the model after this many idle seconds (0 = never); the next request "
             "loads it again.")
@option("--prefill-protect", type=click.FloatRange(0), default=default("prefill_protect"),
        help="Seconds after a request during which another key's (or client's) background "
             "prefill (the page's prefill while typing, POST /v1/chat/prefill) may not evict "
             "that conversation's cache.")
@option("--switch-on-request/--no-switch-on-request", default=default("switch_on_request"),
        help="A request whose 'model' names another model on disk loads it (as Ollama does); "
             "otherwise only POST /admin/models/load switches.")
@option("--host", default=default("host"), help="Address to bind (0.0.0.0 exposes it on the LAN).")
@option("--api-key", "api_keys", multiple=True,
        help="Require this key ('Authorization: Bearer KEY' or 'x-api-key') for the API; it "
             "may do everything. Repeatable; the variable takes several, space-separated. "
             "The page and /health stay open; the page asks for the key.")
@option("--api-key-file", type=click.Path(dir_okay=False, exists=True),
        help="Keys with names and scopes, one 'NAME:KEY[:SCOPES]' per line; scopes from "
             "chat,admin,metrics (default chat).")
@option("--port", type=click.IntRange(1, 65535), default=default("port"), help="Port to listen on.")
@option("--ctx-size", "n_ctx", type=click.IntRange(0), default=default("n_ctx"),
        help="Context length in tokens (0 = the model's training length). Default: the "
             "catalog's for the model, else 8192.")
@option("--n-gpu-layers", type=GPU_LAYERS, default="auto",
        help="Layers to offload to the GPU: auto (as many as fit in free GPU memory, the "
             "decision is logged), -1 (all) or a number. CPU builds use 0.")
@option("--parallel", type=PARALLEL, default="auto",
        help="Requests decoded together, each in its own sequence with the whole --ctx-size "
             "(KV memory grows with it): auto (4 with a GPU, 2 on a CPU) or a number. More "
             "wait in the queue (--queue-size).")
@option("--kv-unified/--no-kv-unified", default=default("kv_unified"),
        help="One KV buffer shared by the sequences (prefixes copied between them for free; "
             "a lone request decodes as fast as with --parallel 1) or one stream each "
             "(docs/benchmarks.md has both measured).")
@option("--threads", type=click.IntRange(1), default=default("threads"),
        help="CPU threads for generation.")
@option("--threads-batch", type=click.IntRange(1), default=default("threads_batch"),
        help="CPU threads for prompt processing (default: --threads).")
@option("--batch-size", "n_batch", type=click.IntRange(32), default=default("n_batch"),
        help="Logical batch size for prompt processing.")
@option("--ubatch-size", "n_ubatch", type=click.IntRange(32), default=default("n_ubatch"),
        help="Physical micro-batch size.")
@option("--flash-attn", type=click.Choice(["auto", "on", "off"]), default=default("flash_attn"),
        help="Flash attention.")
@option("--image-min-tokens", type=click.IntRange(0), default=default("image_min_tokens"),
        help="Minimum tokens per image (0 = projector default).")
@option("--image-max-tokens", type=click.IntRange(0), default=default("image_max_tokens"),
        help="Maximum tokens per image (0 = projector default).")
@option("--image-cache-mb", type=click.IntRange(0), default=default("image_cache_mb"),
        help="Memory for recent image embeddings, so an image already seen is not encoded "
             "again (0 = off).")
@option("--no-repack", is_flag=True,
        help="Disable CPU weight repacking (needed for quantized models on some virtual CPUs).")
@option("--no-warmup", is_flag=True, help="Skip the warm-up requests at start.")
@option("--seed", type=int, default=default("seed"), help="Default sampling seed (-1 = random).")
@option("--queue-size", type=click.IntRange(1), default=default("queue_size"),
        help="Requests allowed to wait for the engine before answering 503.")
@option("--timeout", "request_timeout", type=click.FloatRange(1), default=default("request_timeout"),
        help="Seconds a request may take from arrival to its last token.")
@option("--max-body-mb", type=click.FloatRange(0.01), default=default("max_body_bytes") / MiB,
        help="Largest request body in MiB (413 beyond).")
@option("--max-images", type=click.IntRange(0), default=IMAGE_LIMITS.max_images,
        help="Images per request, the conversation's earlier turns included.")
@option("--max-image-mb", type=click.FloatRange(0.01), default=IMAGE_LIMITS.max_bytes / MiB,
        help="Largest decoded image file in MiB.")
@option("--max-image-pixels", type=click.IntRange(1), default=IMAGE_LIMITS.max_pixels,
        help="Largest image in pixels (decompression-bomb guard).")
@option("--image-max-side", type=click.IntRange(16), default=IMAGE_LIMITS.max_long_side,
        help="Images are resized so their long side is at most this.")
@option("--image-max-short-side", type=click.IntRange(16), default=IMAGE_LIMITS.max_short_side,
        help="…and their short side at most this.")
@option("--decoded-image-cache-mb", type=click.IntRange(0), default=default("decoded_image_cache_mb"),
        help="Memory for decoded uploads, so images a client resends each turn are not "
             "decoded again (0 = off).")
@option("--max-tokens-cap", type=click.IntRange(0), default=default("max_tokens_cap"),
        help="Largest max_tokens a client may ask for (0 = the context size).")
@option("--http-threads", type=click.IntRange(1), default=default("http_threads"),
        help="Threads running requests at once, streams included. A request takes one only "
             "once it has arrived whole; more wait for a free one.")
@option("--header-timeout", type=click.FloatRange(0.1), default=default("header_timeout"),
        help="Seconds for a request's whole head (request line and headers) to arrive, from "
             "the connection opening; a byte now and then does not extend it. Past it: 408, "
             "connection closed.")
@option("--body-timeout", type=click.FloatRange(0.1), default=default("body_timeout"),
        help="Seconds for a request body to arrive, plus one for every --body-min-rate KiB "
             "received (so big uploads at a fair rate pass). Past it: 408.")
@option("--body-min-rate", type=click.FloatRange(0), default=default("body_min_rate") / 1024,
        help="KiB per second a long request body must keep up (see --body-timeout); 0: the "
             "whole body within --body-timeout.")
@option("--rate-limit", type=click.IntRange(0), default=default("rate_limit"),
        help="Chat requests per minute per API key (per client address without keys); "
             "beyond it 429 with Retry-After. 0 = no limit.")
@option("--max-streams", type=click.IntRange(0), default=default("max_streams"),
        help="Chat requests one key (or client) may have running or queued at once; "
             "beyond it 429. 0 = no limit.")
@option("--cors-origin", "cors_origins", multiple=True,
        help="A browser origin (e.g. https://intranet.example) allowed to call the API from "
             "its pages. Repeatable. Default: none (CORS off).")
@option("--allowed-host", "allowed_hosts", multiple=True,
        help="A Host name the server answers besides localhost, 127.0.0.1 and [::1], e.g. "
             "mybox.lan or '*.lan.example' (repeatable; '*' = any). Bound to loopback, other "
             "names are refused (DNS rebinding); bound elsewhere, any Host is answered "
             "unless this is given.")
@option("--metrics", is_flag=True,
        help="Serve Prometheus metrics at /metrics (needs the 'metrics' scope when keys are "
             "set).")
@option("--audit-log", type=click.Path(dir_okay=False),
        help="Append one JSON line per request to this file (key name, client, model, image "
             "SHA-256s and sizes, token counts, timings, status; never content).")
@option("--audit-max-mb", type=click.FloatRange(0.01), default=default("audit_max_mb"),
        help="Rotate the audit log at this size.")
@option("--audit-backups", type=click.IntRange(1), default=default("audit_backups"),
        help="Rotated audit files to keep.")
@option("--log-content", is_flag=True,
        help="Also write prompts and answers to the audit log (off by default: privacy).")
@option("--remote-image-host", "remote_image_hosts", multiple=True,
        help="Allow image URLs from this host (repeatable; 'img.example.com' or "
             "'*.example.com'). Off by default: images must be data: URLs.")
@option("--remote-images-allow-private", is_flag=True,
        help="Let allowed hosts resolve to private/loopback/link-local addresses (LAN cameras).")
@option("--remote-image-timeout", type=click.FloatRange(0.1), default=default("remote_image_timeout"),
        help="Seconds for fetching one remote image, redirects included.")
@option("--response-cache-dir", type=click.Path(file_okay=False),
        help="Keep answers to deterministic requests (temperature 0 or a fixed seed) in this "
             "folder and answer repeats from it (X-Cache: hit). Default: off.")
@option("--response-cache-mb", type=click.FloatRange(1), default=default("response_cache_mb"),
        help="Size bound of the response cache (least recently used answers go first).")
@option("--upstream", "upstreams", multiple=True, metavar="NAME=URL",
        help="An OpenAI-compatible server to forward requests to (vLLM, llama.cpp, another "
             "vlserve), e.g. gpu1=http://10.0.0.5:8000. Repeatable: servers serving the same "
             "model id are replicas of it. Requests naming its models go there; without "
             "--model, vlserve runs as a pure gateway (docs/scale-out.md).")
@option("--upstream-key", "upstream_keys", multiple=True, metavar="NAME=KEY",
        help="The API key vlserve sends to upstream NAME. Repeatable.")
@option("--upstream-check-interval", type=click.FloatRange(0.1), default=default("upstream_check_interval"),
        help="Seconds between health checks of the upstreams (GET /v1/models).")
@option("--upstream-connect-timeout", type=click.FloatRange(0.1), default=default("upstream_connect_timeout"),
        help="Seconds to connect to an upstream before trying another replica.")
@option("--certfile", type=click.Path(dir_okay=False, exists=True),
        help="Serve HTTPS with this PEM certificate (with --keyfile). Behind a reverse proxy "
             "let the proxy do TLS instead (docs/deploy.md).")
@option("--keyfile", type=click.Path(dir_okay=False, exists=True),
        help="The certificate's PEM private key.")
@option("--webui-dir", type=click.Path(file_okay=False),
        help="Folder of the chat page (default: the page shipped in the package, vlserve/webui).")
@option("--dev", is_flag=True, help="Use Flask's development server instead of gunicorn.")
@option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
        default=default("log_level"), help="Log level.")
def serve(**opts):
    """Serve the OpenAI-compatible API (and the page); switch models without restarting."""
    setup_logging(opts["log_level"])
    settings = settings_from_options(opts)
    if settings.demo:
        logging.getLogger("vlserve").warning(DEMO_WARNING)
    from .server.run import run
    run(settings)


@main.command(add_help_option=False,
              context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args):
    """Benchmark vlserve against raw llama-cpp-python and peers (vlserve bench --help)."""
    from .bench import main as bench_main
    bench_main(list(args))


def settings_from_options(opts: dict) -> Settings:
    images = ImageLimits(max_bytes=int(opts.pop("max_image_mb") * MiB),
                         max_pixels=opts.pop("max_image_pixels"),
                         max_long_side=opts.pop("image_max_side"),
                         max_short_side=opts.pop("image_max_short_side"),
                         max_images=opts.pop("max_images"))
    opts["max_body_bytes"] = int(opts.pop("max_body_mb") * MiB)
    opts["body_min_rate"] = opts["body_min_rate"] * 1024
    opts["api_keys"] = tuple(opts["api_keys"])
    if bool(opts["certfile"]) != bool(opts["keyfile"]):
        raise click.UsageError("--certfile and --keyfile go together")
    opts["cors_origins"] = tuple(o.rstrip("/") for o in opts["cors_origins"])
    opts["remote_image_hosts"] = tuple(opts["remote_image_hosts"])
    opts["allowed_hosts"] = tuple(opts["allowed_hosts"])
    from .ops.origin import HostPolicy
    try:
        HostPolicy(opts["host"], opts["allowed_hosts"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--allowed-host") from None
    try:
        RemotePolicy(hosts=opts["remote_image_hosts"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--remote-image-host") from None
    _check_keys(opts)
    opts["repack"] = not opts.pop("no_repack")
    opts["warmup"] = not opts.pop("no_warmup")
    try:
        opts["upstreams"] = parse_specs(opts["upstreams"], opts.pop("upstream_keys"))
    except UpstreamSpecError as exc:
        raise click.BadParameter(str(exc), param_hint="--upstream") from None
    if opts["demo"]:
        opts.update(_demo_model(opts))
    elif opts["upstreams"] and not opts["model"]:
        opts.update(model=None, mmproj=None)   # a pure gateway: no local model
    else:
        opts.update(_chosen_model(opts))
    return Settings(images=images, **opts)


def _check_keys(opts: dict) -> None:
    """A bad key file stops the start with its line number, before the model loads."""
    from .ops.auth import KeyFileError, load_keys
    try:
        load_keys(opts["api_keys"], opts["api_key_file"])
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from None


def _chosen_model(opts: dict) -> dict:
    from .library.startup import StartupError, choose
    try:
        choice = choose(opts["model"], opts["mmproj"], models_dir=Path(opts["models_dir"]),
                        quant=opts["quant"], exclude=demo_dir(opts["models_dir"]),
                        threads=opts["threads"])
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    demo = demo_dir(opts["models_dir"]).resolve() in choice.model.resolve().parents
    alias = opts["model_alias"] or (choice.entry.id if choice.entry else None)
    return {"model": str(choice.model), "mmproj": str(choice.mmproj), "demo": demo,
            "model_alias": alias}


def _demo_model(opts: dict) -> dict:
    """The tiny random-weight model, generated the first time into <models-dir>/tiny."""
    from .library.tinymodel import demo_model
    model, mmproj = demo_model(demo_dir(opts["models_dir"]))
    return {"model": str(model), "mmproj": str(mmproj), "demo": True,
            "model_alias": opts.get("model_alias") or "vlserve-demo-tiny"}


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("gguf").setLevel(logging.WARNING)  # the demo model's writer is chatty
    # one line per upstream call, URL included: vlserve logs its own line per request
    logging.getLogger("httpx2").setLevel(logging.WARNING)


@main.command()
@click.argument("name")
@option("--quant", help="Quant of the model file (default: the catalog's, Q4_K_M).")
@option("--mmproj-quant", help="Precision of the projector (default: the catalog's, F16).")
@option("--revision", help="A branch, tag or commit of the Hugging Face repo.")
@option("--models-dir", type=click.Path(file_okay=False), default=default("models_dir"),
        help="Where to put it (in a folder named after the repo).")
def pull(name, quant, mmproj_quant, revision, models_dir):
    """Download a catalog model (e.g. 2b, 8b, 4b-thinking) and its mmproj from Hugging Face.

    Resumes an interrupted download; honours HF_TOKEN, HF_HOME, HF_ENDPOINT (mirrors) and
    HF_HUB_OFFLINE (then nothing is fetched: files already present are reported, missing
    ones are named). See `vlserve models` for the catalog."""
    from .library import catalog
    from .library.startup import StartupError
    from .library.startup import pull as pull_entry
    setup_logging("info")
    try:
        known = catalog.load(Path(models_dir))
        entry = known.get(name)
        choice = pull_entry(entry, known, Path(models_dir), quant, mmproj_quant, revision)
    except (catalog.CatalogError, StartupError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{entry.id}:\n  model  {choice.model}\n  mmproj {choice.mmproj}\n"
               f"serve it: bash start.sh --model {entry.aliases[0] if entry.aliases else entry.id}")


@main.command("models")
@option("--models-dir", type=click.Path(file_okay=False), default=default("models_dir"),
        help="Where local models are looked for.")
def list_models(models_dir):
    """The catalog (with the memory each model needs) and the models on disk."""
    from .library import catalog
    from .library.disk import discover
    known = catalog.load(Path(models_dir))
    found, notes = discover(Path(models_dir), known)
    on_disk = {m.entry.id for m in found if m.entry}
    click.echo(f"catalog (quant {known.quant}, mmproj {known.mmproj}; memory at the default "
               "context, every layer on one device):")
    for e in known.entries:
        need = e.memory_needed(known.quant, known.mmproj) / 1e9
        click.echo(f"  {e.id:24} {', '.join(e.aliases[:1]):12} {need:5.1f} GB  ctx {e.ctx:>6}"
                   f"  {'on disk' if e.id in on_disk else e.repo}")
    click.echo(f"on disk in {models_dir}:")
    for m in found:
        click.echo(f"  {m.id:40} {m.size_bytes / 1e9:6.2f} GB  {m.model.name} + {m.mmproj.name}")
    for note in notes:
        click.echo(f"  (skipped) {note}")


from .bundle import bundle  # noqa: E402  (its own module: it is a packaging tool)
main.add_command(bundle)

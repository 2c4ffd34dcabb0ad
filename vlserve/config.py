"""One frozen Settings object, built once by the CLI (flags / VLSERVE_* env) or by tests."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from .chat.images import ImageLimits
from .chat.remote import RemotePolicy
from .gateway.upstream import UpstreamSpec
from .library.places import default_models_dir

DEFAULT_CTX = 8192   # context when neither --ctx-size nor the model's catalog entry says


def default_threads() -> int:
    """Physical-ish core count: llama.cpp decode is memory bound and slows with SMT siblings."""
    n = os.cpu_count() or 1
    return max(1, n // 2) if n > 4 else n


def auto_parallel() -> int:
    """Sequences decoded together when none are asked for: 4 when llama.cpp can offload to a
    GPU (batching is nearly free there), 2 on a CPU (memory for the KV of each)."""
    import llama_cpp
    return 4 if llama_cpp.llama_supports_gpu_offload() else 2


def context_size(n_ctx: int | None, *, trained: int) -> int:
    """Tokens per sequence from --ctx-size (the loader has put the catalog entry's suggestion
    in place of None when the model has one): 0 is the model's training length, None
    DEFAULT_CTX. The one place this is decided (the GPU plan and the context both ask)."""
    if n_ctx == 0:
        return trained
    return n_ctx or DEFAULT_CTX


def default(name: str):
    """The default of Settings field `name`: the command line's defaults are read from here,
    so that `Settings()` (tests, library use) means what `vlserve serve` with no flags means."""
    f = {f.name: f for f in dataclasses.fields(Settings)}[name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


@dataclass(frozen=True)
class Settings:
    model: str | None = None          # path to the text GGUF
    mmproj: str | None = None         # path to the vision projector GGUF
    model_alias: str | None = None    # id shown in /v1/models (default: GGUF file stem)
    demo: bool = False                # serving the generated random-weight model
    # where pulled and dropped-in models live (library/places.py: a checkout's models/, else
    # the per-user data folder)
    models_dir: str = field(default_factory=lambda: str(default_models_dir()))
    quant: str | None = None          # preferred catalog quant (None = the catalog's default)
    switch_on_request: bool = True    # a request naming another local model loads it
    keep_alive: float = 0             # seconds idle before the model is unloaded; 0 = never
    prefill_protect: float = 60       # a prefill never evicts a sequence another owner's
                                      # request used this many seconds ago (engine.batch)
    webui_dir: str | None = None      # the chat page's folder (None: the package's own)

    # engine
    n_ctx: int | None = None          # 0 = the model's training context; None = the
                                      # catalog entry's, else DEFAULT_CTX (context_size)
    n_gpu_layers: int | None = None   # None = auto: as many as fit in free GPU memory; -1 = all
    threads: int = field(default_factory=default_threads)
    threads_batch: int | None = None  # None = same as threads
    parallel: int = field(default_factory=auto_parallel)  # sequences decoded together
    kv_unified: bool = True           # one KV buffer shared by the sequences (else one each)
    n_batch: int = 2048
    n_ubatch: int = 512
    flash_attn: str = "auto"          # auto | on | off
    image_min_tokens: int = 0         # 0 = the projector's default
    image_max_tokens: int = 0
    repack: bool = True               # llama.cpp CPU weight repacking (use_extra_bufts)
    warmup: bool = True
    image_cache_mb: int = 512         # LRU of vision-encoder outputs, so an image is encoded once
    seed: int = -1                    # default sampling seed (-1 = random per request)

    # serving
    api_keys: tuple[str, ...] = ()    # keys with every scope (chat, admin, metrics)
    api_key_file: str | None = None   # lines NAME:KEY[:SCOPES]
    rate_limit: int = 0               # chat requests per minute per key (or client); 0 = off
    max_streams: int = 0              # concurrent chat requests per key (or client); 0 = off
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; () = none
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides loopback ones (origin.py)
    metrics: bool = False             # serve Prometheus metrics at /metrics
    audit_log: str | None = None      # JSON-lines audit file; None = no audit log
    audit_max_mb: float = 100         # rotate the audit file at this size…
    audit_backups: int = 10           # …keeping this many old files
    log_content: bool = False         # the audit log also gets prompts and answers
    response_cache_dir: str | None = None  # answers to deterministic requests kept on disk
    response_cache_mb: float = 256
    remote_image_hosts: tuple[str, ...] = ()  # hosts images may be fetched from; () = none
    remote_images_allow_private: bool = False  # also LAN/loopback addresses (a LAN camera)
    remote_image_timeout: float = 10.0        # seconds for a whole fetch, redirects included
    upstreams: tuple[UpstreamSpec, ...] = ()  # OpenAI-compatible servers to forward to
    upstream_check_interval: float = 5.0      # seconds between health checks of upstreams
    upstream_connect_timeout: float = 5.0     # seconds to connect before trying a replica
    certfile: str | None = None       # TLS: serve https with this certificate…
    keyfile: str | None = None        # …and its private key
    host: str = "127.0.0.1"
    port: int = 7860
    dev: bool = False                 # Flask's server instead of gunicorn
    http_threads: int = 16            # threads running requests (streams included)
    header_timeout: float = 10.0      # seconds for a whole request head to arrive
    body_timeout: float = 30.0        # seconds for a request body to arrive…
    body_min_rate: float = 16 * 1024  # …plus one for every this many bytes received
    queue_size: int = 8               # requests waiting for the engine before 503
    request_timeout: float = 600.0    # seconds from arrival to the last token
    max_body_bytes: int = 64 * 1024 * 1024
    max_tokens_cap: int = 0           # 0 = the context size
    images: ImageLimits = field(default_factory=ImageLimits)
    decoded_image_cache_mb: int = 128  # prepared uploads, so resent images are not decoded again
    log_level: str = "info"

    @property
    def model_id(self) -> str:
        if self.model_alias:
            return self.model_alias
        return Path(self.model).stem if self.model else "none"

    @property
    def local(self) -> bool:
        """A model runs in this process (else: a pure gateway to the upstreams)."""
        return self.model is not None or not self.upstreams

    @property
    def remote_policy(self) -> RemotePolicy | None:
        if not self.remote_image_hosts:
            return None
        return RemotePolicy(hosts=self.remote_image_hosts,
                            allow_private=self.remote_images_allow_private,
                            timeout=self.remote_image_timeout, max_bytes=self.images.max_bytes)

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

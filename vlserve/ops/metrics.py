"""Prometheus metrics at GET /metrics (`--metrics`): requests, latency, tokens, images, the
queue and the loaded model, from a registry of the app's own.

Request metrics come from the record every finished request hands to the observers
(web.lifecycle.finish_request); the queue, the model and the worker's counters are read live at scrape
time. Labels hold server-side values only: the URL rule (never the raw path), the method
from a fixed set, the status, the finish reason and the served model id. A client can make
no new series, so the series count stays bounded whatever it sends.

One gunicorn worker process serves every request (the model lives in it), so an in-process
registry sees them all: prometheus_client's multiprocess mode is not needed.
"""

from __future__ import annotations

from collections.abc import Mapping

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# auth.py gives the routes of the blueprint named "metrics" the "metrics" scope.
bp = Blueprint("metrics", __name__)

# Buckets for this workload, not prometheus_client's web defaults (which stop at 10 s): one
# request runs at a time on a local model, so a first token takes from ~50 ms (cached prompt
# on a GPU) to a minute (a long prompt with images on a CPU, or a wait in the queue), and a
# whole request up to the 600 s default request timeout.
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Decode speed: a few tokens/s (large model on CPU) to a few hundred (small model on a GPU).
TPS_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500)
# Vision encoding per request: tens of ms on a GPU, seconds for big images on a CPU.
IMAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)

# Werkzeug accepts any method token: anything else is "other", not a new series.
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
FINISH_REASONS = frozenset({"stop", "length", "cancelled"})
UNMATCHED = "unmatched"   # the route label of requests no rule matched (404, 405)


class Metrics:
    """This app's registry and metrics; `observe(record)` is the request observer."""

    def __init__(self, state: dict):
        self.registry = registry = CollectorRegistry()
        worker = state["worker"]
        self.requests = Counter("vlserve_requests", "HTTP requests finished, by URL rule",
                                ["route", "method", "status"], registry=registry)
        self.duration = Histogram(
            "vlserve_request_duration_seconds", "Arrival to last byte (streams: to the end of "
            "the stream), by URL rule", ["route"], buckets=DURATION_BUCKETS, registry=registry)
        self.ttft = Histogram(
            "vlserve_time_to_first_token_seconds", "Streams (stream=true): from the start of "
            "the response, queue wait and prefill included, to the first token. Non-streaming "
            "(stream=false): prompt processing time only, an approximation without the queue "
            "wait", ["model", "stream", "backend"], buckets=TTFT_BUCKETS, registry=registry)
        self.tokens = Counter("vlserve_generated_tokens", "Completion tokens of answered "
                              "chat requests (not of streams their client left)",
                              ["model", "backend"], registry=registry)
        self.tps = Histogram("vlserve_decode_tokens_per_second", "Decode speed per request",
                             ["model"], buckets=TPS_BUCKETS, registry=registry)
        self.prompt = Counter(
            "vlserve_prompt_tokens", "Prompt tokens: evaluated, or reused from the KV cache",
            ["model", "source"], registry=registry)
        self.image_tokens = Counter("vlserve_image_tokens", "Prompt tokens that are images",
                                    ["model"], registry=registry)
        self.images = Counter(
            "vlserve_images", "Images in requests: run through the vision encoder, or their "
            "embedding found in the cache", ["source"], registry=registry)
        self.encode = Histogram("vlserve_image_encode_seconds", "Vision encoding time per "
                                "request that encoded images", buckets=IMAGE_BUCKETS,
                                registry=registry)
        self.finished = Counter("vlserve_completions", "Chat completions, by finish reason",
                                ["model", "reason", "backend"], registry=registry)
        self.backend = Counter("vlserve_backend_requests", "Chat requests that reached a "
                               "backend: 'local' (this process) or an upstream's name",
                               ["backend", "status"], registry=registry)
        self.cancelled = Counter("vlserve_cancelled_requests", "Chat requests whose client "
                                 "left before the answer ended", registry=registry)
        self.replayed = Counter("vlserve_response_cache", "Deterministic chat requests: "
                                "answered from the response cache (hit) or not (miss)",
                                ["result"], registry=registry)
        Gauge("vlserve_queue_depth", "Chat requests waiting for the engine",
              registry=registry).set_function(lambda: worker.depth)
        Gauge("vlserve_busy", "1 while the engine runs a request",
              registry=registry).set_function(lambda: int(worker.busy))
        registry.register(_LiveCollector(state))

    def observe(self, record: dict) -> None:
        route = record.get("route") or UNMATCHED
        method = record.get("method") if record.get("method") in METHODS else "other"
        self.requests.labels(route, method, str(record.get("status"))).inc()
        self.duration.labels(route).observe(record.get("duration_ms", 0) / 1000)
        if record.get("cancelled"):
            self.cancelled.inc()
        if record.get("response_cache") in ("hit", "miss"):
            self.replayed.labels(record["response_cache"]).inc()
        if record.get("backend"):
            self.backend.labels(record["backend"], str(record.get("status"))).inc()
        if isinstance(record.get("timings"), dict):  # a chat request that got to the engine
            self._chat(record, record["timings"])

    def _chat(self, record: dict, timings: dict) -> None:
        # The record's model is the id of the model that answered (api.job_model), never
        # the client's "model" field: the series stay bounded by the models on disk.
        # Backend names come from the server's own --upstream flags: bounded too.
        model, backend = str(record.get("model") or "none"), record.get("backend") or "local"
        stream = bool(record.get("stream"))
        first_ms = timings.get("ttft_ms") if stream else timings.get("prompt_ms")
        if first_ms is not None:
            self.ttft.labels(model, str(stream).lower(), backend).observe(first_ms / 1000)
        self.tokens.labels(model, backend).inc(record.get("completion_tokens") or 0)
        if timings.get("decode_tokens_per_s"):
            self.tps.labels(model).observe(timings["decode_tokens_per_s"])
        self.prompt.labels(model, "evaluated").inc(timings.get("prompt_tokens_evaluated", 0))
        self.prompt.labels(model, "cached").inc(timings.get("cached_tokens", 0))
        self.image_tokens.labels(model).inc(record.get("image_tokens") or 0)
        self.images.labels("encoded").inc(timings.get("images_encoded", 0))
        self.images.labels("cached").inc(timings.get("images_from_cache", 0))
        if timings.get("images_encoded"):
            self.encode.observe(timings.get("image_encode_ms", 0) / 1000)
        reason = record.get("finish_reason")
        self.finished.labels(model, reason if reason in FINISH_REASONS else "other",
                             backend).inc()


class _LiveCollector:
    """What the worker (and the limits module, when there is one) knows, read at each
    scrape, so a model switch or a load failure shows without any bookkeeping here."""

    def __init__(self, state: dict):
        self._state = state   # the app's shared dict: "limits" may be added after us

    def collect(self):
        worker = self._state["worker"]
        info = GaugeMetricFamily("vlserve_model_info", "The model loaded (or loading) and "
                                 "the engine's state", labels=["model", "state"])
        info.add_metric([str(worker.model or "none"), worker.state], 1)
        yield info
        if worker.load_seconds is not None:
            yield GaugeMetricFamily("vlserve_model_load_seconds", "Duration of the last "
                                    "successful model load, warm-up included",
                                    value=worker.load_seconds)
        stats = worker.stats
        yield CounterMetricFamily("vlserve_model_loads", "Models loaded (the first and "
                                  "every switch or reload)", value=stats["model_loads"])
        yield CounterMetricFamily("vlserve_model_load_failures", "Model loads that failed",
                                  value=stats["model_load_failures"])
        yield CounterMetricFamily("vlserve_request_timeouts", "Chat requests stopped by the "
                                  "request timeout", value=stats["timeout"])
        yield from _limit_counters(self._state.get("limits"))
        yield from _upstream_metrics(self._state.get("gateway"))
        view = worker.engine_view()
        yield from _batch_metrics(view["batch"] if view else None)


def _batch_metrics(batch: dict | None):
    """The loaded engine's sequences (Batcher.stats()): how many decode together, and how
    full the steps are (mean sequences per step = rate(sequences) / rate(steps))."""
    if batch is None:
        return
    yield GaugeMetricFamily("vlserve_parallel_sequences", "Sequences the engine can decode "
                            "together (--parallel)", value=batch["parallel"])
    yield GaugeMetricFamily("vlserve_busy_sequences", "Sequences serving a request now",
                            value=batch["busy"])
    yield CounterMetricFamily("vlserve_decode_steps", "llama_decode calls of the batcher "
                              "(one per step)", value=batch["steps"])
    yield CounterMetricFamily("vlserve_decode_step_tokens", "Tokens in those steps (generated "
                              "tokens and prompt slices)", value=batch["step_tokens"])
    yield CounterMetricFamily("vlserve_decode_step_sequences", "Sequences in those steps",
                              value=batch["step_sequences"])
    yield GaugeMetricFamily("vlserve_aggregate_tokens_per_second", "Tokens generated by all "
                            "sequences together over the last 10 s",
                            value=batch["tokens_per_second"])


def _upstream_metrics(gateway):
    """Each upstream's health, requests in flight and failovers away from it."""
    if gateway is None:
        return
    up = GaugeMetricFamily("vlserve_upstream_up", "1 while the upstream answers its health "
                           "check", labels=["backend"])
    flight = GaugeMetricFamily("vlserve_upstream_in_flight", "Requests vlserve has running "
                               "on the upstream", labels=["backend"])
    failovers = CounterMetricFamily("vlserve_upstream_failovers", "Requests sent to another "
                                    "replica because this upstream failed or was busy",
                                    labels=["backend"])
    for upstream in gateway.pool.upstreams:
        up.add_metric([upstream.name], int(upstream.up))
        flight.add_metric([upstream.name], upstream.in_flight)
        failovers.add_metric([upstream.name], upstream.failovers)
    yield from (up, flight, failovers)


def _limit_counters(limits):
    """The limits module's refusal counts: its `stats()` (or `stats` mapping), e.g.
    {"rate_limited": n, "too_many_streams": n}; anything else is ignored, not guessed at."""
    stats = getattr(limits, "stats", None)
    if callable(stats):
        stats = stats()
    if not isinstance(stats, Mapping):
        return
    family = CounterMetricFamily("vlserve_limited_requests", "Chat requests refused (429) "
                                 "by the rate and concurrency limits", labels=["reason"])
    for name, count in stats.items():
        if isinstance(count, (int, float)) and not isinstance(count, bool):
            family.add_metric([str(name)], count)
    yield family


@bp.get("/metrics")
def scrape() -> Response:
    registry = current_app.extensions["vlserve"]["metrics"].registry
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def init_app(app: Flask, settings) -> Metrics | None:
    """Serve /metrics and count every request, when `settings.metrics`; a second call on
    the same app returns what the first made."""
    state = app.extensions["vlserve"]
    if not settings.metrics:
        return None
    if "metrics" not in state:
        state["metrics"] = metrics = Metrics(state)
        state["observers"].append(metrics.observe)
        app.register_blueprint(bp)
    return state["metrics"]

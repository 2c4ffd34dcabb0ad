"""Running a model: llama.cpp's model, context and multimodal projector behind a small
public step API (`llama`); what generating emits (`output`: Delta, Finished); the
continuous batcher that drives those steps for many sequences at once (`batch`), each with
its own grammar when its answer has a response_format (`guide`: llguidance); the KV
prefix-reuse plan (`kvcache`); and the one engine thread with its queue of jobs and switches
(`worker`, `jobs`), background prefills (`prefills`), leases, idle unload, warm-up (`warmup`)
and load events (`events`).
llama.cpp's log goes to Python logging (`llamalog`).

A llama.cpp object is touched only by the engine thread, or by an HTTP thread under a
lease (`Worker.lease`); it is freed only when no lease is held.

May import: `chat` (the request, prompt and answer shapes), `library` (pairing checks, GPU
planning), `config`, `errors`.
"""

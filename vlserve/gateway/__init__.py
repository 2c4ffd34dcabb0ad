"""Forwarding chat requests to other OpenAI-compatible servers (vLLM, llama-server, other
vlserves): the upstreams, their health and load (`upstream`), and the forwarding itself,
with failover and the stream passed through (`forward`).

No Flask here: `forward` returns what to send (headers and a body, or a stream of SSE
frames) and fills the caller's `Ledger` (record, log fields, error code, end of the stream).

May import: `chat`, `library`, `errors`.
"""

"""Forwarding chat requests to other OpenAI-compatible servers (vLLM, llama-server, other
vlserves): the upstreams, their health and load (`upstream`), and the forwarding itself,
with failover and the stream passed through (`forward`).

No Flask here: `forward` returns what to send (status, headers, body or a stream of SSE
frames) and tells its caller, through a callback, how the request ended.

May import: `chat`, `config`, `errors`.
"""

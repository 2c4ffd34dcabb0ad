"""The Flask app: the app factory and request record (`app`), the routes (`chat`: the
OpenAI chat endpoint; `admin`: load/unload and their events; `page`: the chat page),
the answer's HTTP shape (`respond`: JSON, SSE framing, the request's end) and the OpenAPI
document (`openapi`).

Flask lives here and in `ops` (its request hooks) only. Routes stay thin: each step of a
request is one call into the package that owns it.

May import: `ops`, `gateway`, `engine`, `chat`, `library`, `config`, `errors`.
"""

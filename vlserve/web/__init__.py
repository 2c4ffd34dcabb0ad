"""The Flask app. `app` builds it (the shared state, blueprints, hooks, error mapping);
`lifecycle` is what every request shares (its JSON body, its error answer, SSE framing, its
end: log line and observers); `state` is what routes read of the app. The routes: `api`
lists the OpenAI API's (`models`: /health and /v1/models; `chat`: /v1/chat/completions),
`admin` loads and unloads models, `page` serves the chat page, `openapi` the document.
A chat request's answer is `answer` (a queued job's, streamed or whole), `replay` (from the
response cache) or `forwarding` (an upstream's, through the gateway); `client` tells whether
the client is still there.

Flask lives here and in `ops` (its request hooks) only. Routes stay thin: each step of a
request is one call into the package that owns it.

May import: `ops`, `engine`, `config`, `gateway`, `chat`, `library`, `errors`.
"""

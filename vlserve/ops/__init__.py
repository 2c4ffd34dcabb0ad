"""Operating the server safely: API keys and scopes (`auth`), rate and stream limits
(`limits`), CORS (`cors`), Origin and Host checks (`origin`), the audit log (`audit`),
Prometheus metrics (`metrics`) and the on-disk response cache (`respcache`).

Most of these are Flask request hooks that `web.app` installs, so they may use Flask; none
knows about routes or the engine.

May import: `chat` (request shapes, image hashes, host syntax), `config`, `errors`.
"""

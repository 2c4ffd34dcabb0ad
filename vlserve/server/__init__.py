"""The HTTP server: gunicorn's asyncio worker reading each request in full, under deadlines,
before the Flask app gets one of its threads (`bridge`), and the gunicorn application that
runs it all in one process, the model's (`run`).

May import: `web` (the app it serves), `config`, `errors`. Nothing imports it but `cli`.
"""

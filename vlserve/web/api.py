"""The OpenAI API's routes, on the blueprint named "api" (auth's open endpoints and scopes
and the rate limits key on that name): what serves each."""

from __future__ import annotations

from flask import Blueprint

from . import chat, models, prefill

bp = Blueprint("api", __name__)
bp.add_url_rule("/health", view_func=models.health, methods=["GET"])
bp.add_url_rule("/v1/models", view_func=models.list_models, methods=["GET"])
bp.add_url_rule("/v1/models/<path:name>", view_func=models.get_model, methods=["GET"])
bp.add_url_rule("/v1/chat/completions", view_func=chat.chat_completions, methods=["POST"])
bp.add_url_rule("/v1/chat/prefill", view_func=prefill.create, endpoint="prefill",
                methods=["POST"])
bp.add_url_rule("/v1/chat/prefill/<prefill_id>", view_func=prefill.status,
                endpoint="prefill_status", methods=["GET"])
bp.add_url_rule("/v1/chat/prefill/<prefill_id>", view_func=prefill.cancel,
                endpoint="prefill_cancel", methods=["DELETE"])

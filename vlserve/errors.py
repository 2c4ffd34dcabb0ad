"""Errors that reach a client, mapped to HTTP status by exception type (never by text).

Every module raises one of these; `app.py` turns them into the OpenAI error shape
`{"error": {"message", "type", "param", "code"}}` in one place.
"""

from __future__ import annotations


class APIError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def to_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}


class InvalidRequestError(APIError):
    status = 400
    type = "invalid_request_error"


class ContextLengthError(InvalidRequestError):
    code = "context_length_exceeded"


class ImageError(InvalidRequestError):
    code = "invalid_image"


class AuthenticationError(APIError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFoundError(APIError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class MethodNotAllowedError(APIError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeoutError(APIError):
    """A request whose head or body did not arrive within the server's deadlines (a client
    sending too slowly); answered by the server before the app runs (bridge.py)."""
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLargeError(APIError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaTypeError(APIError):
    """A body that is not JSON (a form, text/plain): the API reads JSON only."""
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class ServiceUnavailableError(APIError):
    """Busy (queue full) or not ready (loading): the client may retry later."""
    status = 503
    type = "service_unavailable"
    code = "server_busy"


class TimeoutError_(APIError):
    status = 504
    type = "timeout_error"
    code = "request_timeout"


class InternalError(APIError):
    status = 500
    type = "server_error"
    code = "internal_error"


class ModelLoadError(APIError):
    """Another model could not be loaded; the previous one is serving again (or the message
    says it is not)."""
    status = 500
    type = "server_error"
    code = "model_load_failed"


class BadGatewayError(APIError):
    """An upstream server could not be reached or broke the connection (gateway mode)."""
    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"


class UpstreamError(APIError):
    """An upstream's own error response, passed on with its status (gateway mode)."""
    type = "upstream_error"
    code = "upstream_error"

    def __init__(self, message: str, status: int, **kwargs):
        super().__init__(message, **kwargs)
        self.status = status

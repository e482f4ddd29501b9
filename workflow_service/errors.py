"""The error hierarchy: each class carries its HTTP status and SPEC code."""

from __future__ import annotations


class APIError(Exception):
    """An error a client can act on; rendered as the SPEC.md envelope."""

    status = 500
    code = "INTERNAL_ERROR"
    message = "internal server error"

    def __init__(self, message: str | None = None, details=None, headers: dict | None = None):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.details = details
        self.headers = headers or {}


class BadRequest(APIError):
    status, code, message = 400, "BAD_REQUEST", "request body is not valid JSON"


class Unauthorized(APIError):
    status, code, message = 401, "UNAUTHORIZED", "missing or invalid API key"


class NotFound(APIError):
    status, code, message = 404, "NOT_FOUND", "not found"


class MethodNotAllowed(APIError):
    status, code, message = 405, "METHOD_NOT_ALLOWED", "method not allowed"


class Conflict(APIError):
    status, code, message = 409, "CONFLICT", "conflict"


class PayloadTooLarge(APIError):
    status, code, message = 413, "PAYLOAD_TOO_LARGE", "request body is too large"


class UnsupportedMediaType(APIError):
    status, code, message = 415, "UNSUPPORTED_MEDIA_TYPE", "request body must be application/json"


class ValidationFailed(APIError):
    status, code, message = 422, "VALIDATION_ERROR", "request validation failed"


class DatabaseUnavailable(APIError):
    status, code, message = 503, "SERVICE_UNAVAILABLE", "database unavailable, try again later"


def problem(loc: list, message: str) -> dict:
    """One entry of a 422's `details`: where, and what is wrong."""
    return {"loc": loc, "message": message}

"""Cross-cutting request handling: request ids, JSON logs, API keys, errors."""

from __future__ import annotations

import hmac
import json
import logging
import re
import sys
import time
import uuid

import falcon

from .errors import APIError, MethodNotAllowed, NotFound, Unauthorized

log = logging.getLogger("workflow.http")

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class RequestContext:
    """Keep or mint the request id, echo it, and log one `request.end` line."""

    def process_request(self, req, resp):
        given = req.get_header("X-Request-ID")
        req.context.request_id = given if given and REQUEST_ID_RE.match(given) else str(uuid.uuid4())
        req.context.started = time.perf_counter()

    def process_response(self, req, resp, resource, req_succeeded):
        request_id = req.context.get("request_id") or str(uuid.uuid4())
        resp.set_header("X-Request-ID", request_id)
        if (resp.text is None and resp.data is None and resp.media is not None
                and resp.content_type in (None, falcon.MEDIA_JSON)):  # None: the app's default, JSON
            # Falcon renders media after the middleware and answers a failure there with an
            # empty 500; rendered here, a failure gets the envelope like any other error.
            try:
                resp.text = _render_media(resp.media)
            except Exception as ex:  # noqa: BLE001 - any failure is a 500 in the envelope
                handle_error(req, resp, ex, {})
        started = req.context.get("started", time.perf_counter())
        log.info(
            "request.end",
            extra={
                "fields": {
                    "method": req.method,
                    "path": req.path,
                    "status_code": resp.status_code,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    "request_id": request_id,
                }
            },
        )


_render_media = json.JSONEncoder(ensure_ascii=False).encode  # what Falcon's JSON handler writes


class APIKeyAuth:
    """Writes need an `X-API-Key` matching one of the configured keys.

    Checked before routing, validation and lookup (SPEC fine points). Every key
    is compared, in constant time, so timing tells nothing about which matched.
    """

    def __init__(self, keys: tuple[str, ...]):
        self._keys = [k.encode() for k in keys]

    def process_request(self, req, resp):
        if not self._keys or req.method not in WRITE_METHODS:
            return
        given = (req.get_header("X-API-Key") or "").encode("utf-8", "replace")
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            raise Unauthorized(
                "missing or invalid X-API-Key header",
                headers={"WWW-Authenticate": 'ApiKey realm="workflow", header="X-API-Key"'},
            )


_FALCON_ERRORS = {
    404: NotFound,
    405: MethodNotAllowed,
}
_CODES = {cls.status: cls.code for cls in APIError.__subclasses__()}  # errors.py's classes name each code once


def handle_error(req, resp, ex, params):
    """Render every error as the SPEC.md envelope; the stack goes to the log only."""
    if isinstance(ex, APIError):
        error = ex
    elif isinstance(ex, falcon.HTTPError):
        error = _from_falcon(ex)
    else:
        log.error(
            "request.error",
            exc_info=ex,
            extra={"fields": {"request_id": req.context.get("request_id"), "path": req.path}},
        )
        error = APIError()
    if error.status >= 500:
        log.warning("request.failed", extra={"fields": {"request_id": req.context.get("request_id"),
                                                         "status_code": error.status, "code": error.code}})
    resp.status = error.status
    resp.content_type = falcon.MEDIA_JSON
    for name, value in error.headers.items():
        resp.set_header(name, value)
    resp.text = json.dumps(
        {
            "error": {"code": error.code, "message": error.message, "details": error.details},
            "request_id": req.context.get("request_id"),
        }
    )


def _from_falcon(ex: falcon.HTTPError) -> APIError:
    status = ex.status_code
    cls = _FALCON_ERRORS.get(status)
    headers = dict(ex.headers or {})
    if cls is NotFound:
        return NotFound("no such route" if isinstance(ex, falcon.HTTPRouteNotFound) else "not found")
    if cls is MethodNotAllowed:
        return MethodNotAllowed(headers=headers)
    error = APIError(ex.description or ex.title or "error", headers=headers)
    error.status = status
    error.code = _CODES.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR")
    return error


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, event, then the event's fields."""

    _encoder = json.JSONEncoder(default=str)  # built once: json.dumps(default=...) builds one per call
    _second, _second_text = -1, ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # the formatted second is reused for every line within it
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        line = {
            "ts": f"{self._second_text}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return self._encoder.encode(line)


def configure_logging(level: str = "INFO", stream=None) -> None:
    """Send the `workflow` loggers to stdout as JSON lines (CLI and gunicorn entry only)."""
    # One JSON line per request is on the hot path: skip the caller lookup and the
    # thread/process bookkeeping that the formatter never prints.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger("workflow")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False

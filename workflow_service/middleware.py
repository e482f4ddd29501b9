"""Cross-cutting request handling: request ids, JSON logs, API keys, errors."""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable

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
        fields = {
            "method": req.method,
            "path": req.path,
            "status_code": resp.status_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "request_id": request_id,
        }
        handler = _request_log_handler()
        if handler is None:
            log.info("request.end", extra={"fields": fields})
        else:
            handler.write_info(log.name, "request.end", fields)


def _request_log_handler() -> LineBatchHandler | None:
    """`configure_logging`'s handler, when it alone would write `request.end` and nothing was added since.

    The line is then written without logging's LogRecord and dispatch: the same line to the same
    place, for a few percent more gets by id under load (docs/decisions.md, "Logging"). A handler,
    filter, formatter, level or LogRecord factory that an embedder or a test sets takes the usual path.
    """
    parent = log.parent
    if (log.disabled or log.handlers or log.filters or not log.propagate or not log.isEnabledFor(logging.INFO)
            or parent.name != "workflow" or parent.propagate or parent.filters or len(parent.handlers) != 1
            or logging.getLogRecordFactory() is not logging.LogRecord):
        return None
    handler = parent.handlers[0]
    if (type(handler) is not LineBatchHandler or handler.filters or handler.level > logging.INFO
            or type(handler.formatter) is not JSONFormatter):
        return None
    return handler


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


def _json_line_encoder() -> Callable[[dict], str]:
    """`json.JSONEncoder(default=str).encode`, without building CPython's C encoder for every line."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator
        return json.JSONEncoder(default=str).encode
    # No markers dict: one shared by threads could not be trusted after a failure. A circular
    # field then ends in RecursionError, which is reported like json's own ValueError.
    chunks = make(None, str, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True)

    def encode(line: dict) -> str:
        try:
            return "".join(chunks(line, 0))
        except RecursionError as exc:
            raise ValueError("a log field is circular or nested too deeply") from exc

    return encode


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, event, then the event's fields."""

    _encode = staticmethod(_json_line_encoder())
    _second, _second_text = -1, ""

    def format(self, record: logging.LogRecord) -> str:
        exception = self.formatException(record.exc_info) if record.exc_info else None
        return self.event_line(record.created, int(record.msecs), record.levelname.lower(), record.name,
                               record.getMessage(), getattr(record, "fields", None), exception)

    def event_line(self, created: float, msecs: int, level: str, logger: str, event: str, fields: dict | None,
                   exception: str | None = None) -> str:
        """The line of an event at `created` (seconds), `msecs` its milliseconds; call it under a handler lock."""
        second = int(created)
        if second != self._second:  # the formatted second is reused for every line within it
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        line = {"ts": f"{self._second_text}.{msecs:03d}Z", "level": level, "logger": logger, "event": event}
        if fields:
            line.update(fields)
        if exception:
            line["exception"] = exception
        return self._encode(line)


class LineBatchHandler(logging.StreamHandler):
    """A StreamHandler that writes its lines a few kilobytes at a time instead of one by one.

    A line waits at most FLUSH_SECONDS (a thread of the process writes it then); a
    WARNING or worse goes out at once, after the lines before it. A write ends on a
    line and never passes PIPE_BUF bytes, so the lines of several processes sharing
    one pipe never interleave. A write for every line, from the thread serving the
    request, cost more under load than the line itself (docs/decisions.md, "Logging").
    Lines waiting when the process is killed outright (SIGKILL) are lost; a normal
    exit writes them (logging.shutdown).
    """

    FLUSH_SECONDS = 0.1
    CHUNK_BYTES = 4096  # PIPE_BUF on Linux: a pipe keeps a write this small whole

    def __init__(self, stream=None):
        super().__init__(stream)
        self._reset()

    def _reset(self) -> None:
        """Nothing waiting and no flusher: at start, and in a forked child (its parent writes what waited)."""
        self._pid = os.getpid()
        self._lines: list[str] = []
        self._size = 0
        self._waiting = threading.Event()
        self._flusher: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:  # Handler.handle holds self.lock
        try:
            self._add(self.format(record) + self.terminator, now=record.levelno >= logging.WARNING)
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's convention: report, never raise into the caller
            self.handleError(record)

    def write_info(self, logger: str, event: str, fields: dict) -> None:
        """What emit writes for such an INFO record, without building the record (see `_request_log_handler`)."""
        created = time.time()
        try:
            with self.lock:
                self._add(self.formatter.event_line(created, int((created - int(created)) * 1000), "info", logger,
                                                    event, fields) + self.terminator)
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - as emit: a failing stream never fails the request
            self.handleError(logging.makeLogRecord({"name": logger, "msg": event, "levelname": "INFO"}))

    def _add(self, line: str, now: bool = False) -> None:
        if self._pid != os.getpid():
            self._reset()
        size = len(line) if line.isascii() else len(line.encode())
        if self._size + size > self.CHUNK_BYTES:
            self._write()
        self._lines.append(line)
        self._size += size
        if now:
            self._write()
        elif not self._waiting.is_set():
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_soon, name="workflow-log-flush", daemon=True)
                self._flusher.start()
            self._waiting.set()

    def _write(self) -> None:
        if self._lines:
            text, self._lines, self._size = "".join(self._lines), [], 0
            self.stream.write(text)
            self.stream.flush()

    def flush(self) -> None:
        with self.lock:
            if self._pid == os.getpid():
                self._write()
            if self.stream and hasattr(self.stream, "flush"):
                self.stream.flush()

    def _flush_soon(self) -> None:
        waiting = self._waiting
        while True:
            waiting.wait()
            time.sleep(self.FLUSH_SECONDS)  # gather the lines of the next FLUSH_SECONDS into few writes
            waiting.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - a failing stream must not end the thread; the lines are lost
                self.handleError(logging.makeLogRecord({"name": "workflow", "msg": "log.flush"}))


def configure_logging(level: str = "INFO", stream=None, batch_lines: bool = True) -> None:
    """Send the `workflow` loggers to stdout as JSON lines (CLI and gunicorn entry only).

    `batch_lines`: write them a few at a time, at most LineBatchHandler.FLUSH_SECONDS late.
    """
    # One JSON line per request is on the hot path: skip the caller lookup and the
    # thread/process bookkeeping that the formatter never prints.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = (LineBatchHandler if batch_lines else logging.StreamHandler)(stream or sys.stdout)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger("workflow")
    for replaced in root.handlers:
        try:
            replaced.flush()  # a LineBatchHandler's waiting lines
        except (OSError, ValueError):  # its stream is gone or closed: nothing to save
            pass
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False

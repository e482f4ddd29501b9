"""JSON log lines: written a few at a time (LineBatchHandler) and, for `request.end`, without a LogRecord."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import webtest

import workflow
from workflow_service import middleware
from workflow_service.middleware import JSONFormatter, LineBatchHandler, configure_logging

ROOT = Path(__file__).resolve().parent.parent


class RecordingStream(io.StringIO):
    """A text stream that keeps each write apart and signals the first one."""

    def __init__(self):
        super().__init__()
        self.writes: list[str] = []
        self.written = threading.Event()

    def write(self, text):
        self.writes.append(text)
        self.written.set()
        return super().write(text)


class BrokenStream(io.StringIO):
    def write(self, text):
        raise OSError(32, "Broken pipe")


@pytest.fixture
def workflow_logger():
    """Restore the `workflow` logger and logging's globals that configure_logging changes."""
    logger = logging.getLogger("workflow")
    saved = (logger.handlers[:], logger.level, logger.propagate, logging._srcfile, logging.logThreads,
             logging.logProcesses, logging.logMultiprocessing)
    yield logger
    (logger.handlers[:], level, logger.propagate, logging._srcfile, logging.logThreads, logging.logProcesses,
     logging.logMultiprocessing) = saved
    logger.setLevel(level)


def batch_handler(stream) -> LineBatchHandler:
    handler = LineBatchHandler(stream)
    handler.setFormatter(JSONFormatter())
    return handler


def info(n: int, size: int = 300) -> logging.LogRecord:
    return logging.makeLogRecord({"name": "workflow.test", "levelno": logging.INFO, "levelname": "INFO",
                                  "msg": "line", "fields": {"n": n, "pad": "x" * size}})


def test_lines_go_out_in_writes_of_whole_lines_within_pipe_buf(workflow_logger):
    stream = RecordingStream()
    handler = batch_handler(stream)
    handler.FLUSH_SECONDS = 3600  # only filling a chunk, or flush(), writes here
    for n in range(100):
        handler.handle(info(n))
    assert stream.writes, "a hundred 360-byte lines fill several 4 KiB writes"
    assert all(len(w.encode()) <= LineBatchHandler.CHUNK_BYTES and w.endswith("\n") for w in stream.writes)
    assert len(stream.writes) < 20
    handler.flush()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["n"] for line in lines] == list(range(100))


def test_a_warning_writes_the_lines_waiting_before_it_at_once(workflow_logger):
    stream = RecordingStream()
    handler = batch_handler(stream)
    handler.FLUSH_SECONDS = 3600
    handler.handle(info(1))
    handler.handle(info(2))
    assert stream.writes == []
    handler.handle(logging.makeLogRecord({"name": "workflow.test", "levelno": logging.WARNING,
                                          "levelname": "WARNING", "msg": "sqlite.unavailable"}))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["event"], line.get("n")) for line in lines] == [("line", 1), ("line", 2),
                                                                 ("sqlite.unavailable", None)]
    assert len(stream.writes) == 1


def test_a_waiting_line_is_written_by_the_process_flusher_without_a_flush_call(workflow_logger):
    stream = RecordingStream()
    handler = batch_handler(stream)
    handler.FLUSH_SECONDS = 0.01
    handler.handle(info(7, size=10))
    assert stream.written.wait(10), "the flusher thread never wrote the line"
    assert json.loads(stream.getvalue())["n"] == 7


def test_a_forked_child_leaves_its_parents_waiting_lines_to_the_parent(workflow_logger, tmp_path):
    path = tmp_path / "log.jsonl"
    with open(path, "a", encoding="utf-8") as stream:
        handler = batch_handler(stream)
        handler.FLUSH_SECONDS = 3600
        handler.handle(info(1, size=10))  # waiting in the parent when it forks
        pid = os.fork()
        if pid == 0:  # the child: one line of its own, written at once, then leave without cleanup
            try:
                handler.handle(info(2, size=10))
                handler.flush()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        handler.flush()
    numbers = sorted(json.loads(line)["n"] for line in path.read_text().splitlines())
    assert numbers == [1, 2]


def test_a_failing_stream_never_fails_a_request(workflow_logger, tmp_path, monkeypatch, capsys):
    configure_logging("INFO", stream=BrokenStream())
    handler = workflow_logger.handlers[0]
    handler.CHUNK_BYTES = 1  # every line is written at once, and fails
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'broken-log.db'}")
    app = webtest.TestApp(workflow.create_app())
    try:
        assert app.get("/health").status_int == 200
        assert app.get("/records/not-a-uuid", expect_errors=True).status_int == 404
    finally:
        app.app.db.close()
    assert "Broken pipe" in capsys.readouterr().err


def request_end_lines(text: str) -> list[dict]:
    return [d for d in map(json.loads, text.splitlines()) if d["event"] == "request.end"]


def test_request_end_skips_the_log_record_only_while_the_configured_handler_writes_alone(workflow_logger,
                                                                                         tmp_path, monkeypatch):
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    handler = workflow_logger.handlers[0]
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'fast-log.db'}")
    app = webtest.TestApp(workflow.create_app())
    seen = []
    try:
        assert middleware._request_log_handler() is handler
        app.get("/health", headers={"X-Request-ID": "fast-1"})
        handler.flush()
        fast = request_end_lines(stream.getvalue())

        handler.addFilter(lambda record: seen.append(record.getMessage()) or True)  # an embedder's filter
        assert middleware._request_log_handler() is None
        app.get("/health", headers={"X-Request-ID": "fast-1"})
        handler.flush()
        slow = request_end_lines(stream.getvalue())[1:]
    finally:
        app.app.db.close()
    assert seen == ["request.end"], "the filter saw the second request's line"
    for line in fast + slow:
        assert line.pop("ts").endswith("Z") and line.pop("duration_ms") >= 0
    assert fast == slow == [{"level": "info", "logger": "workflow.http", "event": "request.end", "method": "GET",
                             "path": "/health", "status_code": 200, "request_id": "fast-1"}]


@pytest.mark.parametrize("change", ["handler on workflow.http", "level WARNING", "propagate to root",
                                    "second handler", "other formatter", "logger disabled", "record factory"])
def test_anything_added_to_the_log_setup_takes_the_usual_path(workflow_logger, change):
    configure_logging("INFO", stream=io.StringIO())
    http_log = logging.getLogger("workflow.http")
    handler = workflow_logger.handlers[0]
    assert middleware._request_log_handler() is handler
    extra = logging.NullHandler()
    try:
        if change == "handler on workflow.http":
            http_log.addHandler(extra)
        elif change == "level WARNING":
            workflow_logger.setLevel(logging.WARNING)
        elif change == "propagate to root":
            workflow_logger.propagate = True
        elif change == "second handler":
            workflow_logger.addHandler(extra)
        elif change == "logger disabled":  # as logging.config.dictConfig leaves the loggers it does not name
            http_log.disabled = True
        elif change == "record factory":  # an embedder's, adding attributes to every record
            logging.setLogRecordFactory(lambda *args, **kwargs: logging.LogRecord(*args, **kwargs))
        else:
            handler.setFormatter(logging.Formatter("%(message)s"))
        assert middleware._request_log_handler() is None
    finally:
        http_log.removeHandler(extra)
        http_log.disabled = False
        logging.setLogRecordFactory(logging.LogRecord)


def test_the_request_line_is_the_formatters_line(workflow_logger):
    """The fast path and a LogRecord of the same moment give the same text."""
    stream = io.StringIO()
    handler = batch_handler(stream)
    fields = {"method": "GET", "path": "/records/\u00e9\"x", "status_code": 200, "duration_ms": 0.125,
              "request_id": "r-1"}
    record = logging.makeLogRecord({"name": "workflow.http", "levelno": logging.INFO, "levelname": "INFO",
                                    "msg": "request.end", "fields": fields, "created": 1764201600.25, "msecs": 250.0})
    expected = handler.formatter.format(record)
    assert handler.formatter.event_line(1764201600.25, 250, "info", "workflow.http", "request.end",
                                        fields) == expected
    assert json.loads(expected)["ts"] == "2025-11-27T00:00:00.250Z"
    assert json.loads(expected)["path"] == "/records/\u00e9\"x" and "\\u00e9" in expected


def test_lines_still_waiting_are_written_when_the_process_exits():
    """A normal exit runs logging.shutdown, which flushes the handler (a SIGKILL would lose them)."""
    code = ("import logging; from workflow_service.middleware import LineBatchHandler, configure_logging; "
            "LineBatchHandler.FLUSH_SECONDS = 3600; configure_logging('INFO'); "
            "[logging.getLogger('workflow.t').info('left', extra={'fields': {'n': n}}) for n in range(3)]")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["n"] for line in done.stdout.splitlines()] == [0, 1, 2]

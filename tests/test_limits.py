"""Limits are enforced before any work, and slow clients cannot starve the service (real server)."""

from __future__ import annotations

import socket
import time

import pytest
from serverutil import HOST, request, start_server, stop_server

pytestmark = pytest.mark.server


@pytest.fixture
def server(tmp_path):
    srv = start_server(f"sqlite:///{tmp_path / 'limits.db'}", tmp_path / "logs", workers=1, MAX_BODY_BYTES="4096")
    yield srv
    stop_server(srv)


def raw(server, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection((HOST, server.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def test_declared_oversized_body_is_refused_before_it_is_sent(server):
    started = time.monotonic()
    answer = raw(server, b"POST /records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 104857600\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - started < 3  # it did not wait for 100 MB that never came


def test_body_over_the_limit_without_length_is_refused(server):
    chunked = (b"POST /records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
    body = b'{"source": "s", "category": "c", "payload": {"x": "' + b"y" * 8000 + b'"}}'
    answer = raw(server, chunked + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert request("GET", f"{server.base_url}/records")[2].count(b'"total": 0') == 1


def test_oversized_request_line_and_headers_are_rejected_by_gunicorn(server):
    status, _, body = request("GET", f"{server.base_url}/records?category={'a' * 5000}")
    assert status == 422 and b'"VALIDATION_ERROR"' in body  # up to 8,190 bytes the app answers
    status, _, _ = request("GET", f"{server.base_url}/records?category={'a' * 9000}")
    assert status in (400, 414)
    status, _, _ = request("GET", f"{server.base_url}/records", headers={"X-Big": "b" * 9000})
    assert status in (400, 431)
    assert request("GET", f"{server.base_url}/health")[0] == 200  # and the server is fine


def test_slow_clients_do_not_starve_the_service(server):
    # A few clients trickle their headers; gunicorn's threads keep answering everyone else.
    slow = []
    try:
        for _ in range(3):
            sock = socket.create_connection((HOST, server.port), timeout=5)
            sock.sendall(b"GET /records HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            slow.append(sock)
        for _ in range(20):
            started = time.monotonic()
            status, _, _ = request("GET", f"{server.base_url}/health", timeout=5)
            assert status == 200 and time.monotonic() - started < 2
    finally:
        for sock in slow:
            sock.close()


def test_chunked_bodies_within_the_limit_are_read(server):
    body = b'{"source": "s", "category": "c", "payload": {"chunked": true}}'
    head = b"POST /records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = raw(server, head + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]


def test_batch_clients_still_sending_their_bodies_hold_no_turn(server):
    # Two batches at a time are parsed and written per process (RecordBatch.AT_ONCE); the body is
    # read before a turn is taken, so clients that never finish sending theirs keep no one waiting.
    head = (b"POST /records/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 4000\r\n\r\n")
    slow = []
    try:
        for _ in range(3):
            sock = socket.create_connection((HOST, server.port), timeout=5)
            sock.sendall(head + b'{"records": [')  # the rest never comes
            slow.append(sock)
        body = {"records": [{"source": "s", "category": "c", "payload": {}}] * 3}
        for _ in range(3):
            started = time.monotonic()
            status, _, _ = request("POST", f"{server.base_url}/records/batch", body=body, timeout=5)
            assert status == 201 and time.monotonic() - started < 2
    finally:
        for sock in slow:
            sock.close()

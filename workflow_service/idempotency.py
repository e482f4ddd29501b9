"""Idempotency keys: the same key and body replay the original response.

The key is claimed with an insert in the same write transaction that creates
the records, so concurrent requests with one key serialise on it: the first
creates, the others wait for its commit and replay its response (SPEC: none
gets an "in progress" error). Keys are expired by the worker and the
`cleanup` command, never by a request.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import TypeVar

from .db import Database, Session
from .errors import Conflict, ValidationFailed, problem
from .timeutil import later, utc_now_text

T = TypeVar("T")
KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")


def idempotency_key(req) -> str | None:
    """The request's `Idempotency-Key`, checked; None when absent."""
    key = req.get_header("Idempotency-Key")
    if key is None:
        return None
    if not KEY_RE.match(key):
        raise ValidationFailed(details=[problem(["header", "Idempotency-Key"],
                                                "must be 1-255 printable ASCII characters without spaces")])
    return key


def fingerprint(method: str, path: str, document) -> str:
    """A hash of what the request asks for: method, route and canonical body."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode("utf-8", "surrogatepass")).hexdigest()


def run_once(db: Database, key: str | None, request_hash: str, create: Callable[[Session], T],
             render: Callable[[T], str], now: Callable[[], str] = utc_now_text,
             records: int = 1) -> tuple[int, str, T | None]:
    """Run `create`, which creates `records` records, in a write transaction unless `key` already has a response.

    `render` turns what `create` returned into the 201 response's JSON text;
    without a key that happens after the commit, outside the write lock.
    Returns (status, JSON text, what `create` returned), the last None when
    the key's stored response was replayed. The same key with another
    request is a 409 Conflict.
    """
    if key is None:
        created = db.write_grouped(create, records)
        return 201, render(created), created

    def claim_then_create(s: Session):
        """(the key's stored response, None) when it has one, else (None, what this request got)."""
        if s.one("idempotency.claim", {"key": key, "request_hash": request_hash, "now": now()}) is None:
            return s.one("idempotency.get", {"key": key}), None
        created = create(s)
        body = render(created)
        s.run("idempotency.store", {"key": key, "status_code": 201, "response": body})
        return None, (201, body, created)

    stored, outcome = db.write_grouped(claim_then_create, records)
    if outcome is not None:
        return outcome
    if stored["request_hash"] != request_hash:
        raise Conflict("Idempotency-Key was already used with a different request",
                       details={"idempotency_key": key})
    return stored["status_code"], stored["response"], None


def expire(db: Database, ttl_hours: float, now: Callable[[], str] = utc_now_text) -> int:
    """Delete keys older than `ttl_hours`; return how many."""
    cutoff = later(now(), -ttl_hours * 3600)
    with db.write() as s:
        return s.run("idempotency.expire", {"cutoff": cutoff})

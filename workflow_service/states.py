"""The state machine, its one transition function, and the processors.

`pending → processed`, `pending → failed`, `failed → pending` (retry); nothing
else. Every change runs in one write transaction that locks the record, checks
the move, runs the processor, stores the new state and appends an audit event.
A transient processor error keeps the record pending (an audit event
`pending → pending` says why) and delays it by an exponential backoff.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ConfigError
from .db import Database
from .errors import Conflict, NotFound
from .timeutil import later, utc_now_text

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

log = logging.getLogger("workflow.states")

PENDING, PROCESSED, FAILED = "pending", "processed", "failed"
STATUSES = (PENDING, PROCESSED, FAILED)
ALLOWED = {(PENDING, PROCESSED), (PENDING, FAILED), (FAILED, PENDING)}

Processor = Callable[[dict, dict], dict]


class TransientError(Exception):
    """Raised by a processor for a failure worth retrying later (a timeout, a
    service down): the record stays pending, `attempts` grows, and it becomes
    eligible again after an exponential backoff, until MAX_ATTEMPTS."""


@dataclass(frozen=True)
class RetryPolicy:
    """How transient processor errors are retried."""

    max_attempts: int = 5
    base_seconds: float = 2.0
    cap_seconds: float = 3600.0

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed attempt."""
        return min(self.cap_seconds, self.base_seconds * 2 ** max(0, attempts - 1))


@dataclass(frozen=True)
class Outcome:
    """What processing decided for one record."""

    status: str
    result: dict | None = None
    classification: str | None = None
    score: float | None = None
    error: str | None = None
    transient: bool = False


def builtin_rule(payload: dict) -> Outcome:
    """The original service's rule: a `priority`, if present, must be numeric."""
    priority = payload.get("priority", 0)
    try:
        if isinstance(priority, bool):  # SPEC: a JSON boolean is not a number
            raise ValueError
        score = float(priority)
    except (TypeError, ValueError, OverflowError):
        return Outcome(FAILED, error="invalid priority")
    if not math.isfinite(score):  # "Infinity" would not round-trip as JSON
        return Outcome(FAILED, error="invalid priority")
    classification = "high" if score >= 8 else "medium" if score >= 4 else "low"
    return Outcome(
        PROCESSED,
        result={"score": score, "classification": classification},
        classification=classification,
        score=score,
    )


class ProcessorRegistry:
    """Per-app processors: category schemas, embedder functions, the built-in rule."""

    def __init__(self, processors: dict[str, Processor] | None = None, categories_dir: Path | None = None,
                 retry: RetryPolicy | None = None):
        self.retry = retry or RetryPolicy()
        self.functions = dict(processors or {})
        for category, fn in self.functions.items():
            if not callable(fn):
                raise TypeError(f"processor for category {category!r} is not callable")
        self.schemas = load_category_schemas(categories_dir) if categories_dir else {}

    def run(self, record: dict) -> Outcome:
        """Decide the outcome of processing `record` (never raises)."""
        category, payload = record["category"], record["payload"]
        schema = self.schemas.get(category)
        if schema is not None:
            problems = [
                f"{'/'.join(str(p) for p in e.absolute_path) or '(payload)'}: {e.message}"
                for e in sorted(schema.iter_errors(payload), key=lambda e: list(map(str, e.absolute_path)))
            ]
            if problems:
                return Outcome(FAILED, error="; ".join(problems))
        fn = self.functions.get(category)
        if fn is None:
            return builtin_rule(payload)
        try:
            result = fn(payload, record)
        except TransientError as exc:
            message = _message(exc)
            log.warning("processor.transient", extra={"fields": {"record_id": record["id"], "error": message}})
            return Outcome(PENDING, error=message, transient=True)
        except Exception as exc:  # the processor's failure is the record's failure
            log.exception("processor.error", extra={"fields": {"record_id": record["id"], "category": category}})
            return Outcome(FAILED, error=_message(exc))
        if not isinstance(result, dict):
            return Outcome(FAILED, error=f"processor returned {type(result).__name__}, not a JSON object")
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            return Outcome(FAILED, error=f"processor result is not JSON: {_message(exc)}")
        score = result.get("score")
        try:
            score = float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else None
        except OverflowError:  # an integer beyond a float's range: no score, as for an infinite one
            score = None
        classification = result.get("classification")
        return Outcome(
            PROCESSED,
            result=result,
            classification=classification if isinstance(classification, str) else None,
            score=score if score is not None and math.isfinite(score) else None,
        )


def _message(exc: BaseException) -> str:
    """An exception's message; its type's name when it has none or its `str()` fails."""
    try:
        return str(exc) or type(exc).__name__
    except Exception:
        return type(exc).__name__


def load_category_schemas(folder: Path) -> dict[str, Draft202012Validator]:
    """Load `<category>.json` schemas; an invalid one stops start-up."""
    paths = sorted(Path(folder).glob("*.json"))
    if not paths:
        return {}
    from jsonschema import Draft202012Validator  # only when there are some (validation.validator_for)
    from jsonschema.exceptions import SchemaError

    validators = {}
    for path in paths:
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
            Draft202012Validator.check_schema(schema)
        except (ValueError, SchemaError) as exc:
            message = getattr(exc, "message", str(exc))
            raise ConfigError(f"CATEGORY_SCHEMAS_DIR: {path.name} is not a valid JSON Schema: {message}") from None
        validators[path.stem] = Draft202012Validator(schema)
    return validators


def transition(
    db: Database,
    record_id: str,
    target: str,
    *,
    registry: ProcessorRegistry | None = None,
    actor: str | None = None,
    now: Callable[[], str] = utc_now_text,
) -> dict:
    """Move one record towards `target` atomically; return the stored row.

    `target` is `processed` to run the processor (whose outcome may be
    `failed`, or `pending` again after a transient error) or `pending` to retry
    a failed record. Raises NotFound for an unknown record and Conflict, with
    the current status, when the move is not allowed from where the record is.
    """
    with db.write() as s:
        row = s.one("lock_record", {"id": record_id})
        if row is None:
            raise NotFound("record not found")
        return apply_transition(s, row, target, registry=registry, actor=actor, now=now)


def apply_transition(s, row: dict, target: str, *, registry: ProcessorRegistry | None, actor: str | None,
                     now: Callable[[], str] = utc_now_text) -> dict:
    """One record's transition, inside the caller's write transaction on a locked row; the stored row.

    Processing needs the app's or worker's `registry`; a retry needs none. The
    worker decides a claimed batch's transitions first and stores them together
    (`decide_transition`, `store_transitions`).
    """
    change = decide_transition(row, target, registry=registry, actor=actor, now=now)
    updated = _store(s, change)
    change.log()
    return updated


# A dialect whose SQL has it stores a batch of transitions in two statements (store_transitions).
BATCH_OUTCOMES = "set_outcomes"


@dataclass(frozen=True)
class Change:
    """A decided transition: `set_outcome`'s parameters and its audit event's (`insert_event`)."""

    outcome: dict
    event: dict
    transient: bool

    def log(self) -> None:
        log.info("record.transition", extra={"fields": {
            "record_id": self.event["record_id"], "from": self.event["from_status"], "to": self.event["to_status"],
            "request_id": self.event["request_id"], "transient": self.transient}})


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str | None) -> str | None:
    """A processor's text as both databases can store it: NUL (which PostgreSQL text cannot hold)
    and lone surrogates (which neither can encode) become U+FFFD. A request body cannot carry
    them (422), but an embedder's processor can raise or classify with any string."""
    return text if text is None or text.isascii() and "\x00" not in text else _UNSTORABLE.sub("\ufffd", text)


def decide_transition(row: dict, target: str, *, registry: ProcessorRegistry | None, actor: str | None,
                      now: Callable[[], str] = utc_now_text) -> Change:
    """What moving the locked `row` towards `target` stores; runs the processor, writes nothing."""
    from_status = row["status"]
    if (from_status, target) not in ALLOWED:
        raise Conflict(f"record is {from_status}, cannot move it to {target}", details={"status": from_status})
    available_at = None
    if target == PROCESSED:
        if registry is None:
            raise TypeError("processing a record needs the app's or worker's ProcessorRegistry")
        outcome = registry.run(dict(row, payload=json.loads(row["payload"])))
        stamp = now()
        if outcome.transient:
            attempts = row["attempts"] + 1
            if attempts >= registry.retry.max_attempts:
                outcome = Outcome(FAILED, error=f"gave up after {attempts} attempts: {outcome.error}")
            else:
                available_at = later(stamp, registry.retry.delay(attempts))
    else:
        outcome, stamp = Outcome(target), now()
        available_at = stamp
    return _change(row, outcome, stamp, available_at, attempt=1 if target == PROCESSED else 0, actor=actor)


def failed_change(row: dict, error: str, *, actor: str | None, now: Callable[[], str] = utc_now_text) -> Change:
    """An attempt that fails the pending `row` with `error`, without its processor (the worker's,
    for a record that could not be processed or stored)."""
    return _change(row, Outcome(FAILED, error=error), now(), None, attempt=1, actor=actor)


def _change(row: dict, outcome: Outcome, stamp: str, available_at: str | None, *, attempt: int,
            actor: str | None) -> Change:
    """What storing `outcome` for `row` at `stamp` writes: the record's columns and its audit event."""
    from_status = row["status"]
    error = storable(outcome.error)
    detail = error
    if outcome.transient:
        detail = f"attempt {row['attempts'] + attempt} failed, retry after {available_at}: {error}"
    return Change(
        outcome={
            "id": row["id"],
            "from_status": from_status,
            "to_status": outcome.status,
            "result": None if outcome.result is None else json.dumps(outcome.result),
            "classification": storable(outcome.classification),
            "score": outcome.score,
            "error": error,
            "attempt": attempt,
            "now": stamp,
            "processed_at": stamp if outcome.status in (PROCESSED, FAILED) else None,
            "available_at": available_at,
        },
        event={"record_id": row["id"], "from_status": from_status, "to_status": outcome.status, "now": stamp,
               "request_id": actor, "detail": detail},
        transient=outcome.transient,
    )


def store_transitions(s, changes: list[Change]) -> None:
    """Store decided transitions of locked rows: with BATCH_OUTCOMES in one statement for the
    records and one for their events, so that the count trigger runs once (PostgreSQL,
    docs/reports.md); otherwise record by record."""
    if not changes:
        return
    if BATCH_OUTCOMES in s.queries:
        stored = s.all(BATCH_OUTCOMES, {"outcomes": json.dumps([c.outcome for c in changes])})
        if len(stored) != len(changes):  # impossible under the row locks; refuse rather than guess
            raise Conflict("records changed concurrently")
        s.run("insert_events", {"events": json.dumps([c.event for c in changes])})
    else:
        for change in changes:
            _store(s, change)
    for change in changes:
        change.log()


def _store(s, change: Change) -> dict:
    """Store one decided transition and its audit event; the stored row."""
    updated = s.one("set_outcome", change.outcome)
    if updated is None:  # impossible under the row/write lock; refuse rather than guess
        raise Conflict("record changed concurrently", details={"status": change.outcome["from_status"]})
    s.run("insert_event", change.event)
    return updated

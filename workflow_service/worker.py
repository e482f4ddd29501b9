"""The queue worker: drains eligible pending records through the transition function.

A batch is one write transaction: claim up to N eligible pending records
(PostgreSQL `FOR UPDATE SKIP LOCKED`, so workers on many hosts never wait for
or double-process each other's rows; SQLite `BEGIN IMMEDIATE`), run each
through the processor (`decide_transition`), store the outcomes
(`store_transitions`: on PostgreSQL one statement for the records and one
for their audit events), commit. A worker killed mid-batch commits nothing
of that batch, so its records are simply claimed again: nothing is lost and
nothing is processed twice in the database. A batch whose outcomes cannot be
stored (for any reason but the database being unavailable) is rolled back and
its records processed again one at a time; one whose outcome still cannot be
stored is failed, naming the error's type (`worker.record_set_aside` logs the
rest), so that it neither stalls the queue nor stops the worker.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .db import Database, Session
from .errors import DatabaseUnavailable
from .idempotency import expire
from .reports import fold_counts
from .states import (
    FAILED,
    PROCESSED,
    Change,
    ProcessorRegistry,
    decide_transition,
    failed_change,
    store_transitions,
)
from .timeutil import utc_now_text

log = logging.getLogger("workflow.worker")


def claim(s: Session, now: str, limit: int) -> list[dict]:
    """Up to `limit` eligible pending records, oldest first, locked for this transaction.

    On PostgreSQL the claim is planned without a sort, so that it walks the queue's index
    whatever statistics the planner holds (`claim_pending_plan`, docs/engine.md).
    """
    params = {"now": now, "limit": limit}
    if "claim_pending_plan" in s.queries:
        return s.all_between("claim_pending_plan", "claim_pending", params, "claim_pending_plan_end")
    return s.all("claim_pending", params)


@dataclass
class BatchStats:
    """What one batch did."""

    claimed: int = 0
    processed: int = 0
    failed: int = 0
    retried_later: int = 0

    def count(self, change: Change) -> None:
        """Count one stored transition."""
        status = change.outcome["to_status"]
        if status == PROCESSED:
            self.processed += 1
        elif status == FAILED:
            self.failed += 1
        else:
            self.retried_later += 1

    def add(self, other: BatchStats) -> None:
        """Add another batch's figures to these."""
        self.claimed += other.claimed
        self.processed += other.processed
        self.failed += other.failed
        self.retried_later += other.retried_later


class _BatchFailed(Exception):
    """A claimed batch whose outcomes could not be decided or stored; its transaction was rolled back."""

    def __init__(self, rows: list[dict]):
        super().__init__(f"a batch of {len(rows)} records failed")
        self.rows = rows


class Worker:
    """Claims and processes batches of pending records."""

    def __init__(self, db: Database, registry: ProcessorRegistry, *, batch_size: int = 50,
                 worker_id: str | None = None, idempotency_ttl_hours: float = 24.0,
                 cleanup_every_seconds: float = 300.0, now: Callable[[], str] = utc_now_text):
        self.db, self.registry, self.batch_size, self.now = db, registry, batch_size, now
        self.worker_id = worker_id or f"worker:{socket.gethostname()}:{os.getpid()}"
        self.idempotency_ttl_hours = idempotency_ttl_hours
        self.cleanup_every_seconds = cleanup_every_seconds
        self._last_cleanup = float("-inf")
        self._cleanup_lock = threading.Lock()  # worker threads share one Worker

    def run_batch(self, actor: str | None = None) -> BatchStats:
        """Claim and process one batch in one transaction.

        A batch that raises while its outcomes are decided or stored (for any reason but the
        database being unavailable) is rolled back and its records are processed again one by
        one, each in a transaction of its own: a record that cannot be processed or stored
        neither holds up the rest nor stops the worker, and is failed itself (`_set_aside`).
        """
        started = time.perf_counter()
        actor = actor or self.worker_id
        try:
            stats = self._claim_and_process(actor)
        except _BatchFailed as failed:
            log.error("worker.batch_failed", exc_info=failed.__cause__,
                      extra={"fields": {"worker_id": actor, "claimed": len(failed.rows)}})
            stats = self._one_by_one(failed.rows, actor)
        if stats.claimed:
            log.info("worker.batch", extra={"fields": {
                "worker_id": actor, "claimed": stats.claimed, "processed": stats.processed,
                "failed": stats.failed, "retried_later": stats.retried_later,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3)}})
        return stats

    def _claim_and_process(self, actor: str) -> BatchStats:
        stats, rows = BatchStats(), []
        try:
            with self.db.write() as s:
                rows = claim(s, self.now(), self.batch_size)
                stats.claimed = len(rows)
                changes = [decide_transition(row, PROCESSED, registry=self.registry, actor=actor, now=self.now)
                           for row in rows]
                store_transitions(s, changes)
        except DatabaseUnavailable:  # a lost connection, a lock timeout: the records wait, as in an outage
            raise
        except Exception as exc:  # rolled back with the transaction; run_batch takes it from here
            if not rows:  # the claim itself failed: no record's doing
                raise
            raise _BatchFailed(rows) from exc
        for change in changes:
            stats.count(change)
        return stats

    def _one_by_one(self, claimed: list[dict], actor: str) -> BatchStats:
        """Process the records of a failed batch each in its own transaction (their processors run again)."""
        stats = BatchStats(claimed=len(claimed))
        for row in claimed:
            try:
                change = self._alone(row, lambda locked: decide_transition(
                    locked, PROCESSED, registry=self.registry, actor=actor, now=self.now))
            except DatabaseUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - this record cannot be processed or stored alone
                change = self._set_aside(row, actor, exc)
            if change is not None:
                stats.count(change)
        return stats

    def _alone(self, claimed: dict, decide: Callable[[dict], Change]) -> Change | None:
        """Store `decide(row)` for a claimed record in a transaction of its own; None, writing
        nothing, when another worker or a request changed the record since the claim."""
        with self.db.write() as s:
            row = s.one("lock_record", {"id": claimed["id"]})
            if row is None or row["updated_at"] != claimed["updated_at"]:
                return None
            change = decide(row)
            store_transitions(s, [change])
        return change

    def _set_aside(self, claimed: dict, actor: str, exc: Exception) -> Change | None:
        """Fail a record that could not be processed or stored alone, naming only the error's type
        (its message may quote SQL or values; the log has it whole). When even that cannot be
        stored, the cause is not the record's: the exception stops the worker, as it always did."""
        log.error("worker.record_set_aside", exc_info=exc, extra={"fields": {"worker_id": actor,
                                                                             "record_id": claimed["id"]}})
        error = f"the worker could not process this record ({type(exc).__name__})"
        return self._alone(claimed, lambda locked: failed_change(locked, error, actor=actor, now=self.now))

    def cleanup(self, force: bool = False) -> None:
        """Expire old idempotency keys and fold the counts' shards, at most every `cleanup_every_seconds`."""
        with self._cleanup_lock:
            if not force and time.monotonic() - self._last_cleanup < self.cleanup_every_seconds:
                return
            self._last_cleanup = time.monotonic()
        removed = expire(self.db, self.idempotency_ttl_hours, now=self.now)
        if removed:
            log.info("worker.idempotency_expired", extra={"fields": {"removed": removed}})
        try:
            folded = fold_counts(self.db)
        except DatabaseUnavailable:  # or a shard's lock held too long: the next cleanup tries again
            log.warning("worker.counts_not_folded", extra={"fields": {"worker_id": self.worker_id}})
            return
        if folded:
            log.info("worker.counts_folded", extra={"fields": {"combinations": folded}})

    def drain(self, stop: threading.Event | None = None, actor: str | None = None) -> BatchStats:
        """Process batches until none is eligible (or `stop` is set); return the totals."""
        total = BatchStats()
        while not (stop and stop.is_set()):
            stats = self.run_batch(actor)
            total.add(stats)
            if stats.claimed == 0:
                break
        return total

    def run_forever(self, stop: threading.Event, poll_interval: float, actor: str | None = None) -> None:
        """Drain, wait `poll_interval` (or until stopped), repeat; survive database outages."""
        while not stop.is_set():
            try:
                self.cleanup()
                stats = self.run_batch(actor)
            except DatabaseUnavailable:
                log.warning("worker.database_unavailable", extra={"fields": {"worker_id": actor or self.worker_id}})
                stop.wait(poll_interval)
                continue
            if stats.claimed == 0:
                stop.wait(poll_interval)


def run_workers(worker: Worker, *, concurrency: int, once: bool, poll_interval: float,
                stop: threading.Event) -> BatchStats:
    """Run `concurrency` threads of `worker` until drained (`once`) or stopped."""
    totals: list[BatchStats] = []
    errors: list[BaseException] = []

    def loop(index: int):
        actor = f"{worker.worker_id}:{index}"
        try:
            if once:
                totals.append(worker.drain(stop, actor))
            else:
                worker.run_forever(stop, poll_interval, actor)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
            stop.set()
        finally:
            worker.db.release_thread()

    threads = [threading.Thread(target=loop, args=(i,), name=f"worker-{i}") for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    # A continuous worker cleans up in its loop (run_forever), where a database that is not there
    # yet is waited for; `--once` does it after its drain, so that the counts it changed are folded.
    if once:
        worker.cleanup(force=True)
    result = BatchStats()
    for stats in totals:
        result.add(stats)
    return result

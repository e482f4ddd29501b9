"""Soak: mixed load at about 70 % of measured capacity; zero 5xx, flat memory, stable p99.

CI runs a short version (WORKFLOW_SOAK_SECONDS, default 30 s per database);
`make soak` runs the full ten minutes. Figures go to docs/reliability.md.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
from pathlib import Path

import pytest
from conftest import DIALECTS, audit_mismatches, empty_database_url, make_settings
from serverutil import HOST, start_server, stop_server

from workflow import create_app

pytestmark = pytest.mark.server

SOAK_SECONDS = float(os.environ.get("WORKFLOW_SOAK_SECONDS", "30"))
THREADS = 6
RESULTS = Path(os.environ.get("WORKFLOW_SOAK_RESULTS", "")) if os.environ.get("WORKFLOW_SOAK_RESULTS") else None


def worker_rss(master_pid: int) -> list[int]:
    """Resident memory (KiB) of each gunicorn worker."""
    sizes = []
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    for pid in children:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                sizes.append(int(line.split()[1]))
    return sizes


class Client:
    """One client connection, reopened after the server closes it; `call` returns (status, body, seconds)."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection(HOST, port, timeout=10)

    def call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data else {}
        started = time.perf_counter()
        try:
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
            return 0, b"", time.perf_counter() - started
        return resp.status, payload, time.perf_counter() - started


def one_operation(client: Client, ids: list[str], rng: random.Random):
    roll = rng.random()
    if roll < 0.30:
        status, body, took = client.call("POST", "/records", {"source": f"s{rng.randrange(4)}",
                                                              "category": f"c{rng.randrange(6)}",
                                                              "payload": {"priority": rng.randrange(10)}})
        if status == 201:
            ids.append(json.loads(body)["id"])
        return status, took
    if roll < 0.35:
        records = [{"source": "soak", "category": "batch", "payload": {"i": i}} for i in range(10)]
        return client.call("POST", "/records/batch", {"records": records})[::2]
    if roll < 0.60:
        return client.call("GET", rng.choice(["/records", "/records?status=pending&sort_by=category",
                                              "/records?limit=20&offset=40"]))[::2]
    if roll < 0.75 and ids:
        return client.call("GET", f"/records/{rng.choice(ids)}")[::2]
    if roll < 0.90 and ids:
        status, _, took = client.call("POST", f"/records/{ids.pop(rng.randrange(len(ids)))}/process")
        return (200 if status == 409 else status), took  # another thread may have won the race
    return client.call("GET", "/reports/summary")[::2]


def run_load(port: int, seconds: float, rate: float | None, ids: list[str]) -> list[tuple[float, int, float]]:
    """THREADS threads for `seconds`; with `rate`, paced to about that many requests per second."""
    results, lock = [], threading.Lock()
    deadline = time.monotonic() + seconds
    interval = None if rate is None else THREADS / rate

    def loop(seed: int):
        client, rng = Client(port), random.Random(seed)
        next_at = time.monotonic()
        for _ in range(1_000_000):
            now = time.monotonic()
            if now >= deadline:
                break
            if interval is not None:
                if next_at > now:
                    time.sleep(min(next_at - now, deadline - now))
                next_at += interval
            status, took = one_operation(client, ids, rng)
            with lock:
                results.append((time.monotonic(), status, took))

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 30)
    return results


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[int(len(ordered) * 0.99)] if ordered else 0.0


@pytest.mark.parametrize("dialect", DIALECTS)
def test_soak(dialect, request, tmp_path_factory, tmp_path):
    url = empty_database_url(dialect, request, tmp_path_factory)
    server = start_server(url, tmp_path / "logs", workers=2)
    ids: list[str] = []
    try:
        capacity_run = run_load(server.port, max(5.0, SOAK_SECONDS / 10), None, ids)
        capacity = len(capacity_run) / max(5.0, SOAK_SECONDS / 10)
        rate = 0.7 * capacity
        warm = run_load(server.port, max(3.0, SOAK_SECONDS / 10), rate, ids)
        rss_start = worker_rss(server.proc.pid)
        soak = run_load(server.port, SOAK_SECONDS, rate, ids)
        rss_end = worker_rss(server.proc.pid)
    finally:
        stop_server(server)
    statuses = [status for _, status, _ in capacity_run + warm + soak]
    assert not [s for s in statuses if s >= 500 or s == 0], "5xx or dropped connections during the soak"
    half = soak[0][0] + (soak[-1][0] - soak[0][0]) / 2
    first = [took for at, _, took in soak if at < half]
    second = [took for at, _, took in soak if at >= half]
    figures = {
        "database": dialect, "seconds": SOAK_SECONDS, "capacity_rps": round(capacity, 1),
        "target_rps": round(rate, 1), "achieved_rps": round(len(soak) / SOAK_SECONDS, 1),
        "requests": len(soak), "non_2xx": sum(1 for _, s, _ in soak if s >= 300),
        "p99_ms_first_half": round(p99(first) * 1000, 1), "p99_ms_second_half": round(p99(second) * 1000, 1),
        "rss_kib_start": rss_start, "rss_kib_end": rss_end,
    }
    (tmp_path / "soak.json").write_text(json.dumps(figures, indent=1))
    if RESULTS:
        with open(RESULTS, "a") as out:
            out.write(json.dumps(figures) + "\n")
    print(json.dumps(figures))
    # Flat memory: each worker ends within 20 % (or 16 MiB) of where it started after warm-up.
    for start, end in zip(sorted(rss_start), sorted(rss_end), strict=False):
        assert end <= max(start * 1.2, start + 16 * 1024), figures
    # Stable latency: the second half's p99 is not a multiple of the first's (a shared, noisy machine).
    assert p99(second) <= max(3 * p99(first), 0.25), figures
    app = create_app(make_settings(url))
    assert audit_mismatches(app.db) == []
    app.db.close()

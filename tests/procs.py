"""Test processors loaded by real servers and workers (`--processors tests.procs:NAME`).

Each call appends the record id to the file named by WORKFLOW_TEST_COUNT_FILE,
one short O_APPEND write per call, so that processes can be counted exactly.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def _count(record_id: str) -> None:
    fd = os.open(os.environ["WORKFLOW_TEST_COUNT_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (record_id + "\n").encode())
    finally:
        os.close(fd)


_calls_in_this_process = 0


def counting(payload: dict, record: dict) -> dict:
    """Count the call; with WORKFLOW_TEST_BLOCK_DIR set, block on call number BLOCK_AFTER + 1.

    Blocking writes `<dir>/blocked` and waits (at most 60 s) for `<dir>/release`,
    so a test can stop the process while it is in the middle of a batch.
    """
    global _calls_in_this_process
    _calls_in_this_process += 1
    block_dir = os.environ.get("WORKFLOW_TEST_BLOCK_DIR")
    block_after = int(os.environ.get("WORKFLOW_TEST_BLOCK_AFTER", "0"))
    if block_dir and _calls_in_this_process == block_after + 1:
        Path(block_dir, "blocked").write_text(record["id"])
        deadline = time.monotonic() + 60
        while not Path(block_dir, "release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    _count(record["id"])
    return {"score": 1, "classification": "counted"}


COUNTING = {"counted": counting}

"""`python -m workflow import FILE`: load records from CSV, TSV, JSON or NDJSON.

Every row is validated against `schemas/record_create.json` first; if any row
is bad, nothing is imported and every problem is reported with its row number.
Valid files are inserted in batches, each one transaction, with progress.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlite_utils.utils import Format, rows_from_file

from .db import Database
from .records import insert_records, new_rows
from .timeutil import utc_now_text
from .validation import check_json_values, validate_body

FORMATS = {".csv": Format.CSV, ".tsv": Format.TSV, ".json": Format.JSON, ".ndjson": Format.NL, ".jsonl": Format.NL}
MAX_REPORTED = 50


class ImportFailed(Exception):
    """The file cannot be imported; `problems` lists why, by row."""

    def __init__(self, problems: list[str]):
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems


def to_record(row: dict) -> dict:
    """A file row as a record body: `payload` is parsed from JSON text (CSV/TSV),
    or, when there is no payload column, the other columns form the payload."""
    row = dict(row)
    if "payload" in row:
        if isinstance(row["payload"], str):
            row["payload"] = json.loads(row["payload"]) if row["payload"].strip() else {}
        return row
    body = {key: row.pop(key) for key in ("source", "category") if key in row}
    body["payload"] = row
    return body


def read_rows(path: Path, fmt: str | None = None) -> Iterator[dict]:
    """The rows of a file, its format from `fmt` or the file name, else detected."""
    chosen = Format[fmt.upper().replace("NDJSON", "NL")] if fmt else FORMATS.get(path.suffix.lower())
    with open(path, "rb") as fp:
        rows, _ = rows_from_file(fp, format=chosen)
        yield from rows


def check_file(path: Path, fmt: str | None = None) -> int:
    """Validate every row; return the count or raise ImportFailed."""
    problems, count = [], 0
    try:
        for number, row in enumerate(read_rows(path, fmt), 1):
            count = number
            try:
                body = to_record(row)
                check_json_values(body)
                validate_body(body, "record_create.json")  # the fast check; the full list only for a bad row
                found = []
            except ValueError as exc:
                found = [{"loc": ["row", "payload"], "message": f"not JSON: {exc}"}]
            except Exception as exc:  # ValidationFailed and friends carry details
                found = getattr(exc, "details", None) or [{"loc": ["row"], "message": str(exc)}]
            for problem in found:
                where = ".".join(str(p) for p in problem["loc"][1:]) or "(row)"
                problems.append(f"row {number}: {where}: {problem['message']}")
    except Exception as exc:  # unreadable file: bad JSON, ragged CSV...
        problems.append(f"cannot read {path.name}: {type(exc).__name__}: {str(exc)[:200]}")
    if problems:
        raise ImportFailed(problems)
    if count == 0:
        raise ImportFailed([f"{path.name} holds no rows"])
    return count


def import_file(db: Database, path: Path, *, fmt: str | None = None, batch_size: int = 1000,
                progress: Callable[[int, int], None] = lambda done, total: None) -> int:
    """Validate, then insert every row in batches; return how many were imported."""
    total = check_file(path, fmt)
    batch, done = [], 0
    for row in read_rows(path, fmt):
        batch.append(to_record(row))
        if len(batch) == batch_size:
            done += _insert(db, batch)
            progress(done, total)
            batch = []
    if batch:
        done += _insert(db, batch)
        progress(done, total)
    return done


def _insert(db: Database, bodies: list[dict]) -> int:
    rows = new_rows(bodies)
    with db.write() as s:
        insert_records(s, rows, "import", utc_now_text())
    return len(bodies)

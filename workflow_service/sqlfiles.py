"""Named SQL statements loaded from `sql/<dialect>/*.sql`.

A statement starts with `-- name: <name>`, followed by a one-line `-- purpose`
comment, and runs until the next `-- name:` line. `{name}` inside a statement
is replaced at load time by the fragment of that name (shared column lists).
Any other `{slot}` makes the statement a template whose slots are filled only
with named fragments chosen from a whitelist (`Queries.compose`), never with
input.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_NAME_RE = re.compile(r"^--\s*name:\s*(\S*)\s*$")
_VALID_NAME = re.compile(r"^[a-z_][a-z0-9_.]*$")
_SLOT_RE = re.compile(r"\{([a-z_.]+)\}")


class SQLFileError(Exception):
    """A `.sql` file is malformed; the message says `file:line` and what to fix."""


class Queries:
    """The named statements of one dialect."""

    def __init__(self, statements: dict[str, str]):
        self._statements = statements

    def __getitem__(self, name: str) -> str:
        try:
            return self._statements[name]
        except KeyError:
            raise KeyError(f"no SQL statement named {name!r}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._statements

    def names(self) -> list[str]:
        """All statement names, sorted."""
        return sorted(self._statements)

    def compose(self, name: str, **slots: tuple[str, ...] | str) -> str:
        """Fill the `{slot}`s of template `name` with the named fragments given.

        A tuple of fragment names is joined with AND (`TRUE` when empty); a
        single name is inserted as it is. Results are cached.
        """
        key = tuple(sorted((k, v if isinstance(v, str) else tuple(v)) for k, v in slots.items()))
        return self._compose(name, key)

    @lru_cache(maxsize=512)  # noqa: B019 - bounded by the whitelisted fragment names
    def _compose(self, name: str, key: tuple) -> str:
        filled = {}
        for slot, value in key:
            if isinstance(value, str):
                filled[slot] = self[value]
            else:
                filled[slot] = " AND ".join(f"({self[v]})" for v in value) or "TRUE"
        return _SLOT_RE.sub(lambda m: filled[m.group(1)], self[name])


def parse_sql_file(path: Path) -> dict[str, str]:
    """Split one file into its named statements."""
    statements: dict[str, str] = {}
    name, start, body = None, 0, []

    def finish():
        if name is None:
            return
        text = "\n".join(line for line in body if not line.lstrip().startswith("--")).strip()
        text = text.rstrip(";").strip()
        if not text:
            raise SQLFileError(f"{path}:{start}: statement {name!r} is empty")
        statements[name] = text

    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = _NAME_RE.match(line)
        if match:
            finish()
            name, start, body = match.group(1), number, []
            if not _VALID_NAME.match(name):
                raise SQLFileError(f"{path}:{number}: bad statement name {name!r}; use lower_case.dotted")
            if name in statements:
                raise SQLFileError(f"{path}:{number}: statement {name!r} is defined twice")
        elif name is None:
            if line.strip() and not line.lstrip().startswith("--"):
                raise SQLFileError(f"{path}:{number}: SQL before the first '-- name:' line")
        else:
            body.append(line)
    finish()
    return statements


@lru_cache(maxsize=4)
def load_queries(dialect: str, sql_dir: Path = SQL_DIR) -> Queries:
    """Load every `sql/<dialect>/*.sql` file once per process."""
    statements: dict[str, str] = {}
    folder = sql_dir / dialect
    for path in sorted(folder.glob("*.sql")):
        for name, text in parse_sql_file(path).items():
            if name in statements:
                raise SQLFileError(f"{path}: statement {name!r} is also defined in another file")
            statements[name] = text
    if not statements:
        raise SQLFileError(f"{folder}: no SQL statements found")
    expand = lambda m: statements.get(m.group(1), m.group(0))  # noqa: E731
    return Queries({name: _SLOT_RE.sub(expand, text) for name, text in statements.items()})

"""gunicorn settings that `python -m workflow serve` adds (`-c python:workflow_service.gunicorn_conf`).

Only server hooks live here; the command-line options are in `workflow.cmd_serve`.
"""

from __future__ import annotations


def on_starting(server) -> None:
    """Compile the request schemas in the master, once, before it forks the workers.

    Compiling runs most of jsonschema-rs's 11 MB of machine code; the pages a
    process runs stay mapped in it and count in its RSS. Compiled here, the
    workers inherit the validators and map only the code that validating runs:
    about 2.4 MiB of that library per worker instead of 10.7 (docs/decisions.md).
    """
    from .validation import compile_validators

    compile_validators()

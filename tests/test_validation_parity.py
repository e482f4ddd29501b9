"""The fast validator (jsonschema-rs) and the explaining one (jsonschema) agree on every schema."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workflow_service.errors import ValidationFailed
from workflow_service.validation import (
    MAX_JSON_DEPTH,
    check_json_values,
    fast_validator_for,
    load_schema,
    schema_names,
    validator_for,
)

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=140),
                    st.sampled_from(["", "é" * 128, "😀" * 129, "pending", "failed", "asc", "hour", "csv"]))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                    max_leaves=8)


def documents_for(schema: dict):
    """Objects built mostly from the schema's own property names, with any values."""
    names = sorted(schema.get("properties", {})) + ["unknown"]
    record = st.fixed_dictionaries({}, optional={"source": SCALARS, "category": SCALARS,
                                                 "payload": st.one_of(JSON, st.dictionaries(st.text(max_size=5),
                                                                                            JSON, max_size=3))})
    values = st.one_of(JSON, st.lists(record, max_size=3), record)
    return st.one_of(JSON, st.dictionaries(st.sampled_from(names), values, max_size=len(names)))


@pytest.mark.parametrize("name", schema_names())
def test_fast_and_explaining_validators_agree(name):
    fast, explaining = fast_validator_for(name), validator_for(name)

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(documents_for(load_schema(name)))
    def agree(document):
        assert fast.is_valid(document) == explaining.is_valid(document), document

    agree()


# ------------------------------------------------------------------ check_json_values' fast path

ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=6)  # NULs and lone surrogates too
ANY_JSON = st.recursive(st.one_of(st.none(), st.integers(), ANY_TEXT),
                        lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                st.dictionaries(ANY_TEXT, inner, max_size=3)),
                        max_leaves=12)


def _problems(document, text=None):
    try:
        check_json_values(document, text)
    except ValidationFailed as exc:
        return exc.details
    return None


def _nested(depth: int, leaf: str) -> str:
    return '{"a": ' * depth + leaf + "}" * depth


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=ANY_JSON, ascii_only=st.booleans())
def test_the_text_fast_path_finds_what_the_full_walk_finds(document, ascii_only):
    text = json.dumps(document, ensure_ascii=ascii_only)
    if not ascii_only and not _utf8(text):
        text = json.dumps(document)  # a request's text is decoded UTF-8: it holds no raw surrogate
    assert _problems(json.loads(text), text) == _problems(document)


@pytest.mark.parametrize("text", [
    _nested(MAX_JSON_DEPTH, "1"), _nested(MAX_JSON_DEPTH + 1, "1"), _nested(MAX_JSON_DEPTH, "[]"),
    _nested(MAX_JSON_DEPTH, "[1]"), "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH,
    "[" * (MAX_JSON_DEPTH + 1) + "1" + "]" * (MAX_JSON_DEPTH + 1), '{"x": "\\uD83D\\uDE00"}', '{"x": "\\uDE00"}',
    '{"\\\\u0000": "\\\\ud800"}', "5", '"s"', "null",
])
def test_the_fast_path_agrees_at_the_depth_limit_and_on_escapes(text):
    document = json.loads(text)
    assert _problems(document, text) == _problems(document)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def test_python_jsonschema_loads_only_with_the_first_invalid_input(tmp_path):
    """Valid input is answered by jsonschema-rs alone, so a worker that never sees invalid
    input never holds python-jsonschema and its dependencies (about 4 MiB)."""
    import subprocess
    import sys

    from serverutil import ROOT, service_env

    script = """
import sys
from webtest import TestApp
import workflow
from workflow_service.migrations import Migrator
wsgi = workflow.create_app()
Migrator(wsgi.db).up()
app = TestApp(wsgi)
record = app.post_json("/records", {"source": "s", "category": "c", "payload": {}}).json
app.post_json("/records/batch", {"records": [{"source": "s", "category": "c", "payload": {}}]})
app.post(f"/records/{record['id']}/process")
app.get("/records?status=processed&sort_by=created_at&limit=5")
app.get("/reports/summary")
print(sorted(m for m in ("jsonschema", "referencing") if m in sys.modules))
details = app.post_json("/records", {"source": "", "category": "c"}, status=422).json["error"]["details"]
print(sorted(m for m in ("jsonschema", "referencing") if m in sys.modules), len(details))
"""
    env = service_env(DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.splitlines()
    assert out == ["[]", "['jsonschema', 'referencing'] 2"]

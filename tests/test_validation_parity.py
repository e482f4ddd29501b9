"""The fast validator (jsonschema-rs) and the explaining one (jsonschema) agree on every schema."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workflow_service.validation import fast_validator_for, load_schema, schema_names, validator_for

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

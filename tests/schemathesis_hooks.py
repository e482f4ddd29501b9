"""Schemathesis hooks for tests/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

The query schemas use the custom format `date-or-date-time` (an ISO 8601 date
or date-time); teach schemathesis to generate valid ones too, not only the
arbitrary strings it makes for a format it does not know.
"""

from __future__ import annotations

from datetime import timedelta, timezone

import schemathesis
from hypothesis import strategies as st

_zones = st.sampled_from([timezone.utc, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))])

schemathesis.openapi.format(
    "date-or-date-time",
    st.one_of(
        st.dates().map(lambda d: d.isoformat()),
        st.datetimes(timezones=_zones).map(lambda d: d.isoformat()),
        st.datetimes().map(lambda d: d.isoformat()),  # no zone means UTC
    ),
)

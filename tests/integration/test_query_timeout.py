"""Every read unit has a time limit: a query past it is stopped and refused as too costly, on both
databases, and the connection is usable again afterwards."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from cxr_fhir.domain.errors import TooCostly
from cxr_fhir.storage.db import reading, writing

# Counts to a hundred million: seconds of work on either database.
SLOW = text("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000000) "
            "SELECT count(*) FROM n")


def test_a_read_past_its_time_limit_is_stopped_and_refused(engine):
    start = time.monotonic()
    with pytest.raises(TooCostly, match="longer than 0.3 s"):
        with reading(engine, timeout_s=0.3) as s:
            s.execute(SLOW).scalar_one()
    assert time.monotonic() - start < 3
    with reading(engine) as s:  # the pool's connection is fine afterwards, with the default limit
        assert s.execute(text("SELECT 1")).scalar_one() == 1
    with writing(engine) as s:  # and writes are not held up by what was stopped
        assert s.execute(text("SELECT 2")).scalar_one() == 2


def test_the_limit_is_per_query_not_per_unit(engine):
    """Time spent between queries (Python work) does not count against the next query."""
    with reading(engine, timeout_s=0.3) as s:
        assert s.execute(text("SELECT 1")).scalar_one() == 1
        time.sleep(0.5)
        assert s.execute(text("SELECT 2")).scalar_one() == 2


def test_a_quick_read_is_untouched(engine):
    with reading(engine, timeout_s=5) as s:
        assert s.execute(text("SELECT 40 + 2")).scalar_one() == 42

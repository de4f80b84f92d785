"""One timestamp column type (common.models.UTCDateTime): UTC stored, aware UTC returned, naive refused."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import StatementError

from common.db import make_engine, session_factory, upgrade
from common.models import ApiToken, Base, NaiveDatetimeError, UTCDateTime, as_utc

BEIJING = dt.timezone(dt.timedelta(hours=8))


def _roundtrip(url: str) -> None:
    typed = dt.datetime(2026, 3, 2, 16, 30, 0, 123456, tzinfo=BEIJING)  # 08:30:00.123456 UTC
    with session_factory(url)() as session:
        session.add(ApiToken(name="t", role="admin", token_hash="h" * 64, revoked_at=typed))
        session.commit()
    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:  # a session in another zone must not change what is returned
            conn.execute(text("SET TIME ZONE 'America/New_York'"))
            value = conn.execute(select(ApiToken.revoked_at)).scalar_one()
            stored = conn.execute(text("SELECT revoked_at AT TIME ZONE 'UTC' FROM api_tokens")).scalar_one()
    else:
        with engine.connect() as conn:
            value = conn.execute(select(ApiToken.revoked_at)).scalar_one()
            stored = conn.execute(text("SELECT revoked_at FROM api_tokens")).scalar_one()
    assert value == typed
    assert value.tzinfo is dt.timezone.utc
    assert (value.hour, value.minute, value.microsecond) == (8, 30, 123456)
    assert str(stored).startswith("2026-03-02 08:30:00.123456")  # stored as UTC, not as 16:30

    with session_factory(url)() as session:
        # Comparisons bind through the same type: a bound in another zone means the same instant.
        found = session.scalars(select(ApiToken.name).where(ApiToken.revoked_at >= typed)).all()
        assert found == ["t"]
        row = session.scalars(select(ApiToken)).one()
        assert row.created_at.tzinfo is dt.timezone.utc
        row.last_used_at = dt.datetime(2026, 3, 2, 8, 30)  # no zone
        with pytest.raises(StatementError) as caught:
            session.commit()
        assert isinstance(caught.value.orig, NaiveDatetimeError)
        assert "has no time zone" in str(caught.value.orig)
    engine.dispose()


def test_sqlite_stores_utc_and_returns_aware_utc(sqlite_url: str) -> None:
    _roundtrip(sqlite_url)


@pytest.mark.postgres
def test_postgresql_stores_utc_and_returns_aware_utc(postgres_url: str) -> None:
    upgrade(postgres_url)
    _roundtrip(postgres_url)


def test_every_timestamp_column_is_utc_datetime() -> None:
    from sqlalchemy import DateTime

    columns = [c for t in Base.metadata.tables.values() for c in t.columns
               if isinstance(c.type, (DateTime, UTCDateTime))]
    assert len(columns) > 20
    assert [str(c) for c in columns if not isinstance(c.type, UTCDateTime)] == []


def test_typed_times_without_zone_are_utc() -> None:
    assert as_utc(dt.datetime(2026, 1, 1, 12)) == dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone.utc)
    converted = as_utc(dt.datetime(2026, 1, 1, 20, tzinfo=BEIJING))
    assert (converted.hour, converted.tzinfo) == (12, dt.timezone.utc)

"""Quarantine: objects the node received but could not accept are kept, with the reason.

A C-STORE answered with a failure status (PS3.4 B.2.3: 0xA900, 0xCxxx) leaves the SCU responsible
for the instance, but keeping what arrived lets an administrator see *why* a modality's objects are
refused (``data_dir/quarantine/<YYYYMMDD>/<uuid>.dcm`` plus a
:class:`~common.models.QuarantinedInstance` row). The reason names the failed check, never a
patient attribute value.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import cast
from pathlib import Path

from sqlalchemy import Engine, Table

from common.models import QuarantinedInstance, utcnow

from .ingest import write_transaction
from .spool import QUARANTINE_DIR, durable_move, sha256_file

__all__ = ["quarantine_file"]

LOGGER = logging.getLogger(__name__)
# A declarative class's __table__ is typed FromClause; a model declared with __tablename__ maps a Table.
_TABLE = cast(Table, QuarantinedInstance.__table__)


def quarantine_file(
    engine: Engine,
    data_dir: Path,
    received: Path,
    *,
    reason: str,
    calling_ae_title: str | None,
    peer_address: str | None,
    affected_sop_instance_uid: str | None,
) -> int:
    """Move ``received`` into the quarantine folder and record it; returns the row id.

    ``affected_sop_instance_uid`` is the UID from the C-STORE-RQ command (the data set may be
    unreadable).
    """
    day = dt.date.today().strftime("%Y%m%d")
    relpath = f"{QUARANTINE_DIR}/{day}/{uuid.uuid4().hex}.dcm"
    digest, size = sha256_file(received)
    durable_move(received, data_dir, relpath, sha256=digest, size_bytes=size)
    with write_transaction(engine) as conn:
        result = conn.execute(
            _TABLE.insert().values(
                path=relpath,
                reason=reason[:4000],
                calling_ae_title=calling_ae_title,
                peer_address=peer_address[:64] if peer_address else None,
                affected_sop_instance_uid=(
                    affected_sop_instance_uid[:64] if affected_sop_instance_uid else None
                ),
                received_at=utcnow(),
            )
        )
        assert result.inserted_primary_key is not None  # a single-row INSERT has one
        row_id = int(result.inserted_primary_key[0])
    LOGGER.warning("quarantined a received object from %s as %s: %s", calling_ae_title, relpath, reason)
    return row_id

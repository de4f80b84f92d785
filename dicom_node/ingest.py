"""Record a received instance: durable file first, then Study/Series/Instance rows.

The order is what makes a C-STORE success answer safe (PS3.4 B.2.2): the bytes are durable in the
spool (data and directory entry flushed) before the row that points at them is committed, and the
row is committed before the SCP answers. A crash in between leaves at worst a spool file without a
row (the SCU got no success and sends it again, which replaces it), never a row without its file.
A new instance is renamed into place before its data flush completes, so that flush and the
directory flush overlap: no row points at the path until both are done.

A changed re-send (same SOP Instance UID, other bytes) is a correction (PS3.4 B.4.1.3 leaves a
re-sent UID to the SCP): under the write lock the filed bytes are first kept under ``replaced/``
(:func:`~dicom_node.spool.keep_replaced`), the new ones flushed and renamed into place, and the
instance row, the study's patient and study attributes, an
:class:`~common.models.InstanceReplacement` row and ``Study.instances_changed`` (so the study
makes a new version, whose SRs reference the previous ones) are written in one transaction. When
the new content names another study the old spool file is removed after the commit, and the old
study is marked changed and receiving too, so both make a new version.

Writers are serialised per database: on SQLite the node's writers queue on a thread lock plus an
``flock`` (not SQLite's sleeping busy handler) and take the write lock at ``BEGIN IMMEDIATE`` (a
deferred transaction that reads first could not upgrade under WAL); PostgreSQL inserts studies and
series with ``ON CONFLICT DO NOTHING`` and retries on a conflicting instance insert.

The common case, a new instance of a series already filed, runs its statements on the DBAPI
cursor (:mod:`dicom_node.statements`): SQLAlchemy's execution layer cost more CPU per C-STORE
than SQLite itself. Every other case goes through SQLAlchemy Core.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import fcntl
import os
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, Engine, Insert, Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError, OperationalError

from tenacity import RetryError

from common.models import Instance, InstanceReplacement, Series, Study, StudyState, utcnow
from common.retries import ingest_conflict_retrying

from .header import InstanceHeader
from .spool import (
    SpoolError,
    StoredFile,
    data_set_offset,
    data_set_sha256,
    durable_move,
    fsync_dir,
    instance_relpath,
    keep_replaced,
    place,
)
from .statements import PreparedStatement, database_errors, dbapi_connection

__all__ = [
    "IngestError",
    "SeriesStudyConflictError",
    "IngestOutcome",
    "IngestResult",
    "write_transaction",
    "record_instance",
]

LOGGER = logging.getLogger(__name__)

# A declarative class's __table__ is typed FromClause; a model declared with __tablename__ maps a Table.
_STUDIES = cast(Table, Study.__table__)
_SERIES = cast(Table, Series.__table__)
_INSTANCES = cast(Table, Instance.__table__)
_REPLACEMENTS = cast(Table, InstanceReplacement.__table__)


class _ConflictError(Exception):
    """A new instance's row met a concurrent write; tried again (:data:`_RECORD_NEW`)."""


#: Recording a new instance, tried again on a conflict (the policy: common.retries).
_RECORD_NEW = ingest_conflict_retrying(_ConflictError)


class IngestError(RuntimeError):
    """The instance could not be recorded in the database."""


class SeriesStudyConflictError(IngestError):
    """The Series Instance UID is already filed under another Study Instance UID (PS3.3 C.7.3.1)."""


class IngestOutcome(str, enum.Enum):
    STORED = "stored"  # new instance
    DUPLICATE = "duplicate"  # identical re-send: counted, not filed again
    REPLACED = "replaced"  # same SOP Instance UID, different bytes: the new bytes replace the old


@dataclass(frozen=True)
class IngestResult:
    outcome: IngestOutcome
    instance_id: int
    study_id: int
    relpath: str


class _SQLiteWriterLock:
    """Serialise this node's SQLite writers without SQLite's busy handler.

    A writer that finds the database locked sleeps in SQLite's busy handler (1, 2, 5, 10 ... ms):
    with several associations that costs more than the write itself. Writers of this node queue
    on a thread lock (same process) and an ``flock`` beside the database file (other listener
    processes) instead, and wake as soon as the lock is free. Other programs using the database
    still meet ``busy_timeout``.
    """

    _locks: dict[str, "_SQLiteWriterLock"] = {}
    _guard = threading.Lock()

    def __init__(self, database: str) -> None:
        self._thread_lock = threading.Lock()
        self._path = f"{database}.writer-lock"
        self._fd: int | None = None

    @classmethod
    def for_engine(cls, engine: Engine) -> "_SQLiteWriterLock | None":
        database = engine.url.database
        if not database or database == ":memory:":
            return None
        with cls._guard:
            lock = cls._locks.get(database)
            if lock is None:
                lock = cls._locks[database] = cls(database)
            return lock

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._thread_lock:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A read-write transaction that holds the write lock from its first statement on SQLite."""
    if engine.dialect.name == "sqlite":
        lock = _SQLiteWriterLock.for_engine(engine)
        with lock.held() if lock is not None else contextlib.nullcontext():
            with engine.connect() as raw:
                conn = raw.execution_options(isolation_level="AUTOCOMMIT")
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.exec_driver_sql("ROLLBACK")
                    raise
                conn.exec_driver_sql("COMMIT")
    else:
        with engine.begin() as conn:
            yield conn


def _insert_ignore(conn: Connection, table: Table, values: dict[str, Any], key: str) -> None:
    dialect = conn.dialect.name
    stmt: Insert
    if dialect == "postgresql":
        stmt = postgresql.insert(table).values(**values).on_conflict_do_nothing(index_elements=[key])
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).values(**values).on_conflict_do_nothing(index_elements=[key])
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        stmt = table.insert().values(**values)
    conn.execute(stmt)


def _study_id(conn: Connection, h: InstanceHeader, calling_ae_title: str | None, now: datetime.datetime) -> int:
    row = conn.execute(
        select(_STUDIES.c.id, _STUDIES.c.state, _STUDIES.c.patient_id, _STUDIES.c.calling_ae_title)
        .where(_STUDIES.c.study_instance_uid == h.study_instance_uid)
    ).first()
    if row is None:
        _insert_ignore(
            conn,
            _STUDIES,
            dict(
                study_instance_uid=h.study_instance_uid,
                patient_id=h.patient_id,
                patient_name=h.patient_name,
                accession_number=h.accession_number,
                study_date=h.study_date,
                study_description=h.study_description,
                calling_ae_title=calling_ae_title,
                state=StudyState.RECEIVING.value,
                version=0,
                urgent=False,
                first_received_at=now,
                last_received_at=now,
            ),
            "study_instance_uid",
        )
        row = conn.execute(
            select(_STUDIES.c.id, _STUDIES.c.state, _STUDIES.c.patient_id, _STUDIES.c.calling_ae_title)
            .where(_STUDIES.c.study_instance_uid == h.study_instance_uid)
        ).one()
    return int(row.id)


_TOUCH_STUDY = (
    update(_STUDIES)
    .where(_STUDIES.c.id == bindparam("study_id_"))
    .values(last_received_at=bindparam("now_"), state=bindparam("state_"))
)


def _touch_study(conn: Connection, study_id: int, now: datetime.datetime) -> None:
    """A new or changed instance: the study is receiving again (a COMPLETE study gets a new version)."""
    conn.execute(_TOUCH_STUDY, {"study_id_": study_id, "now_": now, "state_": StudyState.RECEIVING.value})


def _series_id(conn: Connection, h: InstanceHeader, study_id: int) -> int:
    query = select(_SERIES.c.id, _SERIES.c.study_id).where(
        _SERIES.c.series_instance_uid == h.series_instance_uid
    )
    row = conn.execute(query).first()
    if row is None:
        _insert_ignore(
            conn,
            _SERIES,
            dict(
                study_id=study_id,
                series_instance_uid=h.series_instance_uid,
                modality=h.modality,
                body_part_examined=h.body_part_examined,
                series_description=h.series_description,
                series_number=h.series_number,
            ),
            "series_instance_uid",
        )
        row = conn.execute(query).one()
    if row.study_id != study_id:
        raise SeriesStudyConflictError("Series Instance UID is already filed under another study")
    return int(row.id)


def _instance_values(
    h: InstanceHeader, stored: StoredFile, calling_ae_title: str | None, now: datetime.datetime
) -> dict[str, Any]:
    return dict(
        sop_class_uid=h.sop_class_uid,
        transfer_syntax_uid=h.transfer_syntax_uid,
        instance_number=h.instance_number,
        rows=h.rows,
        columns=h.columns,
        number_of_frames=h.number_of_frames,
        image_position_patient=h.image_position_patient,
        image_orientation_patient=h.image_orientation_patient,
        pixel_spacing=h.pixel_spacing,
        path=stored.relpath,
        size_bytes=stored.size_bytes,
        sha256=stored.sha256,
        calling_ae_title=calling_ae_title,
        received_at=now,
    )


def _count_duplicate(conn: Connection, instance_id: int) -> None:
    conn.execute(
        update(_INSTANCES)
        .where(_INSTANCES.c.id == instance_id)
        .values(duplicate_count=_INSTANCES.c.duplicate_count + 1)
    )


class _SeriesCache:
    """(Study, Series Instance UID) -> (study id, series id) for the series being received.

    Saves two queries per instance in the common case (many instances of one series). An entry
    that went stale (study deleted meanwhile) fails the foreign key and is dropped (retry).
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._data: OrderedDict[tuple[str, str, str], tuple[int, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, url: str, h: InstanceHeader) -> tuple[int, int] | None:
        key = (url, h.study_instance_uid, h.series_instance_uid)
        with self._lock:
            hit = self._data.get(key)
            if hit is not None:
                self._data.move_to_end(key)
            return hit

    def put(self, url: str, h: InstanceHeader, ids: tuple[int, int]) -> None:
        key = (url, h.study_instance_uid, h.series_instance_uid)
        with self._lock:
            self._data[key] = ids
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def drop(self, url: str, h: InstanceHeader) -> None:
        with self._lock:
            self._data.pop((url, h.study_instance_uid, h.series_instance_uid), None)


_SERIES_CACHE = _SeriesCache()
_SELECT_EXISTING = select(
    _INSTANCES.c.id, _INSTANCES.c.sha256, _INSTANCES.c.study_id, _INSTANCES.c.path,
    _INSTANCES.c.size_bytes, _INSTANCES.c.pruned_at,
).where(_INSTANCES.c.sop_instance_uid == bindparam("uid"))


def _existing(conn: Connection, sop_instance_uid: str, lock: bool = False) -> _Existing | None:
    """The row filed under the UID; ``lock``: held until commit (PostgreSQL ``FOR UPDATE``;
    SQLite's writers are serialised already)."""
    query = _SELECT_EXISTING.with_for_update() if lock else _SELECT_EXISTING
    row = conn.execute(query, {"uid": sop_instance_uid}).first()
    return None if row is None else _Existing(*row)


class _Existing(NamedTuple):
    """An instance row already filed under the same SOP Instance UID."""

    id: int
    sha256: str
    study_id: int
    path: str
    size_bytes: int
    #: When spool retention removed the file (workflow.retention); None while it is filed. The
    #: driver's value on the common path (a string on SQLite): only "is it None" is asked.
    pruned_at: object


_INSTANCE_KEYS = (
    "study_id", "series_id", "sop_instance_uid", "duplicate_count", "sop_class_uid",
    "transfer_syntax_uid", "instance_number", "rows", "columns", "number_of_frames",
    "image_position_patient", "image_orientation_patient", "pixel_spacing", "path", "size_bytes",
    "sha256", "calling_ae_title", "received_at",
)


class _CommonCase:
    """The statements of the common case, a new instance of a series already filed, run on the
    DBAPI connection (:mod:`dicom_node.statements`): the re-send check before the file is
    placed, then the instance row and the study's ``last_received_at`` in one transaction."""

    _by_dialect: "weakref.WeakKeyDictionary[Dialect, _CommonCase]" = weakref.WeakKeyDictionary()
    _guard = threading.Lock()

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        self.sqlite = dialect.name == "sqlite"
        self.writer_lock = _SQLiteWriterLock.for_engine(engine) if self.sqlite else None
        self.integrity_error, self.operational_error = database_errors(engine)
        self.select_existing = PreparedStatement(_SELECT_EXISTING, dialect)
        self.insert_instance = PreparedStatement(
            _INSTANCES.insert().returning(_INSTANCES.c.id), dialect, keys=_INSTANCE_KEYS
        )
        self.touch_study = PreparedStatement(_TOUCH_STUDY, dialect)

    @classmethod
    def for_engine(cls, engine: Engine) -> "_CommonCase":
        with cls._guard:
            found = cls._by_dialect.get(engine.dialect)
            if found is None:
                found = cls._by_dialect[engine.dialect] = cls(engine)
            return found

    def existing(self, engine: Engine, sop_instance_uid: str) -> _Existing | None:
        """The row filed under ``sop_instance_uid``, if any."""
        try:
            with dbapi_connection(engine) as dbapi:
                cursor = dbapi.cursor()
                try:
                    row = self.select_existing.execute(cursor, {"uid": sop_instance_uid}).fetchone()
                finally:
                    cursor.close()
                dbapi.rollback()  # end the read transaction the driver may have begun
        except (self.operational_error, OperationalError) as exc:
            raise IngestError(f"database unavailable: {_error_name(exc)}") from exc
        return None if row is None else _Existing(*row)

    def insert(self, engine: Engine, values: dict[str, object], study_id: int) -> int:
        """Insert the instance row and touch its study in one committed transaction; its id.

        Raises the driver's IntegrityError when the UID was filed meanwhile or the cached study
        or series is gone (the caller retries on the general path)."""
        touch = {"study_id_": study_id, "now_": values["received_at"], "state_": StudyState.RECEIVING.value}
        try:
            with dbapi_connection(engine) as dbapi:
                cursor = dbapi.cursor()
                try:
                    if self.sqlite:
                        with self.writer_lock.held() if self.writer_lock is not None else contextlib.nullcontext():
                            cursor.execute("BEGIN IMMEDIATE")
                            try:
                                instance_id = self.insert_instance.execute(cursor, values).fetchall()[0][0]
                                self.touch_study.execute(cursor, touch)
                            except BaseException:
                                cursor.execute("ROLLBACK")
                                raise
                            cursor.execute("COMMIT")
                    else:
                        try:
                            instance_id = self.insert_instance.execute(cursor, values).fetchall()[0][0]
                            self.touch_study.execute(cursor, touch)
                        except BaseException:
                            dbapi.rollback()
                            raise
                        dbapi.commit()
                finally:
                    cursor.close()
        except (self.operational_error, OperationalError) as exc:
            raise IngestError(f"database unavailable: {_error_name(exc)}") from exc
        return int(instance_id)


#: Study attributes taken from the latest content of a replaced instance (a correction).
_STUDY_ATTRIBUTES = ("patient_id", "patient_name", "accession_number", "study_date", "study_description")


def _record_replacement(conn: Connection, existing: _Existing, h: InstanceHeader, study_id: int,
                        series_id: int, values: dict[str, object], kept_path: str | None,
                        now: datetime.datetime) -> None:
    """The rows of a changed re-send: the instance row takes the new content, the study the new
    patient and study attributes, the replacement is recorded, and the study (and the study the
    instance left, if it moved) is receiving again and changed, so it makes a new version."""
    conn.execute(update(_INSTANCES).where(_INSTANCES.c.id == existing.id)
                 .values(study_id=study_id, series_id=series_id, pruned_at=None, **values))
    conn.execute(update(_STUDIES).where(_STUDIES.c.id == study_id)
                 .values(**{name: getattr(h, name) for name in _STUDY_ATTRIBUTES}))
    conn.execute(_REPLACEMENTS.insert().values(
        instance_id=existing.id, sop_instance_uid=h.sop_instance_uid,
        previous_study_id=existing.study_id, study_id=study_id,
        previous_sha256=existing.sha256, previous_size_bytes=existing.size_bytes,
        kept_path=kept_path, calling_ae_title=values["calling_ae_title"], replaced_at=now,
    ))
    conn.execute(update(_STUDIES).where(_STUDIES.c.id.in_({study_id, existing.study_id}))
                 .values(last_received_at=now, state=StudyState.RECEIVING.value, instances_changed=True))
    if existing.pruned_at is not None:
        _unmark_pruned_study(conn, study_id)


def _unmark_pruned_study(conn: Connection, study_id: int) -> None:
    """The study's images are all filed again: it no longer says they were removed."""
    still_pruned = (select(_INSTANCES.c.id)
                    .where(_INSTANCES.c.study_id == study_id, _INSTANCES.c.pruned_at.is_not(None)).exists())
    conn.execute(update(_STUDIES).where(_STUDIES.c.id == study_id, ~still_pruned).values(images_pruned_at=None))


def _refile_pruned(conn: Connection, existing: _Existing, values: dict[str, object],
                   now: datetime.datetime) -> None:
    """The rows of an identical re-send of an instance whose file retention removed: filed again,
    and its study receiving and changed, so that it makes a new version (the way to process a
    study again after retention, :mod:`workflow.retention`)."""
    conn.execute(update(_INSTANCES).where(_INSTANCES.c.id == existing.id).values(pruned_at=None, **values))
    conn.execute(update(_STUDIES).where(_STUDIES.c.id == existing.study_id)
                 .values(last_received_at=now, state=StudyState.RECEIVING.value, instances_changed=True))
    _unmark_pruned_study(conn, existing.study_id)


def _replace_instance(engine: Engine, data_dir: Path, header: InstanceHeader, received: Path,
                      relpath: str, *, sha256: str, size_bytes: int, calling_ae_title: str | None,
                      synced: bool) -> IngestResult | None:
    """File a changed re-send over the instance filed under its SOP Instance UID.

    Under the write lock (and the row's lock on PostgreSQL): the filed bytes are kept under
    ``replaced/``, the new bytes made durable in place, the rows written (:func:`_record_replacement`);
    the spool file of a study the instance left is removed after the commit. None when the row
    is gone meanwhile (the caller files the instance as new)."""
    try:
        with write_transaction(engine) as conn:
            existing = _existing(conn, header.sop_instance_uid, lock=True)
            if existing is None:
                return None
            if existing.sha256 == sha256 and existing.pruned_at is None:
                _count_duplicate(conn, existing.id)
                received.unlink(missing_ok=True)
                return IngestResult(IngestOutcome.DUPLICATE, existing.id, existing.study_id, existing.path)
            now = utcnow()
            if existing.sha256 == sha256:  # the same content, its file removed by retention
                stored = durable_move(received, data_dir, existing.path, sha256=sha256, size_bytes=size_bytes,
                                      synced=synced)
                _refile_pruned(conn, existing, _instance_values(header, stored, calling_ae_title, now), now)
                LOGGER.info("instance %s filed again (retention had removed its file)", header.sop_instance_uid)
                return IngestResult(IngestOutcome.STORED, existing.id, existing.study_id, existing.path)
            study_id = _study_id(conn, header, calling_ae_title, now)
            series_id = _series_id(conn, header, study_id)  # SeriesStudyConflictError: nothing moved
            kept = keep_replaced(data_dir, existing.path, now) if (data_dir / existing.path).exists() else None
            stored = durable_move(received, data_dir, relpath, sha256=sha256, size_bytes=size_bytes,
                                  synced=synced)
            _record_replacement(conn, existing, header, study_id, series_id,
                                _instance_values(header, stored, calling_ae_title, now), kept, now)
    except OperationalError as exc:
        raise IngestError(f"database unavailable: {_error_name(exc)}") from exc
    except IntegrityError as exc:
        raise IngestError("could not record the changed instance (conflicting concurrent writes)") from exc
    if existing.path != relpath:
        # The instance moved to another study: its bytes are kept under replaced/.
        old = data_dir / existing.path
        try:
            old.unlink(missing_ok=True)
            fsync_dir(old.parent)
        except OSError as exc:
            LOGGER.warning("could not remove %s after its instance moved: %s", existing.path, exc)
    _SERIES_CACHE.put(str(engine.url), header, (study_id, series_id))
    LOGGER.info("instance %s replaced by other content%s", header.sop_instance_uid,
                " (moved to another study)" if existing.study_id != study_id else "")
    return IngestResult(IngestOutcome.REPLACED, existing.id, study_id, relpath)


def _error_name(exc: Exception) -> str:
    orig = getattr(exc, "orig", None)
    return type(orig if orig is not None else exc).__name__


def _hashed_with_file_meta(data_dir: Path, existing: _Existing, sha256: str, received: Path,
                           size_bytes: int) -> bool:
    """True when ``existing`` is a row filed before the recorded SHA-256 covered the data set
    alone (until issue 13 it was the whole file's, the node's File Meta included) and its data
    set is the one just received (``sha256``): such a row's hash is brought up to date on its
    first re-send, so stored hashes keep recognising identical re-sends without a pass over the
    spool. Only a re-send whose data set has the filed one's length is hashed again."""
    path = data_dir / existing.path
    try:
        offset = data_set_offset(path)
        if existing.size_bytes - offset != size_bytes - data_set_offset(received):
            return False
        return data_set_sha256(path) == sha256
    except (OSError, SpoolError):  # the filed file is gone or not ours: a changed re-send then
        return False


def record_instance(
    engine: Engine,
    data_dir: Path,
    header: InstanceHeader,
    received: Path,
    *,
    sha256: str,
    size_bytes: int,
    calling_ae_title: str | None,
    data_synced: Callable[[], object] | None = None,
) -> IngestResult:
    """File ``received`` (a temp file in ``incoming/``) under the spool and record it.

    An identical re-send (same SOP Instance UID and SHA-256 of the data set, ``sha256``) only
    increments ``Instance.duplicate_count``: the study's state is untouched and ``received`` is
    removed.
    ``data_synced``, when given, returns once ``received`` has been fsync-ed by the caller (the SCP
    starts that flush early, in parallel with parsing); without it the data are flushed here.
    Raises :class:`SeriesStudyConflictError`, :class:`IngestError` or
    :class:`~dicom_node.spool.SpoolError`.
    """
    relpath = instance_relpath(
        header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
    )
    url = str(engine.url)
    common = _CommonCase.for_engine(engine)
    # Re-sends are answered without touching the file system.
    existing = common.existing(engine, header.sop_instance_uid)
    rehashed = existing is not None and existing.sha256 != sha256 and _hashed_with_file_meta(
        data_dir, existing, sha256, received, size_bytes
    )
    if existing is not None and existing.pruned_at is None and (existing.sha256 == sha256 or rehashed):
        try:
            with write_transaction(engine) as conn:
                _count_duplicate(conn, existing.id)
                if rehashed:
                    conn.execute(update(_INSTANCES).where(_INSTANCES.c.id == existing.id).values(sha256=sha256))
        except OperationalError as exc:
            raise IngestError(f"database unavailable: {exc.orig.__class__.__name__}") from exc
        received.unlink(missing_ok=True)
        return IngestResult(IngestOutcome.DUPLICATE, existing.id, existing.study_id, existing.path)

    if existing is not None:
        # A changed re-send: replaced under the write lock (the filed bytes are kept first).
        if data_synced is not None:
            data_synced()
        replaced = _replace_instance(engine, data_dir, header, received, relpath, sha256=sha256,
                                     size_bytes=size_bytes, calling_ae_title=calling_ae_title,
                                     synced=data_synced is not None)
        if replaced is not None:
            return replaced
        existing = None  # the row went away meanwhile: filed as a new instance

    if data_synced is not None:
        # A new instance: no row points at ``relpath`` yet, so it may be renamed into place
        # before its data are flushed; the data flush (another thread) and the directory flush
        # then overlap (the file system commits them together). The row comes after both.
        stored = place(received, data_dir, relpath, sha256=sha256, size_bytes=size_bytes)
        try:
            fsync_dir(stored.path.parent)
        finally:
            data_synced()
    else:
        stored = durable_move(received, data_dir, relpath, sha256=sha256, size_bytes=size_bytes)

    try:
        return _RECORD_NEW(_record_new, engine, common, url, header, received, stored, relpath, sha256,
                           calling_ae_title)
    except RetryError as exc:
        conflict = exc.last_attempt.exception()
        raise IngestError("could not record the instance (conflicting concurrent writes)") from (
            conflict.__cause__ if conflict is not None else None)


def _record_new(engine: Engine, common: _CommonCase, url: str, header: InstanceHeader, received: Path,
                stored: StoredFile, relpath: str, sha256: str, calling_ae_title: str | None) -> IngestResult:
    """One attempt to file a new instance's row (its file is in place); :class:`_ConflictError`
    when a concurrent write got in the way (the caller tries again, :data:`_RECORD_NEW`)."""
    cached = _SERIES_CACHE.get(url, header)
    now = utcnow()
    if cached is not None:
        # the common case: a new instance of a series already filed
        study_id, series_id = cached
        try:
            instance_id = common.insert(
                engine,
                dict(
                    study_id=study_id, series_id=series_id,
                    sop_instance_uid=header.sop_instance_uid, duplicate_count=0,
                    **_instance_values(header, stored, calling_ae_title, now),
                ),
                study_id,
            )
        except common.integrity_error as exc:  # filed meanwhile, or the study/series is gone
            _SERIES_CACHE.drop(url, header)
            raise _ConflictError from exc
        return IngestResult(IngestOutcome.STORED, instance_id, study_id, relpath)
    try:
        with write_transaction(engine) as conn:
            existing = _existing(conn, header.sop_instance_uid)
            if existing is not None and existing.sha256 == sha256:
                _count_duplicate(conn, existing.id)
                return IngestResult(
                    IngestOutcome.DUPLICATE, existing.id, existing.study_id, existing.path
                )
            study_id = _study_id(conn, header, calling_ae_title, now)
            series_id = _series_id(conn, header, study_id)
            values = _instance_values(header, stored, calling_ae_title, now)
            if existing is None:
                result = conn.execute(
                    _INSTANCES.insert().values(
                        study_id=study_id,
                        series_id=series_id,
                        sop_instance_uid=header.sop_instance_uid,
                        duplicate_count=0,
                        **values,
                    )
                )
                assert result.inserted_primary_key is not None  # a single-row INSERT has one
                instance_id = int(result.inserted_primary_key[0])
                outcome = IngestOutcome.STORED
                _touch_study(conn, study_id, now)
            else:
                # Filed by a concurrent association after our first look, with other
                # content: ours was renamed over it, so its bytes were not kept.
                _record_replacement(conn, existing, header, study_id, series_id, values, None, now)
                instance_id = int(existing.id)
                outcome = IngestOutcome.REPLACED
        _SERIES_CACHE.put(url, header, (study_id, series_id))
        return IngestResult(outcome, instance_id, study_id, relpath)
    except SeriesStudyConflictError:
        # not filed: give the file back to the caller (it quarantines it)
        os.replace(stored.path, received)
        raise
    except IntegrityError as exc:  # a concurrent association filed the same UID first,
        _SERIES_CACHE.drop(url, header)  # or a cached study/series no longer exists
        raise _ConflictError from exc
    except OperationalError as exc:
        raise IngestError(f"database unavailable: {exc.orig.__class__.__name__}") from exc

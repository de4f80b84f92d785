"""The findings database: SQLAlchemy 2 ORM models.

Every stage of the pipeline records what it did here, and the next stage reads only that:

    Instance/Series/Study (dicom_node) -> Job (+ JobEvent) -> ModelRun + Finding (workers/model)
    -> Document (sr_writer) -> Delivery + DeliveryAttempt (sender)

Administrative tables (CallingAE, Destination, Route) are seeded from the config file and then
owned by the database. ApiToken and AuditEvent serve the HTTP API. The schema is created and
migrated by Alembic (``migrations/``), never by ``create_all`` in production code.
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "Base",
    "utcnow",
    "as_utc",
    "UTCDateTime",
    "NaiveDatetimeError",
    "StudyState",
    "JobState",
    "DeliveryState",
    "Study",
    "Series",
    "Instance",
    "QuarantinedInstance",
    "InstanceReplacement",
    "Job",
    "JobEvent",
    "ModelRun",
    "ImageSelection",
    "Finding",
    "Document",
    "Delivery",
    "DeliveryAttempt",
    "DeliveryEvent",
    "CallingAE",
    "Destination",
    "Route",
    "ConfigSeed",
    "ApiToken",
    "AuditEvent",
    "Installation",
]

UID = String(64)  # PS3.5 6.2: UI values are at most 64 characters
AE = String(16)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    """Now, as an aware UTC datetime (what every timestamp column stores)."""
    return dt.datetime.now(dt.timezone.utc)


def as_utc(value: dt.datetime) -> dt.datetime:
    """A timestamp typed by a person (a CLI option, a page's filter, an API parameter) as aware UTC:
    a time without a zone is taken as UTC, one with a zone is converted. Database values need no
    conversion: :class:`UTCDateTime` returns them aware and in UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


class NaiveDatetimeError(ValueError):
    """A datetime without a zone was given for a timestamp column: which zone it meant is unknown."""


class UTCDateTime(TypeDecorator[dt.datetime]):
    """The one timestamp column type: stores UTC, returns aware UTC datetimes on every database.

    SQLite has no zone-aware type (SQLAlchemy's ``DateTime`` drops the offset and returns naive
    values); PostgreSQL's ``timestamptz`` returns values in the session's zone. Both are normalised
    here, once, so no reader converts. A naive value is refused (:class:`NaiveDatetimeError`)
    rather than guessed. The column is ``DateTime(timezone=True)`` underneath, so the schema is
    the same as before.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"a timestamp column takes a datetime, not {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise NaiveDatetimeError(
                f"timestamp {value.isoformat()} has no time zone: give an aware datetime "
                "(common.models.utcnow(), or as_utc() for a time a person typed)"
            )
        return value.astimezone(dt.timezone.utc)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite: stored as UTC by process_bind_param
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _ts(nullable: bool = False, default: bool = True) -> Mapped[dt.datetime]:
    return mapped_column(UTCDateTime(), nullable=nullable, default=utcnow if default else None)


class StudyState(str, enum.Enum):
    RECEIVING = "receiving"  # instances arriving; not yet stable
    COMPLETE = "complete"  # stable; a job was created for the current version
    STORED = "stored"  # routed to "store only" or "ignore": no job


class JobState(str, enum.Enum):
    PENDING = "pending"  # created, not yet published to the broker (outbox)
    QUEUED = "queued"  # published
    RUNNING = "running"
    INFERRED = "inferred"  # model runs + findings recorded
    SR_WRITTEN = "sr_written"  # documents written to the spool
    DELIVERED = "delivered"  # every delivery succeeded
    #: a delivery failed for good (retries used up); back to sr_written or delivered when an
    #: administrator retries or cancels it (workflow.deliveries)
    DELIVERY_FAILED = "delivery_failed"
    FAILED = "failed"  # transient failure, will be retried
    DEAD = "dead"  # permanent failure; an administrator may retry
    CANCELLED = "cancelled"


class DeliveryState(str, enum.Enum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # retry limit reached; an administrator may retry
    CANCELLED = "cancelled"  # an administrator cancelled it, or its destination was removed


def _enum(e: type[enum.Enum]) -> Enum:
    return Enum(e, values_callable=lambda x: [m.value for m in x], native_enum=False, length=16)


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_description: Mapped[str | None] = mapped_column(String(64))
    calling_ae_title: Mapped[str | None] = mapped_column(AE)
    state: Mapped[StudyState] = mapped_column(_enum(StudyState), default=StudyState.RECEIVING)
    #: Number of result versions produced so far; instances after a version make a new one.
    version: Mapped[int] = mapped_column(Integer, default=0)
    #: An instance of the study was replaced by other content, or moved to another study, since
    #: its last version was decided: the next completion makes a new version even though the
    #: number of instances may be the same.
    instances_changed: Mapped[bool] = mapped_column(Boolean, default=False)
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    first_received_at: Mapped[dt.datetime] = _ts()
    last_received_at: Mapped[dt.datetime] = _ts()
    completed_at: Mapped[dt.datetime | None] = _ts(nullable=True, default=False)
    #: When spool retention (``storage.retention_days``, :mod:`workflow.retention`) last removed
    #: the study's images; its rows stay. None: every instance's file is in the spool.
    images_pruned_at: Mapped[dt.datetime | None] = _ts(nullable=True, default=False)

    series: Mapped[list["Series"]] = relationship(back_populates="study")
    instances: Mapped[list["Instance"]] = relationship(back_populates="study")
    jobs: Mapped[list["Job"]] = relationship(back_populates="study")

    __table_args__ = (
        Index("ix_studies_state_last", "state", "last_received_at"),
        #: Auditors filter by calling AE; a rare AE title drives the search from its studies.
        Index("ix_studies_calling_ae_title", "calling_ae_title"),
    )


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16), index=True)
    body_part_examined: Mapped[str | None] = mapped_column(String(64))
    series_description: Mapped[str | None] = mapped_column(String(64))
    series_number: Mapped[int | None] = mapped_column(Integer)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list["Instance"]] = relationship(back_populates="series")


class Instance(Base):
    """One received SOP Instance, stored as received in the spool (``path`` under data_dir)."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    #: Image Position (Patient) and Image Orientation (Patient) as JSON lists, for slice order.
    image_position_patient: Mapped[list[float] | None] = mapped_column(JSON)
    image_orientation_patient: Mapped[list[float] | None] = mapped_column(JSON)
    pixel_spacing: Mapped[list[float] | None] = mapped_column(JSON)
    path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    #: SHA-256 of the data set as received, the File Meta the node writes left out (identical
    #: re-sends are recognised by it; rows from before issue 13 hold the whole file's until
    #: their first re-send, see dicom_node.ingest)
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae_title: Mapped[str | None] = mapped_column(AE)
    received_at: Mapped[dt.datetime] = _ts()
    #: Times an identical copy was received again (re-sent instance, not processed twice).
    duplicate_count: Mapped[int] = mapped_column(Integer, default=0)
    #: When spool retention removed the file at ``path`` (the row is kept); None: it is there.
    pruned_at: Mapped[dt.datetime | None] = _ts(nullable=True, default=False)

    study: Mapped[Study] = relationship(back_populates="instances")
    series: Mapped[Series] = relationship(back_populates="instances")


class QuarantinedInstance(Base):
    """A received object that could not be parsed or stored; kept with the reason."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(512))
    reason: Mapped[str] = mapped_column(Text)
    calling_ae_title: Mapped[str | None] = mapped_column(AE)
    peer_address: Mapped[str | None] = mapped_column(String(64))
    affected_sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    received_at: Mapped[dt.datetime] = _ts()
    #: When ``storage.quarantine_retention_days`` removed the file at ``path``; None: it is there.
    pruned_at: Mapped[dt.datetime | None] = _ts(nullable=True, default=False)


class InstanceReplacement(Base):
    """A filed instance replaced by a re-send of the same SOP Instance UID with other content.

    PS3.4 B.4.1.3 leaves a re-sent SOP Instance UID to the SCP: the gateway takes the new content
    as a correction. The replaced bytes are kept under ``replaced/`` (``kept_path``); when the new
    content names another study, ``previous_study_id`` differs from ``study_id`` (the instance
    moved) and both studies make a new version.
    """

    __tablename__ = "instance_replacements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    previous_study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    #: the replaced instance's ``Instance.sha256`` (of its data set) and file size
    previous_sha256: Mapped[str] = mapped_column(String(64))
    previous_size_bytes: Mapped[int] = mapped_column(BigInteger)
    #: The replaced bytes under ``replaced/`` (relative to data_dir); None when a concurrent
    #: association had already overwritten them.
    kept_path: Mapped[str | None] = mapped_column(String(512))
    calling_ae_title: Mapped[str | None] = mapped_column(AE)
    replaced_at: Mapped[dt.datetime] = _ts()
    #: When spool retention removed the kept bytes at ``kept_path``; None: they are there.
    pruned_at: Mapped[dt.datetime | None] = _ts(nullable=True, default=False)

    @property
    def moved(self) -> bool:
        """The SOP Instance UID now belongs to another study."""
        return self.previous_study_id != self.study_id


class Job(Base):
    """Processing of one version of a study's results; unique per (study, version)."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    study_version: Mapped[int] = mapped_column(Integer)
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.PENDING, index=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Instances that belong to this version (received before the job was created).
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    #: Chosen images the model could not read (undecodable pixels): the SRs are then PARTIAL.
    images_skipped: Mapped[int] = mapped_column(Integer, default=0)
    destinations: Mapped[list[str]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _ts()
    updated_at: Mapped[dt.datetime] = _ts()
    published_at: Mapped[dt.datetime | None] = _ts(nullable=True, default=False)
    worker: Mapped[str | None] = mapped_column(String(128))

    study: Mapped[Study] = relationship(back_populates="jobs")
    events: Mapped[list["JobEvent"]] = relationship(back_populates="job", order_by="JobEvent.id")

    __table_args__ = (UniqueConstraint("study_id", "study_version", name="uq_jobs_study_version"),)


class JobEvent(Base):
    """Every state change of a job, timestamped (the study timeline)."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    at: Mapped[dt.datetime] = _ts()
    detail: Mapped[str | None] = mapped_column(Text)

    job: Mapped[Job] = relationship(back_populates="events")


class ModelRun(Base):
    """One prompt sent to the model for one image (and frame), with the raw answer."""

    __tablename__ = "model_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    frame_number: Mapped[int | None] = mapped_column(Integer)
    language: Mapped[str] = mapped_column(String(8))
    task: Mapped[str] = mapped_column(String(32))
    backend: Mapped[str] = mapped_column(String(16))
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    weights_id: Mapped[str] = mapped_column(String(128), index=True)
    prompt: Mapped[str] = mapped_column(Text)
    raw_answer: Mapped[str] = mapped_column(Text)
    duration_s: Mapped[float] = mapped_column(Float)
    #: Why this image (and frame) was chosen, e.g. "CT volume: slice 2 of 3 along the normal".
    selection_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _ts()
    #: The task plan (model/plans.toml), the prompt of the library and the MedRegA training set
    #: whose instruction the prompt carries (None for the demo's Chinese wording).
    plan: Mapped[str | None] = mapped_column(String(64))
    prompt_id: Mapped[str | None] = mapped_column(String(64))
    training_set: Mapped[str | None] = mapped_column(String(64))
    #: CT window the image was rendered with (model/imaging.py CT_PRESETS), or None.
    window: Mapped[str | None] = mapped_column(String(16))
    #: frontal | lateral | other for projection radiographs.
    view: Mapped[str | None] = mapped_column(String(16))
    #: The answer reached max_new_tokens without <|im_end|>: cut off (the SR is PARTIAL).
    truncated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: Sentences left out of the findings: [{"sentence": ..., "reason": ...}] (model/checks.py).
    removed_sentences: Mapped[list[dict[str, str]] | None] = mapped_column(JSON)


class ImageSelection(Base):
    """Why an instance of a job went to the model or not (model/selection.py), one row each.

    A row without ``instance_id`` speaks for a series ("497 of 500 slices not sent").
    """

    __tablename__ = "image_selections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    frame_number: Mapped[int | None] = mapped_column(Integer)
    chosen: Mapped[bool] = mapped_column(Boolean)
    #: The plan a chosen image got.
    plan: Mapped[str | None] = mapped_column(String(64))
    view: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)


class Finding(Base):
    """One region (one box) the model named, or a report text (no box), in one language."""

    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    model_run_id: Mapped[int] = mapped_column(ForeignKey("model_runs.id"), index=True)
    language: Mapped[str] = mapped_column(String(8), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="region")  # region | report
    label: Mapped[str | None] = mapped_column(String(256), index=True)
    code_value: Mapped[str | None] = mapped_column(String(64))
    code_scheme: Mapped[str | None] = mapped_column(String(32))
    code_meaning: Mapped[str | None] = mapped_column(String(256))
    text: Mapped[str | None] = mapped_column(Text)
    #: Box as the model gave it: integers 0-999 relative to the whole image.
    box_x1: Mapped[int | None] = mapped_column(Integer)
    box_y1: Mapped[int | None] = mapped_column(Integer)
    box_x2: Mapped[int | None] = mapped_column(Integer)
    box_y2: Mapped[int | None] = mapped_column(Integer)
    #: The same box in pixels of the referenced image (value / 999 x Columns or Rows), clipped.
    px_x1: Mapped[float | None] = mapped_column(Float)
    px_y1: Mapped[float | None] = mapped_column(Float)
    px_x2: Mapped[float | None] = mapped_column(Float)
    px_y2: Mapped[float | None] = mapped_column(Float)
    referenced_sop_instance_uid: Mapped[str | None] = mapped_column(UID, index=True)
    referenced_sop_class_uid: Mapped[str | None] = mapped_column(UID)
    frame_number: Mapped[int | None] = mapped_column(Integer)
    tracking_uid: Mapped[str | None] = mapped_column(UID, index=True)
    tracking_identifier: Mapped[str | None] = mapped_column(String(64))
    #: True when the answer could not be parsed into regions and is kept as text.
    unparsed: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = _ts()

    #: Auditors' search pages newest first by (created_at, id) (keyset pagination).
    __table_args__ = (Index("ix_findings_created_at_id", "created_at", "id"),)


class Document(Base):
    """A DICOM object we produced (SR or GSPS), stored in the spool before it is sent."""

    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # sr | gsps
    language: Mapped[str | None] = mapped_column(String(8))
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    predecessor_sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[dt.datetime] = _ts()

    deliveries: Mapped[list["Delivery"]] = relationship(back_populates="document")

    #: Covering index: failed/pending deliveries -> their jobs without visiting the table
    #: (auditors' delivery-status filter).
    __table_args__ = (Index("ix_documents_id_job_id", "id", "job_id"),)


class Delivery(Base):
    """Sending one document to one destination; unique so a retry never sends a second copy."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id"), index=True)
    destination_name: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[DeliveryState] = mapped_column(
        _enum(DeliveryState), default=DeliveryState.PENDING, index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: SOP Class actually sent (differs from the document's when the destination fell back).
    sent_sop_class_uid: Mapped[str | None] = mapped_column(UID)
    next_attempt_at: Mapped[dt.datetime | None] = _ts(nullable=True, default=False)
    delivered_at: Mapped[dt.datetime | None] = _ts(nullable=True, default=False)
    created_at: Mapped[dt.datetime] = _ts()

    document: Mapped[Document] = relationship(back_populates="deliveries")
    attempts_log: Mapped[list["DeliveryAttempt"]] = relationship(
        back_populates="delivery", order_by="DeliveryAttempt.id"
    )
    #: Its state changes, oldest first (written by workflow.deliveries only).
    events: Mapped[list["DeliveryEvent"]] = relationship(order_by="DeliveryEvent.id", viewonly=True)

    __table_args__ = (
        UniqueConstraint("document_id", "destination_name", name="uq_deliveries_document_dest"),
    )


class DeliveryAttempt(Base):
    """One C-STORE attempt and its DIMSE status (PS3.7 C.4.2.1.5), or the network error."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id"), index=True)
    at: Mapped[dt.datetime] = _ts()
    status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    sop_class_uid: Mapped[str | None] = mapped_column(UID)

    delivery: Mapped[Delivery] = relationship(back_populates="attempts_log")


class DeliveryEvent(Base):
    """Every state change of a delivery, timestamped (written by :mod:`workflow.deliveries` only)."""

    __tablename__ = "delivery_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    at: Mapped[dt.datetime] = _ts()
    detail: Mapped[str | None] = mapped_column(Text)


class CallingAE(Base):
    """An allowed caller (PS3.8 association requestor), optionally pinned to a host."""

    __tablename__ = "calling_aes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ae_title: Mapped[str] = mapped_column(AE, unique=True)
    host: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(String(255))
    destinations: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: A disabled caller stays in the allow-list (the list is still enforced) but may not associate.
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = _ts()


class Destination(Base):
    """A Storage SCP that receives our SRs (PACS)."""

    __tablename__ = "destinations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    ae_title: Mapped[str] = mapped_column(AE)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    send: Mapped[str] = mapped_column(String(16), default="sr")
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = _ts()


class Route(Base):
    """A routing rule: which studies go to the model and where results go."""

    __tablename__ = "routes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    order: Mapped[int] = mapped_column(Integer, default=100)
    calling_ae_title: Mapped[str | None] = mapped_column(AE)
    modality: Mapped[str | None] = mapped_column(String(16))
    sop_class_uid: Mapped[str | None] = mapped_column(UID)
    body_part_examined: Mapped[str | None] = mapped_column(String(64))
    series_description: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16), default="process")
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    destinations: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: A disabled route matches nothing (routing goes on to the next one).
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = _ts()


class ApiToken(Base):
    """An API token; only its SHA-256 hash is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # admin | auditor
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = _ts()
    revoked_at: Mapped[dt.datetime | None] = _ts(nullable=True, default=False)
    last_used_at: Mapped[dt.datetime | None] = _ts(nullable=True, default=False)


class AuditEvent(Base):
    """Append-only audit log (who read or changed what). Cf. PS3.15 A.5."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = _ts()
    actor: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64), index=True)
    query: Mapped[str | None] = mapped_column(Text)
    rows: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    study_instance_uid: Mapped[str | None] = mapped_column(UID, index=True)

    #: The audit log is read and exported in time order (keyset pagination).
    __table_args__ = (Index("ix_audit_events_at_id", "at", "id"),)


class ConfigSeed(Base):
    """A destination, calling AE title or route the config file has seeded into the database once.

    The config file only seeds: a row it seeded that an administrator removed stays removed at the
    next start (``gateway.admin.seed_from_settings`` adds only what it never seeded before).
    """

    __tablename__ = "config_seeds"
    __table_args__ = (UniqueConstraint("kind", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: destination | calling_ae | route
    kind: Mapped[str] = mapped_column(String(16))
    #: The destination's or route's name, or the calling AE title.
    name: Mapped[str] = mapped_column(String(64))
    seeded_at: Mapped[dt.datetime] = _ts()


class Installation(Base):
    """This installation's identity: one row, written by the migration that creates the table.

    ``uid_root`` is a random UUID; every DICOM UID the gateway mints (SR, presentation state,
    Tracking UIDs) is name-based under it (:func:`common.uids.derive_uid`), so a retry
    rewrites the same UID while two installations never mint the same one.
    """

    __tablename__ = "installation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid_root: Mapped[str] = mapped_column(String(36), unique=True)
    created_at: Mapped[dt.datetime] = _ts()


class EvaluationRun(Base):
    """One run of ``medrega-gateway evaluate``: the model measured on a site's labelled cases.

    Which weights (digest) and which plans and prompts (digests, layout) were measured, when, by
    whom, on how many cases, and the metrics per task, language and modality with their 95 %
    intervals (``summary``, JSON; the per-case answers stay in the run's metrics.json).
    """

    __tablename__ = "evaluation_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[dt.datetime] = _ts()
    finished_at: Mapped[dt.datetime] = _ts()
    actor: Mapped[str] = mapped_column(String(64))
    dataset_path: Mapped[str] = mapped_column(String(1024))
    cases_sha256: Mapped[str] = mapped_column(String(71))
    case_count: Mapped[int] = mapped_column(Integer)
    scored_count: Mapped[int] = mapped_column(Integer)
    skipped_count: Mapped[int] = mapped_column(Integer)
    backend: Mapped[str] = mapped_column(String(16))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(128))
    weights_id: Mapped[str] = mapped_column(String(128), index=True)
    plans_sha256: Mapped[str] = mapped_column(String(71))
    prompts_sha256: Mapped[str] = mapped_column(String(71))
    prompt_layout: Mapped[str] = mapped_column(String(16))
    out_dir: Mapped[str] = mapped_column(String(1024))
    summary: Mapped[str] = mapped_column(Text)

    #: Auditors list runs newest first.
    __table_args__ = (Index("ix_evaluation_runs_finished_at_id", "finished_at", "id"),)

"""Pydantic models of the HTTP API (the OpenAPI document is generated from these)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import Path

import re

from common.settings import AE_TITLE_LENGTH
from gateway.admin import HOST_LENGTH, NAME_LENGTH, NAME_PATTERN, TEXT_PATTERN
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StringConstraints

__all__ = [
    "AETitle",
    "HOST_LENGTH",
    "HostName",
    "KeyName",
    "LongFilter",
    "NAME_LENGTH",
    "NAME_PATTERN",
    "Port",
    "RouteOrder",
    "ShortFilter",
    "IsoDateTime",
    "SafeText",
    "DeliveryStatus",
    "Language",
    "FindingOut",
    "FindingPage",
    "StudyOut",
    "StudyPage",
    "SeriesOut",
    "StudyDetail",
    "TimelineStep",
    "Timeline",
    "DeliveryAttemptOut",
    "DeliveryEventOut",
    "DeliveryOut",
    "DeliveryPage",
    "AuditEventOut",
    "AuditEventPage",
    "CallingAEIn",
    "CallingAEOut",
    "CallingAEPatch",
    "DestinationIn",
    "DestinationOut",
    "DestinationPatch",
    "RouteIn",
    "RouteOut",
    "RoutePatch",
    "JobOut",
    "JobPage",
    "ActionResult",
    "ErrorOut",
    "AUTH_RESPONSES",
]

#: Free text from a client: bounded, printable (no control characters, which PostgreSQL refuses
#: in text and which have no place in a filter).
#: A row id in a path: what the database keys hold (an INTEGER column; larger values are 422).
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]
SafeText = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")]
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


def _rfc3339(value: object) -> object:
    """Accept only RFC 3339 date-times with a zone (what the OpenAPI ``date-time`` format says);
    pydantic alone would also take numbers (epoch seconds) and zone-less times."""
    if isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("expected an RFC 3339 date-time with zone, e.g. 2026-03-01T00:00:00Z")
    return value


#: A timestamp parameter: RFC 3339 with seconds and a zone (``Z`` or ``+08:00``).
IsoDateTime = Annotated[dt.datetime, BeforeValidator(_rfc3339)]
#: A finding's language: the languages the model is asked in (``model.prompts.LANGUAGES``; a test
#: keeps the two equal), as RFC 5646 tags.
Language = Literal["en", "zh"]
#: Summary of a job's deliveries: any failed > any pending > all sent; ``none`` without any.
DeliveryStatus = Literal["sent", "pending", "failed", "none"]


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorOut(BaseModel):
    detail: str


#: Responses every authenticated operation may give.
AUTH_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorOut, "description": "no token, or an unknown or revoked token"},
    403: {"model": ErrorOut, "description": "the token's role may not do this"},
    429: {"model": ErrorOut,
          "description": "too many failed authentications from this client address: wait",
          "headers": {"Retry-After": {"description": "seconds to wait (RFC 9110 10.2.3)",
                                      "schema": {"type": "integer"}}}},
}


class PatientIdentifiers(_Out):
    """Shown only to roles allowed to see them; otherwise ``identifiers_hidden`` is true."""

    patient_id: str | None = None
    patient_name: str | None = None
    accession_number: str | None = None
    identifiers_hidden: bool = False


class FindingOut(PatientIdentifiers):
    id: int
    created_at: dt.datetime
    study_instance_uid: str
    study_date: str | None
    calling_ae_title: str | None
    modality: str | None
    sop_instance_uid: str | None = Field(description="the image the finding refers to")
    frame_number: int | None
    language: str
    kind: str
    label: str | None
    code_value: str | None
    code_scheme: str | None
    code_meaning: str | None
    text: str | None
    box: list[int] | None = Field(description="x1, y1, x2, y2 as the model gave them (0-999)")
    box_px: list[float] | None = Field(description="x1, y1, x2, y2 in pixels of the image")
    unparsed: bool
    job_id: int
    study_version: int
    model_name: str
    model_version: str
    weights_id: str
    window: str | None = Field(
        default=None,
        description="CT window preset the model's input was rendered with when it found this "
                    "(lung, mediastinum, soft_tissue, brain, bone); null: the image's own or default window")
    delivery_status: DeliveryStatus


class FindingPage(BaseModel):
    items: list[FindingOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null at the end")


class StudyOut(PatientIdentifiers):
    study_instance_uid: str
    study_date: str | None
    study_description: str | None
    calling_ae_title: str | None
    state: str
    version: int
    urgent: bool
    first_received_at: dt.datetime
    last_received_at: dt.datetime
    completed_at: dt.datetime | None
    modalities: list[str]
    instance_count: int
    #: When spool retention (storage.retention_days) removed the study's images; None: they are
    #: in the spool. The rows, findings and SRs stay; the study cannot be processed again.
    images_pruned_at: dt.datetime | None = None
    #: The sentence that says so ("the images of study ... were removed by retention on ..."), or None.
    images_note: str | None = None


class StudyPage(BaseModel):
    items: list[StudyOut]
    next_cursor: str | None


class SeriesOut(_Out):
    series_instance_uid: str
    modality: str | None
    body_part_examined: str | None
    series_description: str | None
    series_number: int | None
    instance_sop_uids: list[str]


class TimelineStep(BaseModel):
    step: str = Field(description="received, complete, queued, running, inferred, sr_written, "
                                  "delivered, failed, dead, cancelled, pending, ...")
    at: dt.datetime
    job_id: int | None
    study_version: int | None
    detail: str | None
    since_previous_s: float | None = Field(description="seconds since the step before")
    since_received_s: float = Field(description="seconds since the first instance arrived")


class Timeline(BaseModel):
    study_instance_uid: str
    steps: list[TimelineStep]
    total_s: float | None = Field(description="first instance received to last delivery")


class DeliveryAttemptOut(_Out):
    at: dt.datetime
    status: int | None
    error: str | None
    sop_class_uid: str | None


class DeliveryEventOut(_Out):
    """A state change of a delivery (workflow.deliveries), with why."""

    at: dt.datetime
    state: str = Field(description="pending, sent, failed or cancelled")
    detail: str | None


class DeliveryOut(BaseModel):
    id: int
    study_instance_uid: str
    job_id: int
    document_sop_instance_uid: str
    document_kind: str
    document_language: str | None
    destination_name: str
    state: str
    attempts: int
    sent_sop_class_uid: str | None
    next_attempt_at: dt.datetime | None
    delivered_at: dt.datetime | None
    created_at: dt.datetime
    last_error: str | None = Field(description="the last attempt's DIMSE status or network error, "
                                               "e.g. 'connection refused (ECONNREFUSED) to 10.0.0.5:104'")
    attempts_log: list[DeliveryAttemptOut]
    events: list[DeliveryEventOut] = Field(default_factory=list,
                                           description="state changes, oldest first, with why")


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class ImageSelectionOut(BaseModel):
    """Why an image went to the model or not (model/selection.py)."""

    job_id: int
    study_version: int
    series_instance_uid: str
    sop_instance_uid: str | None = Field(description="null: a note about the series (slices not sent)")
    frame_number: int | None
    chosen: bool
    plan: str | None = Field(description="the task plan a chosen image got (model/plans.toml)")
    view: str | None = Field(description="frontal, lateral or other (projection radiographs)")
    reason: str


class RemovedSentenceOut(BaseModel):
    sentence: str
    reason: str = Field(description="prior_study or deid_blank (model/checks.py)")


class ModelRunOut(BaseModel):
    """One trained prompt asked about one image."""

    id: int
    job_id: int
    study_version: int
    sop_instance_uid: str
    frame_number: int | None
    plan: str | None
    prompt_id: str | None
    training_set: str | None = Field(description="MedRegA training set whose instruction the prompt carries")
    task: str
    language: str
    window: str | None
    view: str | None
    truncated: bool = Field(description="the answer stopped at max_new_tokens without <|im_end|>")
    removed_sentences: list[RemovedSentenceOut]
    selection_reason: str | None


class ImageRefOut(BaseModel):
    """An image (and frame) a result was read from."""

    sop_instance_uid: str | None = Field(description="null: the finding names no image")
    frame_number: int | None


class ImageResultOut(BaseModel):
    """One result about whole images (a report text or a classification code), once however many
    images of a series it was read from (sr_writer.content.result_key: same text after white space
    normalisation or same code, same task and language, same series), as the SR writes it."""

    job_id: int
    study_version: int
    kind: str = Field(description="report or classification")
    language: str
    task: str = Field(description="the task and the training set (or prompt) that answered")
    label: str | None
    code_value: str | None
    code_scheme: str | None
    code_meaning: str | None
    text: str | None
    images: list[ImageRefOut] = Field(description="every image (and frame) it was read from, in order")
    finding_ids: list[int] = Field(description="the findings (one per image) it stands for")


class StudyDetail(BaseModel):
    study: StudyOut
    series: list[SeriesOut]
    timeline: Timeline
    deliveries: list[DeliveryOut]
    findings: list[FindingOut]
    image_selection: list[ImageSelectionOut] = Field(
        default_factory=list, description="every image chosen for the model or left out, with the reason")
    model_runs: list[ModelRunOut] = Field(default_factory=list, description="the prompts each image got")
    jobs: list[JobOut] = Field(default_factory=list,
                               description="every job of the study (one per result version), newest first")
    image_results: list[ImageResultOut] = Field(
        default_factory=list, description="the results about whole images, identical ones once with all their images")


class AuditEventOut(_Out):
    id: int
    at: dt.datetime
    actor: str
    role: str | None
    action: str
    query: str | None
    rows: int | None
    outcome: str
    study_instance_uid: str | None


class AuditEventPage(BaseModel):
    items: list[AuditEventOut]
    next_cursor: str | None


#: PS3.5 VR AE: 1-16 printable ASCII characters without backslash, not only spaces.
AETitle = Annotated[str, StringConstraints(
    min_length=1, max_length=AE_TITLE_LENGTH,
    pattern=r"^ *[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]*$")]
#: A destination's or route's name.
KeyName = Annotated[str, StringConstraints(min_length=1, max_length=NAME_LENGTH,
                                           pattern=NAME_PATTERN)]
#: A destination's host name or address.
HostName = Annotated[str, StringConstraints(min_length=1, max_length=HOST_LENGTH, pattern=TEXT_PATTERN)]
#: A caller's description.
Description = Annotated[str, StringConstraints(max_length=HOST_LENGTH, pattern=r"^[^\x00-\x1f\x7f]*$")]
#: A TCP port of a peer.
Port = Annotated[int, Field(ge=1, le=65535)]
#: A route's place: routes are tried by increasing order.
RouteOrder = Annotated[int, Field(ge=-1_000_000, le=1_000_000)]
#: A route's filter on a calling AE title or a Modality (0008,0060), VR CS: 16 characters at most.
ShortFilter = Annotated[str, StringConstraints(max_length=16)]
#: A route's filter on a SOP Class UID, Body Part Examined or Series Description (64 characters).
LongFilter = Annotated[str, StringConstraints(max_length=64)]
_STRICT = ConfigDict(extra="forbid")


def _json_integer(value: object) -> object:
    """A JSON Schema integer: an int, or a float with no fraction (4312.0); not "4312" or true."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("expected an integer")
        return int(value)
    return value



class CallingAEIn(BaseModel):
    model_config = _STRICT

    ae_title: AETitle
    host: HostName | None = None
    description: Description | None = None
    destinations: list[SafeText] = []


class CallingAEPatch(BaseModel):
    """The fields to change (the AE title is the key and stays); null ``host``: any host."""

    model_config = _STRICT

    host: HostName | None = None
    description: Description | None = None
    destinations: list[SafeText] | None = None
    enabled: StrictBool | None = None


class CallingAEOut(_Out):
    ae_title: str
    host: str | None
    description: str | None
    destinations: list[str]
    enabled: bool = Field(True, description="false: refused like an unknown caller")
    created_at: dt.datetime


class DestinationIn(BaseModel):
    model_config = _STRICT

    name: KeyName
    ae_title: AETitle
    host: HostName
    # The range before the validator, so that the schema says minimum/maximum (JSON Schema).
    port: Annotated[Port, BeforeValidator(_json_integer)]
    send: Literal["sr", "sr+gsps"] = "sr"
    tls: StrictBool = False


class DestinationPatch(BaseModel):
    """The fields to change (the name is the key and stays); ``enabled: false`` disables it."""

    model_config = _STRICT

    ae_title: AETitle | None = None
    host: HostName | None = None
    port: Annotated[Port, BeforeValidator(_json_integer)] | None = None
    send: Literal["sr", "sr+gsps"] | None = None
    tls: StrictBool | None = None
    enabled: StrictBool | None = None


class DestinationOut(_Out):
    name: str
    ae_title: str
    host: str
    port: int
    send: str
    tls: bool
    enabled: bool
    created_at: dt.datetime


class RouteIn(BaseModel):
    model_config = _STRICT

    name: KeyName
    order: Annotated[RouteOrder, BeforeValidator(_json_integer)] = 100
    calling_ae_title: ShortFilter = ""
    modality: ShortFilter = ""
    sop_class_uid: LongFilter = ""
    body_part_examined: LongFilter = ""
    series_description: LongFilter = ""
    action: Literal["process", "store", "ignore"] = "process"
    urgent: StrictBool = False
    destinations: list[SafeText] = []


class RoutePatch(BaseModel):
    """The fields to change (the name is the key and stays); an empty string clears a filter."""

    model_config = _STRICT

    order: Annotated[RouteOrder, BeforeValidator(_json_integer)] | None = None
    calling_ae_title: ShortFilter | None = None
    modality: ShortFilter | None = None
    sop_class_uid: LongFilter | None = None
    body_part_examined: LongFilter | None = None
    series_description: LongFilter | None = None
    action: Literal["process", "store", "ignore"] | None = None
    urgent: StrictBool | None = None
    destinations: list[SafeText] | None = None
    enabled: StrictBool | None = None


class RouteOut(_Out):
    name: str
    order: int
    calling_ae_title: str | None
    modality: str | None
    sop_class_uid: str | None
    body_part_examined: str | None
    series_description: str | None
    action: str
    urgent: bool
    destinations: list[str]
    enabled: bool = Field(True, description="false: matches no study")
    created_at: dt.datetime


class JobOut(BaseModel):
    id: int
    study_instance_uid: str
    study_version: int
    state: str
    attempts: int
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    worker: str | None


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class ActionResult(BaseModel):
    ok: bool = True
    detail: str

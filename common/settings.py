"""Gateway configuration: a TOML file plus ``MEDREGA_<SECTION>__<KEY>`` environment overrides.

Settings are validated once, at start-up (:func:`load_settings`). A wrong or missing value raises
:class:`ConfigError` whose message is one line naming the key, e.g.
``node.port: Input should be less than or equal to 65535``.

The file only *seeds* the administrative tables (AE titles, destinations, routes): once they are in
the database, the database is authoritative and changes take effect without a restart.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "ConfigError",
    "Settings",
    "NodeSettings",
    "StorageSettings",
    "DatabaseSettings",
    "QueueSettings",
    "ModelSettings",
    "SenderSettings",
    "ApiSettings",
    "LoggingSettings",
    "DestinationSettings",
    "CallerSettings",
    "RouteSettings",
    "load_settings",
    "validate_ae_title",
    "DATABASE_SCHEMES",
]

ENV_PREFIX = "MEDREGA_"
ENV_NESTED_DELIMITER = "__"


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the key."""


_AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def validate_ae_title(value: str) -> str:
    """Check an Application Entity title (PS3.5 6.2, VR AE).

    At most 16 characters of the default character repertoire, no backslash, no control
    characters, not only spaces. Leading/trailing spaces are not significant and are removed.
    """
    stripped = value.strip()
    if not stripped or not _AE_TITLE_RE.match(stripped):
        raise ValueError(
            f"{value!r} is not a valid AE title (1-16 printable ASCII characters, no backslash)"
        )
    return stripped


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSettings(_Section):
    """The DICOM node (PS3.7 / PS3.8 association acceptor)."""

    ae_title: str = "MEDREGA"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)
    stable_after_s: float = Field(30.0, gt=0)
    #: Maximum PDU size we advertise; 0 means unlimited (PS3.8 D.3.3.1), the fastest setting.
    maximum_pdu_size: int = Field(0, ge=0)
    maximum_associations: int = Field(16, ge=1)
    #: Listener processes; the first accepts every connection and gives it to the least busy.
    #: One Python process uses one core at most, so several serve simultaneous associations
    #: faster. 0: one per CPU core, at most 8.
    processes: int = Field(0, ge=0)
    acse_timeout_s: float = Field(30.0, gt=0, description=(
        "Association establishment, in all: from the TCP accept (TLS handshake included) until the "
        "A-ASSOCIATE-RQ has arrived whole; also the ARTIM timer after a reject, release or abort "
        "(PS3.8 9.1.5)."))
    dimse_timeout_s: float = Field(60.0, gt=0, description=(
        "Each P-DATA-TF PDU must arrive whole within this plus its length at "
        "minimum_transfer_rate_kb_s, counted from its header; also the most time between the PDUs "
        "of one DIMSE message. Past it the association is aborted."))
    network_timeout_s: float = Field(60.0, gt=0, description=(
        "An association on which no PDU starts for this long is idle and aborted."))
    minimum_transfer_rate_kb_s: float = Field(64.0, gt=0, description=(
        "The slowest transfer (kB/s, 1 kB = 1000 bytes) a PDU is given time for: a PDU of N bytes "
        "may take dimse_timeout_s + N / rate seconds."))
    maximum_pending_connections_per_address: int = Field(8, ge=1, description=(
        "TCP connections from one client address that are not yet an association (accepted, no "
        "A-ASSOCIATE-AC sent yet); further ones from that address are closed at once, so that "
        "one client cannot hold every connection the node serves."))
    #: Refuse C-STORE with 0xA700 (Out of Resources) when less than this is free in data_dir.
    minimum_free_disk_mb: float = Field(512.0, ge=0)
    #: When true only callers listed in the AE title table may associate.
    require_known_callers: bool = False
    tls_certificate: str = ""
    tls_private_key: str = ""
    tls_ca_certificates: str = ""
    tls_require_client_certificate: bool = False
    #: Prometheus metrics on this port (HTTP ``/metrics``) while ``serve`` runs; 0 disables.
    metrics_port: int = Field(9100, ge=0, le=65535)
    metrics_host: str = Field("", description="Address the metrics server binds; empty: node.host, "
                              "so a node bound to 127.0.0.1 does not publish its metrics elsewhere.")

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: validate_ae_title(v)))


class StorageSettings(_Section):
    data_dir: Path = Path("./var")


#: Database URL schemes the gateway supports (SQLAlchemy dialect[+driver]).
DATABASE_SCHEMES = ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg")


class DatabaseSettings(_Section):
    #: Empty: an embedded SQLite database ``gateway.db`` under ``storage.data_dir``.
    url: str = Field("", description="Empty: an embedded SQLite database gateway.db under "
                     f"storage.data_dir; else a URL whose scheme is one of {', '.join(DATABASE_SCHEMES)}.")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else None
        if value and scheme not in DATABASE_SCHEMES:
            raise ValueError(f"unknown scheme {scheme or value!r}; one of {', '.join(DATABASE_SCHEMES)}")
        return value


class QueueSettings(_Section):
    #: Empty: an embedded broker (kombu's SQLAlchemy transport on SQLite under data_dir).
    broker_url: str = ""
    #: Seconds before an unacknowledged task is redelivered (Redis visibility timeout).
    visibility_timeout_s: int = Field(4 * 3600, gt=0)
    task_time_limit_s: int = Field(3 * 3600, gt=0)
    #: A running job whose worker sent no heartbeat (one between model batches) for this long is
    #: taken as abandoned (worker killed, host lost) and queued again. Longer than one batch.
    job_lease_s: int = Field(900, ge=30)


class ModelSettings(_Section):
    backend: Literal["medrega", "tiny", "replay"] = "medrega"
    #: Converted checkpoint folder (medrega) or replay JSONL file (replay).
    path: str = ""
    device: str = "auto"
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    load_in_8bit: bool = False
    max_new_tokens: int = Field(400, ge=1)
    batch_size: int = Field(4, ge=1)
    #: Upper bound of images sent to the model per study (bounded work per study).
    max_images_per_study: int = Field(16, ge=1)
    #: Slices taken from each CT/MR volume, spread along the slice normal.
    slices_per_volume: int = Field(3, ge=1)
    #: Task plans file; empty means the plans shipped with the gateway.
    plans_path: str = ""
    prompt_layout: Literal["training", "demo"] = Field("training", description=(
        "where the picture goes in the first user turn: \"training\" (`'<image>\\n' + instruction + ' ' + "
        "question`, as MedRegA's training code built it) or \"demo\" (`instruction + ' <image>\\n' + question`, "
        "as MedRegA's demo file writes it)"))
    original_primary_only: bool = Field(True, description=(
        "only images whose Image Type (0008,0008) is ORIGINAL\\PRIMARY go to the model"))
    exclude_localizers: bool = Field(True, description=(
        "leave out localizers (Image Type LOCALIZER) and CT/MR series of fewer than min_volume_slices images"))
    min_volume_slices: int = Field(3, ge=1, description="a CT/MR series of fewer single-frame images is no volume")
    exclude_secondary_capture: bool = Field(True, description=(
        "leave out Secondary Capture images (screen captures, dose sheets)"))
    exclude_burned_in_annotation: bool = Field(True, description=(
        "leave out images with Burned In Annotation (0028,0301) YES"))
    #: Seed of the tiny random model (tests only).
    tiny_seed: int = 0


class SenderSettings(_Section):
    retries: int = Field(5, ge=0)
    backoff_initial_s: float = Field(5.0, ge=0)
    backoff_max_s: float = Field(600.0, gt=0)
    calling_ae_title: str = ""
    #: "sr" or "sr+gsps": what is sent by default to destinations that do not say.
    send: Literal["sr", "sr+gsps"] = "sr"


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    #: Show patient identifiers to auditors (admins always see them).
    auditors_see_patient_identifiers: bool = False
    #: Send DICOM audit messages (PS3.15 A.5, RFC 3881 XML) over syslog UDP to this host; empty: off.
    audit_syslog_host: str = ""
    audit_syslog_port: int = Field(514, ge=1, le=65535)
    auth_failures_allowed: int = Field(
        5, ge=0, description="Failed authentications (bad or revoked tokens) one client address may "
        "make before it must wait; while it waits its requests get 429 and write no audit row.")
    auth_failure_delay_s: float = Field(
        1.0, gt=0, description="The first wait after the allowed failures; each further failure "
        "doubles it.")
    auth_failure_max_delay_s: float = Field(
        300.0, gt=0, description="The longest wait after failed authentications.")


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: "text" for people, "json" (one object per line) for log collectors.
    format: Literal["text", "json"] = "text"


class DestinationSettings(_Section):
    name: str
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    send: Literal["sr", "sr+gsps"] | None = None
    tls: bool = False

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: validate_ae_title(v)))


class CallerSettings(_Section):
    """A calling AE title that may send us studies (allow-list entry)."""

    ae_title: str
    host: str = ""
    description: str = ""
    #: Destinations (names) that receive results of studies this caller sent; empty: all.
    destinations: list[str] = []

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: validate_ae_title(v)))


class RouteSettings(_Section):
    """Which studies go to the model; first matching route (by ``order``) wins."""

    name: str
    order: int = 100
    calling_ae_title: str = ""
    modality: str = ""
    sop_class_uid: str = ""
    body_part_examined: str = ""
    series_description: str = ""
    action: Literal["process", "store", "ignore"] = "process"
    urgent: bool = False
    destinations: list[str] = []


class Settings(_Section):
    node: NodeSettings = NodeSettings()
    storage: StorageSettings = StorageSettings()
    database: DatabaseSettings = DatabaseSettings()
    queue: QueueSettings = QueueSettings()
    model: ModelSettings = ModelSettings()
    sender: SenderSettings = SenderSettings()
    api: ApiSettings = ApiSettings()
    logging: LoggingSettings = LoggingSettings()
    destinations: list[DestinationSettings] = []
    callers: list[CallerSettings] = []
    routes: list[RouteSettings] = []

    @model_validator(mode="after")
    def _unique_destination_names(self) -> "Settings":
        names = [d.name for d in self.destinations]
        if len(names) != len(set(names)):
            raise ValueError("destination names must be unique")
        return self

    # -- derived values ---------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.storage.data_dir.resolve()

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'gateway.db'}"

    @property
    def metrics_host(self) -> str:
        """Where the metrics server binds (``node.metrics_host``, or else ``node.host``)."""
        return self.node.metrics_host or self.node.host

    @property
    def broker_url(self) -> str:
        return self.queue.broker_url or f"sqla+sqlite:///{self.data_dir / 'broker.db'}"

    @property
    def embedded_broker(self) -> bool:
        return not self.queue.broker_url


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """``MEDREGA_NODE__PORT=11113`` -> ``{"node": {"port": "11113"}}``.

    Lists (``destinations``, ``callers``, ``routes``) are given as JSON: ``MEDREGA_DESTINATIONS='[...]'``.
    """
    import json

    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        parts = key[len(ENV_PREFIX):].lower().split(ENV_NESTED_DELIMITER)
        if len(parts) == 1 and parts[0] in ("destinations", "callers", "routes"):
            try:
                out[parts[0]] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{key}: not valid JSON ({exc.msg})") from None
            continue
        if len(parts) != 2 or not all(parts):
            continue
        out.setdefault(parts[0], {})[parts[1]] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown setting"
    elif first["type"] == "missing":
        msg = "required setting is missing"
    return f"{loc}: {msg}"


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Read ``path`` (TOML, optional), apply environment overrides, validate once.

    Raises :class:`ConfigError` with a one-line message naming the offending key.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"--config: file not found: {p}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config: {p} is not valid TOML: {exc}") from None
    raw = _merge(raw, _env_overrides(dict(os.environ if environ is None else environ)))
    raw = _merge(raw, overrides)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    if path is not None and not settings.storage.data_dir.is_absolute():
        # A relative data_dir is relative to the config file, not to the current directory.
        base = Path(path).resolve().parent
        settings = settings.model_copy(
            update={"storage": StorageSettings(data_dir=base / settings.storage.data_dir)}
        )
    return settings

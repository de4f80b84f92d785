"""Gateway configuration: a TOML file plus ``MEDREGA_<SECTION>__<KEY>`` environment overrides.

Read with pydantic-settings (:class:`Settings` is the ``BaseSettings`` root): the environment wins
over the file, the file over the defaults. Settings are validated once, at start-up
(:func:`load_settings`). A wrong or missing value raises :class:`ConfigError` whose message is one
line naming the key, e.g. ``node.port: Input should be less than or equal to 65535``. A
``MEDREGA_`` variable that is no setting and not one of :data:`OTHER_VARIABLES` is an error naming
it (``MEDREGA_NODE_PORT: unknown environment variable; did you mean MEDREGA_NODE__PORT?``).

The file only *seeds* the administrative tables (AE titles, destinations, routes): once they are in
the database, the database is authoritative and changes take effect without a restart.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.sources.utils import parse_env_vars

from common.holds import FAIL_AT_ENV, HOLD_AT_ENV, HOLD_DIR_ENV

__all__ = [
    "AE_TITLE_LENGTH",
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
    "check_environment",
    "ENV_PREFIX",
    "ENV_NESTED_DELIMITER",
    "CONFIG_ENV",
    "CJK_FONT_ENV",
    "TEST_ENV_PREFIX",
    "OTHER_VARIABLES",
    "validate_ae_title",
    "DATABASE_SCHEMES",
]

ENV_PREFIX = "MEDREGA_"
ENV_NESTED_DELIMITER = "__"

#: The configuration file, when ``--config`` is not given (read by gateway.cli.base).
CONFIG_ENV = "MEDREGA_CONFIG"
#: A font file for Chinese text instead of the lookup (read by sr_writer.render.find_cjk_font).
CJK_FONT_ENV = "MEDREGA_CJK_FONT"
#: Variables only the tests read start with this (tests/conftest.py, tests/faults, tests/viewers).
TEST_ENV_PREFIX = "MEDREGA_TEST_"
#: Variables of the deployment files, read on the host by docker compose (docker-compose.yml,
#: deploy/cpu-demo.env) and scripts/make-base-images.sh, never by the gateway: a shell that sets
#: them may run it too. tests/test_settings.py checks that those files name no other.
DEPLOYMENT_ENV = frozenset({
    "MEDREGA_BASE_IMAGE", "MEDREGA_CA_BUNDLE", "MEDREGA_DEBIAN_MIRROR", "MEDREGA_DEBIAN_SECURITY_MIRROR",
    "MEDREGA_DICOM_PORT", "MEDREGA_API_PORT", "MEDREGA_ORTHANC_HTTP_PORT", "MEDREGA_ORTHANC_DICOM_PORT",
    "MEDREGA_MODELS_DIR", "MEDREGA_REPLAY_FILE",
})
#: ``MEDREGA_`` variables that are not settings and are allowed in the environment (besides
#: :data:`TEST_ENV_PREFIX`); any other that is no setting stops the start (:func:`check_environment`).
OTHER_VARIABLES = frozenset({CONFIG_ENV, CJK_FONT_ENV, HOLD_AT_ENV, HOLD_DIR_ENV, FAIL_AT_ENV}) | DEPLOYMENT_ENV


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the key."""


#: Longest Application Entity title (PS3.5 6.2, VR AE: 16 characters).
AE_TITLE_LENGTH = 16
_AE_TITLE_RE = re.compile(rf"^[\x20-\x5b\x5d-\x7e]{{1,{AE_TITLE_LENGTH}}}$")


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

    ae_title: str = Field("MEDREGA", description=(
        "The node's own AE title (PS3.8: 1-16 characters, no backslash): callers address it as Called"
        " AE Title; also the Calling AE Title of sends when sender.calling_ae_title is empty."))
    host: str = Field("0.0.0.0", description=(
        "Address the DICOM node listens on (0.0.0.0: every IPv4 address)."))
    port: int = Field(11112, ge=0, le=65535, description=(
        "TCP port of the DICOM node (0: any free port, for tests)."))
    stable_after_s: float = Field(30.0, gt=0, description=(
        "Seconds without a new instance after which a study is taken as complete and its job is made "
        "(C-STORE has no end-of-study message, PS3.4 B)."))
    maximum_pdu_size: int = Field(0, ge=0, description=(
        "Maximum PDU size (bytes) the node advertises; 0 means unlimited (PS3.8 D.3.3.1), the fastest"
        " setting."))
    maximum_associations: int = Field(16, ge=1, description=(
        "Simultaneous associations the node serves; a further request is rejected (transient, PS3.8 "
        "9.3.4)."))
    processes: int = Field(0, ge=0, description=(
        "Listener processes; the first accepts every connection and gives it to the least busy. 0: "
        "one per CPU core, at most 8."))
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
    maximum_pending_connections_per_address: int = Field(16, ge=1, description=(
        "TCP connections from one client address that are not yet an association (accepted, no "
        "A-ASSOCIATE-AC sent yet); further ones from that address are closed at once, so that "
        "one client cannot hold every connection the node serves."))
    minimum_free_disk_mb: float = Field(512.0, ge=0, description=(
        "C-STORE is refused with 0xA700 (Out of Resources) when less than this many MB (10^6 bytes) "
        "are free under storage.data_dir."))
    require_known_callers: bool = Field(False, description=(
        "true: only calling AE titles in the callers table may associate; false: any caller may while"
        " that table is empty."))
    tls_certificate: str = Field("", description=(
        "PEM certificate of the node for DICOM TLS (PS3.15 B.1); empty: no TLS listener. A relative "
        "path is relative to the current directory."))
    tls_private_key: str = Field("", description=(
        "PEM private key of tls_certificate. A relative path is relative to the current directory."))
    tls_ca_certificates: str = Field("", description=(
        "PEM bundle of the CAs that sign peers' certificates (callers and TLS destinations); empty: "
        "the system store. A relative path is relative to the current directory."))
    tls_require_client_certificate: bool = Field(False, description=(
        "true: a TLS caller must present a certificate signed by tls_ca_certificates."))
    metrics_port: int = Field(9100, ge=0, le=65535, description=(
        "Port of the Prometheus metrics (HTTP /metrics) while serve runs; 0 disables them."))
    metrics_host: str = Field("", description="Address the metrics server binds; empty: node.host, "
                              "so a node bound to 127.0.0.1 does not publish its metrics elsewhere.")

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: validate_ae_title(v)))


class StorageSettings(_Section):
    data_dir: Path = Field(Path("./var"), description=(
        "Folder of the spool, results, quarantine, embedded database and broker. A relative path is "
        "relative to the config file (to the current directory without one)."))
    retention_days: int = Field(30, ge=0, description=(
        "Days after a study's results were delivered to every destination after which its received "
        "instances (spool/) and the instances they replaced (replaced/) are removed from the spool; "
        "the study's rows, findings and SRs stay. Never earlier, and never while a job of the study "
        "is unfinished or a delivery pending or failed; studies only stored (no job) are kept. "
        "0 keeps them for ever. The default, 30, leaves a month to check or re-run a result: the "
        "gateway is not an archive, the sending PACS keeps the originals. Applied hourly by serve "
        "and by `medrega-gateway spool prune`."))
    quarantine_retention_days: int = Field(0, ge=0, description=(
        "Days after which objects in quarantine/ (received but refused) are removed, their rows "
        "kept; 0 keeps them for ever (the default: they are evidence of what a caller sent)."))


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
    broker_url: str = Field("", description=(
        "Celery broker URL (redis://host:6379/0); empty: an embedded broker (kombu's SQLAlchemy "
        "transport on SQLite under storage.data_dir), for one host."))
    visibility_timeout_s: int = Field(4 * 3600, gt=0, description=(
        "Seconds before a task that no worker acknowledged is delivered again (Redis visibility "
        "timeout)."))
    task_time_limit_s: int = Field(3 * 3600, gt=0, description=(
        "Seconds a task may run before Celery stops it."))
    job_lease_s: int = Field(900, ge=30, description=(
        "Seconds without a heartbeat (one between model batches) after which a running job is taken "
        "as abandoned (worker killed, host lost) and queued again; longer than one batch."))


class ModelSettings(_Section):
    backend: Literal["medrega", "tiny", "replay"] = Field("medrega", description=(
        "The model: medrega (the real MedRegA), tiny (a small random model, tests) or replay "
        "(recorded answers, demo and tests)."))
    path: str = Field("", description=(
        "Converted checkpoint folder (medrega) or replay JSONL file (replay). A relative path is "
        "relative to the current directory."))
    device: str = Field("auto", description=(
        "torch device: auto (the worker's GPU when there is one, else cpu), cpu, cuda or cuda:N."))
    dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description=(
        "Weights' floating-point type: bfloat16, float16 or float32."))
    load_in_8bit: bool = Field(False, description=(
        "true: load the weights in 8 bits (bitsandbytes), about half the GPU memory of bfloat16."))
    max_new_tokens: int = Field(400, ge=1, description="Most tokens the model may write per answer.")
    batch_size: int = Field(4, ge=1, description="Prompts run through the model together.")
    max_images_per_study: int = Field(16, ge=1, description=(
        "Most images (or frames) of one study sent to the model: bounded work per study."))
    slices_per_volume: int = Field(3, ge=1, description=(
        "Slices taken from each CT/MR volume, spread along the slice normal."))
    plans_path: str = Field("", description=(
        "Task plans file (TOML); empty: the plans shipped with the gateway. A relative path is "
        "relative to the current directory."))
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
    tiny_seed: int = Field(0, description="Seed of the tiny random model (tests only).")


class SenderSettings(_Section):
    retries: int = Field(5, ge=0, description=(
        "C-STORE attempts after the first before a delivery is failed (an administrator may retry "
        "it)."))
    backoff_initial_s: float = Field(5.0, ge=0, description=(
        "Seconds before the first retry; each further retry waits twice as long."))
    backoff_max_s: float = Field(600.0, gt=0, description="Longest wait between two attempts, in seconds.")
    calling_ae_title: str = Field("", description=(
        "Calling AE title of our associations to destinations; empty: node.ae_title."))
    send: Literal["sr", "sr+gsps"] = Field("sr", description=(
        "What destinations that do not say get: sr (the SRs) or sr+gsps (also presentation states)."))


class ApiSettings(_Section):
    host: str = Field("127.0.0.1", description="Address the HTTP API and pages listen on.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port of the HTTP API and pages.")
    auditors_see_patient_identifiers: bool = Field(False, description=(
        "true: auditors see patient names and IDs (administrators always do)."))
    audit_syslog_host: str = Field("", description=(
        "Host that receives DICOM audit messages (PS3.15 A.5, RFC 3881 XML) over syslog UDP (RFC "
        "5426); empty: none sent."))
    audit_syslog_port: int = Field(514, ge=1, le=65535, description="UDP port of audit_syslog_host.")
    auth_failures_allowed: int = Field(
        5, ge=0, description="Failed authentications (bad or revoked tokens) one client address may "
        "make before it must wait; while it waits its requests get 429 and write no audit row.")
    auth_failure_delay_s: float = Field(
        1.0, gt=0, description="The first wait after the allowed failures; each further failure "
        "doubles it.")
    auth_failure_max_delay_s: float = Field(
        300.0, gt=0, description="The longest wait after failed authentications.")


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description=(
        "Least severe level logged: DEBUG, INFO, WARNING or ERROR."))
    format: Literal["text", "json"] = Field("text", description=(
        "text (for people) or json (one object per line, for log collectors)."))


class DestinationSettings(_Section):
    name: str = Field(description="Name of the destination (unique), used by routes, callers and the CLI.")
    ae_title: str = Field(description="Called AE title of the destination's Storage SCP.")
    host: str = Field(description="Host name or address of the destination.")
    port: int = Field(ge=1, le=65535, description="TCP port of the destination (1-65535).")
    send: Literal["sr", "sr+gsps"] | None = Field(None, description="sr or sr+gsps; empty: sender.send.")
    tls: bool = Field(False, description=(
        "true: associate over DICOM TLS (PS3.15 B.1) with the node's certificate settings."))

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: validate_ae_title(v)))


class CallerSettings(_Section):
    """A calling AE title that may send us studies (allow-list entry)."""

    ae_title: str = Field(description="Calling AE title allowed to send studies.")
    host: str = Field("", description=(
        "Only from this IP address, CIDR network or host name; empty: from anywhere."))
    description: str = Field("", description="Free text for administrators.")
    destinations: list[str] = Field([], description=(
        "Destinations (names) that receive results of studies this caller sent; empty: all."))

    _check_ae = field_validator("ae_title")(classmethod(lambda cls, v: validate_ae_title(v)))


class RouteSettings(_Section):
    """Which studies go to the model; first matching route (by ``order``) wins."""

    name: str = Field(description="Name of the route (unique).")
    order: int = Field(100, description=(
        "Routes are tried by increasing order; the first that matches decides."))
    calling_ae_title: str = Field("", description=(
        "Match studies sent by this calling AE title (case-insensitive); empty: any."))
    modality: str = Field("", description=(
        "Match studies with a series of this Modality (0008,0060); empty: any."))
    sop_class_uid: str = Field("", description=(
        "Match studies with an instance of this SOP Class UID; empty: any."))
    body_part_examined: str = Field("", description=(
        "Match studies with a series of this Body Part Examined (0018,0015); empty: any."))
    series_description: str = Field("", description=(
        "Match a Series Description (0008,103E): a glob (*thorax*) or a substring; empty: any."))
    action: Literal["process", "store", "ignore"] = Field("process", description=(
        "process (model and SRs), store (keep, no job) or ignore."))
    urgent: bool = Field(False, description="true: the job goes ahead of the others in the queue.")
    destinations: list[str] = Field([], description=(
        "Destinations (names) of the results; empty: the caller's, else every enabled one."))


class Settings(BaseSettings):
    """The root: pydantic-settings reads, highest first, the values given to it
    (:func:`load_settings`'s overrides), ``MEDREGA_<SECTION>__<KEY>`` variables, the TOML file,
    then the defaults."""

    model_config = SettingsConfigDict(
        extra="forbid", frozen=True, env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER)

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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path, environ = _INPUTS.get()
        sources: list[PydanticBaseSettingsSource] = [
            init_settings, _EnvironmentSource(settings_cls, os.environ if environ is None else environ)]
        if path is not None:
            sources.append(_TomlFileSource(settings_cls, path))
        return tuple(sources)

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


class _EnvironmentSource(EnvSettingsSource):
    """``MEDREGA_<SECTION>__<KEY>`` (and ``MEDREGA_<LIST>`` as JSON) from ``environ``, not only
    ``os.environ``; a ``MEDREGA_`` variable that is no setting and not allowed stops the load."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        check_environment(self._environ)
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty,
                              self.env_parse_none_str)

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{ENV_PREFIX}{field_name.upper()}: not valid JSON ({exc.msg})") from None


class _TomlFileSource(TomlConfigSettingsSource):
    """The ``--config`` file; a missing or unreadable file is a :class:`ConfigError`."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        if not path.is_file():
            raise ConfigError(f"--config: file not found: {path}")
        try:
            super().__init__(settings_cls, toml_file=path)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from None


#: What :func:`load_settings` reads for the :class:`Settings` being built: the file and the
#: environment (``None``: ``os.environ``). pydantic-settings builds its sources in a class method,
#: so the per-call inputs travel beside it.
_INPUTS: ContextVar[tuple[Path | None, Mapping[str, str] | None]] = ContextVar(
    "medrega_settings_inputs", default=(None, None))


def _setting_variables() -> dict[str, str]:
    """Every environment variable that sets something (upper case) -> the key it sets."""
    names: dict[str, str] = {}
    for section, field in Settings.model_fields.items():
        names[f"{ENV_PREFIX}{section.upper()}"] = section
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            for key in model.model_fields:
                names[f"{ENV_PREFIX}{section.upper()}{ENV_NESTED_DELIMITER}{key.upper()}"] = f"{section}.{key}"
    return names


def check_environment(environ: Mapping[str, str]) -> None:
    """Raise :class:`ConfigError` naming the first ``MEDREGA_`` variable in ``environ`` that is
    neither a setting nor allowed (:data:`OTHER_VARIABLES`, :data:`TEST_ENV_PREFIX`), with the
    setting it most likely meant (``MEDREGA_NODE_PORT``: ``MEDREGA_NODE__PORT``)."""
    settings = _setting_variables()
    for name in sorted(environ):
        upper = name.upper()
        if (not upper.startswith(ENV_PREFIX) or upper in settings or upper in OTHER_VARIABLES
                or upper.startswith(TEST_ENV_PREFIX)):
            continue
        flat = {key.replace(ENV_NESTED_DELIMITER, "_"): key for key in settings}
        meant = flat.get(upper) or next(iter(difflib.get_close_matches(upper, list(settings), n=1, cutoff=0.8)), None)
        hint = f"; did you mean {meant}?" if meant else (
            f"; settings are {ENV_PREFIX}<SECTION>{ENV_NESTED_DELIMITER}<KEY> (docs/configuration.md)")
        raise ConfigError(f"{name}: unknown environment variable{hint}")


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
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Read ``path`` (TOML, optional) and the environment (``environ``, default ``os.environ``),
    validate once. ``overrides`` (section -> values) win over both.

    Raises :class:`ConfigError` with a one-line message naming the offending key or variable.
    """
    token = _INPUTS.set((None if path is None else Path(path), environ))
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    finally:
        _INPUTS.reset(token)
    if path is not None and not settings.storage.data_dir.is_absolute():
        # A relative data_dir is relative to the config file, not to the current directory.
        base = Path(path).resolve().parent
        settings = settings.model_copy(
            update={"storage": StorageSettings(data_dir=base / settings.storage.data_dir)}
        )
    return settings

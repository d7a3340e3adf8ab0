"""The node's one settings object.

Settings come from environment variables prefixed ``TRIAGE_`` and, optionally, from a
TOML file named by ``TRIAGE_CONFIG`` (or passed to :func:`load_settings`). Environment
variables win over the file. Nothing here runs at import time: callers build the
object once with :func:`load_settings` and pass it down.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

_AE_RE = re.compile(r"^[\x20-\x7e]{1,16}$")
_DEST_RE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d{1,5})$")


class SettingsError(ValueError):
    """A setting has a value the node cannot work with."""


@dataclass(frozen=True)
class Destination:
    """A DICOM peer that receives the node's results by C-STORE.

    Parameters
    ----------
    ae_title : str
        The called AE title of the destination.
    host : str
        Host name or IP address.
    port : int
        TCP port.
    """

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """Parse ``AE@host:port``.

        Parameters
        ----------
        text : str
            For example ``PACS@127.0.0.1:104``.

        Returns
        -------
        Destination

        Raises
        ------
        SettingsError
            When the text is not of that form.
        """
        match = _DEST_RE.match(text.strip())
        if not match:
            raise SettingsError(f"destination {text!r} is not of the form AE@host:port")
        port = int(match["port"])
        if not 0 < port < 65536:
            raise SettingsError(f"destination {text!r}: port out of range")
        return cls(match["ae"].strip(), match["host"].strip("[]"), port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in re.split(r"[,\s]+", value) if item.strip()]
    return value


class Settings(BaseSettings):
    """Configuration of one node process.

    Every field can be set by an environment variable ``TRIAGE_<FIELD>`` (for example
    ``TRIAGE_DICOM_PORT=104``) or in the TOML config file. Lists are comma-separated
    in the environment.
    """

    model_config = SettingsConfigDict(
        env_prefix="TRIAGE_",
        extra="forbid",
        frozen=True,
    )

    # Identity and network
    ae_title: str = Field("TRIAGE", description="AE title of the node.")
    dicom_host: str = Field("0.0.0.0", description="Address the DICOM SCP binds to.")
    dicom_port: int = Field(11112, ge=1, le=65535, description="DICOM SCP port.")
    http_host: str = Field("0.0.0.0", description="Address the HTTP server binds to.")
    http_port: int = Field(8080, ge=1, le=65535, description="HTTP port (API, web page).")

    # Storage
    data_dir: Path = Field(Path("triage-data"), description="Spool, SQLite files, logs.")
    database_url: str = Field("", description="SQLAlchemy URL; default SQLite in data_dir.")
    broker_url: str = Field("", description="Celery broker; default embedded SQLite broker.")
    min_free_mb: int = Field(
        512, ge=0, description="Refuse C-STORE (0xA700) below this free space in the spool."
    )

    resent_instance_policy: Literal["version", "refuse"] = Field(
        "version",
        description="A known SOP Instance UID re-sent with other content: 'version' keeps "
        "the new content (the old one under spool/.superseded) and triages the study "
        "again; 'refuse' answers 0xC004 (cannot understand: a changed duplicate) and "
        "keeps the old one.",
    )

    # Study stability
    stable_seconds: float = Field(
        10.0, gt=0, description="Quiet period after which a study is complete."
    )
    stability_poll_seconds: float = Field(1.0, gt=0, description="Watcher poll interval.")

    # Results
    destinations: Annotated[list[Destination], NoDecode] = Field(
        default_factory=list, description="Where SRs go: AE@host:port, comma-separated."
    )

    # Security
    allowed_calling_aes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Calling AE allow-list; empty allows any."
    )
    allowed_peers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Peer address/network allow-list; empty allows any."
    )
    max_associations: int = Field(16, ge=1, description="Concurrent associations limit.")
    max_connections_per_peer: int = Field(
        64,
        ge=1,
        description="Open DICOM connections (associated or not) one peer address may hold at "
        "once; beyond it a new one is closed at accept. Each SCP process keeps its share.",
    )
    scp_processes: int = Field(
        2,
        ge=1,
        le=64,
        description="Processes sharing the DICOM port (SO_REUSEPORT), each with its share "
        "of max_associations; more use more cores for concurrent associations.",
    )
    acse_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="ARTIM/ACSE timeout: a connection must complete its A-ASSOCIATE-RQ "
        "(and a TLS handshake) within it, or is closed.",
    )
    network_timeout_seconds: float = Field(
        300.0,
        gt=0,
        description="An association idle this long is aborted; each PDU must arrive "
        "whole within it.",
    )
    tls_cert: Path | None = Field(None, description="PEM certificate; enables DICOM TLS.")
    tls_key: Path | None = Field(None, description="PEM private key for tls_cert.")
    tls_ca: Path | None = Field(None, description="PEM CA bundle; requires client certs.")

    # Model and inference
    model_path: Path | None = Field(None, description="ONNX model; default the shipped one.")
    operating_point: str = Field("balanced", description="Operating point name in the card.")
    max_image_pixels: int = Field(
        30_000_000,
        ge=1,
        description="Largest frame (Rows x Columns, and the frame's own header) the "
        "worker decodes; bigger ones are not evaluated, before any decoder runs.",
    )
    decode_memory_mb: int = Field(
        1024,
        ge=64,
        description="Address space a decode (in the worker's decode child) may add; "
        "beyond it the image is not evaluated.",
    )
    decode_timeout_seconds: float = Field(
        120.0, gt=0, description="Longest decode of one image; then it is not evaluated."
    )
    reduced_decode: bool = Field(
        True,
        description="Decode JPEG 2000 and JPEG baseline images at a reduced resolution "
        "(1/2 to 1/8) when the model input and the preview need no more: about 5x faster "
        "for a 2k chest radiograph, the probability within 0.02 of the full decode "
        "(bench/TRIAGE.md); false: always decode in full.",
    )
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="ONNX Runtime providers in order; empty picks CUDA when present, else CPU.",
    )
    pseudonym_key: SecretStr = Field(
        SecretStr(""),
        description=(
            "Key of the keyed hash (HMAC-SHA-256) that pseudonymises patients in a dataset"
            " export; also fixes each patient's train/val/test split. No default: export"
            " refuses to run without one. Keep it secret and keep it: a new key gives new"
            " pseudonyms and new splits."
        ),
    )

    # Worklist, web page and accounts
    viewer_url_template: str = Field(
        "",
        description=(
            "Link to open a study in the hospital viewer; placeholders {study_uid} and"
            " {accession_number} (URL-encoded), e.g."
            " 'http://orthanc:8042/ohif/viewer?StudyInstanceUIDs={study_uid}'."
            " Empty: no link."
        ),
    )
    session_secret: SecretStr = Field(
        SecretStr(""),
        description=(
            "Key that signs web sessions. No default: when empty a random key is made"
            " per process (sessions then end when the process restarts)."
        ),
    )
    session_hours: float = Field(12.0, gt=0, description="Web session lifetime (hours).")
    session_cookie_secure: bool = Field(
        False, description="Send the session cookie over HTTPS only (set behind TLS)."
    )
    login_max_failures: int = Field(
        5,
        ge=1,
        description="Failed logins of one user name from one address (x5 for any name "
        "from one address) before each further try must wait (HTTP 429).",
    )
    login_window_seconds: float = Field(
        900.0, gt=0, description="Window over which failed logins are counted."
    )
    login_backoff_seconds: float = Field(
        1.0,
        gt=0,
        description="Wait after the last failure once login_max_failures is reached; "
        "doubled by each further failure, at most login_window_seconds.",
    )
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Reverse proxies (addresses) whose X-Forwarded-For/-Proto are "
        "trusted; empty trusts none: the audited address is the socket's peer.",
    )
    wait_cap_minutes: float = Field(
        60.0, gt=0, description="No study waits longer on the worklist (then OVERDUE)."
    )
    time_zone: str = Field(
        "UTC",
        description="IANA time zone of every time on the web page (24-hour, zone shown),"
        " e.g. Europe/Berlin.",
    )

    # Triage tuning (read by the workers)
    aggregation: Literal["max", "mean"] = Field(
        "max", description="Study score from image scores: max or mean."
    )
    high_confidence: float = Field(
        0.9, gt=0, le=1, description="Probability from which an abnormal study is 'high'."
    )
    batch_size: int = Field(8, ge=1, description="Images per ONNX Runtime batch.")
    inference_threads: int = Field(
        1,
        ge=0,
        description=(
            "ONNX Runtime intra-op threads of each inference process. 1: the shipped "
            "model runs as fast as on 2 threads for half the CPU, leaving the cores to "
            "the decode and the SR (bench/TRIAGE.md); 0: ONNX Runtime's default (one per "
            "core), for a large model on a CPU with many cores."
        ),
    )
    inference_batch_studies: int | None = Field(
        None,
        ge=1,
        description=(
            "Most study revisions an inference task triages together: the waiting ones "
            "are claimed and their images go through the model in one call; each still "
            "gets its own SR and result. Default: 8 when the model runs on a GPU (CUDA or "
            "TensorRT), where one call for many images is what makes inference cheap; 1 on "
            "CPU, where batching lands a burst's SRs 0.2-0.3 s later (bench/TRIAGE.md)."
        ),
    )
    inference_processes: int = Field(
        2,
        ge=1,
        description=(
            "Inference worker processes of the embedded mode (one ONNX Runtime session "
            "and one decode child each). 2 triages a burst of 40 studies on 2 cores "
            "within 2.0-2.4 s of the quiet period (1: 3.3-3.5 s), a lone study as fast "
            "(bench/TRIAGE.md)."
        ),
    )
    heatmap_to_pacs: bool = Field(
        False,
        description="Also send each evaluated image of an abnormal study, with its AI heatmap "
        "burned in, to the destinations as a DICOM Secondary Capture (after the SR, same outbox).",
    )
    delivery_retry_hours: float = Field(
        72.0,
        gt=0,
        description="An SR delivery is retried this long (from its first try, or from a "
        "resend) before it is marked failed and alerted (metric and worklist banner).",
    )
    delivery_backoff_seconds: float = Field(
        2.0, gt=0, description="First delivery retry delay, doubled each attempt."
    )
    delivery_backoff_max_seconds: float = Field(
        600.0, gt=0, description="Longest delay between two delivery tries."
    )
    sweep_seconds: float = Field(
        5.0, gt=0, description="Period of the outbox and stalled-triage sweep."
    )
    lease_seconds: float = Field(
        120.0, gt=0, description="A triage or delivery claim older than this is re-sent."
    )
    broker_poll_seconds: float = Field(
        0.1, gt=0, description="Polling interval of the embedded broker."
    )

    log_level: str = Field("INFO", description="Logging level.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("TRIAGE_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        if not _AE_RE.match(value) or "\\" in value or not value.strip():
            raise ValueError("AE title must be 1-16 printable characters, no backslash")
        return value.strip()

    @field_validator("time_zone")
    @classmethod
    def _check_time_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name, e.g. Europe/Berlin)"
            ) from None
        return value

    @field_validator("destinations", mode="before")
    @classmethod
    def _parse_destinations(cls, value: Any) -> Any:
        value = _split_list(value)
        if isinstance(value, list):
            return [Destination.parse(v) if isinstance(v, str) else v for v in value]
        return value

    @field_validator("allowed_calling_aes", "providers", mode="before")
    @classmethod
    def _parse_list(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("allowed_peers", "forwarded_allow_ips", mode="before")
    @classmethod
    def _parse_peers(cls, value: Any) -> Any:
        value = _split_list(value)
        for item in value or []:
            ipaddress.ip_network(item, strict=False)
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("tls_ca needs tls_cert and tls_key")
        return self

    # Derived values -------------------------------------------------------------

    @property
    def spool_dir(self) -> Path:
        """Directory holding received instances."""
        return self.data_dir / "spool"

    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'triage.db').resolve()}"

    @property
    def effective_broker_url(self) -> str:
        """The Celery broker URL, defaulting to the embedded SQLite broker."""
        if self.broker_url:
            return self.broker_url
        return f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def uses_embedded_broker(self) -> bool:
        """True when the broker is the local SQLAlchemy transport."""
        return self.effective_broker_url.startswith("sqla+")

    @property
    def tls_enabled(self) -> bool:
        """True when DICOM TLS is configured."""
        return self.tls_cert is not None

    def peer_allowed(self, address: str) -> bool:
        """Tell whether a peer address passes the allow-list.

        Parameters
        ----------
        address : str
            The peer's IP address.

        Returns
        -------
        bool
            True when no allow-list is set or the address is in one of its networks.
        """
        if not self.allowed_peers:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(net, strict=False) for net in self.allowed_peers)

    def calling_ae_allowed(self, ae_title: str) -> bool:
        """Tell whether a calling AE title passes the allow-list.

        Parameters
        ----------
        ae_title : str
            The calling AE title from the association request.

        Returns
        -------
        bool
        """
        if not self.allowed_calling_aes:
            return True
        return ae_title.strip() in {ae.strip() for ae in self.allowed_calling_aes}


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings once, from the environment, a config file and overrides.

    Parameters
    ----------
    config_file : str or Path, optional
        TOML file; defaults to ``$TRIAGE_CONFIG`` when set.
    **overrides
        Field values that win over everything else (used by tests and the CLI).

    Returns
    -------
    Settings

    Raises
    ------
    SettingsError
        When a value is invalid; the message names the setting.
    """
    from pydantic import ValidationError

    known = {f"TRIAGE_{name.upper()}" for name in Settings.model_fields} | {"TRIAGE_CONFIG"}
    unknown = sorted(
        key
        for key in os.environ
        if key.startswith("TRIAGE_") and key not in known and not key.startswith("TRIAGE_TEST_")
    )
    if unknown:
        raise SettingsError(f"unknown settings in the environment: {', '.join(unknown)}")
    previous = os.environ.get("TRIAGE_CONFIG")
    try:
        if config_file is not None:
            os.environ["TRIAGE_CONFIG"] = str(config_file)
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"TRIAGE_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from exc
    finally:
        if config_file is not None:
            if previous is None:
                os.environ.pop("TRIAGE_CONFIG", None)
            else:
                os.environ["TRIAGE_CONFIG"] = previous

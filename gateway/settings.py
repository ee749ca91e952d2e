"""The gateway's configuration: one typed object, read from flags and the environment.

Where the Kumiho SDK already reads an environment variable for the same
thing, the gateway reads that name too, so it runs with the environment of
any other Kumiho client. Every field is also a ``serve`` flag (``cli.py``
builds the flags from this class) and a row of the docs' configuration table
(``docs/hooks/settings_table.py`` builds it from this class).

Only the names listed there are read (never ``PORT`` or ``HOST``, which
platforms set for their own reasons), and an empty value counts as unset.
Every value is checked here, before anything starts; ``problems`` turns a
refusal into one line per setting, naming its flag and variables.

Tracing is the exception: OpenTelemetry's standard ``OTEL_*`` variables
configure it, as for any service, and the SDK reads them itself.
``trace_exporters`` is the gateway's only reading of them: whether they ask
for traces at all, and which exporters.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import typing
import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from gateway.endpoint import resolve_target
from gateway.tokens import read_token_file

AuthMode = Literal["none", "passthrough", "service"]
HubFiltering = Literal["auto", "gateway", "upstream"]
Compression = Literal["off", "gzip"]


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def env_names(field: str) -> list[str]:
    """The environment variables a Settings field reads, in order of precedence."""
    alias = Settings.model_fields[field].validation_alias
    assert isinstance(alias, AliasChoices)
    return [str(name) for name in alias.choices]


def flag_name(field: str) -> str:
    """The ``serve`` flag of a Settings field: ``--hub-ring-size``."""
    return "--" + field.replace("_", "-")


def shown_default(field: str) -> str:
    """A field's default as ``serve --help`` and the docs show it; ``unset`` for none."""
    info = Settings.model_fields[field]
    default = info.get_default(call_default_factory=True)
    if default in (None, []) or isinstance(default, SecretStr) or field == "auth_token":
        return "unset"
    if isinstance(default, list):
        return ",".join(default)  # as the flag takes it
    return str(default)


def _check_readable(path: str) -> None:
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror}") from None


class _Environment(PydanticBaseSettingsSource):
    """The environment, by the exact names each field lists; an empty value is unset."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        for name in env_names(field_name):
            value = os.environ.get(name)
            if value:
                return value, name, False
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found = {}
        for name, field in self.settings_cls.model_fields.items():
            value, _, _ = self.get_field_value(field, name)
            if value is not None:
                found[name] = value
        return found


class Settings(BaseSettings):
    """Everything ``serve`` can be told; see the docs' configuration page."""

    # No inf or nan: "--heartbeat inf" would be a stream that never beats.
    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", allow_inf_nan=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (given by field name) first, then the listed environment variables."""
        return init_settings, _Environment(settings_cls)

    upstream: str = Field(
        "localhost:8080",
        validation_alias=_env("KUMIHO_SERVER_ENDPOINT", "KUMIHO_SERVER_ADDRESS"),
        description="Kumiho gRPC endpoint: host[:port], https://host or grpcs://host "
        "(bare host = plaintext on 8080; https, grpcs or port 443 = TLS)",
    )
    use_tls: bool | None = Field(
        None,
        validation_alias=_env("KUMIHO_SERVER_USE_TLS"),
        description="force TLS to the upstream on or off (default: from the endpoint)",
    )
    ca_file: str | None = Field(
        None,
        validation_alias=_env("KUMIHO_SERVER_CA_FILE"),
        description="PEM bundle to verify the upstream's certificate",
    )
    authority: str | None = Field(
        None,
        validation_alias=_env("KUMIHO_SERVER_AUTHORITY"),
        description="override the :authority (TLS server name) sent upstream",
    )
    auth_token: SecretStr | None = Field(
        None,
        validation_alias=_env("KUMIHO_AUTH_TOKEN"),
        description="the gateway's own Kumiho token, sent upstream in --auth service",
    )
    auth_token_file: str | None = Field(
        None,
        validation_alias=_env("KUMIHO_AUTH_TOKEN_FILE"),
        description="a file holding the gateway's own token (instead of KUMIHO_AUTH_TOKEN), "
        "read again when the upstream refuses it, so a rotated token needs no restart",
    )
    tenant_id: str | None = Field(
        None,
        validation_alias=_env("KUMIHO_TENANT_ID"),
        description="sent upstream as x-tenant-id (hosted cloud routing)",
    )
    host: str = Field(
        "127.0.0.1",
        validation_alias=_env("KUMIHO_GATEWAY_HOST"),
        description="HTTP listen address",
    )
    port: int = Field(
        8000,
        ge=0,
        le=65535,
        validation_alias=_env("KUMIHO_GATEWAY_PORT"),
        description="HTTP listen port",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        validation_alias=_env("KUMIHO_GATEWAY_WORKERS"),
        description="worker processes sharing the listening socket, each with its own hub",
    )
    auth: AuthMode = Field(
        "none",
        validation_alias=_env("KUMIHO_GATEWAY_AUTH"),
        description="none | passthrough (forward each client's token) | service "
        "(clients present a gateway key; KUMIHO_AUTH_TOKEN goes upstream)",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        validation_alias=_env("KUMIHO_GATEWAY_API_KEYS"),
        description="comma-separated gateway keys clients present in --auth service",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=_env("KUMIHO_GATEWAY_CORS_ORIGINS"),
        description="comma-separated origins (https://app.example) whose pages may read the "
        "stream, with credentials; '*' allows any origin but then never with credentials",
    )
    heartbeat: float = Field(
        15.0,
        gt=0,
        le=300,
        validation_alias=_env("KUMIHO_GATEWAY_HEARTBEAT"),
        description="seconds between comment lines on an idle stream",
    )
    retry_ms: int = Field(
        2000,
        ge=100,
        le=600_000,
        validation_alias=_env("KUMIHO_GATEWAY_RETRY_MS"),
        description="base of the retry: line; each stream adds up to 50% jitter",
    )
    backoff_initial: float = Field(
        0.25,
        gt=0,
        validation_alias=_env("KUMIHO_GATEWAY_BACKOFF_INITIAL"),
        description="first delay (s) before resubscribing to a broken upstream stream",
    )
    backoff_max: float = Field(
        10.0,
        gt=0,
        validation_alias=_env("KUMIHO_GATEWAY_BACKOFF_MAX"),
        description="cap (s) of the doubling, jittered resubscribe delay",
    )
    open_timeout: float = Field(
        5.0,
        gt=0,
        validation_alias=_env("KUMIHO_GATEWAY_OPEN_TIMEOUT"),
        description="how long (s) a new /events request waits for the upstream to judge its "
        "credential (GetEventCapabilities) before streaming anyway (heartbeats, retries)",
    )
    flush_interval: float = Field(
        0.002,
        ge=0,
        le=1,
        validation_alias=_env("KUMIHO_GATEWAY_FLUSH_INTERVAL"),
        description="how long (s) a burst of events may gather into one socket write; "
        "while a burst goes on, each write gathers twice as long as the one before, up to "
        "16 times this (a backlog goes out in few large writes)",
    )
    buffer_events: int = Field(
        4096,
        ge=1,
        validation_alias=_env("KUMIHO_GATEWAY_BUFFER_EVENTS"),
        description="per-client buffer, in events, that a slow reader may fill",
    )
    buffer_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        validation_alias=_env("KUMIHO_GATEWAY_BUFFER_BYTES"),
        description="per-client buffer, in bytes, that a slow reader may fill",
    )
    slow_consumer_grace: float = Field(
        5.0,
        gt=0,
        validation_alias=_env("KUMIHO_GATEWAY_SLOW_CONSUMER_GRACE"),
        description="seconds a client's buffer may stay full before its stream is closed "
        "(after a retry: line; it resumes with Last-Event-ID)",
    )
    send_timeout: float = Field(
        30.0,
        gt=0,
        validation_alias=_env("KUMIHO_GATEWAY_SEND_TIMEOUT"),
        description="seconds one write to a client may block before the connection is dropped",
    )
    max_stream_lifetime: float = Field(
        0.0,
        ge=0,
        validation_alias=_env("KUMIHO_GATEWAY_MAX_STREAM_LIFETIME"),
        description="close each stream (between frames, after a retry: line) after about "
        "this many seconds, +-10% jitter, so clients rebalance across replicas; 0 = never",
    )
    drain_delay: float = Field(
        0.0,
        ge=0,
        validation_alias=_env("KUMIHO_GATEWAY_DRAIN_DELAY"),
        description="on SIGTERM, seconds /readyz answers 503 before streams are closed, "
        "so load balancers stop routing here first",
    )
    shutdown_grace: float = Field(
        10.0,
        gt=0,
        validation_alias=_env("KUMIHO_GATEWAY_SHUTDOWN_GRACE"),
        description="seconds from SIGTERM to exit: streams get a retry: line and close, "
        "then the process stops",
    )
    compression: Compression = Field(
        "off",
        validation_alias=_env("KUMIHO_GATEWAY_COMPRESSION"),
        description="gzip: streams and polls are gzip-compressed (flushed at every write) "
        "for clients whose Accept-Encoding takes it; costs CPU and memory per client",
    )
    hub: bool = Field(
        True,
        validation_alias=_env("KUMIHO_GATEWAY_HUB"),
        description="share upstream streams among requests with the same credential "
        "(--no-hub: one upstream stream per request)",
    )
    hub_filtering: HubFiltering = Field(
        "auto",
        validation_alias=_env("KUMIHO_GATEWAY_HUB_FILTERING"),
        description="where the hub applies filters: gateway = one unfiltered upstream stream "
        "per credential, shared by every filter; upstream = one per credential and filter; "
        "auto = gateway unless --auth passthrough",
    )
    hub_ring_size: int = Field(
        4096,
        ge=0,
        validation_alias=_env("KUMIHO_GATEWAY_HUB_RING_SIZE"),
        description="recent events each shared stream keeps, to resume clients from memory",
    )
    hub_linger: float = Field(
        5.0,
        ge=0,
        validation_alias=_env("KUMIHO_GATEWAY_HUB_LINGER"),
        description="seconds a shared upstream stream stays open after its last client leaves",
    )
    max_upstream_streams: int = Field(
        4096,
        ge=0,
        validation_alias=_env("KUMIHO_GATEWAY_MAX_UPSTREAM_STREAMS"),
        description="upstream streams one process may hold at once (a shared one counts "
        "once); a request past it is told to retry later; 0 = no limit",
    )
    max_upstream_streams_per_credential: int = Field(
        1024,
        ge=0,
        validation_alias=_env(
            "KUMIHO_GATEWAY_MAX_UPSTREAM_STREAMS_PER_CREDENTIAL",
        ),
        description="the same cap for each client token in --auth passthrough, so one "
        "tenant cannot take every place; 0 = no limit",
    )
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        validation_alias=_env("KUMIHO_GATEWAY_FORWARDED_ALLOW_IPS", "FORWARDED_ALLOW_IPS"),
        description="comma-separated proxies (addresses or networks like 10.0.0.0/8; '*' = any "
        "peer) whose X-Forwarded-For names the client; from any other peer the header is ignored",
    )
    max_streams_per_client: int = Field(
        256,
        ge=0,
        validation_alias=_env("KUMIHO_GATEWAY_MAX_STREAMS_PER_CLIENT"),
        description="streams and waiting polls one client address may hold open at once in a "
        "process (IPv6: per /64); one more is told to retry later; 0 = no limit",
    )
    max_opens_per_client_per_second: float = Field(
        20.0,
        ge=0,
        le=1_000_000,
        validation_alias=_env("KUMIHO_GATEWAY_MAX_OPENS_PER_CLIENT_PER_SECOND"),
        description="streams and polls one client address may open per second in a process, "
        "with bursts of two seconds' worth; more are told to retry later; 0 = no limit",
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        validation_alias=_env("KUMIHO_GATEWAY_HEADER_TIMEOUT"),
        description="seconds a connection may take to send a request's headers before it "
        "is closed (slow-header attacks)",
    )
    max_header_bytes: int = Field(
        32 * 1024,
        ge=1024,
        le=1024 * 1024,
        validation_alias=_env("KUMIHO_GATEWAY_MAX_HEADER_BYTES"),
        description="bytes a request's head (request line and headers) may take; a longer "
        "one gets 431 and the connection closes",
    )
    capabilities_ttl: float = Field(
        60.0,
        ge=0,
        validation_alias=_env("KUMIHO_GATEWAY_CAPABILITIES_TTL"),
        description="seconds a GetEventCapabilities answer is reused per credential",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info",
        validation_alias=_env("KUMIHO_GATEWAY_LOG_LEVEL"),
        description="log level (access log at info)",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_control_characters(cls, value: object) -> object:
        # A newline in a token or an address would end a header or a log line.
        texts = value if isinstance(value, list) else [value]
        for text in texts:
            if isinstance(text, SecretStr):
                text = text.get_secret_value()
            if isinstance(text, str):
                for char in text:
                    if unicodedata.category(char) == "Cc":
                        raise ValueError(
                            f"contains the control character U+{ord(char):04X}, "
                            "which is not allowed"
                        )
        return value

    @field_validator("api_keys", "cors_origins", "forwarded_allow_ips", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, endpoint: str) -> str:
        resolve_target(endpoint)
        return endpoint

    @field_validator("ca_file")
    @classmethod
    def _check_ca_file(cls, path: str | None) -> str | None:
        if path:
            _check_readable(path)
        return path

    @field_validator("auth_token_file")
    @classmethod
    def _check_token_file(cls, path: str | None) -> str | None:
        if path:
            read_token_file(path)  # refuse to start on a missing or empty file
        return path

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and (
                not origin.startswith(("http://", "https://")) or origin.count("/") != 2
            ):
                raise ValueError(f"{origin!r} is not an origin like https://app.example[:port]")
        return origins

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _check_proxies(cls, proxies: list[str]) -> list[str]:
        # uvicorn takes what is not an address or a network as a literal name,
        # which never matches a peer: a typo would silently trust no proxy.
        if "*" in proxies and len(proxies) > 1:
            raise ValueError("'*' (any peer) stands alone, without addresses beside it")
        for proxy in proxies:
            if proxy == "*":
                continue
            try:
                ipaddress.ip_network(proxy)
            except ValueError:
                hint = ""
                with contextlib.suppress(ValueError):
                    hint = f" (did you mean {ipaddress.ip_network(proxy, strict=False)}?)"
                raise ValueError(
                    f"{proxy!r} is not an IP address, a network like 10.0.0.0/8, or '*'{hint}"
                ) from None
        return proxies

    @model_validator(mode="after")
    def _check_one_token_source(self) -> Settings:
        if self.auth_token and self.auth_token_file:
            raise ValueError(
                "KUMIHO_AUTH_TOKEN and KUMIHO_AUTH_TOKEN_FILE are both set: give one of them"
            )
        return self

    @model_validator(mode="after")
    def _check_service_keys(self) -> Settings:
        if self.auth == "service" and not self.api_keys:
            raise ValueError(
                "--auth service needs --api-keys (KUMIHO_GATEWAY_API_KEYS): without a gateway "
                "key no client could connect"
            )
        return self


# Any of these, set, asks for traces (README "Tracing"); the SDK reads them and
# every other OTEL_* variable (sampler, resource, batching, headers) itself.
TRACING_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
)
# "otlp" is one of these as OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL says, gRPC when
# unset: the Python SDK's own rule (a test holds this to it).
_OTLP_BY_PROTOCOL = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}


def trace_exporters(environ: Mapping[str, str] | None = None) -> list[str]:
    """The trace exporters (entry-point names) the ``OTEL_*`` variables ask for; [] = off.

    Off when none of ``TRACING_VARIABLES`` is set, when ``OTEL_SDK_DISABLED`` is
    ``true`` or ``OTEL_TRACES_EXPORTER`` is ``none``; an empty value is unset.
    ValueError for an OTLP protocol the SDK does not know.
    """
    env = os.environ if environ is None else environ

    def get(name: str) -> str:
        return env.get(name, "").strip()

    if get("OTEL_SDK_DISABLED").lower() == "true" or not any(map(get, TRACING_VARIABLES)):
        return []
    names = get("OTEL_TRACES_EXPORTER") or "otlp"
    if names.lower() == "none":
        return []
    protocol = get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or get("OTEL_EXPORTER_OTLP_PROTOCOL")
    chosen = [name.strip() for name in names.split(",")]
    if "otlp" in chosen and protocol and protocol not in _OTLP_BY_PROTOCOL:
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not an OTLP protocol "
            f"({' or '.join(_OTLP_BY_PROTOCOL)})"
        )
    otlp = _OTLP_BY_PROTOCOL.get(protocol or "grpc", "")
    return [otlp if name == "otlp" else name for name in chosen]


def problems(error: ValidationError) -> list[str]:
    """What a refused configuration got wrong: one line per problem, naming the setting.

    Never a secret's value, never a line break, nothing of pydantic's own.
    """
    lines = []
    for item in error.errors():
        message = item["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            message = message.removeprefix(prefix)
        message = message[:1].lower() + message[1:]
        field = str(item["loc"][0]) if item["loc"] else None
        if field in Settings.model_fields:
            shown = item["input"]
            annotation = Settings.model_fields[field].annotation
            secret = SecretStr in (annotation, *typing.get_args(annotation))
            got = ""
            if not secret and isinstance(shown, str) and repr(shown) not in message:
                got = f" (got {shown[:80]!r})"
            where = f"{flag_name(field)} ({', '.join(env_names(field))})"
            lines.append(f"{where}: {message}{got}")
        else:
            lines.append(message)
    return ["".join(c if c.isprintable() else repr(c)[1:-1] for c in ln) for ln in lines]

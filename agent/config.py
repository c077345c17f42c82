"""The agent's configuration: one frozen model, loaded from a TOML file plus environment.

Precedence: built-in defaults < the TOML file < ``EDGEFLEET_AGENT_*`` environment
variables. A variable names a field in upper case, ``__`` separating sections:
``EDGEFLEET_AGENT_DEVICE_ID``, ``EDGEFLEET_AGENT_BROKER__URL``,
``EDGEFLEET_AGENT_MODEL__RUNTIME__INTRA_OP_THREADS``. List fields (``TAGS``) take a
comma-separated string or a JSON array.

Invariant: a loaded `AgentConfig` is valid as a whole; a bad file or variable raises
`ConfigError` naming the file (or variable) and the field, never a half-built config.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from edgefleet.agent.delivery import DeliveryPolicy
from edgefleet.agent.update.policy import UpdatePolicy
from edgefleet.shared.messages import MAX_HARDWARE_CHARS, MAX_TAG_CHARS, MAX_TAGS
from edgefleet.shared.runtime import RuntimeOptions
from edgefleet.shared.topics import TopicError, validate_device_id

ENV_PREFIX = "EDGEFLEET_AGENT_"
DEFAULT_DATA_DIR = Path("/var/lib/edgefleet-agent")


class ConfigError(ValueError):
    """A configuration file or environment variable that does not describe a valid agent."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BrokerConfig(_Section):
    """How to reach the MQTT broker."""

    url: str = Field(default="mqtt://127.0.0.1:1883", description="mqtt://host[:port] or mqtts://")
    client_id: str | None = Field(default=None, description="default: the device id")
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    keepalive_s: int = Field(default=30, ge=5, le=65535)
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_inflight: int = Field(default=20, ge=1, le=1000, description="unacked QoS-1 messages")

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"expected an mqtt:// or mqtts:// URL, found {url!r}")
        if not parts.hostname:
            raise ValueError(f"no host in broker URL {url!r}")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError(f"bad port in broker URL {url!r}") from None
        return url

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.tls else 1883)


class ModelConfig(_Section):
    """The model the agent serves at start, before any update arrives."""

    path: Path | None = Field(default=None, description=".onnx or .tflite; none = no model yet")
    name: str = "model"
    version: str = "0"
    runtime: RuntimeOptions = Field(default_factory=RuntimeOptions)


class ApiConfig(_Section):
    """The local HTTP inference API."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8470, ge=0, le=65535, description="0 = any free port")
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    unix_socket: Path | None = Field(
        default=None,
        description="also serve the API on this Unix socket (mode 0660; a stale socket"
        " file there is replaced); none = TCP only",
    )


class OutboxConfig(_Section):
    """The durable queue of QoS-1 messages waiting for the broker."""

    max_messages: int = Field(default=100_000, ge=10)
    max_db_bytes: int | None = Field(
        default=None, ge=65536, description="cap on the SQLite file; none = the disk is the cap"
    )
    synchronous: Literal["normal", "full"] = Field(
        default="normal",
        description="SQLite synchronous mode; see agent.outbox for what each one risks",
    )
    delivery: Literal["auto", "fleet", "broker"] = Field(
        default="auto",
        description="what deletes a sent message: the fleet's stored acknowledgement (fleet),"
        " the broker's PUBACK (broker), or PUBACKs until the fleet first acknowledges (auto);"
        " see agent.delivery",
    )
    fleet_ack_grace_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="send again at once what the fleet skipped while storing messages sent"
        " this much later",
    )
    fleet_ack_timeout_s: float = Field(
        default=30.0, gt=0, le=86_400, description="send again what the fleet left unacknowledged"
    )
    fleet_ack_timeout_max_s: float = Field(
        default=300.0, gt=0, le=86_400, description="cap of that timeout as it doubles"
    )

    @model_validator(mode="after")
    def _timeouts_in_order(self) -> OutboxConfig:
        if self.fleet_ack_timeout_max_s < self.fleet_ack_timeout_s:
            raise ValueError(
                f"fleet_ack_timeout_max_s ({self.fleet_ack_timeout_max_s:g}) is below"
                f" fleet_ack_timeout_s ({self.fleet_ack_timeout_s:g})"
            )
        return self

    def delivery_policy(self) -> DeliveryPolicy:
        """These settings for the link."""
        return DeliveryPolicy(
            mode=self.delivery,
            grace_s=self.fleet_ack_grace_s,
            timeout_s=self.fleet_ack_timeout_s,
            timeout_max_s=self.fleet_ack_timeout_max_s,
        )


class UpdateConfig(_Section):
    """Signed model updates: where the image repository is and what the device trusts.

    ``trust_dir`` holds the provisioning bundle (``trusted_root.json``, the pinned TUF
    root, and ``director_pub.json``, the director keys). With updates enabled the agent
    serves the model from its store, and ``model.path`` is only the factory model that
    a fresh device installs into the store on its first start.
    """

    enabled: bool = False
    repository_url: str | None = Field(default=None, description="http(s):// image repository")
    trust_dir: Path | None = Field(default=None, description="the provisioning bundle")
    device_token: SecretStr | None = Field(
        default=None, description="sent as a Bearer token to the repository; none = no auth"
    )
    max_download_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    download_timeout_s: float = Field(default=30.0, gt=0, description="per connect and read")
    download_deadline_s: float = Field(
        default=1800.0,
        gt=0,
        le=7 * 24 * 3600,
        description="a whole download attempt ends by then, however slowly bytes trickle in "
        "(a transient failure: retried later, resuming)",
    )
    tick_s: float = Field(default=1.0, gt=0, description="how often the update runner wakes")
    policy: UpdatePolicy = Field(default_factory=UpdatePolicy)

    @field_validator("repository_url")
    @classmethod
    def _check_repository_url(cls, url: str | None) -> str | None:
        if url is not None and urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"expected an http:// or https:// URL, found {url!r}")
        return url

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> UpdateConfig:
        if self.enabled:
            missing = [n for n in ("repository_url", "trust_dir") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"updates are enabled but {', '.join(missing)} is not set")
        return self


class DriftConfig(_Section):
    """Drift monitoring of the active model against its package's reference profile.

    Only a model whose package carries a reference profile is monitored; ``enabled``
    false turns monitoring off for every model. A window closes when it holds
    ``window_count`` rows or is ``window_s`` old, and goes to the fleet on the drift
    topic (QoS 1, through the outbox). Raw inputs never leave the device:
    ``reservoir_size`` > 0 keeps a uniform sample of at most that many input rows per
    window in the agent's memory (for local inspection; no upload exists), 0 keeps none.
    """

    enabled: bool = True
    window_s: float = Field(default=300.0, gt=0, description="a window closes at this age")
    window_count: int = Field(default=10_000, ge=1, description="... or at this many rows")
    fold_rows: int = Field(
        default=8192,
        ge=1,
        description="buffered rows at which an inference folds them itself; "
        "normally the drift timer folds first, off the request path",
    )
    tick_s: float = Field(default=0.25, gt=0, description="how often the drift timer folds")
    label_memory: int = Field(
        default=10_000, ge=0, description="recent request ids that feedback labels can join"
    )
    reservoir_size: int = Field(
        default=0, ge=0, le=100_000, description="raw input rows kept per window; 0 = off"
    )


class IdentityConfig(_Section):
    """The device's own certificate (`edgefleet agent enroll`) and how the agent uses it.

    With ``use`` ``auto`` (the default) the agent uses the identity whenever ``dir`` holds
    a certificate; ``on`` makes a missing one an error at start; ``off`` ignores it. In
    use, the identity is the agent's credential everywhere: over ``mqtts://`` its
    certificate and key are the broker client certificate and the pinned device CA
    verifies the broker (``broker.cert_file``/``key_file``/``ca_file`` override each), and
    every repository request is signed with its key (``update.device_token`` is then not
    sent). A timer renews the certificate when less than ``renew_remaining_share`` of its
    lifetime is left, over ``fleet_url``, and reconnects the broker link with the new one.
    """

    use: Literal["auto", "on", "off"] = "auto"
    dir: Path | None = Field(default=None, description="default: <data_dir>/identity")
    fleet_url: str | None = Field(
        default=None,
        description="the fleet API the certificate is renewed at, http(s)://host:port;"
        " default: update.repository_url without its /v1/repository",
    )
    renew_remaining_share: float = Field(
        default=1 / 3,
        gt=0,
        lt=1,
        description="renew once less than this share of the certificate's lifetime is left",
    )
    renew_retry_min_s: float = Field(default=30.0, gt=0, description="first retry after a failure")
    renew_retry_max_s: float = Field(
        default=3600.0, gt=0, description="cap of the doubling wait between retries"
    )
    renew_timeout_s: float = Field(default=30.0, gt=0, le=600, description="per renewal request")

    @field_validator("fleet_url")
    @classmethod
    def _check_fleet_url(cls, url: str | None) -> str | None:
        if url is not None and (
            urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname
        ):
            raise ValueError(f"expected an http:// or https:// URL, found {url!r}")
        return url


class AgentConfig(_Section):
    """Everything one agent needs. Frozen: pass it in, never mutate it."""

    device_id: str
    # The bounds of the state message the agent sends: a config the fleet would
    # dead-letter is refused here, at start, with the reason.
    hardware: str = Field(default="generic", min_length=1, max_length=MAX_HARDWARE_CHARS)
    tags: list[Annotated[str, Field(min_length=1, max_length=MAX_TAG_CHARS)]] = Field(
        default_factory=list, max_length=MAX_TAGS
    )
    data_dir: Path = DEFAULT_DATA_DIR
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    update: UpdateConfig = Field(default_factory=UpdateConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    fleet_ca_file: Path | None = Field(
        default=None,
        description="CA certificates (PEM) that also verify the fleet's HTTPS server"
        " (repository, renewal), beside the system's and the pinned device CA",
    )
    telemetry_interval_s: float = Field(default=10.0, gt=0)

    @property
    def identity_dir(self) -> Path:
        """Where the device's key and certificates live."""
        return self.identity.dir if self.identity.dir is not None else self.data_dir / "identity"

    @property
    def fleet_url(self) -> str | None:
        """The fleet API's base URL: ``identity.fleet_url``, else the repository's."""
        if self.identity.fleet_url is not None:
            return self.identity.fleet_url.rstrip("/")
        url = self.update.repository_url
        suffix = "/v1/repository"
        if url is not None and url.rstrip("/").endswith(suffix):
            return url.rstrip("/")[: -len(suffix)]
        return None

    @field_validator("device_id")
    @classmethod
    def _check_device_id(cls, device_id: str) -> str:
        try:
            return validate_device_id(device_id)
        except TopicError as e:
            raise ValueError(str(e)) from None

    @field_validator("tags", mode="before")
    @classmethod
    def _split_tags(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [t.strip() for t in text.split(",") if t.strip()]
        return value


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """The nested dict that ``EDGEFLEET_AGENT_*`` variables describe (values stay strings)."""
    result: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            continue
        node = result
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {part} is set both as a value and as a section")
            node = child
        node[path[-1]] = value
    return result


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: Path | None, env: Mapping[str, str]) -> AgentConfig:
    """Load the config from ``path`` (optional) overlaid with ``env``.

    Relative paths in the file (model, certificates, data_dir) are resolved against the
    file's directory, so a config and its files can move together.

    Raises `ConfigError` naming the file or variable and the field for: a missing or
    unreadable file, bad TOML, an unknown field, or a value out of range.
    """
    source = str(path) if path else "environment"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from e
        data = _resolve_paths(data, path.parent)
    overrides = env_overrides(env)
    if overrides:
        source = f"{source} + {ENV_PREFIX}* environment" if path else source
    try:
        return AgentConfig.model_validate(_merge(data, overrides))
    except ValidationError as e:
        raise ConfigError(f"{source}: {_describe(e)}") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: tags: not a JSON array: {e}") from e


_BROKER_PATH_FIELDS = ("ca_file", "cert_file", "key_file")


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str(base / value)
        return value

    data = dict(data)
    for key in ("data_dir", "fleet_ca_file"):
        if key in data:
            data[key] = fix(data[key])
    if isinstance(data.get("identity"), dict) and "dir" in data["identity"]:
        data["identity"] = {**data["identity"], "dir": fix(data["identity"]["dir"])}
    if isinstance(data.get("model"), dict) and "path" in data["model"]:
        data["model"] = {**data["model"], "path": fix(data["model"]["path"])}
    if isinstance(data.get("broker"), dict):
        broker = dict(data["broker"])
        for key in _BROKER_PATH_FIELDS:
            if key in broker:
                broker[key] = fix(broker[key])
        data["broker"] = broker
    if isinstance(data.get("update"), dict) and "trust_dir" in data["update"]:
        data["update"] = {**data["update"], "trust_dir": fix(data["update"]["trust_dir"])}
    return data


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "config"
        found = item.get("input")
        shown = "" if isinstance(found, dict) else f" (found {found!r})"
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}{shown}")
    return "; ".join(parts)


def redacted(config: AgentConfig) -> dict[str, Any]:
    """The effective config as plain data, secrets masked, for ``check-config``."""
    return config.model_dump(mode="json")

"""The fleet service's settings: one frozen model, from arguments and the environment.

Environment variables start with ``EDGEFLEET_FLEET_`` (``EDGEFLEET_FLEET_API_PORT=9000``);
nested values use ``__``. Settings are passed in explicitly (the API reads them through
an overridable dependency), never read from a module global.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.fleet.governance.oidc import OidcConfig

# Values people paste from examples; a console guarded by one of these is not guarded.
PLACEHOLDER_SECRETS = frozenset(
    {"changeme", "change-me", "change_me", "changethis", "secret", "password", "admin", "token"}
)
MIN_TOKEN_CHARS = 16
BROKER_SCHEMES = {"mqtt": 1883, "mqtts": 8883}


class FleetSettings(BaseSettings):
    """Everything the fleet service needs to run; see the module docstring for env names."""

    model_config = SettingsConfigDict(
        env_prefix="EDGEFLEET_FLEET_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    data_dir: Path = Field(default=Path("./var/fleet"), description="SQLite file and state")
    database_url: str = Field(
        default="", description="SQLAlchemy URL; default sqlite:///<data_dir>/fleet.db"
    )
    migrate_at_start: bool = Field(
        default=False,
        description="bring the database to head at start (off: refuse one that is behind"
        " and name `edgefleet fleet migrate upgrade`, which production runs as its own step)",
    )

    broker_url: str = "mqtt://127.0.0.1:1883"
    broker_ca_file: Path | None = None
    broker_cert_file: Path | None = None
    broker_key_file: Path | None = None
    broker_username: str | None = None
    broker_password: SecretStr | None = None
    broker_protocol: Literal["3.1.1", "5"] = Field(
        default="3.1.1", description="3.1.1 works on every broker the design allows"
    )
    broker_keepalive_s: int = Field(default=30, ge=5)
    broker_client_id: str | None = Field(
        default=None, description="stable MQTT client id; default: random per start"
    )
    broker_persistent_session: bool = Field(
        default=False,
        description="keep the session across reconnects, so the broker queues QoS 1 messages"
        " while this replica is away (needs broker_client_id)",
    )
    # Mosquitto honours $share for MQTT 5 and 3.1.1 clients; amqtt (the demo's embedded
    # broker) has no shared subscriptions, hence the switch.
    shared_subscription: bool = True
    subscription_group: str = Field(default="edgefleet", pattern=r"^[A-Za-z0-9_-]{1,64}$")

    admin_token: SecretStr | None = None
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65535, description="0 picks a free port")
    # HTTPS (edgefleet.fleet.service.uvicorn_config): with a certificate and key the API,
    # the console and the repository are served over TLS only.
    api_tls_cert_file: Path | None = Field(
        default=None, description="PEM server certificate (chain); set with its key for HTTPS"
    )
    api_tls_key_file: Path | None = Field(default=None, description="its PEM private key")
    api_tls_key_password: SecretStr | None = Field(
        default=None, description="the key file's passphrase, if it is encrypted"
    )
    api_tls_client_ca_file: Path | None = Field(
        default=None,
        description="ask TLS clients for a certificate of these CAs (the device CA's ca.pem):"
        " one that does not verify is refused in the handshake",
    )
    api_tls_client_cert: Literal["optional", "required"] = Field(
        default="optional",
        description="with api_tls_client_ca_file: whether a client without a certificate is"
        " let in (required: only for a replica that devices alone use)",
    )

    ingest_batch_size: int = Field(default=2000, ge=1, le=50_000)
    ingest_flush_interval_s: float = Field(default=0.2, gt=0)
    ingest_queue_size: int = Field(default=20_000, ge=1)
    ingest_writer_process: bool = Field(
        default=True,
        description="decode and write ingested batches in a process of their own, beside"
        " the MQTT client's (off: in a thread, sharing its GIL; an in-memory SQLite"
        " database always uses the thread)",
    )
    ingest_retry_max_s: float = Field(default=30.0, gt=0, description="cap of DB retry backoff")
    ingest_stored_interval_s: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="how often the ingester tells devices which of their seqs it stored (one"
        " retained publish per device per interval at most; end-to-end delivery)",
    )
    ingest_seq_max_ahead_s: float = Field(
        default=24 * 3600.0,
        ge=1.0,
        le=10 * 365 * 24 * 3600.0,
        description="a device message whose seq implies a device clock further ahead of the"
        " fleet's than this is dead-lettered (agent seqs count from the clock in µs)",
    )
    ingest_max_payload_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        le=256 << 20,
        description="a larger MQTT payload is dead-lettered unparsed; the hand-off keeps only"
        " its first dead_letter_payload_prefix_bytes, so the queue's memory stays bounded",
    )
    require_device_identity: bool = Field(
        default=False,
        description="the ingester takes device messages only from device ids whose identity"
        " (enrollment, `edgefleet agent enroll`) is active; an unknown, pending or revoked"
        " id is dead-lettered and registers nothing, and so is an event naming a desired"
        " seq the director never sent its device. Off (the default) keeps an open lab"
        " fleet working; a fleet behind the mTLS broker (`fleet broker-config`) turns it on",
    )
    device_identity_cache_s: float = Field(
        default=2.0,
        gt=0,
        le=300.0,
        description="how long the ingester and the repository trust their copy of the device"
        " identities: a revoked device's messages and repository requests are refused at"
        " most this long after the revocation",
    )
    dead_letter_payload_prefix_bytes: int = Field(
        default=4096, ge=0, le=1 << 20, description="how much of a rejected payload is kept"
    )
    dead_letter_max_rows: int = Field(
        default=100_000, ge=1, le=1 << 31, description="dead letters kept; oldest dropped first"
    )
    dead_letter_max_bytes: int = Field(
        default=64 << 20,
        ge=64 << 10,
        le=1 << 40,
        description="bytes of dead letters kept (prefix, topic, error, 128 a row); oldest"
        " dropped first",
    )
    dead_letter_retention_s: float = Field(
        default=7 * 24 * 3600.0,
        ge=60,
        le=10 * 365 * 24 * 3600.0,
        description="dead letters older than this are deleted",
    )
    dead_letter_sweep_interval_s: float = Field(
        default=300.0, gt=0, le=86_400, description="how often the retention is applied"
    )
    offline_after_s: float = Field(
        default=300.0, gt=0, description="a device silent this long is shown offline"
    )

    # Signed updates. Without keys_dir the registry still accepts uploads, but nothing
    # can be published or assigned to a device.
    keys_dir: Path | None = Field(
        default=None,
        description="key dir of `edgefleet keys init`; the passphrase comes from"
        " $EDGEFLEET_KEY_PASSPHRASE",
    )
    repository_dir: Path | None = Field(
        default=None, description="the TUF image repository; default <keys_dir>/repository"
    )
    models_dir: Path | None = Field(
        default=None, description="uploaded model packages; default <data_dir>/models"
    )
    lab_mode: bool = Field(
        default=False,
        description="the fleet holds the release (targets) key and publishes models itself;"
        " off: releases are signed offline and uploaded as targets metadata",
    )
    single_person_approval: bool = Field(
        default=False,
        description="one-person lab: the uploader of a version (or creator of a rollout)"
        " may approve it; off (the default): approval takes a second person. /healthz"
        " shows it",
    )
    rollout_approval_required: bool = Field(
        default=False, description="every new rollout waits for approval before it starts"
    )
    rollout_approval_min_devices: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="a rollout selecting more devices than this waits for approval",
    )
    rollout_approval_tags: tuple[str, ...] = Field(
        default=(),
        max_length=100,
        description="a rollout selecting a device with one of these tags waits for approval",
    )
    repository_device_token: SecretStr | None = Field(
        default=None,
        description="a bearer token shared by every device to fetch TUF metadata and"
        " artifacts (API tokens work too). Weaker than what an enrolled device does without"
        " it: sign each request with its own key (edgefleet.shared.device_auth)",
    )
    device_signature_max_skew_s: float = Field(
        default=300.0,
        ge=5,
        le=3600,
        description="a signed device request is accepted if signed at most this long before"
        " or after the fleet's clock (device clocks drift; a replay is bounded by it)",
    )
    repository_public: bool = Field(
        default=False,
        description="serve the repository without authentication (it holds only signed,"
        " public data; for labs)",
    )
    api_token_allow_no_expiry: bool = Field(
        default=False,
        description="API tokens may be made that never expire (off: at most 2 years;"
        " see edgefleet.fleet.governance.tokens)",
    )
    metadata_refresh_interval_s: float = Field(
        default=3600.0, gt=0, description="how often snapshot/timestamp expiry is checked"
    )
    desired_expires_s: int = Field(
        default=30 * 24 * 3600, ge=60, description="default validity of a desired state"
    )
    device_cert_lifetime_days: int = Field(
        default=90,
        ge=1,
        le=397,
        description="lifetime of a device certificate the device CA issues at enrollment or"
        " renewal (edgefleet.fleet.identity)",
    )
    broker_device_auth: Literal["certificate", "password"] = Field(
        default="certificate",
        description="how the broker (`fleet broker-config`) checks devices: their certificates,"
        " or (weaker, for brokers without client certificates) a per-device password made at"
        " enrollment",
    )
    broker_config_dir: Path | None = Field(
        default=None,
        description="the directory `fleet broker-config` wrote: the fleet keeps its CRL and"
        " device password file current there (after each enrollment and revocation, and"
        " every broker_sync_interval_s) and then runs broker_reload_command",
    )
    broker_reload_command: str | None = Field(
        default=None,
        max_length=1000,
        description="run (no shell) after the broker files change, so the broker re-reads"
        " them, e.g. `systemctl reload mosquitto` or `pkill -HUP -x mosquitto`",
    )
    broker_sync_interval_s: float = Field(
        default=300.0,
        ge=1.0,
        le=86_400.0,
        description="how often the broker files are checked against the database (changes on"
        " other replicas; the CRL is re-signed daily so it never expires at the broker)",
    )
    max_upload_bytes: int = Field(default=1 << 30, ge=1, description="largest model package")
    max_request_body_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        le=1 << 30,
        description="largest request body of any route but the uploads (model packages"
        " and targets metadata have their own limits)",
    )
    publish_timeout_s: float = Field(
        default=10.0, gt=0, description="how long a desired-state publish waits for the broker"
    )

    # Rollouts. One replica at a time drives them: the holder of a lease in the database.
    rollout_orchestrator: bool = Field(
        default=True, description="run the rollout orchestrator (needs keys_dir)"
    )
    rollout_tick_interval_s: float = Field(
        default=1.0, gt=0, description="how often the orchestrator drives each rollout"
    )
    rollout_lease_s: float = Field(
        default=5.0,
        gt=0,
        description="how long the orchestrator lease lasts unrenewed: another replica takes"
        " over this long after the holder stops; must exceed the tick interval",
    )

    # Reconciliation (edgefleet.fleet.reconcile): a stored desired state that the broker
    # lost, or that an online device never started, is published again (same envelope).
    reconcile: bool = Field(
        default=True, description="republish lost or unheeded desired states (needs keys_dir)"
    )
    reconcile_interval_s: float = Field(
        default=30.0, gt=0, le=86_400, description="how often desired states are checked"
    )
    reconcile_after_s: float = Field(
        default=300.0,
        gt=0,
        le=30 * 86_400,
        description="an online device that reports another model than its desired one and"
        " nothing about the desired state this long gets it again",
    )
    reconcile_settle_s: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="after (re)subscribing, how long the broker may take to send the"
        " retained desired states before one not received counts as lost",
    )
    reconcile_backoff_s: float = Field(
        default=300.0, gt=0, le=30 * 86_400, description="wait after a first republish"
    )
    reconcile_backoff_max_s: float = Field(
        default=6 * 3600.0, gt=0, le=30 * 86_400, description="cap of the doubling wait"
    )
    reconcile_max_attempts: int = Field(
        default=5, ge=1, le=1000, description="republishes per desired state, then give up"
    )

    @model_validator(mode="before")
    @classmethod
    def _default_database_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("database_url"):
            data_dir = Path(data.get("data_dir") or "./var/fleet")
            data["database_url"] = f"sqlite:///{data_dir / 'fleet.db'}"
        return data

    @model_validator(mode="after")
    def _tls_is_complete(self) -> FleetSettings:
        if (self.api_tls_cert_file is None) != (self.api_tls_key_file is None):
            raise ValueError("api_tls_cert_file and api_tls_key_file go together")
        if self.api_tls_cert_file is None and (
            self.api_tls_client_ca_file is not None or self.api_tls_key_password is not None
        ):
            raise ValueError(
                "api_tls_client_ca_file and api_tls_key_password need api_tls_cert_file"
            )
        return self

    @property
    def api_tls(self) -> bool:
        """Whether the API is served over HTTPS."""
        return self.api_tls_cert_file is not None

    @model_validator(mode="after")
    def _persistent_session_needs_client_id(self) -> FleetSettings:
        if self.broker_persistent_session and not self.broker_client_id:
            raise ValueError("broker_persistent_session needs a stable broker_client_id")
        return self

    drift_interval_s: float = Field(
        default=60.0, gt=0, description="how often drift windows are evaluated for alerts"
    )
    drift_lookback_s: float = Field(
        default=3600.0, gt=0, description="how far back each drift evaluation merges windows"
    )
    drift_cooldown_s: float = Field(
        default=3600.0, ge=0, description="no repeat of the same alert for a slice within this"
    )
    # Webhook destinations (edgefleet.fleet.webhooks.policy): internal addresses are
    # refused unless their network is listed, so an operator token cannot make the fleet
    # POST to its own metadata service or LAN.
    webhook_allowed_hosts: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list,
        max_length=100,
        description="if set, webhooks may only point at these hosts (name, '*.suffix' or"
        " IP literal); empty: any host with a public address",
    )
    webhook_allowed_networks: list[IPv4Network | IPv6Network] = Field(
        default_factory=list,
        max_length=100,
        description="CIDRs webhooks may reach although internal (loopback, private,"
        " link-local, ...), e.g. 10.20.0.0/16 for an in-house receiver",
    )
    # Webhook delivery (edgefleet.fleet.webhooks.dispatcher): each webhook has its own
    # queue and thread, so one slow receiver delays only itself.
    webhook_timeout_s: float = Field(
        default=5.0, gt=0, le=120, description="how long one delivery attempt may take"
    )
    webhook_max_attempts: int = Field(
        default=5, ge=1, le=50, description="attempts per delivery before it is failed"
    )
    webhook_backoff_s: float = Field(
        default=1.0, gt=0, le=3600, description="wait after a first failed attempt (doubling)"
    )
    webhook_max_backoff_s: float = Field(
        default=60.0, gt=0, le=86_400, description="cap of the doubling wait between attempts"
    )
    webhook_queue_size: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="deliveries waiting per webhook; beyond it a delivery is failed, logged",
    )

    # Single sign-on (edgefleet.fleet.governance.oidc): bearer JWTs of this issuer are
    # accepted beside API tokens. Off while oidc_issuer is unset.
    oidc_issuer: str | None = Field(
        default=None,
        max_length=1024,
        description="the OIDC issuer URL whose JWTs are accepted (exactly their iss)",
    )
    oidc_audience: str | None = Field(
        default=None,
        max_length=256,
        description="the audience (client id) a JWT's aud must contain; needed with the issuer",
    )
    oidc_jwks_url: str | None = Field(
        default=None,
        max_length=2048,
        description="the issuer's JWKS URL; default: discovered from"
        " <issuer>/.well-known/openid-configuration",
    )
    oidc_roles_claim: str = Field(
        default="roles",
        max_length=300,
        description="the JWT claim holding roles; dots descend (realm_access.roles)",
    )
    oidc_role_map: dict[str, str] = Field(
        default_factory=dict,
        max_length=256,
        description="claim value -> edgefleet role (JSON in the environment); empty: claim"
        " values that are role names are taken as they are",
    )

    # Audit checkpoints (edgefleet.fleet.audit.checkpointer): the audit chain's head,
    # signed with a key of its own and kept outside the database.
    audit_checkpoints: bool = Field(
        default=True, description="sign audit checkpoints at an interval and at stop"
    )
    audit_checkpoint_interval_s: float = Field(
        default=300.0,
        ge=1,
        le=86_400,
        description="how often a checkpoint is signed (skipped when the log did not change)",
    )
    audit_checkpoint_file: Path | None = Field(
        default=None,
        description="the JSON Lines file checkpoints are appended to; default"
        " <data_dir>/audit-checkpoints.jsonl",
    )
    audit_checkpoint_key_dir: Path | None = Field(
        default=None,
        description="where the audit-checkpoint key lives (made on first start, encrypted"
        " with $EDGEFLEET_KEY_PASSPHRASE); default <data_dir>/audit-keys",
    )
    audit_checkpoint_webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="also POST each checkpoint here (a failure is logged, nothing else)",
    )
    audit_fleet_id: str = Field(
        default="edgefleet",
        pattern=r"^[A-Za-z0-9_.-]{1,100}$",
        description="names this fleet in its signed audit checkpoints",
    )

    @model_validator(mode="after")
    def _oidc_is_complete(self) -> FleetSettings:
        self.oidc_config()  # raises ValueError naming what is wrong
        return self

    def oidc_config(self) -> OidcConfig | None:
        """The OIDC issuer configured, or None without ``oidc_issuer``.

        Raises `ValueError` when the issuer is set without an audience, or a value is
        invalid (a plain-http issuer, a malformed claim path, an unknown role name form).
        """
        if self.oidc_issuer is None:
            if self.oidc_audience or self.oidc_jwks_url or self.oidc_role_map:
                raise ValueError("oidc_audience, oidc_jwks_url and oidc_role_map need oidc_issuer")
            return None
        if not self.oidc_audience:
            raise ValueError(
                "oidc_issuer is set without oidc_audience: set the client id its tokens carry"
            )
        try:
            return OidcConfig(
                issuer=self.oidc_issuer,
                audience=self.oidc_audience,
                jwks_url=self.oidc_jwks_url,
                roles_claim=self.oidc_roles_claim,
                role_map=self.oidc_role_map,
            )
        except ValidationError as error:
            problems = "; ".join(
                f"oidc_{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
            )
            raise ValueError(f"invalid OIDC settings: {problems}") from None

    @model_validator(mode="after")
    def _lease_outlasts_tick(self) -> FleetSettings:
        if self.rollout_lease_s <= self.rollout_tick_interval_s:
            raise ValueError(
                f"rollout_lease_s ({self.rollout_lease_s}) must exceed rollout_tick_interval_s"
                f" ({self.rollout_tick_interval_s}), or the lease lapses between renewals"
            )
        return self

    @field_validator("admin_token", "repository_device_token")
    @classmethod
    def _refuse_placeholder_token(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value()
        if token.strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError(f"{info.field_name} is a placeholder value; set a real random token")
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"{info.field_name} must be at least {MIN_TOKEN_CHARS} characters,"
                f" found {len(token)}"
            )
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in BROKER_SCHEMES or not parts.hostname:
            raise ValueError(
                f"broker_url must look like mqtt://host:port or mqtts://host:port, found {value!r}"
            )
        return value

    @property
    def resolved_repository_dir(self) -> Path | None:
        """Where the image repository lives, or None when signed updates are off."""
        if self.repository_dir is not None:
            return self.repository_dir
        return self.keys_dir / "repository" if self.keys_dir is not None else None

    @property
    def resolved_models_dir(self) -> Path:
        """Where uploaded model packages are kept."""
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"

    @property
    def resolved_audit_checkpoint_file(self) -> Path:
        """Where signed audit checkpoints are appended."""
        if self.audit_checkpoint_file is not None:
            return self.audit_checkpoint_file
        return self.data_dir / "audit-checkpoints.jsonl"

    @property
    def resolved_audit_key_dir(self) -> Path:
        """Where the audit-checkpoint key (and its public half) lives."""
        if self.audit_checkpoint_key_dir is not None:
            return self.audit_checkpoint_key_dir
        return self.data_dir / "audit-keys"

    @property
    def broker_host(self) -> str:
        return urlsplit(self.broker_url).hostname or "127.0.0.1"

    @property
    def broker_port(self) -> int:
        parts = urlsplit(self.broker_url)
        return parts.port or BROKER_SCHEMES[parts.scheme]

    @property
    def broker_tls(self) -> bool:
        return urlsplit(self.broker_url).scheme == "mqtts"

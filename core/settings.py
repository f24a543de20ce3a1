"""One settings object for every part of Bouquet.

Values come from environment variables, then from an optional TOML file
(``BOUQUET_CONFIG_FILE``), then from the local defaults below, so the same code runs
on a laptop (embedded stack under ``.state/``) and in production (a Kafka cluster,
Redis and an MLflow server) by changing only the environment. No other module reads
``os.environ``: they receive a :class:`Settings`.
"""

from __future__ import annotations

import functools
import os
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

#: API keys that only make sense on a laptop; refused when ``BOUQUET_ENV=production``.
DEV_API_KEYS: dict[str, str] = {
    "dev-app-key": "app",
    "dev-operator-key": "operator",
    "dev-admin-key": "admin",
    "dev-gateway-key": "gateway",
}
DEV_PSEUDONYM_SECRET = "dev-only-pseudonymisation-secret"
DEV_SERVER_SECRET = "dev-only-server-secret"
#: Production refuses API keys and secrets shorter than this, or with fewer distinct
#: characters than ``SECRET_MIN_DISTINCT`` (``"a" * 40`` is long and guessable). A value
#: from ``python -c "import secrets; print(secrets.token_urlsafe(32))"`` (43 characters of
#: 64 kinds) passes both.
SECRET_MIN_LENGTH = 32
SECRET_MIN_DISTINCT = 16


def redact_url(url: str) -> str:
    """``url`` fit for a log line or a status message: its password (``redis://:pw@host``,
    ``http://user:pw@host``) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = f"{user}***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def weak_secret(value: str) -> str | None:
    """Why ``value`` is too weak to be an API key or a secret in production, or None."""
    if len(value) < SECRET_MIN_LENGTH:
        return f"shorter than {SECRET_MIN_LENGTH} characters"
    if len(set(value)) < SECRET_MIN_DISTINCT:
        return f"fewer than {SECRET_MIN_DISTINCT} distinct characters"
    return None

#: Confidence weight of each event type when building training matrices. Lives in
#: configuration (override with BOUQUET_EVENT_WEIGHTS='{"use": 2.0, ...}' or the TOML
#: file) because it is a product decision, not an algorithm detail.
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 0.25,
    "click": 1.0,
    "subscribe": 8.0,
    "use": 3.0,
    "pay": 4.0,
    "rate": 2.0,
    "dismiss": 0.0,
    "unsubscribe": 0.0,
}

#: Days an event of each type is kept in the event log before compaction drops it.
DEFAULT_RETENTION_DAYS: dict[str, int] = {
    "view": 400,
    "click": 400,
    "dismiss": 400,
    "use": 800,
    "pay": 3650,
    "subscribe": 3650,
    "unsubscribe": 3650,
    "rate": 800,
    "consent": 3650,
    "profile": 3650,
    "notify": 400,
    "open": 400,
}


#: Oldest event time accepted per channel, in seconds before now (older events are
#: dead-lettered, reason ``stale_timestamp``). Events from people's devices and counters
#: arrive within days; a channel not listed (``partner``, ``system``: replays, history,
#: backfills) has no limit. An old time stamp rewrites history (last week's figures, a
#: consent decided long ago), so only the channels that legitimately carry history may.
DEFAULT_MAX_PAST_SKEW_S: dict[str, int] = {
    channel: 7 * 86400 for channel in ("app", "web", "kiosk", "desk", "phone")
}


def _default_state_dir() -> Path:
    return Path.cwd() / ".state"


class Settings(BaseSettings):
    """Configuration of a Bouquet deployment (see the README's configuration table)."""

    model_config = SettingsConfigDict(
        env_prefix="BOUQUET_",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    env: Literal["local", "test", "production"] = "local"
    state_dir: Path = Field(default_factory=_default_state_dir)
    config_file: Path | None = None

    # --- external services -------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:19092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "BOUQUET_KAFKA_BOOTSTRAP_SERVERS"),
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:16379/0",
        validation_alias=AliasChoices("REDIS_URL", "BOUQUET_REDIS_URL"),
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "BOUQUET_MLFLOW_TRACKING_URI"),
        description="Defaults to a SQLite store under the state directory.",
    )

    # --- Kafka -------------------------------------------------------------------------
    topic_events: str = "bouquet.interactions"
    topic_dlq: str = "bouquet.interactions.dlq"
    topic_outreach: str = "bouquet.outreach"
    topic_partitions: int = Field(default=4, ge=1, le=1024)
    # Topics Bouquet creates: replicas per partition, and how long each topic keeps records
    # (the interactions topic and the dead-letter topic hold raw events, resident ids
    # included: their retention is part of the erasure deadline, docs/privacy.md).
    topic_replication_factor: int = Field(default=1, ge=1, le=32)
    topic_events_retention_ms: int = Field(default=7 * 86_400_000, ge=60_000)
    topic_dlq_retention_ms: int = Field(default=7 * 86_400_000, ge=60_000)
    consumer_group: str = "bouquet-ingest"
    # Client security, under the standard names; every producer, consumer and admin client
    # gets them through kafka_client_options(). Passwords are SecretStr: never in a repr.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", validation_alias=AliasChoices("KAFKA_SECURITY_PROTOCOL",
                                                           "BOUQUET_KAFKA_SECURITY_PROTOCOL"))
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SASL_MECHANISM",
                                                    "BOUQUET_KAFKA_SASL_MECHANISM"))
    kafka_sasl_username: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SASL_USERNAME",
                                                    "BOUQUET_KAFKA_SASL_USERNAME"))
    kafka_sasl_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SASL_PASSWORD",
                                                    "BOUQUET_KAFKA_SASL_PASSWORD"))
    kafka_ssl_cafile: Path | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SSL_CAFILE",
                                                    "BOUQUET_KAFKA_SSL_CAFILE"))
    kafka_ssl_certfile: Path | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SSL_CERTFILE",
                                                    "BOUQUET_KAFKA_SSL_CERTFILE"))
    kafka_ssl_keyfile: Path | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SSL_KEYFILE",
                                                    "BOUQUET_KAFKA_SSL_KEYFILE"))
    kafka_ssl_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_SSL_PASSWORD",
                                                    "BOUQUET_KAFKA_SSL_PASSWORD"))
    kafka_ssl_check_hostname: bool = Field(
        default=True, validation_alias=AliasChoices("KAFKA_SSL_CHECK_HOSTNAME",
                                                    "BOUQUET_KAFKA_SSL_CHECK_HOSTNAME"))

    # --- Redis -------------------------------------------------------------------------
    redis_key_prefix: str = Field(default="bq:", pattern=r"^[A-Za-z0-9_.:-]{0,32}$")

    # --- MLflow ------------------------------------------------------------------------
    mlflow_experiment: str = "bouquet"
    registered_model: str = "bouquet-bundles"

    # --- data --------------------------------------------------------------------------
    event_log_dir: Path | None = Field(default=None, description="Defaults to STATE_DIR/eventlog")
    catalog_path: Path | None = Field(default=None, description="Defaults to the demo city")
    event_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    # Weight of an impression — a `view` carrying a recommendation id: Bouquet showed it —
    # in training and fold-in (the confidence rule's `impression_weight`); a view the
    # resident found alone keeps the `view` weight. Chosen on a temporal hold-out
    # (docs/training.md); unset (null) counts impressions as any view.
    impression_weight: float | None = Field(default=0.0, ge=0)
    retention_days: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_RETENTION_DAYS))
    max_future_skew_s: int = Field(default=300, ge=0)
    max_past_skew_s: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_MAX_PAST_SKEW_S))
    max_event_bytes: int = Field(default=8192, ge=256)

    # --- ingestion (streaming/; see docs/ingestion.md) ---------------------------------
    ingest_batch_max_events: int = Field(default=5000, ge=1, le=100_000)
    ingest_batch_max_ms: int = Field(default=1000, ge=10)
    ingest_session_timeout_ms: int = Field(default=10_000, ge=1000)
    ingest_heartbeat_interval_ms: int = Field(default=3000, ge=100)
    ingest_recent_cap: int = Field(default=50, ge=1, le=1000)
    ingest_dedup_ttl_s: int = Field(default=3 * 86400, ge=60)
    # Distinct event dates in one batch (each is one fsynced Parquet file): a batch is
    # closed early rather than grow past it, so a stream of scattered old dates costs
    # batches, not thousands of files per batch.
    ingest_batch_max_dates: int = Field(default=32, ge=1, le=10_000)
    ingest_counter_ttl_days: int = Field(default=120, ge=1)

    # --- serving and privacy -----------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_keys: dict[str, Literal["app", "operator", "admin", "gateway"]] = Field(
        default_factory=lambda: dict(DEV_API_KEYS)
    )
    pseudonym_secret: str = DEV_PSEUDONYM_SECRET
    # Held by the serving and ingestion processes only (never by front ends or partners):
    # keyed digests of API keys (rate limits, audit actors), recommendation ids, the audit
    # chain; one key per purpose is derived from it (core/keyring.py).
    server_secret: str = DEV_SERVER_SECRET
    small_cell_k: int = Field(default=5, ge=1)
    # Per-key token buckets (requests per second, and burst) of the intake (POST /v1/events,
    # PUT …/consent) and of the operator and admin API; 0 per second: no limit.
    rate_limit_intake_per_s: float = Field(default=1000.0, ge=0)
    rate_limit_intake_burst: int = Field(default=2000, ge=1)
    rate_limit_operator_per_s: float = Field(default=50.0, ge=0)
    rate_limit_operator_burst: int = Field(default=200, ge=1)

    # --- training and promotion (see docs/training.md) ---------------------------------
    # A candidate is promoted only when its hold-out evaluation covers at least this many
    # residents, and when it beats the popularity baseline and the current champion with a
    # paired bootstrap interval (this many resamples) of this level whose lower end is
    # above 0. 0.8 = better with one-sided confidence 90%: a city's hold-out holds a few
    # hundred residents, where a 95% interval leaves a better model unserved in most
    # cities (simulated tuning cities, docs/training.md §6).
    train_min_eval_residents: int = Field(default=200, ge=1)
    train_bootstrap_samples: int = Field(default=2000, ge=100)
    train_promotion_level: float = Field(default=0.8, gt=0.0, lt=1.0)

    # --- publish and real-time serving -------------------------------------------------
    # How many bundles / services are precomputed per resident by `bouquet publish`.
    publish_top_n: int = Field(default=50, ge=1, le=1000)
    # Residents scored and written per Redis pipeline.
    publish_chunk: int = Field(default=2000, ge=1, le=100_000)
    # Keys of a keyspace being written expire after this unless the publish completes, so a
    # crashed publish leaves nothing behind; versions older than the previous one get
    # `publish_old_version_ttl_s` when the pointer switches (serving processes that still
    # read them have that long to notice the switch).
    publish_staging_ttl_s: int = Field(default=6 * 3600, ge=60)
    publish_old_version_ttl_s: int = Field(default=3600, ge=1)
    # Largest serving form of a model stored in Redis (a Redis string holds at most 512 MB);
    # a larger model is refused with the figure, not truncated.
    publish_model_max_bytes: int = Field(default=256 * 2**20, ge=2**20, le=512 * 2**20)
    # A serving process re-reads the version pointers at most this often.
    serving_pointer_poll_ms: int = Field(default=500, ge=10)
    # Real-time re-ranking by fold-in of the resident's recent events, and its weight.
    serving_rerank: bool = True
    serving_rerank_weight: float = Field(default=1.0, ge=0)
    serving_recent_n: int = Field(default=20, ge=1, le=200)
    # A reason says "just" ("Because you just used …") only for an event this many days old
    # at most; older ones say the month.
    serving_reason_recent_days: int = Field(default=2, ge=0, le=30)
    # Rotation: a bundle shown this many times in the last `serving_rotate_days` days
    # (impressions among the resident's recent events) without a click, subscription or
    # use since is left out until the impressions age out of that window; 0 disables it.
    serving_rotate_after: int = Field(default=2, ge=0, le=50)
    serving_rotate_days: int = Field(default=28, ge=1, le=365)
    # Exploration: this share of a consenting resident's slots is filled by Thompson
    # sampling over the published conversion rates (shown → subscribed) of the resident's
    # segment per bundle; the prior is the city's rate of the bundle worth
    # `serving_explore_prior` impressions. 0 disables it.
    serving_explore_share: float = Field(default=0.1, ge=0, le=1)
    serving_explore_prior: float = Field(default=20.0, gt=0, le=10_000)
    # Cadence: bundles are ranked by score × (use rate / top use rate) ** power, the use rate
    # being use events per holder per week counted at training (models/cadence.py). The
    # goal is a weekly cadence of use, and the models predict a take-up: an offer taken and
    # rarely used does not move cadence. 0 ranks by score alone; 1 is P(take up) × uses a
    # week, the expected cadence gain (chosen on simulator seeds 101-105: docs/simulation.md).
    serving_cadence_power: float = Field(default=1.0, ge=0, le=4)
    # POST /v1/events: largest batch, and how long to wait for the broker's acks.
    serving_max_batch: int = Field(default=500, ge=1, le=10_000)
    serving_intake_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # Online experiment (BOUQUET_EXPERIMENTS, JSON): {"salt": "...", "variants": [{"name":
    # "champion", "share": 0.9}, {"name": "popular", "share": 0.1}]}; a variant is
    # `champion`, `popular`, or any name published with `bouquet publish --pointer NAME`.
    experiments: dict[str, Any] | None = None
    # Adds GET /v1/_bench/bare/{id} and /v1/_bench/bare-open/{id} (one Redis GET: the serving
    # benchmark's floors; the second without a key). Off by default; refused in production.
    serving_bench_endpoints: bool = False

    # --- engagement analytics (analytics/; see docs/engagement.md) ---------------------
    # Trailing window of the cadence classes, whole weeks (daily = 5 days a week of it,
    # weekly = 3 weeks in 4, scaled to the window).
    engagement_window_days: int = Field(default=28, ge=7, le=364, multiple_of=7)
    # The operator API re-checks the event log's file list at most this often; an
    # unchanged log is never re-read.
    engagement_cache_ttl_s: float = Field(default=30.0, ge=0)
    # The figures are DuckDB SQL over the event log's Parquet files (analytics/logdb.py):
    # memory DuckDB may use before it spills to disk (DuckDB's own syntax: "1GB", "512MB"),
    # its threads, and where it spills (default STATE_DIR/analytics-spill: spilled rows hold
    # resident ids, so they stay in the private state folder and go when the query ends).
    analytics_memory_limit: str = Field(default="1GB", pattern=r"^\d+(\.\d+)?\s*[KMGT]i?B$")
    analytics_threads: int = Field(default=2, ge=1, le=256)
    analytics_spill_dir: Path | None = None

    # --- outreach (see docs/outreach.md) -------------------------------------------------
    # Local time zone of the city: send times, quiet hours and the planning hour.
    outreach_timezone: str = "Europe/Paris"
    # `bouquet outreach run` plans each day at this local hour.
    outreach_plan_hour: int = Field(default=6, ge=0, le=23)
    # Per resident: at most this many nudges in any 7 days, and this many hours between two.
    outreach_max_per_week: int = Field(default=2, ge=1, le=7)
    outreach_min_gap_h: float = Field(default=48.0, ge=24.0, le=24.0 * 28)
    # Most nudges a day per channel (a channel not listed has no budget).
    outreach_channel_budget: dict[Literal["push", "email", "sms"], int] = Field(
        default_factory=lambda: {"sms": 50_000})
    # After this many nudges in a row not opened, the resident is paused this many weeks.
    outreach_pause_after: int = Field(default=3, ge=1, le=50)
    outreach_pause_weeks: int = Field(default=4, ge=1, le=52)
    # Share of contactable residents never nudged (stable hash of resident and salt).
    outreach_holdout_share: float = Field(default=0.10, ge=0.0, lt=1.0)
    outreach_holdout_salt: str = Field(default="bouquet-outreach", min_length=1)
    # Default quiet hours (local), for residents who declare none.
    outreach_quiet_hours: str = Field(
        default="21:00-08:00",
        pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$")
    # Channels assumed accepted by a resident who consented to contact and declared none.
    outreach_default_channels: list[Literal["push", "email", "sms"]] = Field(
        default_factory=lambda: ["push"])
    # Bundles and services considered per resident: the first N of each in the resident's
    # answer (published list through the serving filters).
    outreach_candidates: int = Field(default=5, ge=1, le=50)
    # Days of the event log read for send hours and outcomes.
    outreach_history_days: int = Field(default=90, ge=7, le=730)
    # A nudge not opened this long after its send time counts as ignored.
    outreach_response_window_h: float = Field(default=48.0, gt=0, le=24.0 * 28)
    # Send hour: the resident's events weigh against this many events' worth of their
    # neighbourhood's hour profile.
    outreach_hour_prior_events: float = Field(default=10.0, ge=0)
    # Thompson sampling: a cell's prior weighs as this many nudges of the pooled rate.
    outreach_prior_strength: float = Field(default=10.0, gt=0)

    # --- local stack (embedded default) ------------------------------------------------
    # The broker and Redis ports come from KAFKA_BOOTSTRAP_SERVERS and REDIS_URL when they
    # point at this machine; only the optional MLflow UI needs a port of its own.
    local_mlflow_port: int = 5000

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = os.environ.get("BOUQUET_CONFIG_FILE")
        if not path:
            return (init_settings, env_settings)
        try:
            toml = TomlConfigSettingsSource(settings_cls, toml_file=_readable(path))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"cannot read BOUQUET_CONFIG_FILE={path}: {exc}") from exc
        return (init_settings, env_settings, toml)

    @field_validator("outreach_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name, e.g. "
                             "Europe/Paris)") from None
        return value

    @field_validator("outreach_default_channels")
    @classmethod
    def _some_channel(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("outreach_default_channels must not repeat a channel")
        return value

    @field_validator("max_past_skew_s")
    @classmethod
    def _skews_non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        negative = {k: v for k, v in value.items() if v < 0}
        if negative:
            raise ValueError(f"past skews must be >= 0 seconds, got {negative}")
        return value

    def past_skew_limits(self) -> dict[str, timedelta]:
        """Channel → how far in the past an event of that channel may be stamped (a
        channel not listed has no limit)."""
        return {channel: timedelta(seconds=s) for channel, s in self.max_past_skew_s.items()}

    @field_validator("event_weights")
    @classmethod
    def _weights_non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        negative = {k: v for k, v in value.items() if v < 0}
        if negative:
            raise ValueError(f"event weights must be >= 0, got {negative}")
        return value

    @model_validator(mode="after")
    def _sasl_is_complete(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_") and not (
                self.kafka_sasl_mechanism and self.kafka_sasl_username
                and self.kafka_sasl_password):
            raise ValueError(f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                             "KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        return self

    @model_validator(mode="after")
    def _refuse_placeholder_secrets_in_production(self) -> Settings:
        if self.env != "production":
            return self
        placeholder_keys = sorted(set(self.api_keys) & set(DEV_API_KEYS))
        if placeholder_keys:
            raise ValueError(
                f"BOUQUET_API_KEYS still holds development keys {placeholder_keys}; "
                "set real keys for production"
            )
        # the message names the weak keys' roles, never any part of a key
        weak_keys = sorted(f"a key of role {role!r} is {why}" for key, role
                           in self.api_keys.items() if (why := weak_secret(key)))
        if weak_keys:
            raise ValueError(f"BOUQUET_API_KEYS: {'; '.join(weak_keys)}; {_MAKE_ONE}")
        for variable, value, development in (
                ("BOUQUET_PSEUDONYM_SECRET", self.pseudonym_secret, DEV_PSEUDONYM_SECRET),
                ("BOUQUET_SERVER_SECRET", self.server_secret, DEV_SERVER_SECRET)):
            if value == development:
                raise ValueError(f"{variable} is the development secret; {_MAKE_ONE}")
            why = weak_secret(value)
            if why:
                raise ValueError(f"{variable} is {why}; {_MAKE_ONE}")
        if self.serving_bench_endpoints:
            raise ValueError(
                "BOUQUET_SERVING_BENCH_ENDPOINTS is for benchmarks only (one of its endpoints "
                "answers without an API key); unset it in production"
            )
        return self

    @property
    def development_credentials(self) -> list[str]:
        """The variables that still hold the public development keys or secret: fine on a
        laptop, an open door anywhere else."""
        found = []
        if set(self.api_keys) & set(DEV_API_KEYS):
            found.append("BOUQUET_API_KEYS")
        if self.pseudonym_secret == DEV_PSEUDONYM_SECRET:
            found.append("BOUQUET_PSEUDONYM_SECRET")
        if self.server_secret == DEV_SERVER_SECRET:
            found.append("BOUQUET_SERVER_SECRET")
        return found

    def kafka_client_options(self) -> dict[str, Any]:
        """The connection and security options of every Kafka client Bouquet makes
        (kafka-python's names): producers, consumers and admin clients alike."""
        options: dict[str, Any] = {"bootstrap_servers": self.kafka_bootstrap_servers,
                                   "security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.startswith("SASL_"):
            assert self.kafka_sasl_password is not None  # checked by _sasl_is_complete
            options.update(sasl_mechanism=self.kafka_sasl_mechanism,
                           sasl_plain_username=self.kafka_sasl_username,
                           sasl_plain_password=self.kafka_sasl_password.get_secret_value())
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_check_hostname"] = self.kafka_ssl_check_hostname
            for name in ("cafile", "certfile", "keyfile"):
                value = getattr(self, f"kafka_ssl_{name}")
                if value is not None:
                    options[f"ssl_{name}"] = str(value)
            if self.kafka_ssl_password is not None:
                options["ssl_password"] = self.kafka_ssl_password.get_secret_value()
        return options

    def topic_configs(self, topic: str) -> dict[str, str]:
        """Configs Bouquet sets on a topic it creates: ``retention.ms``; the dead-letter topic
        is also compacted (its records are keyed by resident reference and position, so an
        erased resident's letters can be deleted by tombstones: ``bouquet compact``)."""
        if topic == self.topic_dlq:
            return {"retention.ms": str(self.topic_dlq_retention_ms),
                    "cleanup.policy": "compact,delete"}
        return {"retention.ms": str(self.topic_events_retention_ms)}

    # --- derived locations -------------------------------------------------------------
    @property
    def event_log_path(self) -> Path:
        return self.event_log_dir or self.state_dir / "eventlog"

    @property
    def analytics_spill_path(self) -> Path:
        return self.analytics_spill_dir or self.state_dir / "analytics-spill"

    @property
    def mlflow_uri(self) -> str:
        """Tracking URI; the local default is a SQLite file beside a local artifact folder."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.state_dir.resolve()}/mlflow.db"

    @property
    def mlflow_artifact_root(self) -> Path:
        return self.state_dir / "mlartifacts"

    @property
    def outreach_ledger_path(self) -> Path:
        """The outreach plan ledger (one Parquet file per planned day)."""
        return self.state_dir / "outreach" / "ledger"

    @property
    def stack_dir(self) -> Path:
        return self.state_dir / "stack"


_MAKE_ONE = ("make one with `python -c \"import secrets; print(secrets.token_urlsafe(32))\"`")


def _readable(path: str) -> Path:
    """``path`` if it is a file; pydantic-settings would silently read a missing file as
    empty, and a mistyped BOUQUET_CONFIG_FILE must not go unnoticed."""
    found = Path(path)
    if not found.is_file():
        raise FileNotFoundError(f"no such file {found}")
    return found


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()

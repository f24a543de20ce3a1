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
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
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
}
DEV_PSEUDONYM_SECRET = "dev-only-pseudonymisation-secret"

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
    topic_partitions: int = Field(default=4, ge=1, le=1024)
    consumer_group: str = "bouquet-ingest"

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
    max_event_bytes: int = Field(default=8192, ge=256)

    # --- ingestion (streaming/, issue 4; see docs/ingestion.md) ---------------------------
    ingest_batch_max_events: int = Field(default=5000, ge=1, le=100_000)
    ingest_batch_max_ms: int = Field(default=1000, ge=10)
    ingest_session_timeout_ms: int = Field(default=10_000, ge=1000)
    ingest_heartbeat_interval_ms: int = Field(default=3000, ge=100)
    ingest_recent_cap: int = Field(default=50, ge=1, le=1000)
    ingest_dedup_ttl_s: int = Field(default=3 * 86400, ge=60)
    ingest_counter_ttl_days: int = Field(default=120, ge=1)

    # --- serving and privacy -----------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_keys: dict[str, Literal["app", "operator", "admin"]] = Field(
        default_factory=lambda: dict(DEV_API_KEYS)
    )
    pseudonym_secret: str = DEV_PSEUDONYM_SECRET
    small_cell_k: int = Field(default=5, ge=1)

    # --- training and promotion (see docs/training.md) ----------------------------------
    # A candidate is promoted only when its hold-out evaluation covers at least this many
    # residents, and when it beats the popularity baseline and the current champion with a
    # paired bootstrap 95% interval (this many resamples) that excludes 0.
    train_min_eval_residents: int = Field(default=200, ge=1)
    train_bootstrap_samples: int = Field(default=2000, ge=100)

    # --- publish and real-time serving ---------------------------------------------------
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

    # --- engagement analytics (issue 7; owner: analytics; see docs/engagement.md) ---------
    # Trailing window of the cadence classes, whole weeks (daily = 5 days a week of it,
    # weekly = 3 weeks in 4, scaled to the window).
    engagement_window_days: int = Field(default=28, ge=7, le=364, multiple_of=7)
    # The operator API re-checks the event log's file list at most this often; an
    # unchanged log is never re-read.
    engagement_cache_ttl_s: float = Field(default=30.0, ge=0)

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

    @field_validator("event_weights")
    @classmethod
    def _weights_non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        negative = {k: v for k, v in value.items() if v < 0}
        if negative:
            raise ValueError(f"event weights must be >= 0, got {negative}")
        return value

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
        if self.pseudonym_secret == DEV_PSEUDONYM_SECRET or len(self.pseudonym_secret) < 32:
            raise ValueError(
                "BOUQUET_PSEUDONYM_SECRET must be set to a random secret of 32+ characters "
                "in production"
            )
        if self.serving_bench_endpoints:
            raise ValueError(
                "BOUQUET_SERVING_BENCH_ENDPOINTS is for benchmarks only (one of its endpoints "
                "answers without an API key); unset it in production"
            )
        return self

    # --- derived locations -------------------------------------------------------------
    @property
    def event_log_path(self) -> Path:
        return self.event_log_dir or self.state_dir / "eventlog"

    @property
    def mlflow_uri(self) -> str:
        """Tracking URI; the local default is a SQLite file beside a local artifact folder."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.state_dir.resolve()}/mlflow.db"

    @property
    def mlflow_artifact_root(self) -> Path:
        return self.state_dir / "mlartifacts"

    @property
    def stack_dir(self) -> Path:
        return self.state_dir / "stack"


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

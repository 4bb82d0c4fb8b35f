"""Settings: one YAML file, every field overridable from `RLM_PROXY_*` environment variables."""

from __future__ import annotations

import hashlib
import os
import pwd
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from proxy.router_config import GeneralSettings, LiteLLMSettings, RouterSettings, merged_fallbacks, one_value

ENV_REFERENCE_PREFIX = "os.environ/"
OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
CacheScope = Literal["key", "team", "global"]
NativeAPI = Literal["responses", "messages"]
# litellm_params that steer load balancing among a model_name's deployments, never sent to a provider.
ROUTING_PARAMS = ("weight", "rpm", "tpm")


# LiteLLM's durations (`budget_duration`, `duration`): a whole number of seconds, minutes, hours or days.
DURATION_PATTERN = r"^[1-9][0-9]{0,6}[smhd]$"
_DURATION_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def key_hash(key: str) -> str:
    """How keys are known once read: their SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def duration_seconds(duration: str) -> int:
    """`30s`, `10m`, `1h`, `30d` in seconds (already checked against DURATION_PATTERN)."""
    if re.fullmatch(DURATION_PATTERN, duration) is None:
        raise ValueError(f"a duration is a number and one of s, m, h, d (e.g. 30d), got {duration!r}")
    return int(duration[:-1]) * _DURATION_UNIT_S[duration[-1]]


class ConfigError(Exception):
    """A configuration that cannot start the proxy; the message names the offending setting."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelInfo(BaseModel):
    # LiteLLM's model_info carries many provider fields; keep them, use only ours.
    model_config = ConfigDict(extra="allow")

    max_input_tokens: int | None = Field(default=None, gt=0)
    rlm_threshold_tokens: int | None = Field(default=None, gt=0)
    # Prices in LiteLLM's names, for models litellm has no price for (self-hosted, new, mock).
    input_cost_per_token: float | None = Field(default=None, ge=0)
    output_cost_per_token: float | None = Field(default=None, ge=0)
    # The dialects this deployment serves itself, besides chat completions: requests in them are forwarded
    # as they came instead of being bridged. None: OpenAI's own endpoint speaks `responses`, Anthropic's
    # speaks `messages`, any other endpoint is bridged.
    native_apis: list[NativeAPI] | None = None


class ModelEntry(_Section):
    model_name: str = Field(min_length=1)
    litellm_params: dict[str, Any]
    model_info: ModelInfo = ModelInfo()

    @field_validator("litellm_params")
    @classmethod
    def _needs_model(cls, params: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(params.get("model"), str) or not params["model"]:
            raise ValueError("litellm_params.model is required (e.g. openai/gpt-4o)")
        for name in ROUTING_PARAMS:
            value = params.get(name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if value is not None and (not number or value <= 0):
                raise ValueError(f"litellm_params.{name} must be a positive number")
        return params


class Limits(_Section):
    """What keys and teams share: the models they may call and their limits (None: no limit)."""

    # fnmatch patterns (`gpt-4*`) on model names without `rlm/`; None: every model.
    models: list[str] | None = None
    max_budget_usd: float | None = Field(default=None, ge=0)
    budget_duration: str | None = Field(default=None, pattern=DURATION_PATTERN)
    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    max_parallel_requests: int | None = Field(default=None, ge=0)

    @field_validator("models")
    @classmethod
    def _patterns_not_empty(cls, models: list[str] | None) -> list[str] | None:
        if models is not None and any(not pattern for pattern in models):
            raise ValueError("a model pattern must not be empty")
        return models


class KeyRLM(_Section):
    """A key's RLM mode: whether it may ask for it, and caps below the server's `rlm` limits."""

    allowed: bool = True
    max_iterations: int | None = Field(default=None, ge=1)
    max_depth: int | None = Field(default=None, ge=1)
    max_subcalls: int | None = Field(default=None, ge=0)
    max_cost_usd: float | None = Field(default=None, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)


class KeyEntry(Limits):
    """A client key: the key itself or its SHA-256 (hex), so that the config need not hold the secret.
    Keys made through the admin API are stored in this shape too, by hash only."""

    key: SecretStr | None = None
    key_hash: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    alias: str | None = Field(default=None, min_length=1, max_length=64)
    team: str | None = Field(default=None, min_length=1, max_length=128)
    max_parallel_rlm_runs: int | None = Field(default=None, ge=0)
    rlm: KeyRLM = KeyRLM()
    metadata: dict[str, Any] = {}
    expires: datetime | None = None  # ISO time; a time without a zone is UTC

    @field_validator("expires")
    @classmethod
    def _utc_unless_zoned(cls, expires: datetime | None) -> datetime | None:
        return expires.replace(tzinfo=UTC) if expires is not None and expires.tzinfo is None else expires

    @model_validator(mode="after")
    def _one_of_key_and_hash(self) -> KeyEntry:
        if (self.key is None) == (self.key_hash is None):
            raise ValueError("give exactly one of key and key_hash")
        if self.key is not None and not self.key.get_secret_value():
            raise ValueError("key must not be empty")
        return self

    @property
    def hash(self) -> str:
        return key_hash(self.key.get_secret_value()) if self.key is not None else str(self.key_hash).lower()


class TeamEntry(Limits):
    """Limits shared by every key of a team (each key's own limits apply as well)."""

    team: str = Field(min_length=1, max_length=128)


class ServerSettings(_Section):
    master_key: SecretStr | None = None
    api_keys: list[SecretStr] = []
    keys: list[KeyEntry] = []
    teams: list[TeamEntry] = []
    max_body_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    # A request's head (request line and header fields) over either limit gets 431 from the HTTP server
    # itself. 64 KiB holds the largest real headers (big cookies, JWTs) as AWS's load balancers do; 100
    # fields is Apache's and gunicorn's limit.
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_header_count: int = Field(default=100, ge=10, le=10_000)
    cors_origins: list[str] = []
    health_routes: bool = True
    metrics_route: bool = True
    # glibc only: big buffers are mmapped (freed at once) and free heap pages go back once idle.
    release_memory: bool = True
    release_memory_idle_s: float = Field(default=1.0, gt=0, le=600)

    @model_validator(mode="after")
    def _keys_are_distinct(self) -> ServerSettings:
        plain = {f"api_keys[{i}]": key for i, key in enumerate(self.api_keys)}
        plain["master_key"] = self.master_key
        hashes = {where: key_hash(key.get_secret_value()) for where, key in plain.items()
                  if key is not None and key.get_secret_value()}
        hashes |= {f"keys[{i}]": entry.hash for i, entry in enumerate(self.keys)}
        first: dict[str, str] = {}
        for where, digest in hashes.items():
            if digest in first:
                raise ValueError(f"{where} is the same key as {first[digest]}")
            first[digest] = where
        return self

    @model_validator(mode="after")
    def _teams_are_distinct(self) -> ServerSettings:
        names = [entry.team for entry in self.teams]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"teams: {', '.join(repeated)} given more than once")
        return self


class UpstreamSettings(_Section):
    timeout_s: float = Field(default=600.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    retry_backoff_s: float = Field(default=0.5, ge=0)
    retry_backoff_max_s: float = Field(default=8.0, ge=0)
    # OpenAI-compatible deployments (`openai/...`) skip litellm's per-call overhead.
    fast_path: bool = True
    max_connections: int = Field(default=1000, gt=0)


class CacheSettings(_Section):
    """Cache of the model calls RLM runs make. Without a Redis URL: an in-process LRU."""

    redis_url: str | None = None  # also from REDIS_URL
    redis_cluster: bool = False
    ttl_s: int = Field(default=86_400, ge=1)
    max_entries: int = Field(default=10_000, ge=1, description="in-process LRU size")
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024, description="in-process LRU size")
    # Who shares cached calls: each key alone (safe), a team's keys, or everyone.
    scope: CacheScope = "key"
    redis_timeout_s: float = Field(default=0.5, gt=0)
    redis_retry_s: float = Field(default=2.0, ge=0, description="pause after a Redis failure")
    # Identical calls on different replicas at once: one calls, the others wait for its answer in Redis.
    shared_flight_wait_s: float = Field(default=120.0, ge=0, description="longest wait, then call anyway")
    shared_flight_lock_s: float = Field(default=10.0, gt=0, description="a silent holder's claim expires")
    enabled: bool = True


class AdmissionSettings(_Section):
    """How many RLM runs a server process takes at once, and how long others may wait (proxy/admission.py)."""

    max_concurrent_rlm_runs: int | None = Field(
        default=None, ge=1, description="runs at once; default: as many as sandbox workers")
    max_queued_rlm_runs: int = Field(default=100, ge=0, description="runs waiting for a slot, then 503")
    queue_timeout_s: float = Field(default=30.0, ge=0, description="a queued run's wait, then 503")


class LimitsSettings(_Section):
    """How the per-key and per-team limits (`server.keys`, `server.teams`, the admin API) are enforced."""

    # Redis unreachable: let requests through unlimited (a metric and a log line), or refuse them with 503.
    redis_failure: Literal["open", "closed"] = "open"
    # A parallel-request slot is freed after this long even if its replica died without giving it back.
    lease_s: float = Field(default=3600.0, ge=60)


class SpendSettings(_Section):
    """The spend ledger (proxy/spend.py): per key, team and model and per UTC day, in the Redis of
    `cache.redis_url` when set (every replica adds to it), else in process."""

    retention_days: int = Field(default=90, ge=1, le=3660, description="days of spend kept")
    # Prometheus series per key alias (and team) at most; later ones are counted as "other".
    metrics_max_labels: int = Field(default=100, ge=0, le=10_000)


class ResponsesSettings(_Section):
    """Stored responses of /v1/responses (retrieve, delete, previous_response_id): in the Redis of
    `cache.redis_url` when set (every replica sees them), else in a bounded in-process store."""

    store_ttl_s: int = Field(default=30 * 86_400, ge=60, description="how long a stored response is kept")
    max_stored: int = Field(default=10_000, ge=1, description="in-process store size")
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024, description="in-process store size")


class TrajectorySettings(_Section):
    """Records of RLM runs (GET /v1/rlm/runs): in the Redis of `cache.redis_url` when set (every replica
    serves every run), else in a bounded in-process store; optionally also one JSONL file per run in `dir`."""

    enabled: bool = True
    ttl_s: int = Field(default=7 * 86_400, ge=60, description="how long a record is kept")
    max_runs: int = Field(default=1000, ge=1, description="in-process store size, oldest out first")
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024, description="in-process store size")
    # Sub-call prompts and answers, replies, code and outputs are cut to this many characters in a record.
    max_text_chars: int = Field(default=10_000, ge=100, le=10_000_000)
    store_context: bool = False  # keep the run's whole input, not only its shape
    dir: Path | None = None

    @field_validator("dir")
    @classmethod
    def _dir_is_writable(cls, value: Path | None) -> Path | None:
        if value is not None and not (value.is_dir() and os.access(value, os.W_OK | os.X_OK)):
            raise ValueError(f"'{value}' is not a writable directory")
        return value


class OTelSettings(_Section):
    """OpenTelemetry traces, exported over OTLP/HTTP when an endpoint is set (or OTEL_EXPORTER_OTLP_ENDPOINT);
    nothing of OpenTelemetry runs otherwise."""

    endpoint: str | None = Field(default=None, pattern=r"^https?://", description="the collector's base URL")
    service_name: str = Field(default="rlm-proxy", min_length=1)
    # Sent with each export (a vendor's API key); when empty, OTEL_EXPORTER_OTLP_HEADERS is read.
    headers: dict[str, SecretStr] = {}
    sample_ratio: float = Field(default=1.0, ge=0, le=1, description="of traces the proxy starts itself")
    # Probes and scrapes would swamp the traces.
    exclude_paths: list[str] = ["/livez", "/readyz", "/metrics"]


class RLMSettings(_Section):
    """RLM mode. The limits are the defaults of every run and the caps a request's `rlm` object may lower."""

    default_mode: Literal["auto", "on", "off"] = "auto"
    threshold_tokens: int | None = Field(default=None, gt=0)
    threshold_fraction: float = Field(default=0.8, gt=0, le=1)
    root_model: str | None = None
    sub_model: str | None = None
    max_iterations: int = Field(default=30, ge=1, le=1000)
    max_depth: int = Field(default=1, ge=1, le=5)
    max_subcalls: int = Field(default=1000, ge=0)
    max_cost_usd: float | None = Field(default=None, gt=0)
    timeout_s: float = Field(default=900.0, gt=0)
    final_answer_timeout_s: float = Field(default=60.0, gt=0)
    max_output_chars: int = Field(default=20_000, ge=1000)
    subcall_concurrency: int = Field(default=16, ge=1, le=1000)
    heartbeat_s: float = Field(default=10.0, gt=0, le=15)
    # Below this fraction of `context` read, a first answer is questioned once (models answer too early).
    min_coverage_to_answer: float = Field(default=0.9, ge=0, le=1)
    system_prompt: str | None = None
    # Stream root replies and run each ```repl block once its closing fence arrives, while the model
    # writes on (root calls that offer the client's tools are not streamed).
    stream_root_replies: bool = True


class SandboxSettings(_Section):
    memory_mb: int = Field(default=1024, ge=64)
    cpu_s_per_block: float = Field(default=10.0, gt=0)
    cpu_s_per_run: float = Field(default=300.0, gt=0)
    wall_s_per_block: float = Field(default=60.0, gt=0)
    workers: int = Field(default=2, ge=0, le=64, description="warm worker processes kept ready")
    max_workers: int | None = Field(default=None, ge=1, le=4096,
                                    description="live worker processes, warm included; default: memory's")
    worker_wait_s: float = Field(default=60.0, ge=0, description="wait for a worker when all are busy")
    # Sub-call texts (prompts, nested contexts) crossing from workers into the proxy.
    max_batch_mb: int = Field(default=64, ge=1, le=256, description="held for one worker at a time")
    max_run_mb: int = Field(default=1024, ge=1, description="sent by one run in all")
    max_inflight_mb: int = Field(default=256, ge=1, description="held for all workers together")
    # Workers start under this user ("name", "uid" or "uid:gid") instead of the proxy's; the proxy needs
    # CAP_SETUID and CAP_SETGID for it (README: threat model).
    worker_user: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _warm_within_max(self) -> SandboxSettings:
        if self.max_workers is not None and self.workers > self.max_workers:
            raise ValueError("sandbox.workers (warm workers) cannot exceed sandbox.max_workers")
        return self

    @field_validator("worker_user")
    @classmethod
    def _worker_user_exists(cls, value: str | None) -> str | None:
        if value is not None:
            worker_ids(value)
        return value


def worker_ids(user: str) -> tuple[int, int]:
    """(uid, gid) of a user given as "name" (its primary group), "uid" (the same gid) or "uid:gid"."""
    uid, _, gid = user.partition(":")
    if uid.isdigit() and (not gid or gid.isdigit()):
        return int(uid), int(gid or uid)
    if gid:
        raise ValueError(f"'{user}' is neither a user name nor uid[:gid]")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"there is no user '{user}' on this machine") from None
    return entry.pw_uid, entry.pw_gid


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RLM_PROXY_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    model_list: list[ModelEntry] = []
    server: ServerSettings = ServerSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    cache: CacheSettings = CacheSettings()
    responses: ResponsesSettings = ResponsesSettings()
    rlm: RLMSettings = RLMSettings()
    trajectories: TrajectorySettings = TrajectorySettings()
    sandbox: SandboxSettings = SandboxSettings()
    admission: AdmissionSettings = AdmissionSettings()
    spend: SpendSettings = SpendSettings()
    limits: LimitsSettings = LimitsSettings()
    otel: OTelSettings = OTelSettings()
    # LiteLLM Proxy's sections, so that its config files load: the keys we read (proxy/router_config.py).
    litellm_settings: LiteLLMSettings = LiteLLMSettings()
    general_settings: GeneralSettings = GeneralSettings()
    router_settings: RouterSettings = RouterSettings()

    @model_validator(mode="after")
    def _rlm_models_are_served(self) -> Settings:
        names = {entry.model_name for entry in self.model_list}
        for field in ("root_model", "sub_model"):
            model = getattr(self.rlm, field)
            if names and model is not None and model not in names:
                raise ValueError(f"rlm.{field} '{model}' is not a model_name of model_list")
        return self

    @model_validator(mode="after")
    def _litellm_aliases(self) -> Settings:
        """LiteLLM's names for settings that have one of ours: one value wherever it is given."""
        upstream, server = self.upstream, self.server
        router, litellm = self.router_settings, self.litellm_settings
        given = upstream.model_fields_set
        retries = one_value("the retry count", {
            "upstream.max_retries": upstream.max_retries if "max_retries" in given else None,
            "router_settings.num_retries": router.num_retries,
            "litellm_settings.num_retries": litellm.num_retries})
        timeout = one_value("the upstream timeout", {
            "upstream.timeout_s": upstream.timeout_s if "timeout_s" in given else None,
            "router_settings.timeout": router.timeout,
            "litellm_settings.request_timeout": litellm.request_timeout})
        master_key = one_value("the master key", {
            "server.master_key": server.master_key,
            "general_settings.master_key": self.general_settings.master_key})
        self.upstream = upstream.model_copy(update={
            "max_retries": upstream.max_retries if retries is None else retries,
            "timeout_s": upstream.timeout_s if timeout is None else timeout})
        # Validated again: the key from general_settings must not repeat a client key either.
        self.server = ServerSettings.model_validate({**server.model_dump(), "master_key": master_key})
        return self

    @model_validator(mode="after")
    def _fallbacks_name_served_models(self) -> Settings:
        names = {entry.model_name for entry in self.model_list}
        for kind, table in self.fallbacks().items():
            for name, targets in table.items():
                for model in (name, *targets):
                    if names and model not in names:
                        raise ValueError(f"{kind}: '{model}' is not a model_name of model_list")
        return self

    def fallbacks(self) -> dict[str, dict[str, tuple[str, ...]]]:
        """The `fallbacks` and `context_window_fallbacks` tables, from whichever section gives them."""
        router, litellm = self.router_settings, self.litellm_settings
        return {kind: merged_fallbacks(getattr(router, kind), getattr(litellm, kind), kind)
                for kind in ("fallbacks", "context_window_fallbacks")}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment must win over it.
        return env_settings, init_settings


def load_settings(config_path: str | os.PathLike[str] | None = None) -> Settings:
    """Build settings from the YAML file (argument or `RLM_PROXY_CONFIG`) and the environment."""
    environ = os.environ
    path = config_path or environ.get("RLM_PROXY_CONFIG")
    data = _read_yaml(Path(path)) if path else {}
    data = _resolve_env_references(data, environ, location="")
    if environ.get("REDIS_URL"):  # the conventional variable; RLM_PROXY_CACHE__REDIS_URL still wins
        data["cache"] = {**(data.get("cache") or {}), "redis_url": environ["REDIS_URL"]}
    if environ.get(OTLP_ENDPOINT_ENV):  # the standard variable; RLM_PROXY_OTEL__ENDPOINT still wins
        data["otel"] = {**(data.get("otel") or {}), "endpoint": environ[OTLP_ENDPOINT_ENV]}
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _resolve_env_references(value: Any, environ: Mapping[str, str], location: str) -> Any:
    """Replace LiteLLM-style `os.environ/NAME` strings with the variable's value."""
    if isinstance(value, dict):
        return {k: _resolve_env_references(v, environ, _join(location, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env_references(v, environ, _join(location, i)) for i, v in enumerate(value)]
    if isinstance(value, str) and value.startswith(ENV_REFERENCE_PREFIX):
        name = value.removeprefix(ENV_REFERENCE_PREFIX)
        if name not in environ:
            raise ConfigError(f"setting '{location}' refers to environment variable {name}, which is not set")
        return environ[name]
    return value


def _join(location: str, key: object) -> str:
    return f"{location}.{key}" if location else str(key)


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        problems.append(f"setting '{where}': {error['msg']}")
    return "invalid configuration: " + "; ".join(problems)

"""Settings: ``SLUICE_*`` environment variables over an optional TOML file.

The TOML file is ``$SLUICE_CONFIG`` or else ``./sluice.toml`` when present. Its ``[sluice]``
table holds the same keys as the environment (without the prefix); ``[providers.NAME]``
tables describe third parties (see docs/providers.md); ``[sandbox]`` configures the bundled
sandbox DSP. Environment variables win over the file. Nothing here runs at import time:
call :func:`load_settings` and pass the result in.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    Field,
    GetCoreSchemaHandler,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import CoreSchema, core_schema
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from sluice import errors, masking
from sluice.redis_url import host_part_problem, parse_redis_url
from sluice.units import MAX_DURATION_S, parse_duration

DEFAULT_CONFIG_FILE = "sluice.toml"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _refuse_boolean_for_int(value: object) -> object:
    if isinstance(value, bool):
        raise errors.InvalidValue("must be an integer, not true or false")
    return value


def _refuse_boolean_for_float(value: object) -> object:
    if isinstance(value, bool):
        raise errors.InvalidValue("must be a number, not true or false")
    return value


_REFUSE_BOOLEAN = {"int": _refuse_boolean_for_int, "float": _refuse_boolean_for_float}


def _numbers_refuse_booleans(schema: Any) -> Any:
    """``schema`` with every int and float in it (nested in lists, tables, unions, bounds)
    refusing a boolean first; a schema already wrapped is left as it is."""
    if isinstance(schema, list):
        return [_numbers_refuse_booleans(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    kind = schema.get("type")
    if kind in _REFUSE_BOOLEAN:
        return core_schema.no_info_before_validator_function(_REFUSE_BOOLEAN[kind], schema)
    if kind == "function-before" and schema["function"].get("function") in (
        _REFUSE_BOOLEAN.values()
    ):
        return schema
    return {key: _numbers_refuse_booleans(value) for key, value in schema.items()}


class NumbersRefuseBooleans:
    """A mixin for configuration models: a number refuses ``true`` and ``false``.

    Python's ``bool`` is an ``int``, so pydantic's lax mode took ``burst = true`` in a TOML
    file as 1 and ``rate_margin = false`` as 0.0. Strict numbers would also refuse the text
    of ``SLUICE_PORT=8000``, so instead every ``int`` and ``float`` in the model's schema is
    wrapped in a check that refuses a boolean and lets the rest through as before. Each
    model of a nested configuration needs the mixin: a nested model keeps its own schema.
    """

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        schema: CoreSchema = _numbers_refuse_booleans(handler(source))
        return schema


class Settings(NumbersRefuseBooleans, BaseSettings):
    """Everything Sluice can be told; every field can come from ``SLUICE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_", extra="forbid")

    database_url: str = "sqlite:///./sluice.db"
    broker_url: str | None = None
    # The shared limiter's Redis: redis://host:6379/1, or a Redis Cluster as
    # redis+cluster://host:7000,host2:7000 (sluice/redis_url.py, docs/deployment.md).
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    default_provider: str = "sandbox"
    log_level: str = "INFO"
    config_file: str | None = Field(default=None, description="the TOML file that was read")

    # Who may call the API (docs/security.md). "auto": open only to requests that reach a
    # server listening on loopback with a loopback Host and no X-Forwarded-* header.
    auth: Literal["auto", "required", "off"] = "auto"
    # Requests per API key, e.g. "20/s", paced by Sluice's own limiter; None: no limit.
    api_rate_limit: str | None = None
    # Opens GET /metrics (and `sluice worker --metrics-port`) to `Authorization: Bearer
    # <token>`, for a Prometheus that has no API key; no other route (docs/operations.md).
    metrics_token: SecretStr | None = None
    # Requests beyond one a key may send at once before api_rate_limit paces it (the
    # limiter's burst: docs/ratelimit.md); 0 = evenly paced. Must be below the rate's count.
    api_rate_burst: int = Field(default=0, ge=0, le=1_000_000)

    # Engine knobs (units in the names). Every number here is bounded: 0 threads or a NaN
    # lease stopped `sluice up` and `sluice submit` with a traceback.
    executor_threads: int = Field(default=16, ge=1, le=1024)
    dispatch_batch: int = Field(default=500, ge=1, le=100_000)
    dispatch_idle_s: float = Field(default=0.05, gt=0, le=60, allow_inf_nan=False)
    claim_lease_s: float = Field(default=120.0, gt=0, le=MAX_DURATION_S, allow_inf_nan=False)
    # Claims share each provider's budget fairly between fairness keys (docs/operations.md,
    # "Fair share"); false: plain arrival order (the benchmark's baseline).
    fair_share: bool = True
    max_body_bytes: int = Field(default=1_048_576, ge=1)

    # Limiter: grants are spaced by window/limit * (1 + rate_margin); 0.5% leaves 5 ms per
    # 1 s window, 2 ms of it catch-up. The sliding window at the provider is kept by window
    # holds (sluice/ratelimit/holds.py), whatever the jitter after the send, so the margin
    # only has to keep grants spaced: small, for >= 99% of the limit. Must be > 0.
    rate_margin: float = Field(default=0.005, gt=0, le=1, allow_inf_nan=False)
    # A grant up to this late for its slot keeps the schedule (capped at half the margin's
    # slack, so the sliding-window guarantee holds): see sluice/ratelimit/gcra.py.
    rate_catch_up_s: float = Field(default=0.002, ge=0, le=1, allow_inf_nan=False)
    # Prefix of the limiter's Redis keys; no '{' or '}' (they would break the hash tags that
    # keep one provider's keys in one Redis Cluster slot: docs/scaling.md).
    limiter_namespace: str = "sluice:rl"

    # Distributed mode: beat sends `pumps` pump tasks every `pump_s` seconds; each keeps
    # one worker process dispatching for up to `pump_s`.
    pumps: int = Field(default=4, ge=1, le=10_000)
    pump_s: float = Field(default=1.0, gt=0, le=3600, allow_inf_nan=False)
    reconcile_every_s: float = Field(default=30.0, gt=0, le=86_400, allow_inf_nan=False)
    # Retention (docs/scaling.md): with a period (e.g. "30d"), every dispatcher prunes
    # final task families older than that in a background thread, at most every
    # `retention_every_s`, `retention_batch` tasks per transaction. None: keep everything
    # (`sluice db prune --older-than 30d` does it by hand).
    retention_period: str | None = None
    retention_batch: int = Field(default=5000, ge=1, le=1_000_000)
    retention_every_s: float = Field(default=600.0, gt=0, le=MAX_DURATION_S, allow_inf_nan=False)

    # Console sessions (/ui): they end this long after sign-in, or after this long unused.
    console_session_s: float = Field(default=8 * 3600, gt=0, le=MAX_DURATION_S, allow_inf_nan=False)
    console_idle_s: float = Field(default=3600, gt=0, le=MAX_DURATION_S, allow_inf_nan=False)
    # The console's history (per-minute usage counters per limit key): kept this long.
    usage_retention_s: float = Field(
        default=7 * 86_400, gt=0, le=MAX_DURATION_S, allow_inf_nan=False
    )
    # /metrics: fairness keys named in sluice_fair_share_* per provider besides those with a
    # weight (the largest shares); the rest sum into fairness_key="_other". 0: weighted only.
    metrics_fair_share_keys: int = Field(default=10, ge=0, le=100)

    # Sections of the TOML file, validated by their own modules.
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    sandbox: dict[str, Any] = Field(default_factory=dict)

    # Validators name what is expected, never the value given (it may be a misplaced
    # secret): describe_settings_error shows their messages.
    @field_validator("redis_url")
    @classmethod
    def _redis_url_is_known(cls, value: str | None) -> str | None:
        if value and not parse_redis_url(value).cluster:
            # redis-py is asked about the ?options (no connection is made): a value it
            # cannot read, or an option it does not take, was a traceback at start-up or
            # a failure at the first grant.
            import redis

            try:
                redis.Redis.from_url(value).connection_pool.make_connection()
            except (ValueError, TypeError, redis.RedisError):
                raise errors.InvalidValue(_options_problem(value, "redis-py")) from None
        return value

    @field_validator("limiter_namespace")
    @classmethod
    def _namespace_keeps_hash_tags(cls, value: str) -> str:
        if not value or "{" in value or "}" in value:
            raise errors.InvalidValue("must be non-empty and without '{' or '}'")
        return value

    @field_validator("retention_period")
    @classmethod
    def _retention_is_a_duration(cls, value: str | None) -> str | None:
        # The value is not quoted (a secret pasted into the wrong variable stays unsaid), but
        # a duration past ten years is told apart: "positive duration" misled about 99999d.
        try:
            positive = value is None or parse_duration(value) > 0
        except errors.InvalidValue as exc:
            if str(exc).startswith("must be at most"):
                raise errors.InvalidValue("must be at most 3650d (ten years)") from None
            positive = False
        if not positive:
            raise errors.InvalidValue("must be a positive duration like '30d' or '12h'")
        return value

    # A scheme must be there (redis_url is read by parse_redis_url above): without one,
    # masking cannot tell the URL's password. Which schemes work is kombu's business, so
    # kombu is asked (no connection is made); an unknown one was a KeyError traceback when
    # the worker started.
    @field_validator("broker_url")
    @classmethod
    def _broker_url_has_a_known_scheme(cls, value: str | None) -> str | None:
        example = "e.g. amqp://user:password@127.0.0.1:5672// or redis://127.0.0.1:6379/0"
        if value is None:
            return value
        if "://" not in value:
            raise errors.InvalidValue(f"must be a URL with a scheme, {example}")
        problem = host_part_problem(value)
        if problem is not None:
            raise errors.InvalidValue(f"{problem}, {example}")
        from kombu.connection import Connection

        try:
            Connection(value).get_transport_cls()  # type: ignore[no-untyped-call]
        except KeyError as exc:  # "No such transport: x.  Did you mean y?"
            raise errors.InvalidValue(f"{exc.args[0]}; {example}") from None
        except (ValueError, TypeError):
            # kombu's message quotes the value it could not read.
            raise errors.InvalidValue(_options_problem(value, "kombu")) from None
        except ImportError as exc:
            scheme = value.split("://", 1)[0]
            raise errors.InvalidValue(
                f"the {scheme!r} transport needs a package that is not installed ({exc.name})"
            ) from None
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level_is_known(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise errors.InvalidValue(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @model_validator(mode="after")
    def _remember_passwords(self) -> Settings:
        # Every process that reads settings learns their passwords before anything can log
        # them: the log formatter masks what sluice.masking.KNOWN holds.
        for url in (self.database_url, self.broker_url, self.redis_url):
            masking.remember_url(url)
        if self.metrics_token is not None:
            masking.remember(self.metrics_token.get_secret_value())
        return self

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name in {"providers", "sandbox"} and isinstance(value, dict):
                yield name, sorted(value)
            elif isinstance(value, str):
                yield name, masking.mask_urls(value)
            else:
                yield name, value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))


def _options_problem(url: str, client: str) -> str:
    """Why ``client`` refused ``url``, naming its ?options but none of their values."""
    names = ", ".join(dict.fromkeys(name for name, _ in parse_qsl(urlsplit(url).query)))
    if not names:
        return f"{client} cannot use this URL"
    return (
        f"{client} cannot use its ?options ({names}): one is unknown to it or has a value "
        "it cannot read"
    )


class _TomlSource(PydanticBaseSettingsSource):
    """Reads ``[sluice]``, ``[providers.*]`` and ``[sandbox]`` from the config file."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self._data = _read_toml()

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def config_path() -> Path | None:
    """The TOML file in force, or None."""
    explicit = os.environ.get("SLUICE_CONFIG")
    if explicit:
        path = Path(explicit)
        if path.is_dir():
            raise errors.ConfigError(f"SLUICE_CONFIG={explicit}: is a folder, not a file")
        if not path.is_file():
            # A FIFO or a device was "no such file" (reading one may wait forever).
            what = "not a regular file" if path.exists() else "no such file"
            raise errors.ConfigError(f"SLUICE_CONFIG={explicit}: {what}")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


TOP_LEVEL_TABLES = {"sluice": "[sluice]", "providers": "[providers.NAME]", "sandbox": "[sandbox]"}


def _toml_kind(value: Any) -> str:
    """What a TOML value is, in TOML's words: ``an integer``, ``an array``..."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "a date or time"


def _read_toml() -> dict[str, Any]:
    path = config_path()
    if path is None:
        return {}
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise errors.ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        # Was "invalid settings: 'utf-8' codec can't decode byte 0xff...", naming no file.
        raise errors.ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise errors.ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    unknown = set(raw) - {"sluice", "providers", "sandbox"}
    if unknown:
        raise errors.ConfigError(
            f"{path}: unknown table(s) {', '.join(sorted(unknown))}; "
            "known: sluice, providers, sandbox"
        )
    for table, shape in TOP_LEVEL_TABLES.items():
        if table in raw and not isinstance(raw[table], dict):
            raise errors.ConfigError(
                f"{path}: {table} must be a table ({shape}), got {_toml_kind(raw[table])}"
            )
    data: dict[str, Any] = dict(raw.get("sluice", {}))
    known = set(Settings.model_fields) - {"providers", "sandbox", "config_file"}
    bad = set(data) - known
    if bad:
        raise errors.ConfigError(
            f"{path}: [sluice] has unknown key(s) {', '.join(sorted(bad))}; "
            f"known: {', '.join(sorted(known))}"
        )
    data["providers"] = raw.get("providers", {})
    data["sandbox"] = raw.get("sandbox", {})
    data["config_file"] = str(path)
    return data


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment and the TOML file; ``overrides`` win."""
    try:
        return Settings(**overrides)
    except errors.ConfigError:
        raise
    except ValidationError as exc:
        raise errors.ConfigError(describe_settings_error(exc)) from None
    except ValueError as exc:
        raise errors.ConfigError(f"invalid settings: {masking.mask(str(exc))}") from None


def describe_settings_error(exc: ValidationError) -> str:
    """One line per problem naming the setting, never the value given (it may be a secret).

    pydantic's own text quotes every input (``input_value='postgresql://u:pw@...'``).
    """

    def where(loc: list[str]) -> str:
        name = loc[0] if loc else "settings"
        if name not in Settings.model_fields:
            return ".".join(loc)
        if name in TOP_LEVEL_TABLES:
            # Tables of their own in the file: `[providers] sandbox = 3` was named
            # "[sluice] providers (sandbox)", a table the file did not have.
            named = 2 if name == "providers" else 1  # [providers.NAME], [sandbox]
            table = ".".join(loc[:named])
            inner = f" {'.'.join(loc[named:])}" if len(loc) > named else ""
            return f"SLUICE_{name.upper()} / [{table}]{inner}"
        inner = f" ({'.'.join(loc[1:])})" if len(loc) > 1 else ""
        return f"{setting_name(name)}{inner}"

    return describe_validation_error(exc, where, "invalid setting ")


def setting_name(name: str) -> str:
    """A ``[sluice]`` setting as errors name it: ``SLUICE_PORT / [sluice] port``, and ``in
    FILE`` after it when its value was read from the TOML file (no ``SLUICE_PORT`` is set).

    The file was left unsaid: with both a file and variables in use, an operator could not
    tell which one held the bad value.
    """
    variable = f"SLUICE_{name.upper()}"
    named = f"{variable} / [sluice] {name}"
    if any(key.upper() == variable for key in os.environ):
        return named
    try:
        path = config_path()
        if path is None:
            return named
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("sluice")
    except (errors.ConfigError, OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return named
    return f"{named} in {path}" if isinstance(table, dict) and name in table else named


def describe_validation_error(
    exc: ValidationError, where: Callable[[list[str]], str], prefix: str = ""
) -> str:
    """pydantic's errors as ``<prefix><where(loc)>: <reason>`` lines, without input values.

    pydantic's ``input_value=...`` is left out, and a reason that quotes the input anyway
    (a validator's own message) has it masked.
    """
    lines = []
    for error in exc.errors(include_url=False, include_context=False):
        loc = [str(part) for part in error["loc"]]
        given = error.get("input")
        reason = masking.mask(str(error["msg"]))
        if isinstance(given, str) and len(given) >= masking.MIN_SECRET_LEN:
            reason = masking.Redactor([given]).redact(reason)
        lines.append(f"{prefix}{where(loc)}: {reason}")
    return "\n".join(lines) or f"{prefix}invalid"

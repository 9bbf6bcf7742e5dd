"""Building providers from settings: presets, validation, HTTP clients.

``load_providers`` runs at start: every problem in every ``[providers.*]`` table is
reported at once, one line each, as ``<file>: providers.NAME.<key>: <reason>``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from typing import Any

import httpx

from sluice import errors, metrics
from sluice.clock import Clock
from sluice.providers import signals
from sluice.providers.base import Provider
from sluice.providers.client import ProviderClient
from sluice.providers.config import parse_provider
from sluice.providers.http import HttpProvider
from sluice.providers.metered import MeteredTransport
from sluice.providers.transport import gated_transport
from sluice.ratelimit import sendgate
from sluice.ratelimit.base import Limiter
from sluice.settings import Settings

PRESET_KEY = "preset"
_USER_AGENT = "sluice/0.1"
_DEFAULT_POOL = 32


def load_providers(
    settings: Settings,
    *,
    environ: Mapping[str, str] | None = None,
    clock: Clock | None = None,
    limiter: Limiter | None = None,
) -> dict[str, Provider]:
    """Every configured provider, by name.

    ``limiter`` is where token requests (``[auth] rate_limit``) take their grants.

    Raises:
        errors.ConfigError: naming the file, the key and the reason for each problem
            (never a secret's value); also when ``default_provider`` is not configured.
    """
    source = settings.config_file or "settings"
    env = os.environ if environ is None else environ
    providers: dict[str, Provider] = {}
    problems: list[str] = []
    for name, table in settings.providers.items():
        try:
            merged = resolve_preset(name, table, source)
            config = parse_provider(name, merged, source, env)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        try:
            providers[name] = HttpProvider(name, config, clock=clock, limiter=limiter)
        except errors.InvalidValue as exc:
            # The config checks should have found it (and named the key); if they missed
            # something, it is still one line naming the file and provider, not a traceback.
            problems.append(f"{source}: providers.{name}: {exc}")
    if problems:
        raise errors.ConfigError("\n".join(problems))
    if providers and settings.default_provider not in providers:
        raise errors.ConfigError(
            f"{source}: sluice.default_provider: "
            f"{unknown_provider_message(settings.default_provider, providers)}"
        )
    return providers


def unknown_provider_message(name: str, providers: Mapping[str, object]) -> str:
    """``unknown provider 'acme2'; known: acme, sandbox``."""
    known = ", ".join(sorted(providers)) or "(none configured)"
    return f"unknown provider {name!r}; known: {known}"


def declare_metrics(provider: Provider) -> None:
    """Export ``provider``'s counters at 0 in this process (:func:`sluice.metrics.declare`),
    with every rate-limit signal its configuration can read. Called by the processes that
    send, not by every command that loads providers (each would leave a file behind in a
    multiprocess directory)."""
    kinds = (
        signals.kinds(provider.config.rate_limit_signal)
        if isinstance(provider, HttpProvider)
        else []
    )
    metrics.declare(provider.name, kinds)


def build_http_client(
    provider: Provider, *, transport: httpx.BaseTransport | None = None
) -> ProviderClient:
    """A keep-alive client for ``provider``: base URL, timeout, pool, send gate.

    Credentials are not set on the client: the provider adds the headers of the account
    each request goes out on (its own, or a tenant's). Each request goes under the send
    permit of the thread that sends it (:mod:`sluice.ratelimit.sendgate`): checked by a
    request hook, then admitted by the transport immediately before the request's first
    byte is written (:mod:`sluice.providers.transport`), so a grant that waited too long is
    never used. ``transport`` replaces the network (``httpx.MockTransport`` in tests: the
    hook's check still applies).
    """
    timeout = httpx.Timeout(provider.timeout_s)
    hooks = {"request": [check_request]}
    capped = provider.config.max_in_flight if isinstance(provider, HttpProvider) else None
    size = capped or _DEFAULT_POOL
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    # An in-flight cap is also the pool's size (at most that many connections open: a
    # provider may count connections); without one idle connections wait on a stack.
    transport = MeteredTransport(
        provider.name, transport or gated_transport(limits, stacked=capped is None)
    )
    if not isinstance(provider, HttpProvider):
        return ProviderClient(timeout=timeout, transport=transport, event_hooks=hooks)
    headers = {"Accept": "application/json", "User-Agent": _USER_AGENT}
    return ProviderClient(
        base_url=provider.base_url,
        headers=headers,
        timeout=timeout,
        transport=transport,
        follow_redirects=False,
        event_hooks=hooks,
    )


def check_request(request: httpx.Request) -> None:
    """httpx request hook: refuse ``request`` early if its grant is already too old.

    Raises:
        errors.GrantExpired: the grant is too old; nothing is sent.
    """
    sendgate.check_current()


# --- presets -------------------------------------------------------------------------------


def preset_names() -> list[str]:
    """The presets shipped in ``sluice/providers/presets/``."""
    folder = resources.files("sluice.providers").joinpath("presets")
    return sorted(
        entry.name.removesuffix(".toml")
        for entry in folder.iterdir()
        if entry.name.endswith(".toml")
    )


def load_preset(name: str) -> dict[str, Any]:
    """The table of preset ``name``.

    Raises:
        errors.InvalidValue: no such preset (the message lists the known ones).
    """
    if name not in preset_names():
        raise errors.InvalidValue(f"unknown preset {name!r}; known: {', '.join(preset_names())}")
    text = (
        resources.files("sluice.providers")
        .joinpath("presets", f"{name}.toml")
        .read_text(encoding="utf-8")
    )
    return tomllib.loads(text)


def resolve_preset(name: str, table: object, source: str) -> dict[str, Any]:
    """``table`` deep-merged over its ``preset`` (user keys win), without the preset key.

    Raises:
        errors.InvalidValue: the table is not a table, or names an unknown preset.
    """
    prefix = f"{source}: providers.{name}"
    if not isinstance(table, Mapping):
        raise errors.InvalidValue(f"{prefix}: must be a table, got {type(table).__name__}")
    user = dict(table)
    preset = user.pop(PRESET_KEY, None)
    if preset is None:
        return user
    if not isinstance(preset, str):
        raise errors.InvalidValue(f"{prefix}.{PRESET_KEY}: must be a preset name, got {preset!r}")
    try:
        base = load_preset(preset)
    except ValueError as exc:
        raise errors.InvalidValue(f"{prefix}.{PRESET_KEY}: {exc}") from None
    return deep_merge(base, user)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; any other value in ``override`` replaces the base's."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged

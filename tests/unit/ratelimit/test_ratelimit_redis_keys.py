"""How the Redis limiter names its keys and reads its URL: one hash tag per provider (so a
grant's keys share a Redis Cluster slot), and cluster URLs checked with one-line errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from sluice import errors
from sluice.ratelimit import gcra, holds
from sluice.ratelimit.redis import RedisLimiter, slot_tag
from sluice.redis_url import parse_redis_url
from sluice.settings import load_settings

PROVIDER = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,15}", fullmatch=True)
PART = st.text(st.characters(codec="utf-8", exclude_characters=":\x00"), max_size=12)


@given(provider=PROVIDER, parts=st.lists(PART, max_size=3), held=st.booleans())
def test_every_key_of_a_provider_hashes_to_the_providers_slot(
    provider: str, parts: list[str], held: bool
) -> None:
    """Any limit key a provider makes (scopes, per-account values with any characters,
    window holds), each of its pause scopes, and the born marker share one cluster slot."""
    key = ":".join([provider, *parts])
    if held:
        key = holds.hold_key(key)
    limiter = RedisLimiter.from_url("redis://127.0.0.1:1/0", namespace="sluice:rl")
    names = [limiter._key("tat", key), limiter._key("inflight", key), limiter._born(provider)]
    names += [limiter._key("pause", scope) for scope in gcra.pause_scopes(key)]
    assert slot_tag(key) == provider
    assert {key_slot(name.encode()) for name in names} == {key_slot(provider.encode())}


def test_a_root_that_cannot_be_a_tag_gets_a_fixed_one() -> None:
    """An empty root, or one with a brace, still gives every key of it one slot."""
    assert slot_tag(":x") == slot_tag("") == slot_tag("a{b:c") == "-"
    assert slot_tag("acme#window") == "acme"


def test_a_namespace_with_braces_is_refused() -> None:
    """A brace in the namespace would move the hash tag: refused by the limiter and settings."""
    with pytest.raises(errors.InvalidValue, match="without"):
        RedisLimiter.from_url("redis://127.0.0.1:1/0", namespace="sluice:{rl}")
    with pytest.raises(errors.ConfigError, match="SLUICE_LIMITER_NAMESPACE"):
        load_settings(limiter_namespace="a{b}")


def test_cluster_urls_are_read() -> None:
    """Several seed nodes, a user and a percent-encoded password, TLS, and database 0."""
    target = parse_redis_url("rediss+cluster://app:p%40ss@10.0.0.1:7000, 10.0.0.2:7001/0")
    assert target.cluster
    assert target.ssl
    assert target.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert (target.username, target.password) == ("app", "p@ss")
    assert not parse_redis_url("redis://127.0.0.1:6379/1").cluster
    assert parse_redis_url("redis+cluster://[::1]:7000").nodes == (("::1", 7000),)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://x:1", "got scheme 'http'"),
        ("localhost:6379", "got scheme 'none'"),
        ("redis+cluster://", "at least one host:port"),
        ("redis+cluster://u:hunter22@h1", "port required"),
        ("redis+cluster://h1:abc", "port required"),
        ("redis+cluster://h1:7000/1", "only database 0"),
        ("redis+cluster://h1:7000?ssl=true", "no ?options"),
    ],
)
def test_a_bad_redis_url_is_one_line_without_the_url(url: str, says: str) -> None:
    """Each mistake is one line naming the setting and the fix, never echoing a password."""
    with pytest.raises(errors.ConfigError) as refused:
        load_settings(redis_url=url)
    message = str(refused.value)
    assert says in message
    assert message.startswith("invalid setting SLUICE_REDIS_URL")
    assert "\n" not in message
    assert "hunter22" not in message


def test_a_cluster_url_builds_a_lazy_cluster_limiter() -> None:
    """A cluster URL gives a cluster limiter that connects at its first call, so a cluster
    down at start-up is a LimiterError there, not a crash of the process."""
    limiter = RedisLimiter.from_url("redis+cluster://127.0.0.1:1", namespace="sluice:unit")
    assert limiter.is_cluster
    with pytest.raises(errors.LimiterError, match="sluice:unit"):
        limiter.paused_until("dsp")
    limiter.close()

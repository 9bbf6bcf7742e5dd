"""API keys: make one (shown once), check one presented with a request, revoke one.

A key reads ``sk_<id>_<secret>``: ``id`` (12 hex digits) is public and finds the stored
row; ``secret`` is 256 random bits, of which only the SHA-256 digest is stored. A fast
hash is enough here: slow hashes (bcrypt, argon2) protect *low-entropy* passwords from
guessing, and nobody can guess 256 random bits, fast hash or not, while a slow hash would
cost every API request tens of milliseconds. Digests are compared with
:func:`hmac.compare_digest`, in constant time, and an unknown id is compared against a
dummy digest, so timing tells a caller nothing about which part was wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sluice import errors
from sluice.domain import LOCAL_ACTOR, TENANT_PATTERN, Actor, ApiKey, Role
from sluice.store.keys import KeyStore
from sluice.units import parse_duration

PREFIX = "sk"
_ID_BYTES = 6
_SECRET_BYTES = 32
_KEY_RE = re.compile(r"^sk_(?P<id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})$")
_DUMMY_DIGEST = hashlib.sha256(b"no such key").hexdigest()
_TENANT_RE = re.compile(TENANT_PATTERN)
MAX_NAME = 128


def digest(secret: str) -> str:
    """The stored form of a key's secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    """A key just made: what is stored, and the full key text, shown this one time."""

    key: ApiKey
    token: str


def create_key(
    store: KeyStore,
    *,
    name: str,
    role: str,
    tenant: str | None = None,
    expires: str | None = None,
    actor: Actor = LOCAL_ACTOR,
) -> NewKey:
    """Make and store a key; the returned ``token`` is the only copy of its secret.

    Raises:
        InvalidKeyRequest: naming the field and the fix (unknown role, a tenant missing
            for viewer/submitter or given for operator/admin, a bad expiry).
    """
    checked_role = _role(role)
    name = name.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise errors.InvalidKeyRequest(
            f"name must be 1-{MAX_NAME} printable characters, got {name!r}"
        )
    if checked_role.spans_tenants:
        if tenant is not None:
            raise errors.InvalidKeyRequest(
                f"an {checked_role.value} key spans every tenant; drop the tenant"
            )
    elif tenant is None:
        raise errors.InvalidKeyRequest(
            f"a {checked_role.value} key belongs to one tenant; name it (e.g. --tenant acme)"
        )
    elif not _TENANT_RE.match(tenant):
        raise errors.InvalidKeyRequest(
            f"tenant {tenant!r} is not a tenant name (letters, digits, '.', '_', '-'; "
            "at most 64 characters)"
        )
    now = store.clock.now()
    expires_at = None
    if expires is not None:
        try:
            seconds = parse_duration(expires)
        except ValueError as exc:
            raise errors.InvalidKeyRequest(f"expires {exc}") from exc
        if seconds <= 0:
            raise errors.InvalidKeyRequest(f"expires must be a positive duration, got {expires!r}")
        expires_at = now + timedelta(seconds=seconds)
    key_id = secrets.token_hex(_ID_BYTES)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    key = ApiKey(key_id, name, checked_role, tenant, now, expires_at, None, None)
    store.add(key, digest(secret), actor=actor)
    return NewKey(key, f"{PREFIX}_{key_id}_{secret}")


_ID_IN_KEY_RE = re.compile(r"^sk_(?P<id>[0-9a-f]{12})_")


def id_of(given: str) -> str:
    """The key id in ``given``: a key's whole text (``sk_<id>_<secret>``, what someone who
    found a leak holds) gives its public id; anything else is taken as an id already."""
    match = _ID_IN_KEY_RE.match(given.strip())
    return match["id"] if match is not None else given


def _role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise errors.InvalidKeyRequest(f"unknown role {role!r}; known: {known}") from None


def authenticate(store: KeyStore, token: str) -> ApiKey | None:
    """The usable key ``token`` is, or None: malformed, unknown, wrong secret, revoked or
    expired all look the same to the caller."""
    match = _KEY_RE.match(token)
    if match is None:
        return None
    found = store.find(match["id"])
    stored_digest = found[1] if found is not None else _DUMMY_DIGEST
    if not hmac.compare_digest(digest(match["secret"]), stored_digest) or found is None:
        return None
    key = found[0]
    if not key.usable_at(store.clock.now()):
        return None
    return key

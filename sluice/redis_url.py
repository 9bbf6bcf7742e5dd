"""What ``SLUICE_REDIS_URL`` points at: one Redis server, or a Redis Cluster.

One server: ``redis://host:6379/1``, ``rediss://…`` (TLS) or ``unix:///path.sock``, read by
redis-py as it is. A cluster: ``redis+cluster://[user:password@]host:port[,host:port…]``
(``rediss+cluster://`` for TLS): any reachable node serves to find the others, so list a few
in case one is down. A cluster has only database 0, so the path is empty, ``/`` or ``/0``.

Nothing here connects or imports redis-py; :func:`parse_redis_url` only reads the URL, and
its errors never quote it (it may hold a password).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from sluice import errors

PLAIN_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
CLUSTER_EXAMPLE = "redis+cluster://10.0.0.1:7000,10.0.0.2:7000"


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL: a plain server (``url`` as given) or a cluster's seed nodes."""

    url: str
    cluster: bool = False
    nodes: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    ssl: bool = False


def parse_redis_url(url: str) -> RedisTarget:
    """Read ``url``; raises :class:`~sluice.errors.InvalidValue` with one line that names
    the problem, never the URL itself."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in PLAIN_SCHEMES + CLUSTER_SCHEMES:
        shown = scheme if sep and scheme.replace("+", "").isalnum() else "none"
        raise errors.InvalidValue(
            f"a Redis URL starts with {', '.join(s + '://' for s in PLAIN_SCHEMES)} or "
            f"{' / '.join(s + '://' for s in CLUSTER_SCHEMES)} (a Redis Cluster); "
            f"got scheme {shown!r}"
        )
    if scheme in PLAIN_SCHEMES:
        problem = host_part_problem(url)
        if problem is not None:
            raise errors.InvalidValue(problem)
        database = urlsplit(url).path.strip("/")
        if scheme != "unix" and database and not (database.isascii() and database.isdigit()):
            # redis-py reads any other path as database 0, silently.
            raise errors.InvalidValue(
                f"the path of a {scheme}:// URL is the database number, e.g. "
                "redis://127.0.0.1:6379/1"
            )
        return RedisTarget(url)
    userinfo, _, hostlist = rest.rpartition("@")
    hostlist, _, path = hostlist.partition("/")
    hostlist, query_sep, _ = hostlist.partition("?")
    if query_sep or "?" in path:
        raise errors.InvalidValue(f"a {scheme} URL takes no ?options, e.g. {CLUSTER_EXAMPLE}")
    if path not in ("", "0"):
        raise errors.InvalidValue(
            f"a Redis Cluster has only database 0: end the {scheme} URL with the host list "
            f"or /0, e.g. {CLUSTER_EXAMPLE}"
        )
    nodes = tuple(_host_port(part, scheme) for part in hostlist.split(",") if part.strip())
    if not nodes:
        raise errors.InvalidValue(
            f"a {scheme} URL needs at least one host:port, e.g. {CLUSTER_EXAMPLE}"
        )
    username: str | None = None
    password: str | None = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    return RedisTarget(
        url,
        cluster=True,
        nodes=nodes,
        username=username,
        password=password,
        ssl=scheme == "rediss+cluster",
    )


def host_part_problem(url: str) -> str | None:
    """Why the ``user:password@host:port`` part of ``url`` cannot be read, in words that
    quote nothing of it, or None.

    The URL parser's own message quotes what it took for the port: with the ``@`` mistyped
    (``redis://:secret!host:6379``) that is the password.
    """
    try:
        urlsplit(url).port  # noqa: B018 (reading it checks it)
    except ValueError as exc:
        if "port" in str(exc).lower():
            return "its port is not a number from 0 to 65535 (user:password@host:port)"
        return "its host part does not parse (user:password@host:port)"
    return None


def _host_port(part: str, scheme: str) -> tuple[str, int]:
    try:
        parsed = urlsplit(f"//{part.strip()}")
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise errors.InvalidValue(
            f"each node of a {scheme} URL is host:port (port required), e.g. {CLUSTER_EXAMPLE}"
        )
    return host, port

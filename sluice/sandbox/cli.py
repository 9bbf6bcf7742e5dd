"""``sluice sandbox``: serve the sandbox DSP in the foreground.

The lead registers :func:`sandbox_command` on the main Typer app. Flags win over the
``[sandbox]`` section of the TOML file, which wins over the profile's defaults.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from sluice.sandbox.app import create_sandbox_app
from sluice.sandbox.config import SandboxConfig
from sluice.sandbox.profiles import PROFILES
from sluice.settings import describe_validation_error, load_settings

DEFAULT_PORT = 9000
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
"""uvicorn's levels (another was a KeyError traceback from its logging set-up)."""


def sandbox_command(
    host: Annotated[
        str | None,
        typer.Option(
            help="interface to listen on [default: 127.0.0.1]", envvar="SLUICE_SANDBOX_HOST"
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            help=f"port to listen on [default: {DEFAULT_PORT}]", envvar="SLUICE_SANDBOX_PORT"
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            help=f"DSP to imitate: {', '.join(PROFILES)} [default: standard]",
            envvar="SLUICE_SANDBOX_PROFILE",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="seed of delays and faults [default: 0]", envvar="SLUICE_SANDBOX_SEED"),
    ] = None,
    auth: Annotated[
        bool | None,
        typer.Option(
            "--auth/--no-auth", help="require bearer tokens", envvar="SLUICE_SANDBOX_AUTH"
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML file whose \\[sandbox] table to read (else $SLUICE_CONFIG or ./sluice.toml)",
            envvar="SLUICE_CONFIG",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option(help="uvicorn log level", envvar="SLUICE_SANDBOX_LOG_LEVEL")
    ] = "warning",
) -> None:
    """Serve the sandbox DSP, a simulated third-party API, in the foreground."""
    import uvicorn

    if log_level.lower() not in LOG_LEVELS:
        raise typer.BadParameter(
            f"must be one of {', '.join(LOG_LEVELS)}", param_hint="'--log-level'"
        )
    try:
        sandbox_config = load_config(
            config, host=host, port=port, profile=profile, seed=seed, auth=auth
        )
    except ValidationError as exc:  # one line per problem, without pydantic's URLs
        problems = describe_validation_error(exc, lambda loc: ".".join(["sandbox", *loc]))
        raise typer.BadParameter(problems) from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    # Bound before anything is said: a port in use was announced as served, then reported
    # by uvicorn in a second line, with exit code 3.
    sock = listen(sandbox_config.host, sandbox_config.port)
    typer.echo(
        f"sandbox DSP ({sandbox_config.profile} profile) on "
        f"http://{_where(sandbox_config.host, sock.getsockname()[1])}",
        err=True,
    )
    with sock:
        uvicorn.run(
            create_sandbox_app(sandbox_config),
            host=sandbox_config.host,
            port=sandbox_config.port,
            fd=sock.fileno(),
            http="httptools",
            access_log=False,
            log_level=log_level.lower(),
        )


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, or exit code 2 after one line naming the address
    and the system's reason, as ``sluice up`` says it (the sandbox imports nothing of
    Sluice but its settings, so not its errors)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        typer.echo(f"error: cannot listen on {_where(host, port)}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    return sock


def _where(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def load_config(config_file: Path | None = None, **flags: object) -> SandboxConfig:
    """The sandbox configuration from ``[sandbox]`` (of ``config_file`` if given) and flags.

    Raises:
        ValueError: the section or a flag is invalid.
    """
    with _config_file(config_file):
        section = load_settings().sandbox
    if flags.get("port") is None and "port" not in section:
        flags["port"] = DEFAULT_PORT
    return SandboxConfig.from_settings(section, **flags)


@contextmanager
def _config_file(path: Path | None) -> Iterator[None]:
    """Point ``load_settings`` at ``path`` for the duration, restoring the environment."""
    if path is None:
        yield
        return
    previous = os.environ.get("SLUICE_CONFIG")
    os.environ["SLUICE_CONFIG"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("SLUICE_CONFIG", None)
        else:
            os.environ["SLUICE_CONFIG"] = previous

"""The ``sluice`` command line: thin commands over the service functions."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from sluice import errors, logs, wiring
from sluice.settings import load_settings

app = typer.Typer(
    help="Sluice: rate-limited submission engine for third-party APIs.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console(stderr=True)

Host = Annotated[str | None, typer.Option(help="interface to listen on", envvar="SLUICE_HOST")]
Port = Annotated[int | None, typer.Option(help="port to listen on", envvar="SLUICE_PORT")]


@app.command()
def api(host: Host = None, port: Port = None) -> None:
    """Serve the REST API only (no engine)."""
    import uvicorn

    settings = load_settings()
    logs.configure(settings.log_level)
    runtime = wiring.build_runtime(settings)
    uvicorn.run(
        wiring.build_api(runtime),
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level.lower(),
    )


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
) -> None:
    """Apply the schema migrations to SLUICE_DATABASE_URL."""
    from sluice.store import db

    settings = load_settings()
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine, revision)
    console.print(f"database at {engine.url.render_as_string(hide_password=True)} is at {revision}")


def main() -> None:
    """Entry point of the ``sluice`` console script."""
    try:
        app()
    except errors.ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise SystemExit(2) from exc

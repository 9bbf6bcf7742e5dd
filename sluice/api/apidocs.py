"""The API's own documentation pages, Swagger UI (``/docs``) and ReDoc (``/redoc``), served
with every script and stylesheet from this server.

FastAPI's built-in pages load Swagger UI and ReDoc from a CDN (cdn.jsdelivr.net): on a host
without internet they stay blank, and every visit tells a third party that the page was
opened. The same pages here take their files from the ``fastapi-offline`` package, which
exists to ship them, mounted under :data:`STATIC_URL`. Like FastAPI's, they are plain
Starlette routes, outside the API's guarded routes: they hold no data (the schema they show
is ``/openapi.json``, public too).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

STATIC_URL = "/static-offline-docs"
POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)
"""The pages' Content-Security-Policy: nothing from elsewhere, whatever the bundled scripts
ask for (ReDoc's sidebar shows Redocly's logo from cdn.redoc.ly; it is not loaded)."""
DOCS_URL = "/docs"
REDOC_URL = "/redoc"


def add_docs(app: FastAPI) -> None:
    """Serve Swagger UI and ReDoc on ``app`` (built with ``docs_url=None, redoc_url=None``)."""
    static = files("fastapi_offline").joinpath("static")
    app.mount(STATIC_URL, StaticFiles(directory=str(static)), name="api-docs-static")
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or f"{DOCS_URL}/oauth2-redirect"

    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _own(
            get_swagger_ui_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} - Swagger UI",
                oauth2_redirect_url=f"{root}{redirect_url}",
                swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
                swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
                # The validator badge asks an online service (validator.swagger.io).
                swagger_ui_parameters={"validatorUrl": None},
            )
        )

    async def swagger_redirect(_request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _own(
            get_redoc_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png",
                with_google_fonts=False,
            )
        )

    app.add_route(DOCS_URL, swagger, include_in_schema=False)
    app.add_route(redirect_url, swagger_redirect, include_in_schema=False)
    app.add_route(REDOC_URL, redoc, include_in_schema=False)


def _own(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = POLICY
    return page

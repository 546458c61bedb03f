"""/docs (Swagger UI) and /redoc from files on this machine, never from a CDN.

FastAPI's own pages load their JavaScript, CSS and favicon from other sites, so they are blank
offline. The assets come from the `fastapi-offline` package (MIT), served under /docs-assets;
the pages are FastAPI's, pointed at them. Like the pages, the assets need no token.
ReDoc's bundle would still fetch Redocly's logo from their CDN: the copy served here shows none.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS = files("fastapi_offline") / "static"
ASSETS_URL = "/docs-assets"
# Swagger UI would otherwise ask an online validator about the spec (a badge image).
SWAGGER_PARAMETERS = {"validatorUrl": None}
REDOC_LOGO = b'src:"https://cdn.redoc.ly/redoc/logo-mini.svg"'
NO_LOGO = b'src:""'  # the image's onError hides it


@cache
def redoc_js() -> bytes:
    bundle = (ASSETS / "redoc.standalone.js").read_bytes()
    if REDOC_LOGO not in bundle:
        raise RuntimeError("fastapi-offline's ReDoc no longer has the logo this module removes: check its pin")
    return bundle.replace(REDOC_LOGO, NO_LOGO)


def install_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Call on an app made with docs_url=None and redoc_url=None."""
    @app.get(f"{ASSETS_URL}/redoc.standalone.js", include_in_schema=False)
    async def redoc_bundle() -> Response:
        return Response(redoc_js(), media_type="text/javascript")

    app.mount(ASSETS_URL, StaticFiles(directory=str(ASSETS)), name="docs-assets")
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_redirect}",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={**SWAGGER_PARAMETERS, **(app.swagger_ui_parameters or {})})

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png", with_google_fonts=False)

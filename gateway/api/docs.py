"""Swagger UI at /docs, served by the gateway itself: its assets come from the swagger-ui-bundle-v2
package (Swagger UI 5, which renders OpenAPI 3.1), so the page works on a machine without internet
access. Nothing is fetched from a CDN at run time."""

import swagger_ui_bundle
from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.router import Router
from litestar.static_files import create_static_files_router

ASSETS = "/docs/assets"


def assets_router() -> Router:
    """GET /docs/assets/<file>: Swagger UI's scripts, styles and icons (cached for a day)."""
    return create_static_files_router(
        path=ASSETS,
        directories=[swagger_ui_bundle.swagger_ui_path],
        name="docs-assets",
        cache_control=CacheControlHeader(max_age=86_400),
        include_in_schema=False,
    )


def swagger_ui() -> SwaggerRenderPlugin:
    """The Swagger UI page at /docs, pointing at the gateway's own copy of the assets."""
    return SwaggerRenderPlugin(
        path="/",
        js_url=f"{ASSETS}/swagger-ui-bundle.js",
        css_url=f"{ASSETS}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS}/favicon-32x32.png'>",
    )

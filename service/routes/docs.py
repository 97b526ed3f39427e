"""`/docs`: Swagger UI served by the app from an installed package (swagger-ui-bundle-v2), so
it works with no internet, under the same Content-Security-Policy as the dashboard (no inline
script: the page loads its initialiser as a file too).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response
from swagger_ui_bundle import swagger_ui_path

from spartan_service.service.errors import not_found
from spartan_service.service.routes.dashboard import HEADERS, STATIC_DIR

ASSETS = {
    "swagger-ui-bundle.js": (Path(swagger_ui_path) / "swagger-ui-bundle.js",
                             "text/javascript; charset=utf-8"),
    "swagger-ui.css": (Path(swagger_ui_path) / "swagger-ui.css", "text/css; charset=utf-8"),
    "docs.js": (STATIC_DIR / "docs.js", "text/javascript; charset=utf-8"),
}
PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Spartan Service - API documentation</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <link rel="icon" href="/static/favicon.svg">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script src="/docs/docs.js"></script>
</body>
</html>
"""

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def docs_page() -> Response:
    return HTMLResponse(PAGE, headers=HEADERS)


@router.get("/docs/{name}")
def docs_asset(name: str) -> Response:
    if name not in ASSETS:
        raise not_found("file")
    path, media_type = ASSETS[name]
    return FileResponse(path, media_type=media_type, headers=HEADERS)

"""The dashboard: its HTML pages (jobs, a job, a sweep, the compare view, a cost model) and their
scripts and stylesheet, all served by the app.

The pages are static; their scripts read the REST API under /v1 (with the bearer token the user
enters, kept in sessionStorage), so the pages themselves need no authentication and every access
rule is the API's. Nothing is loaded from elsewhere, and the Content-Security-Policy says so.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response

from spartan_service.service.errors import not_found

PACKAGE_DIR = Path(__file__).resolve().parent.parent
STATIC_DIR = PACKAGE_DIR / "static"
PAGES_DIR = PACKAGE_DIR / "templates"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate each time: a new release's scripts are picked up without a hard reload.
    "Cache-Control": "no-cache",
}
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}
_STATIC_NAME = re.compile(r"^[A-Za-z0-9_-]+\.(js|css|svg)$")

router = APIRouter(include_in_schema=False)


_INCLUDE = re.compile(r"^[ \t]*<!-- include ([\w.]+) -->\n", re.MULTILINE)


@functools.lru_cache
def _render(name: str) -> str:
    """A page with its `<!-- include NAME -->` lines replaced by those files (the sign-in form
    every page shares)."""
    text = (PAGES_DIR / name).read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: (PAGES_DIR / m.group(1)).read_text(encoding="utf-8"), text)


def page(name: str) -> HTMLResponse:
    return HTMLResponse(_render(name), headers=HEADERS)


@router.get("/")
def jobs_page() -> Response:
    return page("index.html")


@router.get("/jobs/{job_id}")
def job_page(job_id: str) -> Response:
    # Whether the job exists (for this tenant) is the API's answer; the page shows it.
    return page("job.html")


@router.get("/sweeps/{sweep_id}")
def sweep_page(sweep_id: str) -> Response:
    return page("sweep.html")


@router.get("/compare")
def compare_page() -> Response:
    # The jobs to compare are in the query (?ids=a,b); the page asks the API for each.
    return page("compare.html")


@router.get("/profiles")
def profiles_page() -> Response:
    return page("profiles.html")


@router.get("/cost-models/{model_id}")
def cost_model_page(model_id: str) -> Response:
    return page("cost_model.html")


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    path = STATIC_DIR / name
    if not _STATIC_NAME.match(name) or not path.is_file():
        raise not_found("file")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)

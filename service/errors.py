"""One error shape, `{"detail": ...}`, for every status the API returns."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from spartan_service.jobs.fields import sanitize
from spartan_service.service.schemas import Error

log = logging.getLogger(__name__)
# Pagination offsets past any real table, kept within a 64-bit database integer.
MAX_OFFSET = 1_000_000_000


def not_found(what: str) -> HTTPException:
    return HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=f"{what} not found")


def field_error(loc: list[str | int], msg: str, code: int = 422) -> HTTPException:
    """A 422 in FastAPI's validation shape, for checks that need the store (ids of uploads and
    cost models named in a spec)."""
    return HTTPException(
        status_code=code, detail=[{"loc": loc, "msg": msg, "type": "value_error"}]
    )


def check_text(value: str | None, loc: list[str | int]) -> None:
    """Refuse NUL characters, which PostgreSQL text columns cannot store (a 422, not a 500)."""
    if value is not None and "\x00" in value:
        raise field_error(loc, "must not contain NUL characters")


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route may return."""
    text = {
        400: "The body could not be parsed (e.g. not UTF-8)",
        401: "Missing or invalid bearer token", 404: "Not found",
        409: "Conflict with the resource's state", 413: "Body or upload too large",
        422: "Invalid input; `loc` names the field", 503: "A dependency is unavailable",
    }
    return {code: {"model": Error, "description": text[code]} for code in codes}


def allowed_methods(app: FastAPI, path: str) -> set[str]:
    """Methods the OpenAPI document lists for the path template that `path` matches."""
    for template, operations in app.openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\{[^/]+?\}", "[^/]+", template), path):
            return {method.upper() for method in operations}
    return set()


def install(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            # Starlette names only the first route matching the path; a path served by several
            # routes (GET and POST /v1/jobs) allows the methods of all of them.
            methods = allowed_methods(request.app, request.url.path)
            if methods:
                exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes the input back, which may be the very text or number
        # that was refused (a lone surrogate, NaN): repaired so that the 422 itself can be sent.
        detail = sanitize(jsonable_encoder(exc.errors()), [])
        return JSONResponse(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
                            content={"detail": detail})

    @app.exception_handler(OperationalError)
    async def _store_down(request: Request, exc: OperationalError) -> JSONResponse:
        # The database went away mid-request: a dependency is down, not a bug here.
        log.warning("job store error on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                            content={"detail": "the job store is unavailable"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
            content={"detail": "internal server error"},
        )

"""Responses serialised once, row by row, so that one bad record never breaks a listing.

The handlers of the hot paths (`GET /v1/jobs/{id}`, the lists) return these bytes directly:
FastAPI would otherwise validate the returned model again and walk it through
`jsonable_encoder` before encoding it. A row that cannot be shown as stored (text that is not
valid Unicode, a non-finite number, from before the checks at the door) is repaired for the
response and, where the schema has `warnings`, says what was repaired.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from spartan_service.jobs.fields import sanitize

log = logging.getLogger(__name__)
_FAILURES = (ValidationError, PydanticSerializationError, UnicodeError, ValueError, TypeError)


Build = Callable[[Any], BaseModel]


def dump(cls: type[BaseModel], row: Any, build: Build | None = None) -> bytes:
    """`row` as `cls` (made by `build`, else validated from the row's attributes) in JSON;
    repaired rather than failing."""
    try:
        return cls.__pydantic_serializer__.to_json((build or cls.model_validate)(row))
    except _FAILURES as exc:
        log.warning("record %s cannot be served as stored: %s", getattr(row, "id", "?"), exc)
    problems: list[str] = []
    values = {name: sanitize(getattr(row, name, None), problems, name)
              for name in cls.model_fields}
    if "warnings" in cls.model_fields:
        values["warnings"] = [*(values.get("warnings") or []),
                              "this record holds data that cannot be shown as stored: "
                              + "; ".join(problems[:5] or ["a value of the wrong type"])]
    return cls.__pydantic_serializer__.to_json(cls.model_validate(values))


def json_response(body: bytes, status_code: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    return Response(content=body, status_code=status_code, headers=headers,
                    media_type="application/json")


def one(cls: type[BaseModel], row: Any, status_code: int = 200,
        headers: dict[str, str] | None = None, build: Build | None = None) -> Response:
    return json_response(dump(cls, row, build), status_code, headers)


def page(cls: type[BaseModel], rows: list[Any], count: int, build: Build | None = None
         ) -> Response:
    """`{"data": [...], "count": N}`, each row serialised on its own."""
    body = b'{"data":[' + b",".join(dump(cls, r, build) for r in rows) + b'],"count":%d}' % count
    return json_response(body)

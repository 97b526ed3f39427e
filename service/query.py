"""Unknown query parameters are refused, as unknown body fields are: a typo such as
`?stauts=running` must not silently return the unfiltered list."""

from __future__ import annotations

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from spartan_service.service.errors import field_error

_KNOWN: dict[int, frozenset[str]] = {}


def _declared(route: APIRoute) -> frozenset[str]:
    key = id(route)
    if key not in _KNOWN:
        _KNOWN[key] = frozenset(_query_names(route.dependant))
    return _KNOWN[key]


def _query_names(dependant: Dependant) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def refuse_unknown_query(request: Request) -> None:
    """A 422 naming the first query parameter the route does not declare (documented routes
    only: the dashboard's pages keep their own rules)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not route.include_in_schema:
        return
    known = _declared(route)
    for name in request.query_params:
        if name not in known:
            allowed = ", ".join(sorted(known)) or "none"
            shown = name[:100]
            raise field_error(["query", shown],
                              f"unknown query parameter {shown!r}; allowed: {allowed}")

"""The OpenAPI document, with the bearer scheme declared exactly when tokens are enforced."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

SCHEME = "bearerAuth"


def install(app: FastAPI, secured: bool) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description,
                              routes=app.routes, tags=app.openapi_tags)
            if secured:
                doc.setdefault("components", {})["securitySchemes"] = {SCHEME: {
                    "type": "http", "scheme": "bearer",
                    "description": "A token of SPARTAN_API_TOKENS: `Authorization: Bearer TOKEN`.",
                }}
                for path, operations in doc.get("paths", {}).items():
                    if path.startswith("/v1/"):
                        for operation in operations.values():
                            operation["security"] = [{SCHEME: []}]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

"""OpenAPI extras: the token scheme, and the error answers every operation may give."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class HashedTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "api.authentication.HashedTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token <key>` (or `Bearer <key>`). Staff create and revoke tokens in the admin.",
        }


ERROR = {
    "type": "object",
    "description": '`{field: [messages]}`, `{"detail": message}` or, for a refused dose change, '
    '`{"warnings": [{"code", "message"}]}`.',
    "additionalProperties": True,
}
ANSWERS = {
    "400": "Invalid input: the body names each field in error.",
    "401": "No or an invalid, expired or revoked token.",
    "403": "Your role may not do this in this clinic.",
    "404": "Not found (or in a clinic you do not belong to); for a list, a page past the last.",
    "429": "Too many requests for this token: retry after the Retry-After seconds.",
}


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """Document the error answers on every operation, so clients (and schemathesis) know them."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for code, description in ANSWERS.items():
                if code == "400" and method == "get" and "{" in path:
                    continue
                responses.setdefault(
                    code,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                )
    return result

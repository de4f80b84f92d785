"""Unknown query parameters are refused (422), as unknown body fields are (``extra="forbid"``).

A misspelt filter (``?langauge=zh``) would otherwise be ignored and answer every row, which an
auditor would read as the filtered result. The OpenAPI document declares each operation's query
parameters; anything else is a client error.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError

__all__ = ["reject_unknown_query_parameters"]


def _declared(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _declared(sub)
    return names


def reject_unknown_query_parameters(request: Request) -> None:
    """Router dependency: 422 (FastAPI's validation error shape) naming each undeclared parameter."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    unknown = sorted(set(request.query_params) - _declared(dependant))
    if unknown:
        raise RequestValidationError([
            {"type": "extra_forbidden", "loc": ("query", name), "msg": "unknown query parameter",
             "input": request.query_params[name]}
            for name in unknown
        ])

"""Error bodies in the OpenAI shape (``{"error": {message, type, param, code}}``) for every failure.

Validation errors (422) also keep FastAPI's ``detail`` list, so the offending field is
named both in ``error.param`` and in ``detail[].loc``. Any engine
:class:`~seal_engine.errors.InputError` a route lets through is bad input as well: 422
with its message (routes that can name the field catch it and answer with ``field_error``).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from seal_engine.errors import InputError

log = logging.getLogger("seal.api")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class APIError(StarletteHTTPException):
    """An HTTP error with an OpenAI-style ``code`` and ``param``."""

    def __init__(
        self, status_code: int, message: str, *, code: str | None = None, param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code, message, headers=headers)
        self.code = code
        self.param = param


def not_found(what: str, ident: str, param: str | None = None) -> APIError:
    return APIError(404, f"{what} {ident!r} not found", code=f"{what.replace(' ', '_')}_not_found", param=param)


def field_error(loc: tuple[str | int, ...], message: str, kind: str = "value_error") -> RequestValidationError:
    """A 422 naming ``loc`` inside the request body, shaped like pydantic's own errors."""
    return RequestValidationError([{"loc": ("body", *loc), "msg": message, "type": kind}])


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error" if status >= 500 else "error"),
                      "param": param, "code": code}}


class ErrorInfo(BaseModel):
    message: str = Field(description="what went wrong, for people")
    type: str = Field(description="the error class, e.g. invalid_request_error, rate_limit_error")
    param: str | None = Field(description="the offending request field (dotted path), if one is to blame")
    code: str | None = Field(description="a stable code for programs, e.g. invalid_value, model_not_found")


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx answer (OpenAI's shape)."""

    error: ErrorInfo


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorResponse(ErrorResponse):
    """A 422: the error, and every offending field in ``detail`` (FastAPI's list)."""

    detail: list[ValidationIssue]


def api_routes(app: FastAPI) -> list[Any]:
    """Every API route as served (prefix and router dependencies applied), on FastAPI before and
    after included routers became route contexts."""
    from fastapi import routing

    contexts = getattr(routing, "iter_route_contexts", None)
    if contexts is None:
        return [r for r in app.routes if isinstance(r, APIRoute)]
    return [c for c in contexts(app.routes) if isinstance(c.original_route, APIRoute)]


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route serves at ``path`` (Starlette's 405 names only the first route's)."""
    from starlette.routing import compile_path

    methods: set[str] = set()
    for route in api_routes(app):
        if route.path_format and compile_path(route.path_format)[0].match(path):
            methods |= set(route.methods or ())
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _loc(loc: tuple | list) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def _clean(err: dict[str, Any]) -> dict[str, Any]:
    # Input values and exception objects are left out: they may be huge or unserialisable.
    return {"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}


_FASTAPI_BODY_ERROR = "There was an error parsing the body"


def _json_error(exc: RequestValidationError) -> dict[str, Any] | None:
    """A body that is not JSON at all, as one error at ``body`` that names the line and column
    (FastAPI reports the character offset in ``loc``, which is no field)."""
    for err in exc.errors():
        if err.get("type") != "json_invalid":
            continue
        loc = list(err.get("loc", ()))
        doc, pos = getattr(exc, "body", None), loc[1] if len(loc) > 1 else None
        reason = str((err.get("ctx") or {}).get("error") or err.get("msg") or "invalid JSON")
        if isinstance(doc, str) and isinstance(pos, int) and 0 <= pos <= len(doc):
            line = doc.count("\n", 0, pos) + 1
            column = pos - (doc.rfind("\n", 0, pos) + 1) + 1
            msg = f"the body is not valid JSON: {reason} at line {line}, column {column}"
        else:
            msg = reason if reason.startswith("the body") else f"the body is not valid JSON: {reason}"
        return {"loc": ["body"], "msg": msg, "type": "json_invalid"}
    return None


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        if (bad_json := _json_error(exc)) is not None:
            body = error_body(422, bad_json["msg"], code="invalid_json", param=None)
            body["detail"] = [bad_json]
            return JSONResponse(body, status_code=422)
        errors = [_clean(e) for e in exc.errors()]
        if not errors:
            errors = [{"loc": ["body"], "msg": "invalid request", "type": "value_error"}]
        message = "; ".join(f"{_loc(e['loc'])}: {e['msg']}" for e in errors[:10])
        body = error_body(422, message, code="invalid_value", param=_loc(errors[0]["loc"]))
        body["detail"] = errors
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == _FASTAPI_BODY_ERROR:
            # A body FastAPI could not even decode (bad UTF-8, ...) is malformed input: 422 like bad JSON.
            return await _validation(req, RequestValidationError(
                [{"loc": ("body",), "msg": "the body is not valid JSON (UTF-8)", "type": "json_invalid"}]))
        code = getattr(exc, "code", None)
        param = getattr(exc, "param", None)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette's Allow names the methods of the first route on the path only.
            methods = allowed_methods(req.app, req.url.path)
            if methods:
                headers = {**(headers or {}), "Allow": ", ".join(methods)}
                message = f"{req.method} is not allowed here; use {', '.join(methods)}"
            code = code or "method_not_allowed"
        return JSONResponse(
            error_body(exc.status_code, message, code=code, param=param),
            status_code=exc.status_code,
            headers=headers,
        )

    @app.exception_handler(InputError)
    async def _input(_req: Request, exc: InputError) -> JSONResponse:
        return JSONResponse(error_body(422, str(exc), code="invalid_value"), status_code=422)

    @app.exception_handler(Exception)
    async def _unhandled(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body(500, "internal server error", code="internal_error"), status_code=500)

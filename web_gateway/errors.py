"""Errors as JSON `{"error": {"code", "message"}}`: the client's mistakes are 4xx with words,
the orchestrator's gRPC statuses map to HTTP, and nothing leaks a stack trace."""

from __future__ import annotations

import logging

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status, a stable machine code and a message for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# gRPC status -> (HTTP status, error code). UNAVAILABLE and DEADLINE_EXCEEDED mean a
# dependency is down or too slow: the client may retry later (503).
GRPC_TO_HTTP: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (422, "invalid_argument"),
    grpc.StatusCode.OUT_OF_RANGE: (422, "out_of_range"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "already_exists"),
    grpc.StatusCode.ABORTED: (409, "aborted"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "failed_precondition"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "resource_exhausted"),
    grpc.StatusCode.UNAVAILABLE: (503, "unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (503, "deadline_exceeded"),
    grpc.StatusCode.CANCELLED: (503, "cancelled"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "unimplemented"),
    # The gateway's own token was refused by the orchestrator: a deployment problem.
    grpc.StatusCode.UNAUTHENTICATED: (502, "upstream_unauthenticated"),
    grpc.StatusCode.PERMISSION_DENIED: (502, "upstream_permission_denied"),
}

# Google RPC code numbers (as carried by StreamError.code) -> names.
CODE_NAMES = {c.value[0]: c for c in grpc.StatusCode}


def from_grpc(exc: grpc.aio.AioRpcError) -> ApiError:
    status, code = GRPC_TO_HTTP.get(exc.code(), (502, "upstream_error"))
    details = (exc.details() or "").strip().splitlines()[0:1]
    message = details[0] if details else exc.code().name.lower().replace("_", " ")
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        message = f"the assistant is not available right now ({message}); try again shortly"
    elif status == 502:
        log.error("orchestrator call failed", extra={"fields": {"grpc_code": exc.code().name, "details": message}})
        message = f"the assistant failed to answer ({exc.code().name}: {message})"
    return ApiError(status, code, message)


def lone_surrogate_message(where: str) -> str:
    return f"{where} holds a lone UTF-16 surrogate (such as \\ud800), which is not text; send valid Unicode"


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    # A message may quote the client's input; a lone surrogate in it would make the error
    # itself unencodable (a 500 instead of the 4xx), so such characters go out escaped.
    return {"error": {"code": code, "message": message.encode("utf-8", "backslashreplace").decode("utf-8")}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status)

    @app.exception_handler(grpc.aio.AioRpcError)
    async def grpc_error(_request: Request, exc: grpc.aio.AioRpcError) -> JSONResponse:
        err = from_grpc(exc)
        return JSONResponse(error_body(err.code, err.message), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(error_body("invalid_json", "the request body is not valid JSON"), status_code=400)
        if unencodable := [e for e in errors if e.get("type") == "string_unicode"]:
            # A lone surrogate in a nested field: the answer web_gateway.limits gives for the others.
            where = ".".join(str(p) for p in unencodable[0].get("loc", ()) if p != "body")
            return JSONResponse(error_body("invalid_argument", lone_surrogate_message(where)), status_code=422)
        parts = []
        for e in errors[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
        return JSONResponse(error_body("invalid_request", "; ".join(parts) or "invalid request"), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # A bug of ours, never the client's: log it whole, answer without internals.
        log.exception("unhandled error in the gateway")
        return JSONResponse(error_body("internal", "the gateway hit an unexpected error; it has been logged"),
                            status_code=500)

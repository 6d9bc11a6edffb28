"""Errors in OpenAI's JSON shape: `{"error": {"message", "type", "param", "code"}}` with the right status.

Every failure a client can cause leaves through `ApiError` (or a handler below that maps FastAPI's
and Starlette's own errors onto it), so the status, the body shape and the `errors_total` metric agree.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

# status -> OpenAI error type (the `type` field clients branch on)
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 408: "timeout", 413: "invalid_request_error",
         415: "invalid_request_error", 429: "rate_limit_exceeded", 500: "server_error", 503: "server_error",
         504: "timeout"}


class ApiError(Exception):
    """An error answered to the client: HTTP status, message, OpenAI `code` and the offending `param`."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_kind(status: int, code: str | None) -> str:
    """The `type` label of `tunelab_errors_total` and the request log's `error_type`."""
    return code or TYPES.get(status, "server_error")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errs = exc.errors()
    if not errs:
        return "invalid request body", None
    e = errs[0]
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    if e.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({e.get('ctx', {}).get('error', e.get('msg'))})", None
    param = ".".join(loc) or None
    return (f"{param}: {e.get('msg')}" if param else str(e.get("msg"))), param


def install_handlers(app: FastAPI) -> None:
    """Answer every error (ours, validation, routing) in OpenAI's shape and record its kind on the request."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        request.state.error = error_kind(exc.status, exc.code)
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return await _api(request, ApiError(400, message, "invalid_request", param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
        return await _api(request, ApiError(exc.status_code, str(exc.detail), code, headers=getattr(exc, "headers", None)))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        import logging

        logging.getLogger(__name__).exception("request failed")
        return await _api(request, ApiError(500, f"internal error ({type(exc).__name__})", "server_error"))

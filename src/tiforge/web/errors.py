"""Every API error is JSON {"error": ..., "field": ...} with a 4xx status, never an HTML page."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A refusal the user can act on: its status, message and (where one is at fault) the field."""

    def __init__(self, status: int, message: str, field: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.field, self.extra = status, message, field, extra


def error_body(message: str, field: str | None = None, **extra) -> dict:
    return {"error": message, **({"field": field} if field else {}), **extra}


async def _api_error(request: Request, err: ApiError) -> JSONResponse:
    return JSONResponse(error_body(err.message, err.field, **err.extra), status_code=err.status)


async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(error_body(str(err.detail)), status_code=err.status_code, headers=getattr(err, "headers", None))


async def _bad_request(request: Request, err: RequestValidationError) -> JSONResponse:
    """A request body of the wrong shape (not the config's problems: those are answered as data)."""
    first = err.errors()[0] if err.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return JSONResponse(error_body(f"{where or 'request'}: {first.get('msg', 'invalid request')}", where or None),
                        status_code=400)


async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    log.exception("tiforge web: %s %s failed", request.method, request.url.path)
    return JSONResponse(error_body(f"internal error: {type(err).__name__}: {err}"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _bad_request)
    app.add_exception_handler(Exception, _unexpected)

"""The access token: required on every request (pages, static files, API, events, downloads) when the
server listens beyond this machine, as Jupyter does. Given as ?token=, `Authorization: Bearer`, or the
cookie that `GET /?token=` sets."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

COOKIE = "tiforge_token"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_for_host(host: str) -> str | None:
    """No token on the loopback address (only this machine reaches it); a fresh one anywhere else."""
    return None if host in LOCAL_HOSTS else new_token()


def _offered(request: Request) -> list[str]:
    scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
    offered = [request.query_params.get("token"), request.cookies.get(COOKIE),
               bearer if scheme.lower() == "bearer" else None]
    return [t for t in offered if t]


def _matches(token: str, offered: list[str]) -> bool:
    return any(secrets.compare_digest(t.encode(), token.encode()) for t in offered)


def install_token_check(app: FastAPI, token: str | None) -> None:
    if token is None:
        return

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if not _matches(token, _offered(request)):
            return JSONResponse({"error": "missing or wrong access token: open the address with ?token= that "
                                          "`tiforge web` printed"}, status_code=403)
        response = await call_next(request)
        if request.query_params.get("token") and request.method == "GET":
            # the page's own later requests (scripts, images, events) then carry it without the URL
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response


def install_same_origin_check(app: FastAPI) -> None:
    """Another site's page cannot make the browser stop, resume or start trainings here (CSRF): a
    request that changes something must come from this server's own page, as the browser's Origin
    and Sec-Fetch-Site headers tell."""

    @app.middleware("http")
    async def same_origin(request: Request, call_next):
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("origin")
            cross = request.headers.get("sec-fetch-site") == "cross-site" or (
                origin is not None and urlsplit(origin).netloc != request.headers.get("host"))
            if cross:
                return JSONResponse({"error": "refused: the request comes from another site's page"}, status_code=403)
        return await call_next(request)

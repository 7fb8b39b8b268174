"""Request size limits: a body above its route's limit gets 413 before it is stored, whether it says
its length (Content-Length) or not (the bytes are counted as they arrive).

Starlette's own RequestBodyLimitMiddleware answers a too-long Content-Length in plain text, and ahead
of the token check; every answer here is JSON, and a request without the token gets its 403 first."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

DEFAULT_MAX_UPLOAD = 50 * 2**20
MAX_REQUEST = 2 * 2**20  # any other request: a config or a YAML file is a few kB


class TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: `uploads` maps the routes that take files to their limit; others get MAX_REQUEST."""

    def __init__(self, app, uploads: dict[str, int]):
        self.app, self.uploads = app, uploads

    def _refusal(self, path: str) -> JSONResponse:
        if path in self.uploads:
            message = f"upload too large: the limit is {self.uploads[path] / 2**20:g} MB"
        else:
            message = f"request too large: the limit is {MAX_REQUEST / 2**20:g} MB"
        return JSONResponse({"error": message, "field": "file"}, status_code=413)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = self.uploads.get(scope["path"], MAX_REQUEST)
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return await self._refusal(scope["path"])(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except TooLarge:
            await self._refusal(scope["path"])(scope, receive, send)

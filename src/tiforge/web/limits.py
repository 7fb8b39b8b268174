"""Upload size limit: a request body above the limit gets 413 before it is stored, whether it says
its length (Content-Length) or not (the bytes are counted as they arrive)."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

DEFAULT_MAX_UPLOAD = 50 * 2**20


class TooLarge(Exception):
    pass


class UploadLimit:
    """ASGI middleware for the POST routes that take files."""

    def __init__(self, app, max_bytes: int = DEFAULT_MAX_UPLOAD, paths: tuple[str, ...] = ()):
        self.app, self.max_bytes, self.paths = app, max_bytes, paths

    def _refusal(self) -> JSONResponse:
        return JSONResponse({"error": f"upload too large: the limit is {self.max_bytes / 2**20:g} MB", "field": "file"},
                            status_code=413)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._refusal()(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except TooLarge:
            await self._refusal()(scope, receive, send)

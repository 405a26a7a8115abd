"""What a request of `img2img serve` meets before its route computes it: middleware that checks the
`Host` and `Origin` names, bounds the body's size and marks every answer `nosniff`, then the reading of
the body (within its size, time and the server's shutdown) and of its fields and multipart upload.
"""
from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from img2img.inference.serve.uploads import FIELDS, IMAGE_FIELD, ApiError


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    """The client closed the connection before its request body arrived: nobody to answer."""


class SecurityHeaders:
    """`X-Content-Type-Options: nosniff` on every answer (errors and static files too): a browser never
    runs an answer as another type than the server says."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-content-type-options"]
                message = {**message, "headers": [*headers, (b"x-content-type-options", b"nosniff")]}
            await send(message)

        await self.app(scope, receive, with_headers)


class HostCheck:
    """Serve only requests addressed to this server's names: the `Host` header (a web page on another
    site reaching a loopback server through DNS rebinding sends its own name) and, where a browser
    sends one, the `Origin` (a page on another site posting to the API). Starlette's
    TrustedHostMiddleware matches the names; refusals are our JSON errors naming --allow-host."""

    def __init__(self, app: ASGIApp, allowed: list[str]):
        self.app = app
        self.allowed = list(allowed)
        self.match = TrustedHostMiddleware(self._matched, allowed_hosts=self.allowed, www_redirect=False)

    @staticmethod
    async def _matched(scope: Scope, receive: Receive, send: Send) -> None:
        scope["matched"] = True

    async def _trusted(self, host: str) -> bool:
        probe: dict[str, Any] = {"type": "http", "headers": [(b"host", host.encode("latin-1"))]}

        async def discard(message: Message) -> None:
            pass

        await self.match(probe, None, discard)  # type: ignore[arg-type]
        return bool(probe.get("matched"))

    def _refuse(self, status: int, code: str, what: str, host: str, field: str) -> JSONResponse:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        error = ApiError(status, code, f"{what} is not a name of this server (it answers {', '.join(self.allowed)}); "
                         f"if clients reach it under that name, start it with --allow-host {name or 'NAME'}",
                         field=field, headers={"Connection": "close"})
        return error_response(error)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")[:100]
        if not await self._trusted(host):
            await self._refuse(400, "unknown_host", f"Host {host!r}", host, "host")(scope, receive, send)
            return
        origin = headers.get(b"origin")
        if origin is not None:
            text = origin.decode("latin-1")[:200]
            netloc = urlsplit(text).netloc if "://" in text else ""
            if not netloc or not await self._trusted(netloc):
                what = f"the page's Origin {text!r}"
                await self._refuse(403, "foreign_origin", what, netloc, "origin")(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse request bodies above `limit` bytes: at once from Content-Length, else while streaming."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await too_large(self.limit).__call__(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge()
            return message

        await self.app(scope, limited, send)


def too_large(limit: int) -> JSONResponse:
    error = ApiError(413, "body_too_large", f"the request body (the image) is larger than this server accepts "
                     f"({limit} bytes, its --max-body-mb); send a smaller image", field=IMAGE_FIELD)
    return JSONResponse(error.body(), status_code=413, headers={"Connection": "close"})


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def receive_body(receive: Receive, *, timeout: float, limit: int, stopping: asyncio.Event | None) -> bytes:
    """The whole request body, read before the request takes a place in a model's queue: at most `limit`
    bytes, within `timeout` seconds (408 after), and given up when the server starts stopping."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    chunks: list[bytes] = []
    size = 0
    stop = asyncio.ensure_future(stopping.wait()) if stopping is not None else loop.create_future()
    try:
        while True:
            arrival = asyncio.ensure_future(receive())
            done, _ = await asyncio.wait({arrival, stop}, timeout=max(0.0, deadline - loop.time()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if arrival not in done:
                arrival.cancel()
                if stop in done:
                    raise ApiError(503, "stopping", "the server is stopping; the request was not read (send it "
                                   "again, to this server once restarted or to another)",
                                   headers={"Connection": "close", "Retry-After": "5"})
                raise ApiError(408, "body_timeout", f"the request body did not arrive within {timeout:g} s (this "
                               f"server's --body-timeout; {size} bytes came); send the whole image at once, or "
                               "raise --body-timeout for slow links", field=IMAGE_FIELD,
                               headers={"Connection": "close"})
            message = arrival.result()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                raise BodyTooLarge()
            chunks.append(body)
            if not message.get("more_body", False):
                return b"".join(chunks)
    finally:
        stop.cancel()


async def read_request(request: Request) -> tuple[bytes, dict[str, str], str | None]:
    """The image bytes, the fields (query string and form) and the upload's file name; the body has
    already been received (`receive_body`)."""
    fields: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key in fields:
            raise ApiError(400, "repeated_field", f"the field '{key}' is given twice", field=key)
        fields[key] = value
    if IMAGE_FIELD in fields:
        raise ApiError(400, "invalid_field", f"'{IMAGE_FIELD}' is the image itself, not a query parameter (the "
                       "server never reads files or URLs for a client); send the image's bytes as the body or as "
                       "a multipart file", field=IMAGE_FIELD)
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return await request.body(), fields, None
    try:
        form = await request.form(max_files=1, max_fields=len(FIELDS) + 1, max_part_size=64 * 1024)
    except HTTPException as exc:
        raise ApiError(400, "bad_multipart", f"the multipart body cannot be parsed ({exc.detail}); send one file "
                       f"field '{IMAGE_FIELD}' and the text fields {', '.join(FIELDS)}", field=IMAGE_FIELD) from None
    image: bytes | None = None
    name = None
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != IMAGE_FIELD:
                    raise ApiError(400, "unknown_field", f"the file field is named '{key}'; name it "
                                   f"'{IMAGE_FIELD}'", field=key)
                image, name = await value.read(), value.filename
            elif key == IMAGE_FIELD:
                raise ApiError(400, "invalid_field", f"'{IMAGE_FIELD}' must be a file part holding the image's "
                               "bytes, not a text field (the server never reads files or URLs for a client)",
                               field=IMAGE_FIELD)
            elif key in fields:
                raise ApiError(400, "repeated_field", f"the field '{key}' is given twice", field=key)
            else:
                fields[key] = value
    finally:
        await form.close()
    if image is None:
        raise ApiError(400, "missing_field", f"the multipart upload has no file field '{IMAGE_FIELD}'",
                       field=IMAGE_FIELD)
    return image, fields, name

"""The ASGI application of `img2img serve`: a page at ``/``, the HTTP API under ``/v1``, health
checks and an OpenAPI document built from the routes' own descriptions.

`create_app(table, settings)` is usable from Python (e.g. under another ASGI server): its
`lifespan` loads the models once if they are not loaded yet and starts one micro-batcher per model.
The middleware and the reading of request bodies are in `intake`.
"""
from __future__ import annotations

import asyncio
import logging
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.schemas import SchemaGenerator
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Message

from img2img._version import __version__
from img2img.inference.serve.batching import MicroBatcher, QueueFull
from img2img.inference.serve.intake import (
    BodyLimit,
    BodyTooLarge,
    ClientGone,
    HostCheck,
    SecurityHeaders,
    error_response,
    read_request,
    receive_body,
    too_large,
)
from img2img.inference.serve.models import ModelTable, ServedModel
from img2img.inference.serve.openapi import COMPONENTS
from img2img.inference.serve.uploads import (
    MEDIA_TYPES,
    ApiError,
    Upload,
    check_tile_budget,
    decode_upload,
    encode_result,
    parse_options,
)

HERE = Path(__file__).resolve().parent
log = logging.getLogger("img2img.serve")
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
               "connect-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


@dataclass
class ServeSettings:
    """Limits of one server; the tiling defaults and batch size live in its `ModelTable`."""

    max_pixels: int | None = 16_777_216  # 4096 x 4096
    max_body_bytes: int = 64 * 2**20
    queue_size: int = 64
    batch_wait_ms: float = 5.0
    batch_pixels: int = 4_194_304  # a batch holds at most this many pixels (one larger image runs alone)
    workers: int = 2  # threads that decode uploads and encode results, beside each model's worker
    body_timeout: float = 60.0  # seconds for a request's whole body to arrive (408 after)
    max_uploads: int = 128  # requests of one model receiving their bodies at once (503 above)
    max_tiles: int | None = 1024  # tiles one request may ask for with tile/overlap (400 above)
    allowed_hosts: list[str] | None = None  # Host header values accepted; None: any

    def check(self) -> ServeSettings:
        from img2img.data.images import pixel_limit
        from img2img.errors import Img2ImgError

        pixel_limit()  # a bad IMG2IMG_MAX_IMAGE_PIXELS stops the server from starting, not every upload
        if self.max_pixels is not None and self.max_pixels < 1:
            raise Img2ImgError(f"--max-pixels {self.max_pixels}: must be a positive pixel count")
        if self.max_body_bytes < 1:
            raise Img2ImgError("--max-body-mb: must be positive")
        if self.queue_size < 1:
            raise Img2ImgError(f"--queue-size {self.queue_size}: must be >= 1")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise Img2ImgError(f"--batch-wait-ms {self.batch_wait_ms}: must be between 0 and 10000")
        if not 0 < self.body_timeout <= 3600:
            raise Img2ImgError(f"--body-timeout {self.body_timeout}: must be more than 0 and at most 3600 seconds")
        if self.max_uploads < 1:
            raise Img2ImgError(f"--max-uploads {self.max_uploads}: must be >= 1")
        if self.max_tiles is not None and self.max_tiles < 1:
            raise Img2ImgError(f"--max-tiles {self.max_tiles}: must be >= 1")
        return self


class ServerState:
    def __init__(self, table: ModelTable, settings: ServeSettings):
        self.table = table
        self.settings = settings
        self.batchers: dict[str, MicroBatcher] = {}
        self.ready = False
        self.limiter: anyio.CapacityLimiter | None = None
        self.uploading: dict[str, int] = {}  # per model: requests whose bodies are still arriving
        self.stopping: asyncio.Event | None = None

    def batcher_for(self, model: ServedModel) -> MicroBatcher:
        def run(key: tuple, arrays: list) -> list:
            direction, tiling = key[0], key[1]
            return model.translator(direction, tiling).translate_arrays(arrays)

        return MicroBatcher(run, max_batch=model.max_batch, max_wait=self.settings.batch_wait_ms / 1000,
                            queue_size=self.settings.queue_size, max_cost=self.settings.batch_pixels,
                            name=model.name)

    async def start(self) -> None:
        if not self.table.loaded:
            await anyio.to_thread.run_sync(self.table.load)
        self.limiter = anyio.CapacityLimiter(max(1, self.settings.workers))
        self.stopping = asyncio.Event()
        for name, model in self.table.models.items():
            batcher = self.batcher_for(model)
            batcher.start()
            self.batchers[name] = batcher
        self.ready = True

    def drain(self) -> None:
        """Shutdown has begun: requests still receiving their bodies are answered 503 now (the server
        waits only for requests it computes)."""
        self.ready = False
        if self.stopping is not None:
            self.stopping.set()

    async def stop(self) -> None:
        self.ready = False
        await asyncio.gather(*(b.close() for b in self.batchers.values()))
        self.batchers.clear()

    async def in_thread(self, fn, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)


def _safe_filename(name: str | None) -> str:
    stem = Path(name or "").stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")[:80] or "image"


def create_app(table: ModelTable, settings: ServeSettings | None = None) -> Starlette:
    """The server's ASGI application for the models in `table`."""
    settings = (settings or ServeSettings()).check()
    state = ServerState(table, settings)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
    templates = Jinja2Templates(env=env)
    schemas = SchemaGenerator({"openapi": "3.1.0",
                               "info": {"title": "img2img serve", "version": __version__,
                                        "description": "Translate images with trained img2img models."},
                               "components": COMPONENTS})

    @asynccontextmanager
    async def lifespan(app: Starlette):
        await state.start()
        log.info("serving %s", ", ".join(table.names()))
        try:
            yield
        finally:
            await state.stop()

    def model_or_404(name: str) -> ServedModel:
        model = table.get(name)
        if model is None:
            raise ApiError(404, "unknown_model", f"no model named '{name}'; this server has "
                           f"{', '.join(table.names()) or 'none'} (GET /v1/models lists them)", field="name")
        return model

    async def page(request: Request) -> Response:
        response = templates.TemplateResponse(request, "index.html", {
            "models": table.describe(), "version": __version__, "max_pixels": settings.max_pixels,
            "max_body_bytes": settings.max_body_bytes})
        response.headers["Content-Security-Policy"] = PAGE_POLICY
        return response

    async def healthz(request: Request) -> Response:
        """The process is up.
        ---
        summary: Liveness
        responses:
          "200": {description: The server process answers, content: {application/json: {schema: {type: object}}}}
        """
        return JSONResponse({"status": "ok", "version": __version__})

    async def readyz(request: Request) -> Response:
        """Models are loaded and requests are served.
        ---
        summary: Readiness
        responses:
          "200": {description: Ready, content: {application/json: {schema: {type: object}}}}
          "503": {$ref: "#/components/responses/Error"}
        """
        if not state.ready:
            return error_response(ApiError(503, "not_ready", "the server is starting or stopping",
                                            headers={"Retry-After": "1"}))
        return JSONResponse({"status": "ready", "models": table.names()})

    async def list_models(request: Request) -> Response:
        """The models this server translates with, and their metadata.
        ---
        summary: List models
        responses:
          "200":
            description: Every model with task, channels, directions, size multiple, versions, EMA
            content:
              application/json:
                schema: {type: object, properties: {models: {type: array, items: {$ref: "#/components/schemas/Model"}}}}
        """
        return JSONResponse({"models": table.describe()})

    async def get_model(request: Request) -> Response:
        """One model's metadata.
        ---
        summary: Describe a model
        parameters: [{name: name, in: path, required: true, schema: {type: string}}]
        responses:
          "200": {description: The model, content: {application/json: {schema: {$ref: "#/components/schemas/Model"}}}}
          "404": {$ref: "#/components/responses/Error"}
        """
        return JSONResponse(model_or_404(request.path_params["name"]).describe())

    async def translate(request: Request) -> Response:
        """Translate one image; the answer has the input's size and is what `img2img translate` writes.
        ---
        summary: Translate an image
        description: >-
          Send the image file's bytes as the body (any content type but multipart), or as the file
          field `image` of a multipart/form-data body. Options go in the query string or, with
          multipart, as text fields.
        parameters:
          - {$ref: "#/components/parameters/name"}
          - {$ref: "#/components/parameters/direction"}
          - {$ref: "#/components/parameters/format"}
          - {$ref: "#/components/parameters/tile"}
          - {$ref: "#/components/parameters/overlap"}
          - {$ref: "#/components/parameters/tile_norm"}
          - {$ref: "#/components/parameters/keep_depth"}
        requestBody: {$ref: "#/components/requestBodies/Image"}
        responses:
          "200": {$ref: "#/components/responses/Image"}
          "400": {$ref: "#/components/responses/Error"}
          "404": {$ref: "#/components/responses/Error"}
          "408": {$ref: "#/components/responses/Error"}
          "413": {$ref: "#/components/responses/Error"}
          "415": {$ref: "#/components/responses/Error"}
          "503": {$ref: "#/components/responses/Busy"}
        """
        model = model_or_404(request.path_params["name"])
        if not state.ready:
            raise ApiError(503, "not_ready", "the server is starting or stopping",
                           headers={"Retry-After": "1", "Connection": "close"})
        # read and bound the body first, queue the work second: a slow upload never holds a queue place
        uploading = state.uploading.get(model.name, 0)
        if uploading >= settings.max_uploads:
            raise ApiError(503, "busy", f"model '{model.name}' is receiving {uploading} uploads at once (its "
                           "--max-uploads); retry after 1 s", headers={"Retry-After": "1", "Connection": "close"})
        state.uploading[model.name] = uploading + 1
        try:
            body = await receive_body(request.receive, timeout=settings.body_timeout,
                                      limit=settings.max_body_bytes, stopping=state.stopping)
        finally:
            state.uploading[model.name] -= 1
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return {"type": "http.disconnect"}
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        request = Request(request.scope, replay)
        batcher = state.batchers[model.name]
        try:
            batcher.admit()
        except QueueFull as full:
            raise ApiError(503, "busy", f"model '{model.name}' has {settings.queue_size} requests queued (its "
                           f"--queue-size); retry after {full.retry_after} s",
                           headers={"Retry-After": str(full.retry_after)}) from None
        try:
            data, fields, filename = await read_request(request)
            del body
            options = parse_options(fields, model, table.tiling)
            translator = model.translators[options.direction]
            upload: Upload = await state.in_thread(decode_upload, data, translator.in_channels, options,
                                                   settings.max_pixels)
            del data
            check_tile_budget(fields, options, upload.height, upload.width, translator.size_multiple,
                              settings.max_tiles)
            key = (options.direction, options.tiling, upload.height, upload.width)
            alone = model.tiled(options.direction, options.tiling, upload.height, upload.width)
            try:
                result = await batcher.submit(key, upload.array, cost=upload.width * upload.height, alone=alone)
            except (MemoryError, RuntimeError) as exc:
                if not isinstance(exc, MemoryError) and "out of memory" not in str(exc).lower():
                    raise
                raise ApiError(503, "out_of_memory", f"out of memory at {upload.width}x{upload.height}; send a "
                               "smaller image or pass tile=512", headers={"Retry-After": "5"}) from None
            body = await state.in_thread(encode_result, result.value, upload)
        finally:
            batcher.release()
        ext = upload.format
        headers = {
            "Content-Disposition": f'inline; filename="{_safe_filename(filename)}-{options.direction}.{ext}"',
            "X-Img2img-Model": model.name, "X-Img2img-Direction": options.direction,
            "X-Img2img-Batch-Size": str(result.batch_size),
            "Server-Timing": f"queue;dur={result.queued_s * 1000:.1f}, compute;dur={result.compute_s * 1000:.1f}",
        }
        return Response(body, media_type=MEDIA_TYPES[ext], headers=headers)

    async def openapi(request: Request) -> Response:
        return JSONResponse(schemas.get_schema(routes=app.routes))

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 405:
            message += "; translate with POST /v1/models/{name}/translate"
        error = ApiError(exc.status_code, code, message)
        return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)

    async def body_too_large(request: Request, exc: Exception) -> Response:
        return too_large(settings.max_body_bytes)

    async def client_gone(request: Request, exc: Exception) -> Response:
        log.info("%s %s: the client closed the connection before its request body arrived", request.method,
                 request.url.path)
        return Response(status_code=400, headers={"Connection": "close"})  # nobody reads it

    async def server_error(request: Request, exc: Exception) -> Response:
        # uvicorn logs the traceback and closes the connection (Starlette raises the exception again after
        # this answer), so the answer says so: a client must not send its next request on this connection
        error = ApiError(500, "internal_error", "the server failed on this request (see its log); the next request "
                         "is served as usual (on a new connection)",
                         headers={"Connection": "close", "X-Content-Type-Options": "nosniff"})
        return error_response(error)

    routes = [
        Route("/", page, methods=["GET"], include_in_schema=False),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{name}", get_model, methods=["GET"]),
        Route("/v1/models/{name}/translate", translate, methods=["POST"]),
        Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        ApiError: api_error, HTTPException: http_error, BodyTooLarge: body_too_large, ClientGone: client_gone,
        Exception: server_error})
    app.state.serve = state
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if settings.allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed=settings.allowed_hosts)
    app.add_middleware(SecurityHeaders)  # the outermost: its header is on every answer, refusals included
    return app

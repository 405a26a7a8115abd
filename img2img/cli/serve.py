"""`img2img serve`."""
from __future__ import annotations

from enum import Enum
from typing import List, Optional

import typer

from img2img.cli.base import app, console, report_user_errors
from img2img.cli.inference import BACKEND_HELP


class LogLevel(str, Enum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"


@app.command()
@report_user_errors
def serve(
    models: List[str] = typer.Argument(..., metavar="MODEL",
                                       help="Run folders, checkpoints (.pt), .safetensors or .onnx exports; "
                                            "NAME=PATH names one (default: the run folder's or file's name)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 opens it to the network."),
    port: int = typer.Option(8000, "--port", help="TCP port (0 picks a free one)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps."),
    precision: str = typer.Option("fp32", "--precision",
                                  help="fp32, bf16, fp16 (bf16-mixed and fp16-mixed too) or auto: bf16 only where "
                                       "this machine runs it faster (torch models), as for translate."),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="Most requests of one size run together."),
    batch_wait_ms: float = typer.Option(5.0, "--batch-wait-ms", min=0,
                                        help="How long a request waits for others to batch with."),
    queue_size: int = typer.Option(64, "--queue-size", min=1,
                                   help="Requests a model holds at once; more get 503 with Retry-After."),
    max_pixels: int = typer.Option(16_777_216, "--max-pixels", min=1,
                                   help="Largest image accepted (width x height); larger get 413."),
    max_body_mb: float = typer.Option(64.0, "--max-body-mb", min=0.001, help="Largest request body in MiB."),
    tile: Optional[int] = typer.Option(None, "--tile", min=16, help="Default tile size (requests may set tile)."),
    overlap: Optional[int] = typer.Option(None, "--overlap", min=0, help="Default tile overlap."),
    tile_above: Optional[int] = typer.Option(4_194_304, "--tile-above", min=1,
                                             help="Tile images above this many pixels, as translate's --max-pixels."),
    tile_norm: str = typer.Option("auto", "--tile-norm",
                                  help="auto, global or local instance-norm statistics of tiles."),
    max_tiles: int = typer.Option(1024, "--max-tiles", min=1,
                                  help="Most tiles one request may ask for with tile/overlap; more get 400."),
    max_uploads: int = typer.Option(128, "--max-uploads", min=1,
                                    help="Requests of one model receiving their bodies at once; more get 503."),
    body_timeout: float = typer.Option(60.0, "--body-timeout", min=0.001,
                                       help="Seconds for a request's whole body to arrive; slower ones get 408."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", min=0.001,
                                         help="Seconds for a request's line and headers to arrive, else the "
                                              "connection is closed."),
    keep_alive_timeout: float = typer.Option(5.0, "--keep-alive-timeout", min=0.001,
                                             help="Seconds an idle keep-alive connection stays open."),
    graceful_timeout: float = typer.Option(30.0, "--graceful-timeout", min=0.001,
                                           help="On SIGTERM or Ctrl-C, seconds to finish the requests being "
                                                "computed before exiting."),
    allow_host: List[str] = typer.Option([], "--allow-host", metavar="HOST",
                                         help="A Host name clients may use besides localhost (repeatable; '*' "
                                              "any). Without it a server bound to loopback refuses other names."),
    no_ema: bool = typer.Option(False, "--no-ema", help="Use the trained generators, not their EMA."),
    backend: Optional[str] = typer.Option(None, "--backend", help=BACKEND_HELP),
    log_level: LogLevel = typer.Option(LogLevel.info, "--log-level", help="How much the server logs."),
    no_access_log: bool = typer.Option(False, "--no-access-log", help="Do not log every request."),
) -> None:
    """Serve models: a page at / and an HTTP API under /v1 (same pixels as translate)."""
    from img2img.inference.serve import ServeSettings, TileOptions
    from img2img.inference.serve import serve as run_server

    settings = ServeSettings(max_pixels=max_pixels, max_body_bytes=int(max_body_mb * 2**20), queue_size=queue_size,
                             batch_wait_ms=batch_wait_ms, body_timeout=body_timeout, max_uploads=max_uploads,
                             max_tiles=max_tiles)
    run_server(models, host=host, port=port, device=device, precision=precision, use_ema=not no_ema, backend=backend,
               max_batch=max_batch, tiling=TileOptions(tile=tile, overlap=overlap, tile_norm=tile_norm,
                                                       tile_above=tile_above),
               settings=settings, log_level=log_level.value, access_log=not no_access_log, console=console,
               allow_host=allow_host, header_timeout=header_timeout, keep_alive_timeout=keep_alive_timeout,
               graceful_timeout=graceful_timeout)

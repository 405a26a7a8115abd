"""Running the application under uvicorn: load the models (errors before listening), bind the
socket ourselves (a taken port is a clear error), serve until Ctrl-C or SIGTERM.

uvicorn's graceful shutdown stops accepting connections on SIGTERM, answers the requests in
flight, then runs the lifespan's shutdown; `serve` then returns normally (exit status 0).
"""
from __future__ import annotations

import errno
import ipaddress
import signal
import socket
from typing import Any

from rich.console import Console
from rich.table import Table

from img2img.errors import Img2ImgError
from img2img.inference.serve.app import ServeSettings, create_app
from img2img.inference.serve.models import ModelTable, TileOptions


class _Stopped(Exception):
    """Raised by our SIGTERM handler once uvicorn has shut down gracefully and passes the signal on."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Stopped()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket for `host`:`port`; errors say what to change."""
    if not 0 <= port <= 65535:
        raise Img2ImgError(f"--port {port}: use a port between 1 and 65535 (0 picks a free one)")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise Img2ImgError(f"--host {host}: cannot resolve it ({exc.strerror}); use an address such as 127.0.0.1 "
                           "or 0.0.0.0") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise Img2ImgError(f"port {port} on {host} is in use by another program; choose another with "
                               "--port (0 picks a free one)") from None
        if exc.errno == errno.EACCES:
            raise Img2ImgError(f"not allowed to listen on port {port} (ports below 1024 need privileges); use "
                               "--port 8000 or above") from None
        raise Img2ImgError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


def _summary(table: ModelTable, console: Console) -> None:
    rows = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for column in ("model", "kind", "task", "directions", "runs on"):
        rows.add_column(column)
    for model in table.models.values():
        first = next(iter(model.translators.values()))
        rows.add_row(model.name, model.kind, str(model.info.get("task") or "?"), ", ".join(model.directions),
                     first.describe())
    console.print(rows)
    for model in table.models.values():
        for direction, translator in model.translators.items():
            for note in translator.notes:  # e.g. what --backend auto chose, and why
                console.print(f"[yellow]note:[/] {model.name} {direction}: {note}", highlight=False)


def serve(models: list[str], *, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          precision: str = "fp32", use_ema: bool = True, max_batch: int = 8, tiling: TileOptions = TileOptions(),
          settings: ServeSettings | None = None, log_level: str = "info", access_log: bool = True,
          console: Console | None = None, backend: str | None = None) -> None:
    """Load `models` (``PATH`` or ``NAME=PATH``) and serve them until Ctrl-C or SIGTERM."""
    import uvicorn

    console = console or Console()
    settings = (settings or ServeSettings()).check()
    table = ModelTable.from_args(models, device=device, precision=precision, use_ema=use_ema, max_batch=max_batch,
                                 tiling=tiling, backend=backend)
    with console.status(f"loading {len(table.specs)} model{'s' if len(table.specs) != 1 else ''}"):
        table.load()
    _summary(table, console)
    sock = bind(host, port)
    actual = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    url = f"http://{shown}:{actual}"
    if not is_loopback(host):
        console.print(f"[yellow]note:[/] listening on {host}, reachable from other machines; the API has no "
                      "authentication, so put it behind a proxy that has", highlight=False)
    console.print(f"[green]serving[/] on {url}  (page {url}/, API {url}/v1/models, OpenAPI {url}/openapi.json); "
                  "Ctrl-C or SIGTERM stops after the requests in flight", highlight=False, soft_wrap=True)
    config = uvicorn.Config(create_app(table, settings), log_level=log_level, access_log=access_log,
                            lifespan="on", server_header=False, timeout_graceful_shutdown=None)
    server = uvicorn.Server(config)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        server.run(sockets=[sock])
    except (_Stopped, KeyboardInterrupt):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    if server.started:
        console.print("stopped", highlight=False)

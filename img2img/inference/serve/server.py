"""Running the application under uvicorn: load the models (errors before listening), bind the
socket ourselves (a taken port is a clear error), serve until Ctrl-C or SIGTERM.

uvicorn's graceful shutdown stops accepting connections on SIGTERM, answers the requests being
computed (within --graceful-timeout), then runs the lifespan's shutdown; `serve` then returns
normally (exit status 0). Requests still receiving their bodies are answered 503 at once: a client
that stalls its upload never holds the shutdown.

uvicorn closes idle keep-alive connections (--keep-alive-timeout) but has no deadline for a request's
head; `_HeadDeadline` adds one (--header-timeout), as nginx's client_header_timeout.
"""
from __future__ import annotations

import asyncio
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


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def allowed_hosts(host: str, allow: list[str]) -> list[str] | None:
    """The Host header names served: bound to loopback, its own names and `allow` (--allow-host);
    bound to another address, any name unless `allow` lists them (then those and the loopback names)."""
    for name in allow:
        bad = not name or "/" in name or name.count(":") == 1 or "*" in name[1:] or (
            name.startswith("*") and not name.startswith("*.") and name != "*")
        if bad:
            raise Img2ImgError(f"--allow-host {name!r}: give a host name or address as clients write it in URLs, "
                               "without scheme or port (e.g. --allow-host img2img.example or --allow-host "
                               "'*.example'), or '*' for any")
    if "*" in allow or (not allow and not is_loopback(host)):
        return None
    own = [] if host.strip("[]") in ("0.0.0.0", "::", "") else [host.strip("[]")]
    names: list[str] = []
    for name in [*LOOPBACK_NAMES, *own, *allow]:
        name = name.lower().strip("[]")
        name = f"[{name}]" if ":" in name else name  # an IPv6 address, as a Host header writes it
        if name not in names:
            names.append(name)
    return names


def _protocol(header_timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request's line and headers."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class _HeadDeadline(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout, self._head_expired)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_expired(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # a request head that never completed: nothing to answer

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return _HeadDeadline


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
    for model in table.models.values():  # every direction: each has its own translator
        runs_on = "; ".join(dict.fromkeys(t.describe() for t in model.translators.values()))
        rows.add_row(model.name, model.kind, str(model.info.get("task") or "?"), ", ".join(model.directions),
                     runs_on)
    console.print(rows)
    for model in table.models.values():
        for direction, translator in model.translators.items():
            for note in translator.notes:  # e.g. what --backend auto chose, and why
                console.print(f"[yellow]note:[/] {model.name} {direction}: {note}", highlight=False)


def _server(config: Any, on_shutdown: Any) -> Any:
    """A uvicorn server that tells the application when its shutdown begins."""
    import uvicorn

    class _Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            on_shutdown()
            await super().shutdown(sockets)

    return _Server(config)


def serve(models: list[str], *, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          precision: str = "fp32", use_ema: bool = True, max_batch: int = 8, tiling: TileOptions = TileOptions(),
          settings: ServeSettings | None = None, log_level: str = "info", access_log: bool = True,
          console: Console | None = None, allow_host: list[str] | None = None, header_timeout: float = 10.0,
          keep_alive_timeout: float = 5.0, graceful_timeout: float = 30.0,
          backend: str | None = None) -> None:
    """Load `models` (``PATH`` or ``NAME=PATH``) and serve them until Ctrl-C or SIGTERM.

    `allow_host` names the Host headers served besides the loopback names (see `allowed_hosts`)."""
    import uvicorn

    console = console or Console()
    settings = settings or ServeSettings()
    if settings.allowed_hosts is None:
        settings.allowed_hosts = allowed_hosts(host, list(allow_host or []))
    settings.check()
    for flag, value in (("--header-timeout", header_timeout), ("--keep-alive-timeout", keep_alive_timeout),
                        ("--graceful-timeout", graceful_timeout)):
        if not 0 < value <= 3600:
            raise Img2ImgError(f"{flag} {value}: must be more than 0 and at most 3600 seconds")
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
        hosts = ("any Host header is served (--allow-host NAME limits it to the names clients use)"
                 if settings.allowed_hosts is None else f"Host headers served: {', '.join(settings.allowed_hosts)}")
        console.print(f"[yellow]note:[/] listening on {host}, reachable from other machines; the API has no "
                      f"authentication, so put it behind a proxy that has; {hosts}", highlight=False)
    if is_loopback(host) and settings.allowed_hosts is not None:
        console.print(f"answering the Host names {', '.join(settings.allowed_hosts)} (--allow-host adds others)",
                      highlight=False, soft_wrap=True)
    console.print(f"[green]serving[/] on {url}  (page {url}/, API {url}/v1/models, OpenAPI {url}/openapi.json); "
                  "Ctrl-C or SIGTERM stops after the requests being computed", highlight=False, soft_wrap=True)
    app = create_app(table, settings)
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on", server_header=False,
                            http=_protocol(header_timeout), timeout_keep_alive=keep_alive_timeout,
                            timeout_graceful_shutdown=graceful_timeout)
    server = _server(config, app.state.serve.drain)
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

"""Helpers for the serve tests: a real `img2img serve` process on a free port, and test images."""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m img2img serve ARGS --port P` with its output in a log file."""

    def __init__(self, args: list[str], log: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log)
        self.log_file = open(self.log_path, "wb")
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "img2img", "serve", *args, "--port", str(self.port)],
                                     stdout=self.log_file, stderr=subprocess.STDOUT, env=env)

    @property
    def log(self) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> ServerProcess:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"img2img serve exited with {self.proc.returncode}:\n{self.log}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise AssertionError(f"img2img serve was not ready within {timeout} s:\n{self.log}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.log_file.close()
        return self.proc.returncode


def noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A smooth random image with some noise: like a photo to a tiny generator, and not compressible to nothing."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.clip(np.asarray(coarse, dtype=np.int16) + rng.integers(-20, 21, (height, width, 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8)).convert(mode)


def png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def pixels(data: bytes | Path) -> np.ndarray:
    """An image's pixels as int32 HxWxC (16-bit images keep their values)."""
    if isinstance(data, Path):
        data = data.read_bytes()
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is not None and arr.dtype == np.uint16:
        arr = arr[:, :, ::-1] if arr.ndim == 3 else arr
        return arr.astype(np.int32).reshape(arr.shape[0], arr.shape[1], -1)
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im)
    return arr.astype(np.int32).reshape(arr.shape[0], arr.shape[1], -1)


def raw_request(port: int, head: str, body: bytes = b"", timeout: float = 30) -> socket.socket:
    """A socket to 127.0.0.1:`port` that has sent `head` (request line and headers, without the blank
    line's CRLF pairs) and then `body`: for clients no library would imitate (stalling, trickling)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n\r\n" + body)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of one HTTP/1.1 answer read from `sock` (with Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the server closed the connection before answering ({data[:200]!r})")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` (reads end) within `seconds`; bytes it sends meanwhile are skipped."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
    return False

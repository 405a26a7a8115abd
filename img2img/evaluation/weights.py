"""Weight files of feature extractors: where they are looked for, and an explicit, checked download.

A feature extractor factory that loads a file declares it as ``factory.weights = WeightsFile(...)``.
Its default place is the torch hub cache (``$TORCH_HOME/hub/checkpoints``, where torchvision keeps
the same file); a ``weights`` parameter of the factory points anywhere else. img2img never downloads
on its own: ``img2img weights download NAME`` does, when asked, with a progress bar, the sha256
checked before the file is moved into place (a mismatch or a cut transfer leaves nothing behind).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from img2img import atomic
from img2img.errors import Img2ImgError

CHUNK = 1 << 20


def hub_checkpoints() -> Path:
    """The torch hub cache folder of weight files (honours $TORCH_HOME)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


@dataclass(frozen=True)
class WeightsFile:
    """A file an extractor loads: its name in the hub cache, where to get it and its sha256.

    ``sha256`` is the full hex digest, or a prefix of it: torchvision names its files with the first
    8 hex digits of theirs (``inception_v3_google-0cc3c7bd.pth``) and torch.hub checks just those.
    """

    name: str
    file: str
    url: str
    sha256: str
    size: int | None = None
    """Bytes, when known: shown by `img2img weights list` before a download."""

    @property
    def default_path(self) -> Path:
        return hub_checkpoints() / self.file

    @property
    def command(self) -> str:
        return f"img2img weights download {self.name}"

    def path(self, given: str | Path | None = None) -> Path:
        return Path(given).expanduser() if given is not None else self.default_path

    def problem(self, given: str | Path | None = None) -> str | None:
        """Why the file cannot be used (missing), or None: cheap, for `img2img validate`."""
        path = self.path(given)
        if path.is_file():
            return None
        if given is not None:
            return (f"the {self.name} weights file {path} does not exist; give the path of {self.file} "
                    f"(get it with `{self.command} --to {path}`)")
        return (f"the {self.name} weights are not in the torch hub cache: {path} does not exist. "
                f"Download them with `{self.command}` (from {self.url}), or give their path as the "
                "extractor's `weights` parameter. img2img never downloads weights on its own.")

    def locate(self, given: str | Path | None = None) -> Path:
        """The file to load; an `Img2ImgError` naming where it looked and the command otherwise."""
        problem = self.problem(given)
        if problem is not None:
            raise Img2ImgError(problem)
        return self.path(given)

    def matches(self, digest: str) -> bool:
        return digest.lower().startswith(self.sha256.lower())


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download(weights: WeightsFile, *, url: str | None = None, to: Path | None = None, console=None,
             force: bool = False) -> tuple[Path, bool]:
    """Fetch `weights` to the hub cache (or `to`): returns (path, downloaded).

    A file already there with the right checksum is kept (downloaded=False) unless `force`. The
    transfer goes to a hidden file next to the target, its sha256 is checked, then it is renamed
    over the target: a mismatch, a cut connection or Ctrl-C leaves the target as it was.
    """
    url = url or weights.url
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise Img2ImgError(f"--url {url}: only http:// and https:// addresses can be downloaded")
    target = Path(to).expanduser() if to is not None else weights.default_path
    if target.is_dir():
        target = target / weights.file
    if target.is_file() and not force and weights.matches(sha256_of(target)):
        return target, False
    with atomic.atomic_path(target) as tmp:  # kept only when it arrived whole and its checksum fits
        digest, received = _fetch(url, tmp, weights, console)
        if not weights.matches(digest):
            raise Img2ImgError(
                f"{url} sent a file whose sha256 is {digest}, but {weights.name} needs one starting with "
                f"{weights.sha256}; it was not saved ({target} is unchanged). Check --url: it must serve "
                f"{weights.file} itself.")
    return target, True


def _fetch(url: str, tmp: Path, weights: WeightsFile, console) -> tuple[str, int]:
    """Stream `url` into `tmp` with a progress bar; the digest and byte count of what arrived."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    h = hashlib.sha256()
    received = 0
    try:
        response = urllib.request.urlopen(url, timeout=60)  # noqa: S310 (http/https checked above)
    except urllib.error.HTTPError as exc:
        raise Img2ImgError(f"{url}: the server answered {exc.code} {exc.reason}; check --url") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Img2ImgError(f"{url}: cannot connect ({reason}); check the address and the network") from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else weights.size
        progress = Progress(TextColumn(f"[bold]{weights.file}[/]"), BarColumn(), DownloadColumn(),
                            TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=False)
        with progress, open(tmp, "wb") as fh:
            task = progress.add_task("download", total=total)
            try:
                while chunk := response.read(CHUNK):
                    fh.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
                    progress.update(task, completed=received)
            except (http.client.IncompleteRead, OSError) as exc:
                raise Img2ImgError(f"{url}: the transfer stopped after {received} bytes ({type(exc).__name__}); "
                                   "nothing was saved, run the command again") from None
            fh.flush()
            os.fsync(fh.fileno())
    if length and length.isdigit() and received != int(length):
        raise Img2ImgError(f"{url}: the transfer stopped after {received} of {int(length)} bytes; nothing was "
                           "saved, run the command again")
    return h.hexdigest(), received


def status(weights: WeightsFile, given: Path | None = None, *, verify: bool = False) -> dict:
    """What `img2img weights list` shows for one file."""
    path = weights.path(given)
    present = path.is_file()
    out = {"name": weights.name, "file": weights.file, "path": str(path), "present": present,
           "bytes": path.stat().st_size if present else weights.size, "url": weights.url, "sha256": weights.sha256}
    if verify and present:
        out["checksum_ok"] = weights.matches(sha256_of(path))
    return out

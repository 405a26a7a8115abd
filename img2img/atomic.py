"""Writing files so that a crash, Ctrl-C, ``kill -9`` or a full disk leaves the old file or the new one.

Every file img2img writes (checkpoints, translated images, ONNX and safetensors exports, run files)
goes through here: a temporary file in the same folder, fsynced, given the permissions a file the
user creates would get (0o666 less the umask, or the mode of the file it replaces), then renamed.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

PARTIAL_GLOB = ".*.tmp"
"""Names of temporary files a killed write leaves behind (``.NAME.<random>.tmp``)."""


def umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no portable way to read it without setting it
    os.umask(mask)
    return mask


def file_mode(path: Path) -> int:
    """The mode to give `path`: its current one if it exists, else what open() would give a new file."""
    try:
        return stat.S_IMODE(Path(path).stat().st_mode)
    except OSError:
        return 0o666 & ~umask()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a library that writes by file name; on success it
    becomes `path` (fsynced, usual permissions), on any exception it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb", encoding: str | None = None,
                 newline: str | None = None) -> Iterator[IO]:
    """An open file whose content replaces `path` only when the block ends without an exception."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding, newline=newline) as fh:
            yield fh
            fh.flush()


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def remove_partial_files(folder: Path) -> list[Path]:
    """Delete the temporary files that a killed write left in `folder`.

    Only the process that owns the folder may call this: another writer's file in progress would go too.
    """
    removed = []
    for tmp in Path(folder).glob(PARTIAL_GLOB):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed

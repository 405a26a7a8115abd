"""Reading tensor files people download (checkpoints, state dicts, weights) without trusting them.

A file may be something else altogether (a picture given as a model), a zip whose records inflate to
gigabytes, tensors that are views of a few bytes (stride 0) declaring a huge network, or metadata
that describes a network far larger than the tensors stored. Each check here runs before anything
large is built and ends in an `Img2ImgError` that names the file.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from img2img.errors import Img2ImgError

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"), (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"), (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
)


def foreign_kind(path: Path) -> str | None:
    """What `path` is when it is plainly not a file ``torch.save`` writes (a zip or a pickle): "a PNG
    image", "a text file", ...; None when it may be one."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "a safetensors file"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not merely a character cut at the end of the sample
            return None
    return "a text file"


def check_zip_records(path: Path) -> None:
    """A zip-format torch file whose records are stored as they are, none larger than the file: torch
    writes them so, and a compressed record could inflate a few kilobytes into gigabytes."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # torch.load reports the damage
    size = path.stat().st_size
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > size:
            raise Img2ImgError(f"refused to load {path}: its record {info.filename} is compressed to "
                               f"{info.compress_size} bytes from {info.file_size}, which torch.save never writes "
                               "(a file crafted to take memory, or damaged); nothing in the file was run")


def weights_only_refusal(path: Path, exc: pickle.UnpicklingError, advice: str) -> Img2ImgError:
    """The message for a file the weights-only unpickler would not build (never torch's own advice to
    load it with ``weights_only=False``); nothing in it was run."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if found:
        what = f"a pickled Python object ({found.group(1)})"
    else:
        detail = next((line.strip() for line in str(exc).splitlines() if "Unsupported" in line), "")
        what = f"pickled data that is not plain tensors{f' ({detail})' if detail else ''}"
    return Img2ImgError(f"refused to load {path}: it carries {what}. Building it would need a full unpickle, "
                        f"which can run arbitrary code, so img2img never does that and nothing in the file was "
                        f"run. {advice}")


def check_backed(tensors: Iterable[tuple[str, Any]], path: Path) -> None:
    """Every tensor holds its own values: no stride-0 (expanded) or overlapping views, which let a file
    of kilobytes declare the shapes of a network of gigabytes."""
    for name, tensor in tensors:
        if not isinstance(tensor, torch.Tensor) or tensor.numel() <= 1:
            continue
        needed = tensor.numel() * tensor.element_size()
        if any(s == 0 and n > 1 for s, n in zip(tensor.stride(), tensor.shape)) \
                or needed > tensor.untyped_storage().nbytes():
            raise Img2ImgError(f"refused to load {path}: its tensor {name} declares {tuple(tensor.shape)} "
                               f"({needed} bytes) but stores {tensor.untyped_storage().nbytes()} bytes (an expanded "
                               "view), which no saved network has; the file is crafted or damaged")


def tensors_in(obj: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted name, tensor) of every tensor in nested dicts and lists."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from tensors_in(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from tensors_in(value, f"{prefix}.{i}" if prefix else str(i))


def load_weights_only(path: Path, advice: str) -> Any:
    """``torch.load(weights_only=True)`` of a file checked first (not another kind of file, no inflating
    records) and after (every tensor backed by its own bytes). Errors other than the refusals here are
    torch's, for the caller to word."""
    kind = foreign_kind(path)
    if kind is not None:
        raise NotATorchFile(path, kind)
    check_zip_records(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise weights_only_refusal(path, exc, advice) from None
    check_backed(tensors_in(obj), path)
    return obj


class NotATorchFile(Img2ImgError):
    """A file that is plainly not one torch.save writes; callers add what to give instead."""

    def __init__(self, path: Path, kind: str):
        self.path, self.kind = path, kind
        super().__init__(f"{path} is {kind}, not a file torch.save writes")


def build_checked(build: Callable[[str], nn.Module], shapes: Mapping[str, tuple[int, ...]], what: str) -> nn.Module:
    """`build("cpu")` only after `build("meta")` (no memory; `build` gets the device) has the tensor shapes
    the file stores, so metadata that describes a far larger network than the file holds allocates nothing.

    `what` starts the error ("X is damaged: its weights do not fit the generator its metadata describes").
    A network that cannot be built on the meta device is built for real (and its shapes checked after).
    """
    from img2img.tasks.base import _weights_left_uninitialised

    try:
        with torch.device("meta"), _weights_left_uninitialised():
            meta = build("meta")
        own = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    except Img2ImgError:
        raise
    except Exception:  # a network that needs real tensors while it is built
        own = None
    if own is not None:
        problems = shape_problems(own, shapes)
        if problems:
            raise Img2ImgError(f"{what} ({problems})")
    return build("cpu")


def shape_problems(own: Mapping[str, tuple[int, ...]], stored: Mapping[str, tuple[int, ...]]) -> str:
    """The first keys missing, unexpected or mis-shaped, as one phrase; "" when the two agree."""
    missing = [k for k in own if k not in stored]
    unexpected = [k for k in stored if k not in own]
    shapes = [f"{k} ({tuple(stored[k])} in the file, {tuple(own[k])} expected)" for k in own
              if k in stored and tuple(stored[k]) != tuple(own[k])]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            problems.append(f"{label}: {', '.join(keys[:3])}{f' and {len(keys) - 3} more' if len(keys) > 3 else ''}")
    return "; ".join(problems)

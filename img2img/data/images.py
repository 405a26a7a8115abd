"""Reading and writing image files: one reader, one writer.

Every image inside img2img is a float32 HWC numpy array in [0, 1] with 1, 3 or 4 channels; models
see CHW tensors in [-1, 1].
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from img2img import atomic
from img2img.errors import Img2ImgError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_PIXELS_ENV = "IMG2IMG_MAX_IMAGE_PIXELS"
_PILLOW_DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS
_ORIENTATION = 0x0112


class ImageReadError(Img2ImgError):
    """An image file that cannot be read; ``path`` and ``reason`` are kept for listings."""

    def __init__(self, path: Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def _extensions_text() -> str:
    return ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)




def pixel_limit() -> int | None:
    """The decompression-bomb limit: IMG2IMG_MAX_IMAGE_PIXELS (0 or 'none' = no limit) or Pillow's.

    A value that is not a number is an `Img2ImgError`; commands that read many files call this once
    before the first, so the setting is reported once rather than for every file.
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return _PILLOW_DEFAULT_MAX_PIXELS
    if raw.lower() in ("0", "none", "off"):
        return None
    try:
        value = int(float(raw))
    except ValueError:
        raise Img2ImgError(
            f"{MAX_PIXELS_ENV}={raw!r} is not a number; set it to the largest pixel count "
            "(width x height) to accept, or 0 for no limit"
        ) from None
    return value if value > 0 else None


def _too_large(path: Path, pixels: int | str, limit: int) -> ImageReadError:
    return ImageReadError(
        path,
        f"image has {pixels} pixels, more than the limit of {limit} (Pillow's guard against "
        f"decompression bombs). If you trust this file, raise the limit, e.g. "
        f"export {MAX_PIXELS_ENV}={pixels if isinstance(pixels, int) else 2 * limit} (0 = no limit)",
    )


def _open_loaded(path: Path) -> tuple[Image.Image, bool]:
    """Open, fully decode (so truncated files fail here) and orient one image file.

    Also says whether the file holds 16-bit colour, which Pillow decodes to 8 bits.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot access the file ({exc.strerror or exc})") from None
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    if size == 0:
        raise ImageReadError(path, "file is empty (0 bytes); re-export or remove it")
    return _open_source(path, path)


def _open_source(source: Path | io.BytesIO, path: Path) -> tuple[Image.Image, bool]:
    """`_open_loaded` for a file or for bytes in memory; `path` names the image in errors."""
    limit = pixel_limit()
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            # img2img raises its own error above the limit; Pillow's warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(source)
        with opened as im:
            w, h = im.size
            if limit is not None and w * h > limit:
                raise _too_large(path, w * h, limit)
            sixteen = _sixteen_bit_colour(im)  # before load(), which clears the tile list
            im.load()
            return (ImageOps.exif_transpose(im) if _orientation(im) not in (None, 1) else im), sixteen
    except Image.DecompressionBombError as exc:
        digits = [int(t) for t in str(exc).replace("(", " ").split() if t.isdigit()]
        raise _too_large(path, digits[0] if digits else "too many", limit or 0) from None
    except UnidentifiedImageError:
        kind = f"a {path.suffix.lstrip('.')} file" if path.suffix else "an image file"
        raise ImageReadError(path, f"not an image Pillow can read (is it really {kind}?)") from None
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        reason = str(exc) or type(exc).__name__
        raise ImageReadError(path, f"cannot decode the image: {reason} (the file may be truncated or corrupt)") from None


def _orientation(im: Image.Image) -> int | None:
    try:
        return im.getexif().get(_ORIENTATION)
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        return None


def _sixteen_bit_colour(im: Image.Image) -> bool:
    """Pillow decodes 16-bit colour PNG/TIFF to 8 bits; the tile's raw mode still tells."""
    tiles = getattr(im, "tile", None) or []
    for tile in tiles[:1]:
        raw = tile.args[0] if isinstance(tile.args, tuple) and tile.args else tile.args
        if isinstance(raw, str) and ";16" in raw and im.mode in ("RGB", "RGBA", "LA"):
            return True
    return False


def image_bit_depth(path: Path | bytes) -> int:
    """Bits per channel of an image file (or its bytes): 8, 16 or 32 (32-bit integer or float)."""
    source: Path | io.BytesIO = io.BytesIO(path) if isinstance(path, (bytes, bytearray)) else Path(path)
    path = Path("<bytes>") if isinstance(source, io.BytesIO) else source
    try:
        with Image.open(source) as im:
            if im.mode.startswith("I;16") or _sixteen_bit_colour(im):
                return 16
            if im.mode in ("I", "F"):
                return 32
            return 8
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"not a readable image ({exc})") from None


def probe_image(path: Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, verifying the file by decoding it completely."""
    return _open_loaded(path)[0].size


def _apply_orientation(arr: np.ndarray, orientation: int | None) -> np.ndarray:
    """EXIF orientation on an HWC array, as ImageOps.exif_transpose does on images."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
        7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
        8: lambda a: a.transpose(1, 0, 2)[::-1],
    }
    op = ops.get(orientation or 1)
    return np.ascontiguousarray(op(arr)) if op else arr


def _read_sixteen_bit_colour(path: Path, content: bytes | None = None) -> np.ndarray | None:
    """16-bit RGB(A) PNG/TIFF at full precision through OpenCV (Pillow keeps only 8 bits).

    Reads `content` when given (the file's bytes), else the file at `path`.
    """
    import cv2

    data = np.fromfile(path, dtype=np.uint8) if content is None else np.frombuffer(content, dtype=np.uint8)
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # libtiff chatters about valid files
    try:
        arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if arr is None or arr.dtype != np.uint16:
        return None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.shape[2] == 3:
        arr = arr[:, :, ::-1]
    elif arr.shape[2] == 4:
        arr = arr[:, :, [2, 1, 0, 3]]
    with Image.open(path if content is None else io.BytesIO(content)) as im:
        orientation = _orientation(im)
    return _apply_orientation(arr.astype(np.float32) / 65535.0, orientation)


def _pil_to_float(im: Image.Image) -> np.ndarray:
    """HWC float32 in [0, 1] with 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA) channels."""
    mode = im.mode
    if mode == "1":
        im, mode = im.convert("L"), "L"
    elif mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    elif mode == "PA":
        im, mode = im.convert("RGBA"), "RGBA"
    elif mode in ("La",):
        im, mode = im.convert("LA"), "LA"
    elif mode in ("RGBa",):
        im, mode = im.convert("RGBA"), "RGBA"
    if mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.float32) / 65535.0
    elif mode == "I":
        arr = np.clip(np.asarray(im).astype(np.float32) / 65535.0, 0.0, 1.0)
    elif mode == "F":
        arr = np.clip(np.nan_to_num(np.asarray(im, dtype=np.float32)), 0.0, 1.0)
    elif mode in ("L", "LA", "RGB", "RGBA"):
        arr = np.asarray(im, dtype=np.float32) / 255.0
    else:  # CMYK, YCbCr, LAB, HSV, RGBX, ...
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as Pillow's convert("L")


def _to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """Convert HWC with 1-4 channels to exactly `channels` (1 = luminance, alpha dropped or set to 1)."""
    have = arr.shape[2]
    grey = have <= 2
    colour = np.repeat(arr[:, :, :1], 3, axis=2) if grey else arr[:, :, :3]
    alpha = arr[:, :, -1:] if have in (2, 4) else None
    if channels == 1:
        out = arr[:, :, :1] if grey else (colour @ _LUMA)[:, :, None]
    elif channels == 3:
        out = colour
    else:
        out = np.concatenate([colour, alpha if alpha is not None else np.ones_like(arr[:, :, :1])], axis=2)
    return np.ascontiguousarray(out, dtype=np.float32)


def _check_channels(channels: int) -> None:
    if channels not in (1, 3, 4):
        raise ValueError(f"channels must be 1, 3 or 4, got {channels}")


def _decode(path: Path) -> np.ndarray:
    """HWC float32 in [0, 1] with the file's own channels (1, 2, 3 or 4)."""
    im, sixteen = _open_loaded(path)
    arr = _read_sixteen_bit_colour(path) if sixteen else None
    return _pil_to_float(im) if arr is None else arr


def read_image(path: Path, channels: int) -> np.ndarray:
    """HWC float32 in [0, 1] with exactly `channels` channels (1, 3 or 4), EXIF orientation applied.

    16-bit files keep their precision. Errors name the file and the reason.
    """
    _check_channels(channels)
    return _to_channels(_decode(Path(path)), channels)


def decode_image_bytes(data: bytes, channels: int, name: str = "upload") -> np.ndarray:
    """`read_image` for an image held in memory (an upload): the same decoding, orientation, modes,
    16-bit precision and decompression-bomb limit. Errors are `ImageReadError`s naming `name`."""
    _check_channels(channels)
    path = Path(name)
    data = bytes(data)
    if not data:
        raise ImageReadError(path, "is empty (0 bytes), not an image")
    im, sixteen = _open_source(io.BytesIO(data), path)
    arr = _read_sixteen_bit_colour(path, data) if sixteen else None
    return _to_channels(_pil_to_float(im) if arr is None else arr, channels)


def read_pair_image(path: Path, channels_left: int, channels_right: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a side-by-side AB image into its left and right halves (equal widths)."""
    _check_channels(channels_left)
    _check_channels(channels_right)
    path = Path(path)
    arr = _decode(path)
    half = arr.shape[1] // 2
    if half == 0:
        raise ImageReadError(path, f"is {arr.shape[1]} pixel(s) wide, too narrow to hold two images side by side")
    return _to_channels(arr[:, :half], channels_left), _to_channels(arr[:, half : 2 * half], channels_right)


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """HWC (or HW) float in [0, 1] -> CHW float32 tensor in [-1, 1]."""
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    return t.mul(2.0).sub_(1.0)


def to_image_array(t: torch.Tensor) -> np.ndarray:
    """CHW tensor in [-1, 1] (or 1xCxHxW) -> HWC float32 array in [0, 1], clipped."""
    t = t.detach()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"expected a CHW tensor, got shape {tuple(t.shape)}")
    arr = t.to("cpu", torch.float32).add(1.0).mul_(0.5).clamp_(0.0, 1.0).permute(1, 2, 0)
    return np.ascontiguousarray(arr.numpy())


_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}


def save_image(path: Path, arr: np.ndarray, *, bit_depth: int = 8) -> None:
    """Write an HWC float [0, 1] image with 1, 3 or 4 channels; the format follows the suffix.

    JPEG and BMP drop alpha. ``bit_depth=16`` writes 16-bit PNG/TIFF (other formats stay 8-bit).
    The file appears complete or not at all (written next to it, then renamed).
    """
    path = Path(path)
    if path.suffix.lower() not in _FORMATS:
        raise Img2ImgError(f"{path}: cannot write '{path.suffix}' images; use one of {_extensions_text()}")
    atomic.write_bytes(path, encode_image(arr, path.suffix, bit_depth=bit_depth, name=str(path)))


def encode_image(arr: np.ndarray, fmt: str, *, bit_depth: int = 8, name: str = "image") -> bytes:
    """The bytes `save_image` writes for `arr` in format `fmt` (png, jpg, jpeg, webp, bmp, tif, tiff)."""
    key = "." + fmt.lower().lstrip(".")
    if key not in _FORMATS:
        raise Img2ImgError(f"{name}: cannot encode '{fmt}' images; use one of {_extensions_text()}")
    fmt = _FORMATS[key]
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HWC image with 1, 3 or 4 channels, got shape {arr.shape}")
    arr = np.clip(np.nan_to_num(arr), 0.0, 1.0)
    if fmt in ("JPEG", "BMP") and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if bit_depth == 16 and fmt in ("PNG", "TIFF"):
        return _encode_sixteen_bit(arr, fmt, Path(name))
    u8 = np.round(arr * 255.0).astype(np.uint8)
    im = Image.fromarray(u8[:, :, 0] if u8.shape[2] == 1 else u8)
    buffer = io.BytesIO()
    options: dict[str, Any] = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    im.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _encode_sixteen_bit(arr: np.ndarray, fmt: str, path: Path) -> bytes:
    u16 = np.round(arr * 65535.0).astype(np.uint16)
    if u16.shape[2] == 1:
        buffer = io.BytesIO()
        Image.fromarray(u16[:, :, 0]).save(buffer, format=fmt)  # mode I;16
        return buffer.getvalue()
    import cv2

    bgr = u16[:, :, ::-1] if u16.shape[2] == 3 else u16[:, :, [2, 1, 0, 3]]
    ok, encoded = cv2.imencode(".png" if fmt == "PNG" else ".tiff", np.ascontiguousarray(bgr))
    if not ok:
        raise Img2ImgError(f"{path}: could not encode a 16-bit {fmt} image")
    return encoded.tobytes()



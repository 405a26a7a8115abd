"""Images in and out, image folders, and the training data.

Every image inside img2img is a float32 HWC numpy array in [0, 1] with 1, 3 or 4 channels; models
see CHW tensors in [-1, 1]. Training data is a pure function of (seed, epoch, position): the
permutation, the random partner in unpaired data and each sample's augmentation are all drawn from
those numbers, so any number of workers, any number of processes and a resumed run see the same
samples.
"""
from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from img2img.errors import Img2ImgError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "TrainData",
    "image_bit_depth",
    "list_images",
    "match_pairs",
    "probe_image",
    "read_image",
    "save_image",
    "to_image_array",
    "to_tensor",
]

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


# ---------------------------------------------------------------------------------------------
# Folders


def _extensions_text() -> str:
    return ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)


def list_images(folder: Path, yaml_path: str | None = None) -> list[Path]:
    """Every image under ``folder`` (recursive, hidden files skipped), sorted by relative path."""
    folder = Path(folder)
    where = f"{yaml_path}: " if yaml_path else ""
    fix = f"Point {yaml_path} at a folder of images" if yaml_path else "Pass a folder of images"
    fix += f" ({_extensions_text()})."
    if not folder.exists():
        raise Img2ImgError(f"{where}the folder '{folder}' does not exist. {fix}")
    if not folder.is_dir():
        raise Img2ImgError(f"{where}'{folder}' is a file, not a folder. {fix}")
    found: list[tuple[str, Path]] = []
    seen_dirs: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen_dirs:  # a symlink loop
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            path = Path(root) / name
            found.append((path.relative_to(folder).as_posix(), path))
    if not found:
        raise Img2ImgError(f"{where}the folder '{folder}' contains no images. {fix}")
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def match_pairs(
    files_a: Sequence[Path], root_a: Path, files_b: Sequence[Path], root_b: Path,
    yaml_paths: tuple[str, str] = ("data.a", "data.b"),
) -> list[tuple[Path, Path]]:
    """Pair files of two folders by relative path without extension, falling back to the file stem.

    Raises one Img2ImgError listing every file left without a partner (and any ambiguous name).
    """

    def keyed(files: Sequence[Path], root: Path) -> tuple[dict[str, Path], list[str]]:
        table: dict[str, Path] = {}
        clashes: list[str] = []
        for f in files:
            key = f.relative_to(root).with_suffix("").as_posix()
            if key in table:
                clashes.append(f"{table[key]} and {f}")
            table[key] = f
        return table, clashes

    table_a, clash_a = keyed(files_a, Path(root_a))
    table_b, clash_b = keyed(files_b, Path(root_b))
    if clash_a or clash_b:
        shown = (clash_a + clash_b)[:10]
        raise Img2ImgError(
            "paired data needs one file per name, but these differ only by extension:\n  "
            + "\n  ".join(shown)
            + "\nRename or remove one of each."
        )
    pairs = {k: (table_a[k], table_b[k]) for k in table_a.keys() & table_b.keys()}
    rest_a = {k: p for k, p in table_a.items() if k not in pairs}
    rest_b = {k: p for k, p in table_b.items() if k not in pairs}
    # fallback: the same file stem in different sub-folders, when that stem is unique on both sides
    stems_a: dict[str, list[str]] = {}
    stems_b: dict[str, list[str]] = {}
    for k, p in rest_a.items():
        stems_a.setdefault(p.stem, []).append(k)
    for k, p in rest_b.items():
        stems_b.setdefault(p.stem, []).append(k)
    for stem, keys_a in stems_a.items():
        keys_b = stems_b.get(stem, [])
        if len(keys_a) == 1 and len(keys_b) == 1:
            pairs[keys_a[0]] = (rest_a.pop(keys_a[0]), rest_b.pop(keys_b[0]))
    if rest_a or rest_b:
        lines = [
            f"paired data needs a file in {yaml_paths[1]} ({root_b}) for every file in {yaml_paths[0]} "
            f"({root_a}), matched by name (the extension may differ)."
        ]
        for label, rest, other in ((yaml_paths[0], rest_a, yaml_paths[1]), (yaml_paths[1], rest_b, yaml_paths[0])):
            if rest:
                names = sorted(rest)
                lines.append(f"{len(names)} file(s) in {label} have no partner in {other}:")
                lines += [f"  {rest[n]}" for n in names[:10]]
                if len(names) > 10:
                    lines.append(f"  ... and {len(names) - 10} more")
        lines.append("Rename or remove these files, or train an unpaired task (cyclegan) instead.")
        raise Img2ImgError("\n".join(lines))
    return [pairs[k] for k in sorted(pairs)]


# ---------------------------------------------------------------------------------------------
# Reading and writing images


def _pixel_limit() -> int | None:
    """The decompression-bomb limit: IMG2IMG_MAX_IMAGE_PIXELS (0 or 'none' = no limit) or Pillow's."""
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
    limit = _pixel_limit()
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            # img2img raises its own error above the limit; Pillow's warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
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
        raise ImageReadError(
            path, f"not an image Pillow can read (is it really a {path.suffix.lstrip('.') or 'image'} file?)"
        ) from None
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


def image_bit_depth(path: Path) -> int:
    """Bits per channel of an image file: 8, 16 or 32 (32-bit integer or float)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
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


def _read_sixteen_bit_colour(path: Path) -> np.ndarray | None:
    """16-bit RGB(A) PNG/TIFF at full precision through OpenCV (Pillow keeps only 8 bits)."""
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
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
    with Image.open(path) as im:
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
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise Img2ImgError(f"{path}: cannot write '{path.suffix}' images; use one of {_extensions_text()}")
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
    sixteen = bit_depth == 16 and fmt in ("PNG", "TIFF")
    if sixteen:
        data = _encode_sixteen_bit(arr, fmt, path)
    else:
        u8 = np.round(arr * 255.0).astype(np.uint8)
        im = Image.fromarray(u8[:, :, 0] if u8.shape[2] == 1 else u8)
        buffer = io.BytesIO()
        options: dict[str, Any] = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
        im.save(buffer, format=fmt, **options)
        data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


# ---------------------------------------------------------------------------------------------
# Training data


def _seed(*numbers: int) -> int:
    """A 32-bit seed from a tuple of integers (stable across platforms and runs)."""
    return int(np.random.SeedSequence([int(n) % 2**64 for n in numbers]).generate_state(1)[0])


_TRAIN, _FIXED = 0, 1  # sample streams: training epochs and the fixed sample-grid batch
_PERMUTATION = 0x5EED  # stream tag for epoch permutations


class _Samples(Dataset):
    """Loads and augments one sample from a (stream, epoch, position) key; picklable for workers."""

    def __init__(self, *, kind: str, files_a: list[Path], files_b: list[Path], pairs: list[tuple[Path, Path]],
                 ab_files: list[Path], swap_ab: bool, channels_a: int, channels_b: int,
                 transforms: list | None, input_transforms: list | None, seed: int, yaml_paths: dict[str, str]):
        self.kind = kind
        self.files_a = files_a
        self.files_b = files_b
        self.pairs = pairs
        self.ab_files = ab_files
        self.swap_ab = swap_ab
        self.channels_a = channels_a
        self.channels_b = channels_b
        self.transforms = list(transforms or [])
        self.input_transforms = list(input_transforms or [])
        self.seed = seed
        self.yaml_paths = yaml_paths
        self._composes: dict[str, Any] | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_composes"] = None  # rebuilt in each worker
        return state

    def __len__(self) -> int:
        return self.num_items

    @property
    def num_items(self) -> int:
        if self.kind == "unpaired":
            return max(len(self.files_a), len(self.files_b))
        return len(self.ab_files) if self.ab_files else len(self.pairs)

    def _compose(self, key: str):
        if self._composes is None:
            from img2img import transforms as T

            self._composes = {}
            if self.kind == "unpaired":
                if self.transforms:
                    self._composes["a"] = T.build_transform(self.transforms, paired=False)
                    self._composes["b"] = T.build_transform(self.transforms, paired=False)
            else:
                if self.transforms:
                    self._composes["joint"] = T.build_transform(self.transforms, paired=True)
                if self.input_transforms:
                    self._composes["input"] = T.build_transform(self.input_transforms, paired=False)
        return self._composes.get(key)

    def _apply(self, key: str, seed: int, files: list[Path], **images: np.ndarray) -> dict[str, np.ndarray]:
        compose = self._compose(key)
        if compose is None:
            return images
        from img2img import transforms as T

        T.reseed(compose, seed)
        try:
            return compose(**images)
        except Exception as exc:
            which = self.yaml_paths["input_transforms" if key == "input" else "transforms"]
            names = ", ".join(str(f) for f in files)
            raise Img2ImgError(f"{names}: {which} failed on this image: {type(exc).__name__}: {exc}") from exc

    def paths(self, stream: int, epoch: int, pos: int) -> tuple[Path, ...]:
        if self.kind == "unpaired":
            return self.files_a[pos % len(self.files_a)], self.files_b[self._b_index(stream, epoch, pos)]
        if self.ab_files:
            return (self.ab_files[pos],)
        return self.pairs[pos]

    def _b_index(self, stream: int, epoch: int, pos: int) -> int:
        if stream == _FIXED:
            return pos % len(self.files_b)
        rng = np.random.default_rng(_seed(self.seed, stream, epoch, pos, 2))
        return int(rng.integers(len(self.files_b)))

    def load(self, stream: int, epoch: int, pos: int) -> dict[str, Any]:
        """One sample as {"a": CHW tensor, "b": CHW tensor, "paths": (...)}."""
        files = self.paths(stream, epoch, pos)
        if self.kind == "unpaired":
            path_a, path_b = files
            a = self._apply("a", _seed(self.seed, stream, epoch, pos, 0), [path_a],
                            image=read_image(path_a, self.channels_a))["image"]
            b = self._apply("b", _seed(self.seed, stream, epoch, pos, 1), [path_b],
                            image=read_image(path_b, self.channels_b))["image"]
        else:
            if self.ab_files:
                left, right = read_pair_image(files[0], self.channels_a, self.channels_b)
            else:
                left, right = read_image(files[0], self.channels_a), read_image(files[1], self.channels_b)
            inp, target = (right, left) if self.swap_ab else (left, right)
            if inp.shape[:2] != target.shape[:2]:
                raise Img2ImgError(
                    f"{' and '.join(map(str, files))}: paired images must be the same size, got "
                    f"{left.shape[1]}x{left.shape[0]} and {right.shape[1]}x{right.shape[0]} (width x height)"
                )
            out = self._apply("joint", _seed(self.seed, stream, epoch, pos, 0), list(files), image=inp, target=target)
            inp, target = out["image"], out["target"]
            if self.input_transforms:
                inp = self._apply("input", _seed(self.seed, stream, epoch, pos, 1), list(files), image=inp)["image"]
                if inp.shape[:2] != target.shape[:2]:
                    raise Img2ImgError(
                        f"{self.yaml_paths['input_transforms']} changed the input's size to "
                        f"{inp.shape[0]}x{inp.shape[1]} but the target stays {target.shape[0]}x{target.shape[1]}; "
                        "size-changing stages (crops, resizes) belong in "
                        f"{self.yaml_paths['transforms']}, which applies to both"
                    )
            a, b = inp, target
        return {"a": to_tensor(a), "b": to_tensor(b), "paths": tuple(str(f) for f in files)}

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        try:
            return self.load(*key)
        except Img2ImgError as exc:  # travels to the main process as data, raised there without a worker traceback
            return {"error": str(exc)}


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [item["error"] for item in items if "error" in item]
    if errors:
        return {"error": errors[0]}
    batch: dict[str, Any] = {}
    for key in ("a", "b"):
        shapes = [tuple(item[key].shape) for item in items]
        if len(set(shapes)) > 1:
            listing = "\n".join(
                f"  {item['paths'][0 if key == 'a' or len(item['paths']) == 1 else 1]}: "
                f"{s[1]}x{s[2]} (height x width) after the transforms"
                for item, s in zip(items, shapes)
            )
            return {
                "error": "images in one batch must have the same size after the transforms, but:\n"
                f"{listing}\nAdd a Resize or a crop stage (e.g. RandomCrop) to the pipeline's data.transforms "
                "so every image ends up the same size, or use batch_size: 1."
            }
        batch[key] = torch.stack([item[key] for item in items])
    return batch


class _EpochSampler(Sampler):
    """Yields (stream, epoch, position) keys of one rank's share of an epoch, from a given offset."""

    def __init__(self, num_items: int, seed: int, rank: int, world_size: int, batch_size: int):
        self.num_items = num_items
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size
        self.epoch = 0
        self.start = 0

    def per_rank(self) -> int:
        return -(-self.num_items // self.world_size)  # padded so every rank gets the same count

    def usable(self) -> int:
        return (self.per_rank() // self.batch_size) * self.batch_size

    def positions(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng(_seed(self.seed, _PERMUTATION, epoch)).permutation(self.num_items)
        total = self.per_rank() * self.world_size
        if total > self.num_items:  # wrap around, as torch's DistributedSampler does
            order = np.concatenate([order, order[: total - self.num_items]])
        return order[self.rank :: self.world_size][: self.usable()]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        for pos in self.positions(self.epoch)[self.start :]:
            yield (_TRAIN, self.epoch, int(pos))

    def __len__(self) -> int:
        return max(0, self.usable() - self.start)


_DEFAULT_YAML_PATHS = {
    "a": "data.a",
    "b": "data.b",
    "pairs": "data.pairs",
    "transforms": "data.transforms",
    "input_transforms": "data.input_transforms",
    "skip_unreadable": "data.skip_unreadable",
    "batch_size": "train.batch_size",
}


def _ignore_sigint(_worker_id: int) -> None:
    """Ctrl-C is the training loop's to handle (finish the step, checkpoint); workers must not die of it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


class TrainData:
    """The training data of a pipeline, deterministic from (seed, epoch, position).

    Unpaired: an epoch visits positions 0..max(|A|, |B|)-1 in a permutation drawn from (seed, epoch);
    position p takes A[p % |A|] and a B drawn from (seed, epoch, p). Paired: `a`/`b` folders matched
    by name, or `pairs` holding side-by-side AB images; batch "a" is the input, "b" the target
    (direction "b2a" swaps them; each keeps the channel count of the folder or half it comes from).
    """

    def __init__(self, *, kind: Literal["unpaired", "paired"], a: Path | None, b: Path | None,
                 pairs: Path | None = None, direction: Literal["a2b", "b2a"] = "a2b",
                 channels_a: int = 3, channels_b: int = 3, transforms: list | None = None,
                 input_transforms: list | None = None, seed: int = 0, batch_size: int = 1,
                 num_workers: int = 0, skip_unreadable: bool = False, rank: int = 0,
                 world_size: int = 1, pin_memory: bool = False, yaml_paths: dict[str, str] | None = None):
        if kind not in ("unpaired", "paired"):
            raise ValueError(f"kind must be 'unpaired' or 'paired', got {kind!r}")
        if direction not in ("a2b", "b2a"):
            raise ValueError(f"direction must be 'a2b' or 'b2a', got {direction!r}")
        _check_channels(channels_a)
        _check_channels(channels_b)
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError("need batch_size >= 1, world_size >= 1 and 0 <= rank < world_size")
        self.kind = kind
        self.direction = direction
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.skip_unreadable = skip_unreadable
        self.rank = rank
        self.world_size = world_size
        self.pin_memory = pin_memory
        self.yaml_paths = {**_DEFAULT_YAML_PATHS, **(yaml_paths or {})}
        self.transforms = list(transforms or [])
        self.input_transforms = list(input_transforms or [])

        files_a: list[Path] = []
        files_b: list[Path] = []
        pair_list: list[tuple[Path, Path]] = []
        ab_files: list[Path] = []
        if kind == "unpaired":
            if a is None or b is None:
                raise Img2ImgError(
                    f"unpaired data needs both {self.yaml_paths['a']} and {self.yaml_paths['b']} (folders of images)"
                )
            files_a = list_images(Path(a), self.yaml_paths["a"])
            files_b = list_images(Path(b), self.yaml_paths["b"])
        elif pairs is not None:
            ab_files = list_images(Path(pairs), self.yaml_paths["pairs"])
        else:
            if a is None or b is None:
                raise Img2ImgError(
                    f"paired data needs {self.yaml_paths['a']} and {self.yaml_paths['b']} (inputs and targets "
                    f"matched by file name) or {self.yaml_paths['pairs']} (side-by-side AB images)"
                )
            pair_list = match_pairs(
                list_images(Path(a), self.yaml_paths["a"]), Path(a),
                list_images(Path(b), self.yaml_paths["b"]), Path(b),
                (self.yaml_paths["a"], self.yaml_paths["b"]),
            )
        swap = kind == "paired" and direction == "b2a"
        source_channels = (channels_a, channels_b)  # of folder a / left half, folder b / right half
        if swap and pair_list:
            pair_list = [(pb, pa) for pa, pb in pair_list]
            source_channels = (channels_b, channels_a)
        # channels of batch "a" and batch "b": the input and target, after any b2a swap
        self.channels_a, self.channels_b = (channels_b, channels_a) if swap else (channels_a, channels_b)
        self._samples = _Samples(
            kind=kind, files_a=files_a, files_b=files_b, pairs=pair_list, ab_files=ab_files,
            swap_ab=swap and bool(ab_files), channels_a=source_channels[0], channels_b=source_channels[1],
            transforms=self.transforms, input_transforms=self.input_transforms, seed=self.seed,
            yaml_paths=self.yaml_paths,
        )
        self._sampler = _EpochSampler(self._samples.num_items, self.seed, rank, world_size, self.batch_size)
        self._loader: DataLoader | None = None
        self._check_batch_size()

    # -- sizes -------------------------------------------------------------------------------

    @property
    def num_items(self) -> int:
        """Samples per epoch over all ranks."""
        return self._samples.num_items

    @property
    def steps_per_epoch(self) -> int:
        return self._sampler.usable() // self.batch_size

    @property
    def files_a(self) -> list[Path]:
        """Files of domain A (unpaired) or the input files (paired folders)."""
        s = self._samples
        return list(s.files_a) if s.kind == "unpaired" else [p[0] for p in s.pairs] or list(s.ab_files)

    @property
    def files_b(self) -> list[Path]:
        s = self._samples
        return list(s.files_b) if s.kind == "unpaired" else [p[1] for p in s.pairs] or list(s.ab_files)

    def _check_batch_size(self) -> None:
        per_rank = self._sampler.per_rank()
        if per_rank < self.batch_size:
            ranks = f" per process ({self.world_size} processes)" if self.world_size > 1 else ""
            raise Img2ImgError(
                f"{self.yaml_paths['batch_size']} is {self.batch_size} but there are only {per_rank} "
                f"training sample(s){ranks}; lower the batch size or add images"
            )

    # -- checking ----------------------------------------------------------------------------

    def _all_files(self) -> list[Path]:
        s = self._samples
        if s.kind == "unpaired":
            return [*s.files_a, *s.files_b]
        if s.ab_files:
            return list(s.ab_files)
        return [f for pair in s.pairs for f in pair]

    def check(self) -> list[tuple[Path, str]]:
        """Decode every file once before training; returns the (path, reason) of skipped files.

        Raises one Img2ImgError listing every unreadable file (unless skip_unreadable), and one
        listing every image smaller than the transforms need or pairs of different sizes.
        """
        files = self._all_files()
        sizes: dict[Path, tuple[int, int]] = {}
        bad: list[tuple[Path, str]] = []

        def probe(path: Path):
            try:
                return path, probe_image(path), None
            except ImageReadError as exc:
                return path, None, exc.reason

        workers = max(1, min(8, (os.cpu_count() or 1) * 2))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for path, size, reason in pool.map(probe, files):
                if reason is None:
                    sizes[path] = size
                else:
                    bad.append((path, reason))
        skipped: list[tuple[Path, str]] = []
        if bad:
            if not self.skip_unreadable:
                lines = [f"{len(bad)} image file(s) cannot be read:"]
                lines += [f"  {p}: {r}" for p, r in bad[:20]]
                if len(bad) > 20:
                    lines.append(f"  ... and {len(bad) - 20} more")
                lines.append(
                    f"Fix or remove these files, or set {self.yaml_paths['skip_unreadable']}: true to train without them."
                )
                raise Img2ImgError("\n".join(lines))
            skipped = bad
            self._drop({p for p, _ in bad})
        self._check_sizes(sizes)
        return skipped

    def _drop(self, bad: set[Path]) -> None:
        s = self._samples
        s.files_a = [f for f in s.files_a if f not in bad]
        s.files_b = [f for f in s.files_b if f not in bad]
        s.pairs = [p for p in s.pairs if p[0] not in bad and p[1] not in bad]
        s.ab_files = [f for f in s.ab_files if f not in bad]
        if s.kind == "unpaired":
            for label, files in (("a", s.files_a), ("b", s.files_b)):
                if not files:
                    raise Img2ImgError(f"{self.yaml_paths[label]}: no readable images left after skipping unreadable ones")
        elif s.num_items == 0:
            raise Img2ImgError("no readable image pairs left after skipping unreadable ones")
        self._sampler.num_items = s.num_items
        self._loader = None
        self._check_batch_size()

    def _check_sizes(self, sizes: dict[Path, tuple[int, int]]) -> None:
        from img2img import transforms as T

        s = self._samples
        problems: list[str] = []
        # (h, w) of what each sample feeds to the joint transforms, with the files it comes from
        shapes: list[tuple[tuple[int, int], str]] = []
        if s.kind == "unpaired":
            shapes = [((sizes[f][1], sizes[f][0]), str(f)) for f in [*s.files_a, *s.files_b]]
        elif s.ab_files:
            for f in s.ab_files:
                w, h = sizes[f]
                if w < 2:
                    problems.append(f"  {f}: {w}x{h} is too narrow to hold two images side by side")
                shapes.append(((h, w // 2), str(f)))
        else:
            for fa, fb in s.pairs:
                (wa, ha), (wb, hb) = sizes[fa], sizes[fb]
                if (wa, ha) != (wb, hb):
                    problems.append(f"  {fa} is {wa}x{ha} but its partner {fb} is {wb}x{hb} (width x height)")
                shapes.append(((ha, wa), str(fa)))
        if problems:
            raise Img2ImgError(
                "paired images must have the same size:\n" + "\n".join(problems[:20])
                + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
                + "\nResize the targets to match their inputs (or fix the pairing)."
            )
        need = T.min_input_size(self.transforms)
        need_input = T.min_input_size(self.input_transforms) if s.kind == "paired" else None
        small: list[str] = []
        joint_out: dict[tuple[int, int], tuple[int, int] | None] = {}
        for (h, w), name in shapes:
            if need is not None and (h < need[0] or w < need[1]):
                small.append(f"  {name}: {w}x{h}")
                continue
            if need_input is not None:
                if (h, w) not in joint_out:
                    joint_out[(h, w)] = T.output_size(self.transforms, (h, w))
                out = joint_out[(h, w)]
                if out is not None and (out[0] < need_input[0] or out[1] < need_input[1]):
                    raise Img2ImgError(
                        f"{self.yaml_paths['input_transforms']} crops {need_input[1]}x{need_input[0]} (width x height) "
                        f"but {self.yaml_paths['transforms']} produces {out[1]}x{out[0]} images (e.g. from {name}); "
                        f"crops belong in {self.yaml_paths['transforms']}, which applies to input and target alike"
                    )
        if small:
            what = "AB halves" if s.ab_files else "images"
            raise Img2ImgError(
                f"{len(small)} {what} are smaller than the {need[1]}x{need[0]} (width x height) crop in "
                f"{self.yaml_paths['transforms']}:\n" + "\n".join(small[:10])
                + (f"\n  ... and {len(small) - 10} more" if len(small) > 10 else "")
                + "\nAdd a Resize (or PadIfNeeded) stage before the crop, set pad_if_needed: true on the crop, "
                "use a smaller crop, or remove these images."
            )

    # -- iterating ---------------------------------------------------------------------------

    def _get_loader(self) -> DataLoader:
        if self._loader is None:
            workers = self.num_workers
            self._loader = DataLoader(
                self._samples,
                batch_size=self.batch_size,
                sampler=self._sampler,
                drop_last=True,
                num_workers=workers,
                collate_fn=_collate,
                pin_memory=self.pin_memory and torch.cuda.is_available(),
                persistent_workers=workers > 0,
                prefetch_factor=2 if workers > 0 else None,
                generator=torch.Generator().manual_seed(self.seed),  # leaves the global torch RNG alone
                worker_init_fn=_ignore_sigint if workers > 0 else None,
            )
        return self._loader

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of one epoch for this rank, starting at `start_step` (earlier items are not loaded)."""
        if epoch < 0 or start_step < 0:
            raise ValueError("epoch and start_step must be >= 0")
        if start_step >= self.steps_per_epoch:
            return
        self._sampler.epoch = int(epoch)
        self._sampler.start = int(start_step) * self.batch_size
        for batch in self._get_loader():
            if "error" in batch:
                raise Img2ImgError(batch["error"])
            yield batch

    def fixed_batch(self, n: int) -> dict[str, torch.Tensor]:
        """The first n items (at most all of them) with a fixed augmentation, for sample grids."""
        count = max(1, min(int(n), self.num_items))
        batch = _collate([self._samples[(_FIXED, 0, pos)] for pos in range(count)])
        if "error" in batch:
            raise Img2ImgError(batch["error"])
        return batch

    def describe_transforms(self) -> dict[str, Any]:
        """The resolved augmentation (albumentations' own record), for transforms.json in a run."""
        from img2img import transforms as T

        record: dict[str, Any] = {"transforms": T.describe(T.build_transform(self.transforms, paired=self.kind == "paired"))}
        if self.kind == "paired" and self.input_transforms:
            record["input_transforms"] = T.describe(T.build_transform(self.input_transforms, paired=False))
        return record

    def close(self) -> None:
        """Stop persistent workers (they also stop when this object is garbage collected)."""
        self._loader = None

"""Demo datasets: deterministic synthetic ones made on the spot, and the public CycleGAN/pix2pix archives.

The synthetic sets let a pipeline train end to end without any download: ``shapes`` (unpaired,
warm shapes on light backgrounds <-> cool shapes on dark ones), ``shapes3`` (the same two and a
third domain, green shapes on mid grey, for multi-domain tasks) and ``outlines`` (paired, black
outline drawings -> the same shapes filled with colour). The same seed gives byte-identical files.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from PIL import Image

from img2img.datasets.drawing import outline_pair, shapes_image
from img2img.errors import Img2ImgError, did_you_mean

__all__ = ["DOWNLOADS", "SYNTH_DATASETS", "download", "ensure_synth", "extract_archive", "synthesize"]

SYNTH_DATASETS: dict[str, str] = {
    "shapes": "unpaired (CycleGAN demo): warm shapes on light backgrounds (A) <-> cool shapes on dark backgrounds (B), 72x72",
    "outlines": "paired (pix2pix demo): black outline drawings (A) -> the same shapes filled with colour (B), 64x64",
    "shapes3": "unpaired, three domains (StarGAN demo): the shapes' A and B, and green shapes on mid grey (C), 72x72",
}

SYNTH_KINDS: dict[str, str] = {"shapes": "unpaired", "outlines": "paired", "shapes3": "unpaired"}
SYNTH_DOMAINS: dict[str, str] = {"shapes": "AB", "outlines": "AB", "shapes3": "ABC"}
"""The domains each synthetic dataset writes, as train<X>/test<X> folders."""
"""The data kind (a task's ``data_kind``) each synthetic dataset is."""

_SIZES = {"shapes": 72, "outlines": 64, "shapes3": 72}
_TRAIN_COUNT = 200


def _suggest(word: str, options) -> str:
    hint = did_you_mean(word, options, cutoff=0.5)
    return f" ({hint})" if hint else ""


def _check_synth_name(name: str) -> None:
    if name not in SYNTH_DATASETS:
        raise Img2ImgError(
            f"unknown synthetic dataset '{name}'{_suggest(name, SYNTH_DATASETS)}; "
            f"available: {', '.join(SYNTH_DATASETS)}"
        )


def _save_png(im: Image.Image, path: Path) -> None:
    im.save(path, format="PNG", optimize=False, compress_level=6)


def _counts(count: int | None) -> tuple[int, int]:
    train = _TRAIN_COUNT if count is None else int(count)
    if train < 1:
        raise Img2ImgError(f"count must be at least 1, got {count}")
    return train, max(2, round(train / 10))


def synthesize(name: str, out: Path, *, seed: int = 0, count: int | None = None, overwrite: bool = False) -> Path:
    """Write synthetic dataset `name` into `out` (trainA, trainB, testA, testB (and trainC, testC), README.txt).

    `count` is the number of training images per folder (default 200); the test folders get a
    tenth of it (at least 2). Image i is the same whatever the count, and the same seed gives
    byte-identical files. `out` must be new or empty; with `overwrite`, a synthetic dataset already
    there is replaced (never a folder holding anything else). The files are written beside `out`
    and moved into place at the end, so an interrupted run leaves nothing half-written.
    """
    _check_synth_name(name)
    out = Path(out)
    train, test = _counts(count)
    _check_target(out, name, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write(name, staging, seed, train, test)
        if out.is_dir() and any(out.iterdir()):  # replacing an earlier synthetic dataset (overwrite)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.is_dir():
                out.rmdir()
            os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out


def synthetic_dataset(folder: Path) -> dict | None:
    """``{"name", "train", "test"}`` of the img2img synthetic dataset in `folder` (read from its README.txt),
    or None when the folder holds anything else."""
    folder = Path(folder)
    try:
        entries = {p.name for p in folder.iterdir()}
        text = (folder / "README.txt").read_text(encoding="utf-8")
    except OSError:
        return None
    found = re.match(r"img2img synthetic dataset '(\w+)'", text)
    counts = re.search(r"train: (\d+) images per folder, test: (\d+) per folder", text)
    allowed = {f"{split}{x}" for split in ("train", "test") for x in "ABC"} | {"README.txt"}
    if not found or not counts or not entries <= allowed:
        return None
    return {"name": found.group(1), "train": int(counts.group(1)), "test": int(counts.group(2))}


def _check_target(out: Path, name: str, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise Img2ImgError(f"{out} is a file; the synthetic dataset '{name}' needs a folder there")
    if not out.is_dir() or not any(out.iterdir()):
        return
    existing = synthetic_dataset(out)
    if existing is None:
        raise Img2ImgError(f"{out} is not empty and holds more than an img2img synthetic dataset; img2img writes a "
                           "dataset only into a new or empty folder and never deletes files it did not write. "
                           "Choose another folder")
    if not overwrite:
        raise Img2ImgError(f"{out} already holds the synthetic dataset '{existing['name']}' ({existing['train']} "
                           "training images per folder); add --overwrite to replace it, or choose another folder")


def _write(name: str, out: Path, seed: int, train: int, test: int) -> None:
    size = _SIZES[name]
    letters = SYNTH_DOMAINS[name]
    for sub in (f"{split}{x}" for split in ("train", "test") for x in letters):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for split, (label, n) in enumerate((("train", train), ("test", test))):
        for i in range(n):
            file = f"{i:04d}.png"
            if name in ("shapes", "shapes3"):
                for domain, x in enumerate(letters):
                    _save_png(shapes_image(seed, domain, split, i, size), out / f"{label}{x}" / file)
            else:
                drawing, filled = outline_pair(seed, split, i, size)
                _save_png(drawing, out / f"{label}A" / file)
                _save_png(filled, out / f"{label}B" / file)
    (out / "README.txt").write_text(_readme(name, seed, train, test, size), encoding="utf-8")


def _readme(name: str, seed: int, train: int, test: int, size: int) -> str:
    from img2img._version import __version__

    if name == "shapes3":
        what = (
            "Unpaired data of three domains for a multi-domain (StarGAN) demo. trainA/testA: warm shapes\n"
            "on light backgrounds; trainB/testB: cool shapes on dark backgrounds (as 'shapes');\n"
            "trainC/testC: green shapes on mid-grey backgrounds. Every domain is drawn independently."
        )
    elif name == "shapes":
        what = (
            "Unpaired data for a CycleGAN demo. trainA/testA: warm-coloured (red, orange, yellow)\n"
            "circles, squares and triangles on light backgrounds. trainB/testB: cool-coloured (cyan,\n"
            "blue, violet) shapes of the same kinds and layouts on dark backgrounds. A and B images are\n"
            "drawn independently (unpaired); the translation swaps the palette and keeps the geometry."
        )
    else:
        what = (
            "Paired data for a pix2pix demo. trainA/testA: black outline drawings of circles, squares\n"
            "and triangles on white. trainB/testB: the same drawings with each shape filled with its\n"
            "kind's colour (circle red, square blue, triangle green). Pairs share a file name."
        )
    count = "" if train == _TRAIN_COUNT else f" --count {train}"
    return (
        f"img2img synthetic dataset '{name}'\n\n{what}\n\n"
        f"train: {train} images per folder, test: {test} per folder, {size}x{size} RGB PNG.\n\n"
        f"Made by img2img {__version__} with fixed-seed drawing (Pillow ImageDraw, 4x supersampled):\n"
        f"  img2img datasets synth {name} OUT --seed {seed}{count}\n"
        f"  python -c \"from img2img.datasets.synth import synthesize; synthesize('{name}', 'OUT', seed={seed}"
        f"{'' if train == _TRAIN_COUNT else f', count={train}'})\"\n"
        "The same seed gives byte-identical files.\n"
    )


def ensure_synth(name: str, out: Path, seed: int = 0) -> bool:
    """Generate synthetic dataset `name` into `out` unless `out` already has content; True if generated
    (``data.synthesize``: the first training makes the data, later ones use it)."""
    _check_synth_name(name)
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise Img2ImgError(f"{out} is a file; the synthetic dataset '{name}' needs a folder there")
        if any(out.iterdir()):
            return False
    synthesize(name, out, seed=seed)
    return True


# ---------------------------------------------------------------------------------------------
# Public datasets

_CYCLEGAN_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan/datasets/{name}.zip"
_PIX2PIX_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/{name}.tar.gz"
_CYCLEGAN_NAMES = (
    "horse2zebra", "apple2orange", "summer2winter_yosemite", "monet2photo", "cezanne2photo",
    "ukiyoe2photo", "vangogh2photo", "maps", "cityscapes", "facades", "iphone2dslr_flower",
)
_PIX2PIX_NAMES = ("facades", "cityscapes", "maps", "edges2shoes", "edges2handbags", "night2day")

# name -> {kind: url}; kind "cyclegan" archives hold <name>/trainA, trainB, testA, testB,
# kind "pix2pix" archives hold <name>/train/*.jpg etc. as side-by-side AB images.
DOWNLOADS: dict[str, dict[str, str]] = {}
for _name in _CYCLEGAN_NAMES:
    DOWNLOADS.setdefault(_name, {})["cyclegan"] = _CYCLEGAN_URL.format(name=_name)
for _name in _PIX2PIX_NAMES:
    DOWNLOADS.setdefault(_name, {})["pix2pix"] = _PIX2PIX_URL.format(name=_name)
del _name

_MARKER = {"cyclegan": "trainA", "pix2pix": "train"}


def _resolve_kind(name: str, kind: str | None) -> str:
    if name not in DOWNLOADS:
        raise Img2ImgError(
            f"unknown dataset '{name}'{_suggest(name, DOWNLOADS)}; available: {', '.join(sorted(DOWNLOADS))}"
        )
    kinds = DOWNLOADS[name]
    if kind is None:
        return "pix2pix" if "pix2pix" in kinds else next(iter(kinds))  # the paired original when both exist
    if kind not in kinds:
        raise Img2ImgError(f"dataset '{name}' has no {kind} archive; available: {', '.join(kinds)}")
    return kind


def download(name: str, out: Path, *, kind: str | None = None, url: str | None = None,
             progress: bool = True) -> Path:
    """Download and extract a public dataset into ``out/<name>``; returns that folder.

    `kind` ("cyclegan" or "pix2pix") picks the archive for names that have both (facades,
    cityscapes, maps default to pix2pix's side-by-side pairs). An existing copy is kept.
    `url` replaces the archive's address (a mirror, or a local ``file://`` copy).
    """
    kind = _resolve_kind(name, kind)
    out = Path(out)
    target = out / name
    if (target / _MARKER[kind]).is_dir():
        return target
    source = url or DOWNLOADS[name][kind]
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    fd, part_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=out)
    part = Path(part_name)
    try:
        with os.fdopen(fd, "wb") as sink:
            _fetch(source, sink, f"{name} ({kind})", progress, out, name, kind)
        extract_archive(part, out)
    finally:
        part.unlink(missing_ok=True)
        if created and not any(out.iterdir()):  # a failed download leaves no empty folder behind
            out.rmdir()
    if not target.is_dir():
        raise Img2ImgError(
            f"the archive from {source} did not contain a '{name}' folder; look inside {out} for what it held"
        )
    return target


def download_hint(folder: Path) -> str | None:
    """The `img2img datasets download` command that creates `folder`, when it is where a public dataset
    would be extracted (``OUT/horse2zebra/trainA``, ``OUT/facades/train``), else None."""
    folder = Path(folder)
    name, root = folder.parent.name, folder.parent.parent
    kinds = DOWNLOADS.get(name, {})
    if folder.name in ("trainA", "trainB", "testA", "testB") and "cyclegan" in kinds:
        kind = "cyclegan"
    elif folder.name in ("train", "val", "test") and "pix2pix" in kinds:
        kind = "pix2pix"
    else:
        return None
    try:
        shown = root.resolve().relative_to(Path.cwd().resolve()).as_posix() or "."
    except ValueError:
        shown = str(root)
    flag = f" --kind {kind}" if len(kinds) > 1 and _resolve_kind(name, None) != kind else ""
    return f"img2img datasets download {name} {shown}{flag}"


def _fetch(url: str, sink, label: str, show: bool, out: Path, name: str, kind: str) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = response.headers.get("Content-Length")
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                       TransferSpeedColumn(), TimeRemainingColumn())
            with Progress(*columns, console=Console(stderr=True), disable=not show) as bar:
                task = bar.add_task(label, total=int(total) if total and total.isdigit() else None)
                while chunk := response.read(1 << 20):
                    sink.write(chunk)
                    bar.advance(task, len(chunk))
    except urllib.error.HTTPError as exc:
        raise _download_error(url, f"the server answered HTTP {exc.code} {exc.reason}", out, name, kind) from None
    except urllib.error.URLError as exc:
        raise _download_error(url, str(exc.reason), out, name, kind) from None
    except (TimeoutError, ConnectionError, OSError) as exc:
        raise _download_error(url, str(exc) or type(exc).__name__, out, name, kind) from None


def _download_error(url: str, reason: str, out: Path, name: str, kind: str) -> Img2ImgError:
    return Img2ImgError(
        f"could not download {url}: {reason}.\n"
        "Check the network connection (a proxy is taken from HTTP_PROXY / HTTPS_PROXY), or download the "
        f"archive yourself, e.g. `curl -LO {url}`, and extract it into {out} so that "
        f"{out / name / _MARKER[kind]} exists."
    )


def _unsafe(member: str) -> bool:
    """True when an archive member's name would land outside the extraction folder."""
    name = member.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return True
    return ".." in PurePosixPath(name).parts


def extract_archive(archive: Path, out: Path) -> list[Path]:
    """Safely extract a .zip or .tar(.gz) archive into `out`; returns the top-level entries written.

    Members with absolute paths, '..' components or links are refused before anything is written,
    and extraction goes through a staging folder, so a failure leaves `out` as it was.
    """
    archive, out = Path(archive), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=out))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if _unsafe(info.filename) or stat.S_ISLNK(info.external_attr >> 16):
                        raise _refuse(archive, info.filename, out)
                zf.extractall(staging)
        else:
            try:
                tf = tarfile.open(archive, "r:*")
            except (tarfile.TarError, OSError) as exc:
                raise Img2ImgError(
                    f"{archive}: not a zip or tar archive ({exc}); the download may have been an error page, "
                    "so delete it and try again"
                ) from None
            with tf:
                for member in tf.getmembers():
                    if _unsafe(member.name) or member.issym() or member.islnk() or member.isdev():
                        raise _refuse(archive, member.name, out)
                tf.extractall(staging, filter="data")
        entries = sorted(staging.iterdir())
        for entry in entries:
            _merge_move(entry, out / entry.name)
        return [out / entry.name for entry in entries]
    except zipfile.BadZipFile as exc:
        raise Img2ImgError(f"{archive}: damaged zip archive ({exc}); delete it and download again") from None
    except tarfile.TarError as exc:
        raise Img2ImgError(f"{archive}: damaged tar archive ({exc}); delete it and download again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _refuse(archive: Path, member: str, out: Path) -> Img2ImgError:
    return Img2ImgError(
        f"{archive}: refusing to extract '{member}': it is a link or would be written outside {out}. "
        "The archive is not a trustworthy dataset archive."
    )


def _merge_move(src: Path, dst: Path) -> None:
    """Move src to dst, merging into an existing folder (files are replaced)."""
    if dst.is_dir() and src.is_dir() and not dst.is_symlink():
        for child in src.iterdir():
            _merge_move(child, dst / child.name)
        src.rmdir()
    else:
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        os.replace(src, dst)

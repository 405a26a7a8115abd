"""Translating files and folders: planning the output files, then a pipeline that decodes ahead of the
compute in a thread pool, batches images of equal size, tiles large ones and encodes in the background.
"""
from __future__ import annotations

import errno
import os
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from img2img import atomic
from img2img.data.folders import list_images
from img2img.data.images import IMAGE_EXTENSIONS, ImageReadError, image_bit_depth, pixel_limit, read_image, save_image
from img2img.errors import Img2ImgError

FORMATS = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "webp": ".webp", "tif": ".tif", "tiff": ".tif"}


@dataclass
class TranslateReport:
    """What a folder translation did; `skipped` are existing outputs, `failed` unreadable inputs."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)  # non-image files inside input folders
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return len(self.written) / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Planning the output files


@dataclass
class _Job:
    src: Path
    dst: Path


@dataclass
class _Plan:
    jobs: list[_Job]
    skipped: list[tuple[Path, str]]
    ignored: list[tuple[Path, str]]
    failed: list[tuple[Path, str]]
    batches: list[int] | None = None
    """Given batches (a torchrun rank's): each job's batch number, a batch's jobs next to each other.
    Without them, images of equal size batch together as they are read."""


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _non_images(folder: Path, images: set[Path]) -> list[tuple[Path, str]]:
    """Files under `folder` that are not images (hidden files and folders aside)."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if not name.startswith(".") and path not in images:
                found.append((path, f"not an image file (images are {', '.join(IMAGE_EXTENSIONS)})"))
    return found


def plan_outputs(inputs: Sequence[Path], out: Path, fmt: str | None, overwrite: bool) -> _Plan:
    """Map every input image to its output path; refuse outputs inside an input folder."""
    if not inputs:
        raise Img2ImgError("give at least one input image or folder")
    if fmt is not None and fmt.lower().lstrip(".") not in FORMATS:
        raise Img2ImgError(f"--format {fmt!r}: use one of png, jpg, webp, tif")
    suffix = FORMATS[fmt.lower().lstrip(".")] if fmt else None
    out = Path(out)
    out_real = out.resolve()
    if out.exists() and not out.is_dir():
        raise Img2ImgError(f"--out {out} is a file; give a folder for the translated images")
    sources: list[tuple[Path, Path]] = []  # (image, path relative to the output folder)
    ignored: list[tuple[Path, str]] = []
    failed: list[tuple[Path, str]] = []
    for given in inputs:
        given = Path(given)
        real = given.resolve()
        if given.is_dir():
            if _inside(out_real, real):
                raise Img2ImgError(f"--out {out} is inside the input folder {given}; img2img never writes into "
                                   "an input folder. Choose an output folder outside it.")
            images = list_images(given)
            sources += [(p, p.relative_to(given)) for p in images]
            ignored += _non_images(given, set(images))
        elif given.is_file():
            if out_real == real.parent:
                raise Img2ImgError(f"--out {out} is the folder holding the input {given}; img2img never writes "
                                   "into an input folder. Choose another output folder.")
            if given.suffix.lower() not in IMAGE_EXTENSIONS:  # named explicitly: a mistake, not a stray file
                raise Img2ImgError(f"{given} is not an image file (images are {', '.join(IMAGE_EXTENSIONS)}); "
                                   "give image files or folders")
            sources.append((given, Path(given.name)))
        else:
            raise Img2ImgError(f"no such input file or folder: {given}")
    jobs: list[_Job] = []
    skipped: list[tuple[Path, str]] = []
    claimed: dict[Path, Path] = {}
    reals = {src.resolve() for src, _ in sources}
    for src, rel in sources:
        dst = out / (rel.with_suffix(suffix) if suffix else rel)
        key = dst.resolve()
        if _inside(src.resolve(), out_real) or key in reals:  # e.g. an input that is a link into --out
            failed.append((src, f"it is (a link to) {src.resolve()}, a file inside --out {out} or the output of "
                                "another input; img2img never replaces an input, so it was left alone. Move it out "
                                "of the output folder or translate into another one"))
            continue
        if key in claimed:
            failed.append((src, f"its output {dst} is also the output of {claimed[key]}; translate them "
                                "into separate folders"))
            continue
        claimed[key] = src
        if dst.exists() and not overwrite:
            skipped.append((dst, "exists (use --overwrite to replace)"))
            continue
        jobs.append(_Job(src, dst))
    return _Plan(jobs=jobs, skipped=skipped, ignored=ignored, failed=failed)


def load_job(job: _Job, channels: int, resize: int | None, keep_depth: bool) -> tuple[np.ndarray, int]:
    """Read one input as the translator needs it: `channels` channels, optionally resized; and its bit depth."""
    arr = read_image(job.src, channels)
    depth = 16 if keep_depth and image_bit_depth(job.src) >= 16 else 8
    if resize is not None:
        arr = _resize_shorter(arr, resize)
    return arr, depth

def remove_partial_outputs(plan: _Plan) -> list[Path]:
    """Delete the temporary files a killed translation left beside the outputs `plan` will write.

    Call it once, before anything writes: a write in progress in the same folder would lose its file.
    """
    folders = sorted({job.dst.parent for job in plan.jobs})
    return [tmp for folder in folders if folder.is_dir() for tmp in atomic.remove_partial_files(folder)]


def run_plan(translator, plan: _Plan, out: Path, *, resize: int | None, keep_depth: bool,
             console: Console, summary: bool = True) -> TranslateReport:
    """Translate every job of `plan` with `translator`; unreadable inputs are listed, never raised.

    `summary` False leaves the closing lines to the caller (a torchrun job prints one for all ranks).
    """
    pixel_limit()  # a bad IMG2IMG_MAX_IMAGE_PIXELS stops here, once, not once per file
    report = TranslateReport(skipped=list(plan.skipped), failed=list(plan.failed), ignored=list(plan.ignored))
    stopped_by: BaseException | None = None
    for note in translator.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    jobs = plan.jobs
    workers = max(2, min(8, (os.cpu_count() or 2)))
    lookahead = max(2 * translator.batch_size, workers) + 1
    start = time.perf_counter()
    progress = Progress(TextColumn("[bold]translate[/]"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, transient=False, disable=not jobs)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="img2img-io") as pool, progress:
        task = progress.add_task("translate", total=len(jobs), rate="")
        reads: deque[tuple[_Job, Future]] = deque()
        writes: deque[tuple[_Job, Future]] = deque()
        buckets: dict[object, list[tuple[_Job, np.ndarray, int]]] = {}  # by size, or by given batch
        queue = iter(jobs)
        given = {id(job): b for job, b in zip(jobs, plan.batches)} if plan.batches is not None else None
        closing = {id(job) for i, job in enumerate(jobs) if given is not None
                   and (i + 1 == len(jobs) or plan.batches[i + 1] != plan.batches[i])}

        def close_batch(job: _Job) -> None:
            """With given batches: run the batch of `job` once its last job is read."""
            if given is not None and id(job) in closing and given[id(job)] in buckets:
                compute(buckets.pop(given[id(job)]))

        def advance(n: int = 1) -> None:
            progress.advance(task, n)
            done = progress.tasks[0].completed
            elapsed = time.perf_counter() - start
            progress.update(task, rate=f"{done / elapsed:.2f} images/s" if elapsed > 0 else "")

        def finish_writes(limit: int) -> None:
            while len(writes) > limit:
                job, fut = writes.popleft()
                try:
                    fut.result()
                    report.written.append(job.dst)
                except OSError as exc:
                    if exc.errno in STOP_ERRNOS:  # every later file would fail the same way: stop
                        _cancel(reads, writes)
                        raise _stopped(exc, job.dst, report, out) from None
                    report.failed.append((job.src, f"cannot write {job.dst}: {exc}"))
                except Img2ImgError as exc:
                    report.failed.append((job.src, f"cannot write {job.dst}: {exc}"))
                advance()

        def compute(items: list[tuple[_Job, np.ndarray, int]]) -> None:
            try:
                outputs = translator.translate_arrays([arr for _, arr, _ in items])
            except (MemoryError, RuntimeError) as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
                if not isinstance(exc, MemoryError) and "out of memory" not in str(exc).lower():
                    raise
                for job, arr, _ in items:
                    report.failed.append((job.src, f"out of memory at {arr.shape[1]}x{arr.shape[0]}; "
                                                   "use --tile 512 (or --max-pixels) or a smaller --batch-size"))
                    advance()
                return
            for (job, _, depth), result in zip(items, outputs):
                writes.append((job, pool.submit(save_image, job.dst, result, bit_depth=depth)))
            finish_writes(2 * workers)

        def refill() -> None:
            while len(reads) < lookahead:
                job = next(queue, None)
                if job is None:
                    return
                reads.append((job, pool.submit(load_job, job, translator.in_channels, resize, keep_depth)))

        try:
            refill()
            pending = 0
            while reads:
                job, fut = reads.popleft()
                refill()
                try:
                    arr, depth = fut.result()
                except ImageReadError as exc:
                    report.failed.append((job.src, exc.reason))
                    advance()
                    close_batch(job)
                    continue
                except Img2ImgError as exc:
                    report.failed.append((job.src, str(exc)))
                    advance()
                    close_batch(job)
                    continue
                h, w = arr.shape[:2]
                if translator._tiling(h, w) is not None:
                    compute([(job, arr, depth)])
                    close_batch(job)
                    continue
                if given is not None:
                    buckets.setdefault(given[id(job)], []).append((job, arr, depth))
                    close_batch(job)
                    continue
                bucket = buckets.setdefault((h, w), [])
                bucket.append((job, arr, depth))
                pending += 1
                if len(bucket) >= translator.batch_size:
                    pending -= len(bucket)
                    compute(buckets.pop((h, w)))
                elif pending > 4 * translator.batch_size:  # many distinct sizes: run the fullest bucket
                    key = max(buckets, key=lambda k: len(buckets[k]))
                    pending -= len(buckets[key])
                    compute(buckets.pop(key))
            for key in list(buckets):
                compute(buckets.pop(key))
            finish_writes(0)
        except (KeyboardInterrupt, Terminated) as exc:  # whole files only: finish the writes under way
            _cancel(reads)
            for job, fut in writes:
                if not fut.cancel() and fut.exception() is None:
                    report.written.append(job.dst)
            writes.clear()
            stopped_by = exc
    report.seconds = time.perf_counter() - start
    if stopped_by is not None:
        raise translation_stopped(stopped_by, len(report.written), len(jobs), out)
    if summary:
        _summarise(report, out, translator, console)
    return report


class Terminated(BaseException):
    """SIGTERM during a translation (raised by the handler `on_sigterm` installs)."""


@contextmanager
def on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` while translating, so that it stops like Ctrl-C (main thread only)."""
    def handle(signum, frame):  # noqa: ANN001
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, handle)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def translation_stopped(by: BaseException, written: int, total: int, out: Path) -> Exception:
    """The exit (130 for Ctrl-C, 143 for SIGTERM) and line of a translation stopped by a signal."""
    from img2img.engine.signals import EXIT_SIGINT, EXIT_SIGTERM, TrainingStopped

    what = "SIGTERM" if isinstance(by, Terminated) else "Ctrl-C"
    code = EXIT_SIGTERM if isinstance(by, Terminated) else EXIT_SIGINT
    return TrainingStopped(code, f"stopped by {what}: wrote {written} of {total} image{'s' if total != 1 else ''} "
                                 f"to {out}, each complete. Run the same command again to continue: outputs that "
                                 "exist are skipped (unless --overwrite is given).")


STOP_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
"""Write errors that stop a translation (a full disk, a quota, a read-only file system), not one file."""


def _cancel(*queues: deque) -> None:
    """Drop reads and writes not yet started; those running finish (each writes a whole file or none)."""
    for queue in queues:
        for _, fut in queue:
            fut.cancel()
        queue.clear()


def _stopped(exc: OSError, dst: Path, report: TranslateReport, out: Path) -> Img2ImgError:
    what = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system"}[exc.errno]
    done = len(report.written)
    fix = "Free some space" if exc.errno != errno.EROFS else "Choose a writable --out"
    return Img2ImgError(f"{what} while writing {dst}; translation stopped after {done} image{'s' if done != 1 else ''} "
                        f"(each written completely, none half-written). {fix}, then run the command again: outputs "
                        f"already in {out} are skipped, so it continues where it stopped.")


def resized_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """(height, width) once the shorter side is `size`, as `--resize` makes it."""
    scale = size / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _resize_shorter(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is `size` (antialiased bilinear), keeping the aspect ratio."""
    h, w = arr.shape[:2]
    scale = size / min(h, w)
    new = resized_shape(h, w, size)
    if new == (h, w):
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).unsqueeze(0)
    t = F.interpolate(t, size=new, mode="bilinear", align_corners=False, antialias=scale < 1)
    return np.ascontiguousarray(t[0].clamp_(0, 1).permute(1, 2, 0).numpy())


def _listing(console: Console, title: str, rows: Iterable[tuple[Path, str]], style: str, limit: int = 20) -> None:
    rows = list(rows)
    if not rows:
        return
    console.print(f"[{style}]{title} ({len(rows)}):[/]", highlight=False)
    for path, reason in rows[:limit]:
        console.print(f"  {path}: {reason}", highlight=False, markup=False)
    if len(rows) > limit:
        console.print(f"  ... and {len(rows) - limit} more", highlight=False)


def _summarise(report: TranslateReport, out: Path, translator, console: Console) -> None:
    n = len(report.written)
    console.print(f"[green]translated {n} image{'s' if n != 1 else ''}[/] in {report.seconds:.1f} s "
                  f"({report.images_per_s:.2f} images/s) with {translator.describe()} -> {out}", highlight=False)
    if report.skipped:
        console.print(f"[yellow]skipped {len(report.skipped)} existing output(s)[/] (use --overwrite to replace "
                      f"them): {', '.join(str(p) for p, _ in report.skipped[:3])}"
                      f"{', ...' if len(report.skipped) > 3 else ''}", highlight=False)
    _listing(console, "ignored, not images", report.ignored, "yellow")
    _listing(console, "not translated", report.failed, "red")

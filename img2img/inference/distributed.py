"""Translating across the processes of a torchrun job, on one machine or many.

Rank 0 plans the outputs once (the deterministic input list, outputs already complete skipped) and
sends the plan to every rank; the ranks read the images' headers in parallel, form the batches one
process would form, and split those batches into shards of about equal pixel counts; every rank
translates its shard with the usual pipeline and atomic writes; rank 0 prints one summary for the
job. An image meets the same batch neighbours on any number of ranks, so the outputs are the
single-process outputs file for file: the same names, pixels and formats. A killed job leaves
complete files and hidden temporary ones; the same command again removes the latter and translates
what is missing.
"""
from __future__ import annotations

import datetime
import heapq
import io
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from img2img.devices import select_device
from img2img.errors import Img2ImgError, PeerFailed
from img2img.inference.files import (TranslateReport, _Job, _listing, _Plan, _summarise, remove_partial_outputs,
                                     resized_shape, run_plan)

DEFAULT_TIMEOUT_S = 3600.0
"""How long a rank waits for the others at the plan and at the summary (``IMG2IMG_DIST_TIMEOUT`` overrides it);
shards are balanced, but ranks on slower machines finish later."""


def torchrun_world() -> int:
    """WORLD_SIZE of the torchrun job this process belongs to (1 outside torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def image_shape(path: Path, resize: int | None) -> tuple[int, int] | None:
    """(height, width) of the array `img2img translate` makes of `path` (EXIF orientation, `--resize`),
    from the file's header; None for a file it will not read."""
    from PIL import Image

    from img2img.data.images import _orientation, pixel_limit

    try:
        with Image.open(path) as im:
            w, h = im.size
            if _orientation(im) in (5, 6, 7, 8):  # a quarter turn
                w, h = h, w
    except Exception:  # noqa: BLE001 - any unreadable file; translating it reports why
        return None
    limit = pixel_limit()
    if limit is not None and w * h > limit:
        return None
    return resized_shape(h, w, resize) if resize is not None else (h, w)


def one_process_batches(shapes: Sequence[tuple[int, int] | None], batch_size: int,
                        tiled: Callable[[int, int], bool]) -> list[list[int]]:
    """The batches one process forms from images of these shapes read in this order (see `run_plan`):
    equal sizes together, a batch run when full, the fullest run when too many wait; a tiled image alone.

    A rank runs exactly these batches, so an image meets the same neighbours, and gets the same pixels,
    whatever the number of ranks. Unreadable files are batches of their own (they are only reported).
    """
    batches: list[list[int]] = []
    buckets: dict[tuple[int, int], list[int]] = {}
    pending = 0
    for index, shape in enumerate(shapes):
        if shape is None or tiled(*shape):
            batches.append([index])
            continue
        bucket = buckets.setdefault(shape, [])
        bucket.append(index)
        pending += 1
        if len(bucket) >= batch_size:
            pending -= len(bucket)
            batches.append(buckets.pop(shape))
        elif pending > 4 * batch_size:
            key = max(buckets, key=lambda k: len(buckets[k]))
            pending -= len(buckets[key])
            batches.append(buckets.pop(key))
    batches += [buckets.pop(key) for key in list(buckets)]
    return batches


def balance(weights: Sequence[int], world: int) -> list[list[int]]:
    """Indices of `weights` split into `world` shards of about equal total weight.

    Greedy: the heaviest job goes to the lightest shard (ties: the lower index, the lower rank), so the
    split depends only on the weights; each shard lists its indices in input order.
    """
    shards: list[list[int]] = [[] for _ in range(world)]
    loads = [(0, rank) for rank in range(world)]
    for index in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        load, rank = heapq.heappop(loads)
        shards[rank].append(index)
        heapq.heappush(loads, (load + max(1, int(weights[index])), rank))
    return [sorted(shard) for shard in shards]


def rank_device(device: str, local_rank: int) -> str:
    """``auto`` and ``cuda`` mean this rank's own GPU (its LOCAL_RANK) when there are GPUs."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise Img2ImgError(f"this process is local rank {local_rank} on a machine with {count} GPU(s): start at "
                               f"most {count} process(es) per machine (torchrun --nproc-per-node, or --nproc), or "
                               "give --device cpu")
        return f"cuda:{local_rank}"
    return device


@dataclass
class RankResult:
    """What one rank did, as it sends it to the others."""

    rank: int
    host: str
    device: str = ""
    written: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None  # why the rank stopped before the end of its shard
    not_done: list[str] = field(default_factory=list)  # the inputs of its shard it did not translate

    @property
    def images_per_s(self) -> float:
        return len(self.written) / self.seconds if self.seconds > 0 else 0.0


class _Group:
    """The gloo group of this job (joined here unless the caller already did)."""

    def __init__(self) -> None:
        self.world = torchrun_world()
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.owned = not torch.distributed.is_initialized()
        if self.owned:
            timeout = float(os.environ.get("IMG2IMG_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
            torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))
            self.group = None
        else:  # python objects travel over gloo even where the caller's group is NCCL
            self.group = torch.distributed.new_group(backend="gloo")

    def gather(self, value: object) -> list:
        values: list = [None] * self.world
        torch.distributed.all_gather_object(values, value, group=self.group)
        return values

    def from_main(self, value: object) -> object:
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def agree(self, error: str | None) -> None:
        """Every rank raises when any failed: rank 0 with the message, the others quietly."""
        errors = self.gather((error, _host()))
        failed = [(rank, e, host) for rank, (e, host) in enumerate(errors) if e is not None]
        if not failed:
            return
        if self.rank != 0:
            raise PeerFailed(f"rank {self.rank}: another process of this job stopped")
        rank, message, host = failed[0]
        raise Img2ImgError(message if rank == 0 else f"rank {rank} ({host}): {message}")

    def close(self) -> None:
        if self.owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _to_wire(plan: _Plan) -> dict:
    """The plan as strings, which pickle far smaller than paths."""
    return {"jobs": [(str(job.src), str(job.dst)) for job in plan.jobs],
            **{key: [(str(path), reason) for path, reason in getattr(plan, key)]
               for key in ("skipped", "ignored", "failed")}}


def _from_wire(wire: dict) -> _Plan:
    return _Plan(jobs=[_Job(Path(src), Path(dst)) for src, dst in wire["jobs"]],
                 **{key: [(Path(path), reason) for path, reason in wire[key]]
                    for key in ("skipped", "ignored", "failed")})


def _host() -> str:
    return socket.gethostname()


def translate_ranks(plan: Callable[[], _Plan], load: Callable[[str], object], *, device: str, out: Path,
                    resize: int | None, keep_depth: bool, console: Console) -> TranslateReport:
    """This rank's part of a translation under torchrun; every rank returns the whole job's report.

    `plan` checks the options and plans the outputs (called on rank 0 only), `load(device)` loads the
    translator on this rank's device. Problems before the translation starts stop every rank, reported
    once by rank 0; a rank that stops part-way is reported by rank 0 with the inputs it did not translate.
    """
    group = _Group()
    try:
        return _translate(group, plan, load, device=device, out=out, resize=resize, keep_depth=keep_depth,
                          console=console)
    finally:
        group.close()


def _translate(group: _Group, plan: Callable[[], _Plan], load: Callable[[str], object], *, device: str, out: Path,
               resize: int | None, keep_depth: bool, console: Console) -> TranslateReport:
    main = group.rank == 0
    quiet = Console(file=io.StringIO())
    # 1. rank 0 plans (once: a rank that listed later would see the others' new outputs as done)
    planned: _Plan | None = None
    error = None
    if main:
        try:
            planned = plan()
            remove_partial_outputs(planned)  # before anyone writes: what a killed run left half-written
        except Img2ImgError as exc:
            error = str(exc)
    shared = group.from_main(None if planned is None else _to_wire(planned))
    group.agree(error)
    planned = _from_wire(shared)
    jobs = planned.jobs
    # 2. the translator on this rank's device, while the headers give each job its weight
    translator = None
    try:
        translator = load(rank_device(device, group.local_rank))
    except Img2ImgError as exc:
        error = str(exc)
    group.agree(error)
    mine = [image_shape(job.src, resize) for job in jobs[group.rank::group.world]]
    shapes: list[tuple[int, int] | None] = [None] * len(jobs)
    for rank, part in enumerate(group.gather(mine)):
        shapes[rank::group.world] = part
    batches = one_process_batches(shapes, translator.batch_size, lambda h, w: translator._tiling(h, w) is not None)
    weights = [sum(shapes[i][0] * shapes[i][1] if shapes[i] else 0 for i in batch) for batch in batches]
    chosen = balance(weights, group.world)[group.rank]
    shard = [jobs[i] for b in chosen for i in batches[b]]
    # 3. this rank's shard; rank 0 keeps the plan's skipped, ignored and failed files for the summary
    own = _Plan(jobs=shard, skipped=[], ignored=[], failed=[], batches=[b for b in chosen for _ in batches[b]])
    result = RankResult(rank=group.rank, host=_host(), device=str(select_device(rank_device(device, group.local_rank))))
    start = time.perf_counter()
    bug: BaseException | None = None
    try:
        report = run_plan(translator, own, out, resize=resize, keep_depth=keep_depth,
                          console=console if main else quiet, summary=False)
        result.written = [str(p) for p in report.written]
        result.failed = [(str(p), reason) for p, reason in report.failed]
    except Exception as exc:  # noqa: BLE001 - reported by rank 0 with the files it leaves undone
        result.error = str(exc) if isinstance(exc, Img2ImgError) else f"{type(exc).__name__}: {exc}"
        result.not_done = [str(job.src) for job in shard if not job.dst.exists()]
        result.written = [str(job.dst) for job in shard if job.dst.exists()]
        if not isinstance(exc, Img2ImgError):
            bug = exc  # a bug: raised with its traceback once the others know
    result.seconds = time.perf_counter() - start
    results: list[RankResult] = group.gather(result)
    # 4. one report for the job
    total = TranslateReport(skipped=list(planned.skipped), ignored=list(planned.ignored), failed=list(planned.failed))
    for r in results:
        total.written += [Path(p) for p in r.written]
        total.failed += [(Path(p), reason) for p, reason in r.failed]
    total.seconds = max(r.seconds for r in results)
    stopped = [r for r in results if r.error is not None]
    if main:
        _summarise(total, out, translator, console)
        console.print(f"by rank ({group.world}):", highlight=False)
        for r in results:
            console.print(f"  rank {r.rank} ({r.host}, {r.device}): {len(r.written)} translated, {len(r.failed)} "
                          f"unreadable in {r.seconds:.1f} s ({r.images_per_s:.2f} images/s)"
                          + (" [red]stopped[/]" if r.error else ""), highlight=False)
        for r in stopped:
            _listing(console, f"rank {r.rank} did not translate", [(Path(p), "not done") for p in r.not_done], "red")
    if bug is not None:
        raise bug
    if stopped:
        if not main:
            raise PeerFailed(f"rank {group.rank}: another process of this job stopped")
        first = stopped[0]
        left = sum(len(r.not_done) for r in stopped)
        raise Img2ImgError(f"rank {first.rank} ({first.host}) stopped: {first.error} -- {left} input(s) of "
                           f"{'its' if len(stopped) == 1 else 'their'} shard{'s' if len(stopped) > 1 else ''} are "
                           f"not translated (listed above). Run the same command again: the outputs in {out} "
                           "are kept and only the missing ones are translated.")
    return total

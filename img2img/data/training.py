"""The training data of a pipeline: files, checks before the first step, and the loader."""
from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from img2img.data.folders import list_images, match_pairs
from img2img.data.images import ImageReadError, _check_channels, probe_image
from img2img.data.samples import _FIXED, _collate, _EpochSampler, _Samples
from img2img.errors import Img2ImgError

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
    position p takes A[p % |A|] and a B drawn from (seed, epoch, p). With `domains` (name -> folder,
    the first leading: ``{"a": A, "b": B}`` is the same as `a`/`b`) each further domain's image is
    drawn the same way and the batch holds one tensor per domain name. Paired: `a`/`b` folders matched
    by name, or `pairs` holding side-by-side AB images; batch "a" is the input, "b" the target
    (direction "b2a" swaps them; each keeps the channel count of the folder or half it comes from).
    """

    def __init__(self, *, kind: Literal["unpaired", "paired"], a: Path | None, b: Path | None,
                 pairs: Path | None = None, direction: Literal["a2b", "b2a"] = "a2b",
                 channels_a: int = 3, channels_b: int = 3, transforms: list | None = None,
                 input_transforms: list | None = None, seed: int = 0, batch_size: int = 1,
                 num_workers: int = 0, skip_unreadable: bool = False, rank: int = 0,
                 world_size: int = 1, pin_memory: bool = False, yaml_paths: dict[str, str] | None = None,
                 domains: dict[str, Path | None] | None = None, channels: dict[str, int] | None = None):
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

        files: dict[str, list[Path]] = {}
        pair_list: list[tuple[Path, Path]] = []
        ab_files: list[Path] = []
        if kind == "unpaired":
            folders = dict(domains) if domains is not None else {"a": a, "b": b}
            for name in folders:
                self.yaml_paths.setdefault(name, f"data.domains.{name}")
            missing = [name for name, folder in folders.items() if folder is None]
            if missing or len(folders) < 2:
                named = " and ".join(self.yaml_paths[n] for n in (missing or folders))
                raise Img2ImgError(f"unpaired data needs a folder of images for each of at least two domains: {named}")
            files = {name: list_images(Path(folder), self.yaml_paths[name]) for name, folder in folders.items()}
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
        self.channels = {"a": self.channels_a, "b": self.channels_b}
        if kind == "unpaired":
            self.channels = {name: int((channels or {}).get(name, {"a": channels_a, "b": channels_b}.get(name, 3)))
                             for name in files}
            for count in self.channels.values():
                _check_channels(count)
        self._samples = _Samples(
            kind=kind, files=files, channels=self.channels if kind == "unpaired" else None, pairs=pair_list, ab_files=ab_files,
            swap_ab=swap and bool(ab_files), channels_a=source_channels[0], channels_b=source_channels[1],
            transforms=self.transforms, input_transforms=self.input_transforms, seed=self.seed,
            yaml_paths=self.yaml_paths,
        )
        self._sampler = _EpochSampler(self._samples.num_items, self.seed, rank, world_size, self.batch_size)
        self._loader: DataLoader | None = None
        self._skipped = 0  # unreadable files left out (data.skip_unreadable)
        if self._sampler.per_rank() < self.batch_size:
            self.check()  # too few samples: said with the unreadable files listed and left out of the count

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
        return list(s.files.get("a", [])) if s.kind == "unpaired" else [p[0] for p in s.pairs] or list(s.ab_files)

    @property
    def files_b(self) -> list[Path]:
        s = self._samples
        return list(s.files.get("b", [])) if s.kind == "unpaired" else [p[1] for p in s.pairs] or list(s.ab_files)

    @property
    def domains(self) -> list[str]:
        """The batch's image keys: the domain names (unpaired), or "a" (input) and "b" (target)."""
        return list(self._samples.files) if self._samples.kind == "unpaired" else ["a", "b"]

    def files_of(self, domain: str) -> list[Path]:
        """The files of one domain (unpaired)."""
        return list(self._samples.files[domain])

    def _batch_size_problem(self, per_rank: int, unreadable: int = 0) -> str | None:
        if per_rank >= self.batch_size:
            return None
        ranks = f" per process ({self.world_size} processes)" if self.world_size > 1 else ""
        readable = f" readable (leaving out {unreadable} unreadable file(s))" if unreadable else ""
        return (f"{self.yaml_paths['batch_size']} is {self.batch_size} but there are only {per_rank}{readable} "
                f"training sample(s){ranks}; lower the batch size or add images")

    def _check_batch_size(self) -> None:
        problem = self._batch_size_problem(self._sampler.per_rank(), self._skipped)
        if problem:
            raise Img2ImgError(problem)

    # -- checking ----------------------------------------------------------------------------

    def _all_files(self) -> list[Path]:
        s = self._samples
        if s.kind == "unpaired":
            return [f for files in s.files.values() for f in files]
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
                left = self._without({p for p, _ in bad}).num_items
                problem = self._batch_size_problem(-(-left // self.world_size), len(bad))
                if problem:  # said now, not after the files are fixed or skipped
                    lines.append(f"Also: {problem}.")
                raise Img2ImgError("\n".join(lines))
            skipped = bad
            self._skipped = len(bad)
            self._drop({p for p, _ in bad})
        else:
            self._check_batch_size()
        self._check_sizes(sizes)
        return skipped

    def _without(self, bad: set[Path]) -> _Samples:
        """The samples without the files in `bad` (a copy; the lists are new)."""
        s = copy.copy(self._samples)
        s.files = {name: [f for f in files if f not in bad] for name, files in s.files.items()}
        s.pairs = [p for p in s.pairs if p[0] not in bad and p[1] not in bad]
        s.ab_files = [f for f in s.ab_files if f not in bad]
        return s

    def _drop(self, bad: set[Path]) -> None:
        s = self._samples = self._without(bad)
        if s.kind == "unpaired":
            for label, files in s.files.items():
                if not files:
                    raise Img2ImgError(f"{self.yaml_paths[label]}: no readable images left after skipping unreadable ones")
        elif s.num_items == 0:
            raise Img2ImgError("no readable image pairs left after skipping unreadable ones")
        self._sampler.num_items = s.num_items
        self._loader = None
        self._check_batch_size()

    def _check_sizes(self, sizes: dict[Path, tuple[int, int]]) -> None:
        from img2img.data import sizes as size_rules

        s = self._samples
        problems: list[str] = []
        # (h, w) of what each sample feeds to the joint transforms, with the files it comes from
        shapes: list[tuple[tuple[int, int], str]] = []
        if s.kind == "unpaired":
            shapes = [((sizes[f][1], sizes[f][0]), str(f)) for files in s.files.values() for f in files]
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
        need = size_rules.min_input_size(self.transforms)
        need_input = size_rules.min_input_size(self.input_transforms) if s.kind == "paired" else None
        small: list[str] = []
        joint_out: dict[tuple[int, int], tuple[int, int] | None] = {}
        for (h, w), name in shapes:
            if need is not None and (h < need[0] or w < need[1]):
                small.append(f"  {name}: {w}x{h}")
                continue
            if need_input is not None:
                if (h, w) not in joint_out:
                    joint_out[(h, w)] = size_rules.output_size(self.transforms, (h, w))
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
        from img2img.data import transforms as T

        record: dict[str, Any] = {"transforms": T.describe(T.build_transform(self.transforms, paired=self.kind == "paired"))}
        if self.kind == "paired" and self.input_transforms:
            record["input_transforms"] = T.describe(T.build_transform(self.input_transforms, paired=False))
        return record

    def close(self) -> None:
        """Stop persistent workers (they also stop when this object is garbage collected)."""
        self._loader = None

"""One training sample from a (stream, epoch, position) key, batching, and the epoch sampler.

Training data is a pure function of (seed, epoch, position): the permutation, the random partner in
unpaired data and each sample's augmentation are all drawn from those numbers, so any number of
workers, any number of processes and a resumed run see the same samples.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from img2img.data.images import read_image, read_pair_image, to_tensor
from img2img.errors import Img2ImgError


def _seed(*numbers: int) -> int:
    """A 32-bit seed from a tuple of integers (stable across platforms and runs)."""
    return int(np.random.SeedSequence([int(n) % 2**64 for n in numbers]).generate_state(1)[0])


_TRAIN, _FIXED = 0, 1  # sample streams: training epochs and the fixed sample-grid batch
_PERMUTATION = 0x5EED  # stream tag for epoch permutations


class _Samples(Dataset):
    """Loads and augments one sample from a (stream, epoch, position) key; picklable for workers."""

    def __init__(self, *, kind: str, files: dict[str, list[Path]], pairs: list[tuple[Path, Path]],
                 ab_files: list[Path], swap_ab: bool, channels_a: int, channels_b: int,
                 transforms: list | None, input_transforms: list | None, seed: int, yaml_paths: dict[str, str],
                 channels: dict[str, int] | None = None):
        self.kind = kind
        self.files = files  # unpaired: each domain's files, the first domain leading the epoch
        self.channels = channels or {"a": channels_a, "b": channels_b}
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
            return max(len(files) for files in self.files.values())
        return len(self.ab_files) if self.ab_files else len(self.pairs)

    def _compose(self, key: str):
        if self._composes is None:
            from img2img.data import transforms as T

            self._composes = {}
            if self.kind == "unpaired":
                if self.transforms:
                    for domain in self.files:
                        self._composes[domain] = T.build_transform(self.transforms, paired=False)
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
        from img2img.data import transforms as T

        T.reseed(compose, seed)
        try:
            return compose(**images)
        except Exception as exc:
            which = self.yaml_paths["input_transforms" if key == "input" else "transforms"]
            names = ", ".join(str(f) for f in files)
            raise Img2ImgError(f"{names}: {which} failed on this image: {type(exc).__name__}: {exc}") from exc

    def paths(self, stream: int, epoch: int, pos: int) -> tuple[Path, ...]:
        if self.kind == "unpaired":
            return tuple(files[pos % len(files)] if i == 0 else files[self._index(i, files, stream, epoch, pos)]
                         for i, files in enumerate(self.files.values()))
        if self.ab_files:
            return (self.ab_files[pos],)
        return self.pairs[pos]

    def _index(self, i: int, files: list[Path], stream: int, epoch: int, pos: int) -> int:
        """The file of the i-th domain (i >= 1) at `pos`: drawn from (seed, epoch, pos), tag 2i."""
        if stream == _FIXED:
            return pos % len(files)
        rng = np.random.default_rng(_seed(self.seed, stream, epoch, pos, 2 * i))
        return int(rng.integers(len(files)))

    def load(self, stream: int, epoch: int, pos: int) -> dict[str, Any]:
        """One sample as {"a": CHW tensor, "b": CHW tensor (unpaired: one per domain), "paths": (...)}."""
        files = self.paths(stream, epoch, pos)
        if self.kind == "unpaired":
            sample: dict[str, Any] = {}
            for i, (domain, path) in enumerate(zip(self.files, files)):
                # augmentation seeds: tag 0 for the first domain, 2i - 1 for the i-th (a: 0, b: 1, c: 3, ...)
                tag = 0 if i == 0 else 2 * i - 1
                image = self._apply(domain, _seed(self.seed, stream, epoch, pos, tag), [path],
                                    image=read_image(path, self.channels[domain]))["image"]
                sample[domain] = to_tensor(image)
            sample["paths"] = tuple(str(f) for f in files)
            return sample
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
        return {"a": to_tensor(inp), "b": to_tensor(target), "paths": tuple(str(f) for f in files)}

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
    keys = [key for key in items[0] if key != "paths"]
    for index, key in enumerate(keys):
        shapes = [tuple(item[key].shape) for item in items]
        if len(set(shapes)) > 1:
            listing = "\n".join(
                f"  {item['paths'][min(index, len(item['paths']) - 1)]}: "
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



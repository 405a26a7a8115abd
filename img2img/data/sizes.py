"""What augmentation stages do to an image's (height, width), worked out from the built transforms'
attributes (the size a pipeline outputs, the smallest input it can take), and `validate_stages`: a
YAML stage list checked before training, down to one dry run on a small image.
"""
from __future__ import annotations

import warnings

import albumentations as A
import numpy as np
from albumentations.core.composition import BaseCompose

from img2img.data.transforms import _MAY_SWAP, _RANDOM_SIZE, Size, _build_stages, _split_stage
from img2img.errors import first_line

_KEEP = "keep"


def _fixed_size(t) -> Size | None:
    """The size a stage always outputs, whatever its input; None if it depends on the input."""
    name = type(t).__name__
    if name in ("Resize", "RandomCrop", "CenterCrop"):
        return int(t.height), int(t.width)
    if name in ("RandomResizedCrop", "RandomSizedCrop"):
        return int(t.size[0]), int(t.size[1])
    if name == "Crop":
        return int(t.y_max - t.y_min), int(t.x_max - t.x_min)
    return None


def _crop_need(t) -> Size | None:
    """The input size a cropping stage needs (None when it pads or resizes instead)."""
    name = type(t).__name__
    if name in ("RandomCrop", "CenterCrop") and not getattr(t, "pad_if_needed", False):
        return int(t.height), int(t.width)
    if name == "Crop" and not getattr(t, "pad_if_needed", False):
        return int(t.y_max), int(t.x_max)
    return None


def _max_size(value) -> int | None:
    if isinstance(value, (list, tuple)):
        return int(value[0]) if len(value) == 1 else None
    return None if value is None else int(value)


def _scaled(hw: Size, scale: float) -> Size:
    return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def _next_size(t, hw: Size | None):
    """Size after stage t given the size before it (None = unknown); may return _KEEP."""
    result = _applied_size(t, hw)
    if result is _KEEP or getattr(t, "p", 1.0) >= 1.0:
        return result
    return _KEEP if result == hw and hw is not None else None  # applied only sometimes


def _applied_size(t, hw: Size | None):
    """Size after stage t when it is applied."""
    name = type(t).__name__
    fixed = _fixed_size(t)
    if fixed is not None:
        return fixed
    if isinstance(t, BaseCompose):
        return _composition_size(t, hw)
    if name in _RANDOM_SIZE:
        return None
    if name == "Transpose":
        return None if hw is None else (hw[1], hw[0])
    if name in _MAY_SWAP:
        return _KEEP if hw is not None and hw[0] == hw[1] else None
    if name == "Rotate" and getattr(t, "crop_border", False):
        return None
    if name in ("Affine", "Perspective") and getattr(t, "fit_output", False):
        return None
    if name == "Perspective" and not getattr(t, "keep_size", True):
        return None
    if name == "CropAndPad" and not getattr(t, "keep_size", True):
        return None
    if name == "PadIfNeeded":
        if hw is None:
            return None
        h, w = hw
        if t.min_height is not None:
            h = max(h, int(t.min_height))
        elif t.pad_height_divisor:
            h = -(-h // int(t.pad_height_divisor)) * int(t.pad_height_divisor)
        if t.min_width is not None:
            w = max(w, int(t.min_width))
        elif t.pad_width_divisor:
            w = -(-w // int(t.pad_width_divisor)) * int(t.pad_width_divisor)
        return h, w
    if name == "Pad":
        if hw is None:
            return None
        pad = t.padding
        if isinstance(pad, (int, float)):
            left = top = right = bottom = int(pad)
        elif len(pad) == 2:
            left, top = right, bottom = int(pad[0]), int(pad[1])
        else:
            left, top, right, bottom = (int(x) for x in pad)
        return hw[0] + top + bottom, hw[1] + left + right
    if name in ("LongestMaxSize", "SmallestMaxSize"):
        if hw is None:
            return None
        hw_limits = getattr(t, "max_size_hw", None)
        if hw_limits is not None:
            mh, mw = hw_limits
            if name == "LongestMaxSize":
                scale = min(s for s in (mh / hw[0] if mh else None, mw / hw[1] if mw else None) if s)
            else:
                scale = max(s for s in (mh / hw[0] if mh else None, mw / hw[1] if mw else None) if s)
            return _scaled(hw, scale)
        size = _max_size(t.max_size)
        if size is None:
            return None
        side = max(hw) if name == "LongestMaxSize" else min(hw)
        return _scaled(hw, size / side)
    return _KEEP


def _chain_size(transforms, hw: Size | None) -> Size | None:
    for t in transforms:
        nxt = _next_size(t, hw)
        if nxt is not _KEEP:
            hw = nxt
    return hw


def _composition_outcomes(t, hw: Size) -> list[Size | None]:
    """Every size a composition can output for input size hw (one per way its draw can go)."""
    name = type(t).__name__
    children = list(t.transforms)
    if name == "Sequential":
        outcomes = [_chain_size(children, hw)]
    else:  # OneOf, OneOrOther, SomeOf, RandomOrder, SelectiveChannelTransform
        outcomes = [_chain_size([c], hw) for c in children] + [_chain_size(children, hw)]
    if name in ("SomeOf", "RandomOrder", "SelectiveChannelTransform"):
        outcomes.append(hw)  # a draw may pick stages that leave the size alone
    return outcomes


def _composition_size(t, hw: Size | None):
    """A composition's output size: _KEEP, a size, or None (depends on the random draw)."""
    probes = [hw] if hw is not None else [(97, 89), (61, 113)]
    results = []
    for probe in probes:
        outcomes = _composition_outcomes(t, probe)
        if all(o == probe for o in outcomes):
            results.append(_KEEP)
        elif outcomes[0] is not None and all(o == outcomes[0] for o in outcomes):
            results.append(outcomes[0])
        else:
            return None
    return results[0] if all(r == results[0] for r in results) else None


def _built(stages) -> list | None:
    built, problems = _build_stages(stages)
    return None if problems else built


def output_size(stages, input_hw: Size | None = None) -> Size | None:
    """(height, width) the stages output, or None when it depends on the input or the random draw.

    With no stages the output is the input (``input_hw``).
    """
    built = _built(stages)
    if built is None:
        return None
    return _chain_size(built, tuple(input_hw) if input_hw is not None else None)


def min_input_size(stages) -> Size | None:
    """Smallest (height, width) an input image may have, or None when any size works.

    A crop before any resize or padding needs the image at least as large as the crop. Only sure
    requirements are returned: after a stage whose effect on size cannot be known, nothing more is.
    """
    built = _built(stages)
    if not built:
        return None
    return _requirement(built)


def _requirement(transforms) -> Size | None:
    need = [0, 0]
    swapped = False
    symmetric = False
    pad = [0, 0]  # current size is at least this, whatever the input

    def require(h: int, w: int) -> None:
        nonlocal need
        if symmetric:
            h = w = max(h if h > pad[0] else 0, w if w > pad[1] else 0)
            need = [max(need[0], h), max(need[1], w)]
            return
        h = h if h > pad[0] else 0
        w = w if w > pad[1] else 0
        if swapped:
            h, w = w, h
        need = [max(need[0], h), max(need[1], w)]

    for t in transforms:
        name = type(t).__name__
        crop = _crop_need(t)
        if crop is not None:
            require(*crop)
            break  # the size is fixed from here on
        if _fixed_size(t) is not None:
            break
        if isinstance(t, BaseCompose):
            if _composition_size(t, None) is _KEEP:
                continue
            for child in t.transforms:
                child_crop = _crop_need(child)
                if child_crop is not None:
                    require(*child_crop)
            break
        always = getattr(t, "p", 1.0) >= 1.0
        if name == "PadIfNeeded" and always and t.min_height is not None and t.min_width is not None:
            pad = [max(pad[0], int(t.min_height)), max(pad[1], int(t.min_width))]
            continue
        if name in ("PadIfNeeded", "Pad") and not always:
            continue  # padding only sometimes: the crop must still fit the unpadded image
        if name == "Transpose" and always:
            swapped = not swapped
            pad = [pad[1], pad[0]]
            continue
        if name in _MAY_SWAP or name == "Transpose":
            symmetric = True
            pad = [min(pad), min(pad)]
            continue
        if _next_size(t, (64, 48)) is not _KEEP:
            break  # resizes, pads by an amount or changes size at random: no further sure requirement
    if need == [0, 0]:
        return None
    return need[0], need[1]


MAX_TRAINING_SIDE = 8192
"""Largest height or width a training stage may produce; larger is a typo (and a dry run would not fit)."""


def _largest_size_argument(item: object) -> int:
    """The largest number given to a size-like argument (height, width, size, min_height, ...)."""
    try:
        _, kwargs = _split_stage(item)
    except ValueError:
        return 0
    largest = 0
    for key, value in kwargs.items():
        if not any(word in str(key) for word in ("height", "width", "size")):
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf"):
                largest = max(largest, int(v))
    return largest


def validate_stages(stages: object, yaml_path: str) -> list[tuple[str, str]]:
    """Every problem in a YAML stage list as (dotted path, message); never raises for bad input.

    Each stage is built with albumentations' own validation, then the chain is checked for crops
    larger than what the stages before them produce, and run once on a small test image.
    """
    built, problems = _build_stages(stages, yaml_path)
    if problems or not built:
        return problems
    names = [_split_stage(item)[0] for item in stages]
    # crops that can never fit what earlier stages produce
    hw: Size | None = None
    for i, t in enumerate(built):
        need = _crop_need(t)
        if need is not None and hw is not None and (need[0] > hw[0] or need[1] > hw[1]):
            problems.append(
                (
                    f"{yaml_path}.{i}.{names[i]}",
                    f"crops {need[0]}x{need[1]} (height x width) but the stages before it produce "
                    f"{hw[0]}x{hw[1]} images; crop smaller, resize larger first, or set pad_if_needed: true",
                )
            )
        nxt = _next_size(t, hw)
        if nxt is not _KEEP:
            hw = nxt
        largest = max(max(need or (0, 0)), max(hw or (0, 0)), _largest_size_argument(stages[i]))
        if largest > MAX_TRAINING_SIDE:
            problems.append(
                (
                    f"{yaml_path}.{i}.{names[i]}",
                    f"makes {largest}-pixel sides, more than the {MAX_TRAINING_SIDE} a training crop can have; "
                    "check the numbers (translate tiles large images, training does not need them)",
                )
            )
            return problems
    if problems:
        return problems
    # a dry run on a test image catches what construction cannot (e.g. a transform needing a mask)
    need = _requirement(built) or (0, 0)
    image = np.full((max(64, need[0]), max(64, need[1]), 3), 0.5, dtype=np.float32)
    for i, t in enumerate(built):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image = A.Compose([t], strict=True, seed=0)(image=image)["image"]
        except Exception as exc:
            problems.append((f"{yaml_path}.{i}.{names[i]}", f"fails on a test image: {first_line(exc)}"))
            break
    return problems

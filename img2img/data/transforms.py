"""Augmentation pipelines from YAML stage lists, on top of albumentations.

This is the only module that imports albumentations, so the rest of img2img speaks plain YAML
stages: a list of one-key mappings ``{TransformName: {kwargs}}`` (kwargs may be empty or null).
Compositions (``OneOf``, ``SomeOf``, ``Sequential``, ...) take a nested stage list under
``transforms``. Images reach these pipelines as float32 HWC arrays in [0, 1].
"""
from __future__ import annotations

import inspect
import os
import warnings
from functools import lru_cache
from typing import Any

# albumentations asks PyPI for a newer version on import (up to 2 s offline); a training run need not.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
from albumentations.core.transforms_interface import BasicTransform, Transform3D  # noqa: E402

from img2img.errors import closest, did_you_mean, first_line

__all__ = [
    "build_transform",
    "describe",
    "reseed",
    "transform_names",
]

Size = tuple[int, int]

# Compositions a stage may use; their "transforms" argument is a nested stage list.
COMPOSITIONS = ("OneOf", "SomeOf", "Sequential", "RandomOrder", "OneOrOther", "SelectiveChannelTransform")

# Transforms that exist in albumentations but cannot work inside an img2img pipeline.
UNSUPPORTED: dict[str, str] = {
    "Normalize": "img2img scales images to [-1, 1] itself; remove this stage",
    "ToTensorV2": "img2img converts images to tensors itself; remove this stage",
    "ToTensor3D": "img2img converts images to tensors itself; remove this stage",
    "FromFloat": "img2img works on float images in [0, 1]; remove this stage",
    "ToFloat": "img2img already gives the transforms float images in [0, 1]; remove this stage",
    "Lambda": "it needs Python functions, which a YAML pipeline cannot hold",
    "Mosaic": "it needs extra images passed as metadata, which img2img does not provide",
    "OverlayElements": "it needs overlay metadata, which img2img does not provide",
    "TextImage": "it needs text metadata, which img2img does not provide",
    "AtLeastOneBBoxRandomCrop": "it needs bounding boxes; use RandomCrop",
    "BBoxSafeRandomCrop": "it needs bounding boxes; use RandomCrop",
    "RandomCropNearBBox": "it needs bounding boxes; use RandomCrop",
    "RandomSizedBBoxSafeCrop": "it needs bounding boxes; use RandomSizedCrop",
    "CropNonEmptyMaskIfExists": "it needs a mask; use RandomCrop",
    "MaskDropout": "it needs a mask",
}

# Transforms whose output size depends on the random draw, so no fixed size can be promised after them.
_RANDOM_SIZE = {"RandomScale", "RandomCropFromBorders"}
# Transforms that may swap height and width (size is kept only for square images).
_MAY_SWAP = {"RandomRotate90", "D4", "SquareSymmetry"}


@lru_cache(maxsize=1)
def transform_names() -> dict[str, type]:
    """Every transform and composition a stage may name, by class name."""
    names: dict[str, type] = {}
    for name in dir(A):
        obj = getattr(A, name)
        if not inspect.isclass(obj) or name.startswith("_"):
            continue
        if issubclass(obj, BasicTransform):
            if inspect.isabstract(obj) or obj.__module__.endswith("transforms_interface"):
                continue  # BasicTransform, DualTransform, ImageOnlyTransform, NoOp's bases
            if issubclass(obj, Transform3D):
                continue  # volumes, not images
            names[name] = obj
        elif name in COMPOSITIONS:
            names[name] = obj
    names["NoOp"] = A.NoOp
    return names


def _suggest(word: str, options) -> str:
    hint = did_you_mean(word, options)
    return f" ({hint})" if hint else ""


def _valid_arguments(cls: type) -> set[str]:
    """Argument names a transform class accepts (its pydantic schema plus its signature)."""
    names = {"p"}
    schema = getattr(cls, "InitSchema", None)
    if schema is not None and hasattr(schema, "model_fields"):
        names.update(schema.model_fields)
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            names.add(param.name)
    return names - {"self", "strict", "always_apply"}


def _split_stage(item: object) -> tuple[str, Any]:
    """(name, kwargs) of one stage; raises ValueError with a user-facing message when malformed."""
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and len(item) == 1:
        name, kwargs = next(iter(item.items()))
        if not isinstance(name, str):
            raise ValueError(f"a stage name must be a string, got {name!r}")
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, dict):
            raise ValueError(
                f"the arguments of {name} must be a mapping like {{{name}: {{p: 0.5}}}}, got {kwargs!r}"
            )
        return name, kwargs
    raise ValueError(
        "each stage must be a mapping with exactly one key, the transform name, "
        f"e.g. '- HorizontalFlip: {{p: 0.5}}'; got {item!r}"
    )


def _clean_error(exc: BaseException) -> list[tuple[str | None, str]]:
    """Turn an albumentations construction error into (argument or None, message) pairs."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    errors = getattr(cause, "errors", None)
    if callable(errors):
        try:
            items = errors()
        except Exception:  # not a pydantic error after all
            items = None
        if items:
            out: list[tuple[str | None, str]] = []
            for err in items:
                loc = [str(x) for x in err.get("loc", ())]
                msg = str(err.get("msg", "invalid value"))
                msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
                if err.get("type") != "missing" and "input" in err:
                    msg += f" (got {err['input']!r})"
                out.append((loc[0] if loc else None, msg))
            return out
    return [(None, first_line(exc))]


def _build_one(name: str, kwargs: dict, path: str, problems: list[tuple[str, str]]):
    """Build one stage, appending problems; returns the transform or None."""
    names = transform_names()
    if name in UNSUPPORTED:
        problems.append((path, f"{name} cannot be used here: {UNSUPPORTED[name]}"))
        return None
    cls = names.get(name)
    if cls is None:
        problems.append((path, f"unknown transform '{name}'{_suggest(name, names)}"))
        return None
    kwargs = dict(kwargs)
    if name in COMPOSITIONS:
        nested = kwargs.get("transforms")
        if not isinstance(nested, list) or not nested:
            problems.append((f"{path}.transforms", f"{name} needs 'transforms': a non-empty list of stages"))
            return None
        children = [
            _build_stage(child, f"{path}.transforms.{j}", problems) for j, child in enumerate(nested)
        ]
        if any(c is None for c in children):
            return None
        kwargs["transforms"] = children
    valid = _valid_arguments(cls)
    suggested: set[str] = set()
    unknown = [k for k in kwargs if k not in valid]
    for arg in unknown:
        match = closest(arg, sorted(valid))
        suggested.update([match] if match is not None else [])
        hint = f" ({did_you_mean(arg, sorted(valid))})" if match is not None else ""
        problems.append(
            (f"{path}.{arg}", f"{name} has no argument '{arg}'{hint}; it accepts: {', '.join(sorted(valid))}")
        )
        del kwargs[arg]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transform = cls(**kwargs)
            A.Compose([transform], strict=True)
    except Exception as exc:  # albumentations reports bad values as ValueError / TypeError
        for arg, msg in _clean_error(exc):
            if arg in suggested and "required" in msg.lower():
                continue  # already explained by the "did you mean" above
            problems.append((f"{path}.{arg}" if arg and arg in valid else path, msg))
        return None
    return None if unknown else transform


def _build_stage(item: object, path: str, problems: list[tuple[str, str]]):
    try:
        name, kwargs = _split_stage(item)
    except ValueError as exc:
        problems.append((path, str(exc)))
        return None
    return _build_one(name, kwargs, f"{path}.{name}", problems)


def _build_stages(stages: object, yaml_path: str = "transforms") -> tuple[list, list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    if stages is None:
        return [], problems
    if not isinstance(stages, list):
        return [], [(yaml_path, f"must be a list of stages like '- HorizontalFlip: {{p: 0.5}}', got {stages!r}")]
    built = [_build_stage(item, f"{yaml_path}.{i}", problems) for i, item in enumerate(stages)]
    return built, problems


# ---------------------------------------------------------------------------------------------


def build_transform(stages, *, paired: bool, seed: int | None = None) -> A.Compose:
    """A strict Compose of the stages; paired adds a ``target`` image that gets identical parameters."""
    built, problems = _build_stages(stages, "transforms")
    if problems:
        from img2img.errors import PipelineError

        raise PipelineError(problems)
    return A.Compose(
        built,
        additional_targets={"target": "image"} if paired else None,
        strict=True,
        seed=seed,
    )


def reseed(compose: A.Compose, seed: int) -> None:
    """Give the Compose (and every stage in it) a fresh random state from ``seed``.

    The data layer calls this per sample with a seed drawn from (pipeline seed, epoch, position),
    which makes augmentation independent of worker count and of where a resumed run starts.
    """
    compose.set_random_seed(int(seed) % (2**32))


def describe(compose: A.Compose) -> dict:
    """The resolved pipeline (every default filled in) as a JSON-ready dict, for the run folder."""
    return A.to_dict(compose)

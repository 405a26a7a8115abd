"""One checkpoint file -> the state dict of one of our generators, with the spec that builds it.

What the keys say (`layouts.detect`) fills the spec; the user's flags override it; the mapping then
checks every key and shape, so a flag that contradicts the weights fails with the keys that don't fit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from img2img.errors import Img2ImgError
from img2img.importing.layouts import ARCHS, Detected, detect, layers_for
from img2img.importing.mapping import Mapping, execution_order, map_state, mapped_state
from img2img.importing.statedict import StateFile

NORMS = ("instance", "batch")


@dataclass
class Flags:
    """What the user said about the generator; None: take it from the keys."""

    arch: str | None = None
    ngf: int | None = None
    norm: str | None = None
    dropout: bool | None = None

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Converted:
    """A file's weights as our generator's state dict, and how they were read."""

    state: StateFile
    detected: Detected
    spec: dict[str, Any]
    in_channels: int
    out_channels: int
    tensors: dict[str, torch.Tensor]
    mapping: Mapping
    notes: list[str] = field(default_factory=list)


def generator_spec(detected: Detected, flags: Flags) -> tuple[dict[str, Any], list[str]]:
    """The generator spec ({name, ngf, norm, dropout, ...}) from the keys and the flags, and notes on guesses."""
    if flags.arch is not None and flags.arch not in ARCHS:
        raise Img2ImgError(f"--arch {flags.arch}: use one of {', '.join(ARCHS)}")
    if flags.norm is not None and flags.norm not in NORMS:
        raise Img2ImgError(f"--norm {flags.norm}: use instance or batch (the reference's norm 'none' drops the "
                           "convolution biases too, which img2img's generators keep)")
    notes = []
    name = flags.arch or detected.arch
    family = "resnet" if name.startswith("resnet") else "unet"
    norm = flags.norm or detected.norm
    if norm is None:
        norm = "instance" if family == "resnet" else "batch"
        notes.append(f"the keys do not show the normalisation; assumed {norm}")
    dropout = flags.dropout if flags.dropout is not None else detected.dropout
    if dropout is None:
        dropout = family == "unet"
        if family == "unet":
            notes.append("a U-Net's keys do not record dropout; assumed 0.5 as pix2pix trains (it only acts "
                         "in training; pass --no-dropout for a model trained without)")
    spec: dict[str, Any] = {"name": name, "ngf": flags.ngf or detected.ngf or 64, "norm": norm,
                            "dropout": 0.5 if dropout else 0.0}
    if family == "resnet" and detected.antialias:
        spec["antialias"] = True
    if name == "unet":
        spec["num_downs"] = detected.num_downs or 8
    return spec, notes


def _describe(spec: dict[str, Any]) -> str:
    extra = [f"ngf {spec['ngf']}", f"{spec['norm']} norm", "dropout" if spec["dropout"] else "no dropout"]
    if spec.get("antialias"):
        extra.insert(0, "anti-aliased")
    if "num_downs" in spec:
        extra.insert(0, f"{spec['num_downs']} levels")
    return f"{spec['name']} ({', '.join(extra)})"


def convert(state: StateFile, flags: Flags, *, channels: tuple[int | None, int | None] = (None, None)) -> Converted:
    """Map `state` onto our generator; `Img2ImgError` naming the file and the first keys that don't fit."""
    from img2img.registry import get_registry
    from img2img.tasks.base import _weights_left_uninitialised

    detected = detect(state.tensors, state.name)
    if detected.norm == "none":
        raise Img2ImgError(f"{state.path} is a generator built with the reference's --norm none "
                           f"({detected.evidence['norm']}): no normalisation layers and convolutions without "
                           "biases, which img2img's generators (instance or batch norm) cannot represent; it "
                           "cannot be imported")
    spec, notes = generator_spec(detected, flags)
    cin = channels[0] or detected.in_channels or 3
    cout = channels[1] or detected.out_channels or 3
    registry = get_registry()
    try:  # on the meta device first: the real network is built only once the file's tensors fit it
        with torch.device("meta"), _weights_left_uninitialised():
            meta = registry.build("generator", spec, in_channels=cin, out_channels=cout)
    except ValueError as exc:
        raise Img2ImgError(f"{state.name}: cannot build {_describe(spec)}: {exc}") from None
    order = execution_order(meta, cin)
    reference = layers_for(spec["name"], detected, dropout=bool(spec["dropout"]))
    if [k for k, _ in order] != [layer.kind for layer in reference]:
        raise Img2ImgError(f"{state.path}: the keys describe {detected.describe()}, which {_describe(spec)} cannot "
                           "represent layer for layer")
    mapping = map_state(meta, order, reference, state.tensors)
    if not mapping.fits:
        told = ", ".join(f"--{k} {v}" if not isinstance(v, bool) else f"--{'' if v else 'no-'}{k}"
                         for k, v in flags.given().items())
        because = f" (as {told} says)" if told else ""
        hint = " Leave out the flags to use what the keys say." if told else ""
        raise Img2ImgError(f"{state.path} does not fit {_describe(spec)} with {cin} -> {cout} channels{because}: "
                           f"{mapping.problems()}. Its keys describe {detected.describe()}.{hint}")
    ours = registry.build("generator", spec, in_channels=cin, out_channels=cout)
    ours.load_state_dict(mapped_state(mapping, state.tensors), strict=True)
    tensors = {k: v.detach().clone() for k, v in ours.state_dict().items()}
    if mapping.ignored:
        notes.append(f"ignored {len(mapping.ignored)} unused instance-norm buffers saved by old PyTorch "
                     f"({mapping.ignored[0]}, ...)")
    return Converted(state=state, detected=detected, spec=spec, in_channels=cin, out_channels=cout, tensors=tensors,
                     mapping=mapping, notes=state.notes + notes)

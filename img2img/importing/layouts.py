"""The reference repositories' generator layouts: where each layer's tensors sit, and what the keys tell.

The CycleGAN/pix2pix repository's ``ResnetGenerator`` is one ``nn.Sequential`` (``model``) whose
residual blocks hold theirs in ``conv_block``; its ``UnetGenerator`` nests
``UnetSkipConnectionBlock``s, each with a ``model`` Sequential: the outermost is
``[downconv, submodule, uprelu, upconv, tanh]``, a middle one
``[downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm(, dropout)]``, the innermost
``[downrelu, downconv, uprelu, upconv, upnorm]``, so level k's layers are under
``model.model.1.model.3.model...``. CUT's ``ResnetGenerator`` replaces each stride-2 conv by a
stride-1 conv, norm, ReLU and ``Downsample`` (a ``filt`` blur buffer) and each transposed conv by
``Upsample`` (a ``filt`` buffer) and a 3x3 conv.

`reference_layers` lists a layout's parametrised layers in the order the forward pass runs them;
`detect` reads the architecture from the keys.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from img2img.errors import Img2ImgError

STALE_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
"""What PyTorch before 0.4.1 saved for instance norm without running statistics; never used."""

RESNET_ARCHS = {9: "resnet_9blocks", 6: "resnet_6blocks"}
UNET_ARCHS = {8: "unet_256", 7: "unet_128"}
ARCHS = ("resnet_9blocks", "resnet_6blocks", "unet_256", "unet_128", "unet")


@dataclass(frozen=True)
class RefLayer:
    """One parametrised layer of a reference generator: its kind and the key prefix of its tensors."""

    kind: str  # conv, convT, norm, blur_down, blur_up
    prefix: str


def resnet_layers(n_blocks: int, dropout: bool, antialias: bool) -> list[RefLayer]:
    """The reference's (or, with `antialias`, CUT's) ResnetGenerator, in execution order."""
    out = [RefLayer("conv", "model.1"), RefLayer("norm", "model.2")]
    i = 4  # after ReflectionPad2d, Conv2d, norm, ReLU
    for _ in range(2):
        out += [RefLayer("conv", f"model.{i}"), RefLayer("norm", f"model.{i + 1}")]
        if antialias:  # conv, norm, ReLU, Downsample
            out.append(RefLayer("blur_down", f"model.{i + 3}"))
            i += 4
        else:  # stride-2 conv, norm, ReLU
            i += 3
    second = 6 if dropout else 5  # [pad, conv, norm, relu, (dropout), pad, conv, norm]
    for _ in range(n_blocks):
        block = f"model.{i}.conv_block"
        out += [RefLayer("conv", f"{block}.1"), RefLayer("norm", f"{block}.2"),
                RefLayer("conv", f"{block}.{second}"), RefLayer("norm", f"{block}.{second + 1}")]
        i += 1
    for _ in range(2):
        if antialias:  # Upsample, conv, norm, ReLU
            out += [RefLayer("blur_up", f"model.{i}"), RefLayer("conv", f"model.{i + 1}"),
                    RefLayer("norm", f"model.{i + 2}")]
            i += 4
        else:  # transposed conv, norm, ReLU
            out += [RefLayer("convT", f"model.{i}"), RefLayer("norm", f"model.{i + 1}")]
            i += 3
    out.append(RefLayer("conv", f"model.{i + 1}"))  # after ReflectionPad2d; then Tanh
    return out


def unet_prefix(level: int) -> str:
    """The key prefix of the ``model`` Sequential of U-Net level `level` (0 = outermost)."""
    return "model.model" + (".1.model" if level >= 1 else "") + ".3.model" * max(0, level - 1)


def unet_layers(num_downs: int) -> list[RefLayer]:
    """The reference's UnetGenerator, in execution order: down convs outside in, then up convs inside out."""
    inner = num_downs - 1
    out = [RefLayer("conv", f"{unet_prefix(0)}.0")]
    for level in range(1, num_downs):  # [downrelu, downconv, downnorm, ...]; the innermost has no downnorm
        out.append(RefLayer("conv", f"{unet_prefix(level)}.1"))
        if level != inner:
            out.append(RefLayer("norm", f"{unet_prefix(level)}.2"))
    for level in range(inner, 0, -1):  # [..., uprelu, upconv, upnorm]: at 3, 4 innermost, else 5, 6
        at = 3 if level == inner else 5
        out += [RefLayer("convT", f"{unet_prefix(level)}.{at}"), RefLayer("norm", f"{unet_prefix(level)}.{at + 1}")]
    out.append(RefLayer("convT", f"{unet_prefix(0)}.3"))  # [downconv, submodule, uprelu, upconv, tanh]
    return out


def layers_for(arch: str, detected: Detected, *, dropout: bool) -> list[RefLayer]:
    if arch.startswith("resnet"):
        return resnet_layers(int(arch.split("_")[1].removesuffix("blocks")), dropout, detected.antialias)
    num_downs = {"unet_256": 8, "unet_128": 7}.get(arch, detected.num_downs or 8)
    return unet_layers(num_downs)


@dataclass
class Detected:
    """What a file's keys say about the generator, with the key that told each."""

    family: str  # resnet or unet
    arch: str
    ngf: int | None = None
    norm: str | None = None
    dropout: bool | None = None  # None: the keys cannot tell (U-Net)
    # norm: batch, instance, none (the reference's --norm none: no norm layers, convolutions without biases)
    in_channels: int | None = None
    out_channels: int | None = None
    antialias: bool = False
    n_blocks: int | None = None
    num_downs: int | None = None
    evidence: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def describe(self) -> str:
        parts = [self.arch]
        if self.antialias:
            parts.append("anti-aliased (CUT)")
        if self.ngf is not None:
            parts.append(f"ngf {self.ngf}")
        if self.norm:
            parts.append(f"{self.norm} norm")
        if self.dropout is not None:
            parts.append("dropout" if self.dropout else "no dropout")
        if self.in_channels is not None and self.out_channels is not None:
            parts.append(f"{self.in_channels} -> {self.out_channels} channels")
        return ", ".join(parts)


def _shape(tensors: dict[str, torch.Tensor], key: str) -> tuple[int, ...] | None:
    t = tensors.get(key)
    return tuple(t.shape) if t is not None else None


def detect(tensors: dict[str, torch.Tensor], source: str) -> Detected:
    """The architecture the keys describe; `Img2ImgError` naming `source` when they describe none we know."""
    keys = list(tensors)
    if any(re.match(r"model\.\d+\.conv_block\.", k) for k in keys):
        return _detect_resnet(tensors, source)
    if any(k.startswith("model.model.") for k in keys):
        return _detect_unet(tensors, source)
    shown = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
    hint = ""
    if re.search(r"net_D", source) or (_shape(tensors, "model.0.weight") or (0, 0, 0))[2:] == (4, 4):
        hint = " It looks like a discriminator (latest_net_D*.pth); import the generator (latest_net_G*.pth)."
    raise Img2ImgError(f"{source} is not a generator checkpoint of the reference repository or CUT: its keys "
                       f"({shown}) are neither a ResnetGenerator's (model.N.conv_block...) nor a UnetGenerator's "
                       f"(model.model...).{hint}")


def _detect_resnet(tensors: dict[str, torch.Tensor], source: str) -> Detected:
    blocks = sorted({int(m.group(1)) for k in tensors if (m := re.match(r"model\.(\d+)\.conv_block\.", k))})
    blurs = sorted({int(m.group(1)) for k in tensors if (m := re.match(r"model\.(\d+)\.filt$", k))})
    down_aa = any(i < blocks[0] for i in blurs)
    up_aa = any(i > blocks[-1] for i in blurs)
    if down_aa != up_aa:
        raise Img2ImgError(f"{source} is a CUT generator with anti-aliasing on one side only ("
                           f"{'--no_antialias_up' if down_aa else '--no_antialias'}); img2img's antialias option "
                           "blurs both the down- and the upsampling, as CUT does by default")
    found = Detected(family="resnet", arch=RESNET_ARCHS.get(len(blocks), f"resnet ({len(blocks)} blocks)"),
                     antialias=down_aa, n_blocks=len(blocks))
    found.evidence["n_blocks"] = f"model.{blocks[0]}..model.{blocks[-1]} are residual blocks"
    if blurs:
        found.evidence["antialias"] = f"model.{blurs[0]}.filt is a blur filter"
    stem = _shape(tensors, "model.1.weight")
    if stem is not None and len(stem) == 4:
        found.ngf, found.in_channels = stem[0], stem[1]
        found.evidence["ngf"] = f"model.1.weight is {'x'.join(map(str, stem))}"
    if "model.2.weight" in tensors:
        found.norm, found.evidence["norm"] = "batch", "model.2.weight (a batch-norm scale)"
    elif "model.1.bias" in tensors:
        found.norm, found.evidence["norm"] = "instance", "model.1.bias without model.2.weight"
    elif stem is not None:
        found.norm, found.evidence["norm"] = "none", "model.1.weight without a bias and no model.2.weight"
    convs = sorted(int(m.group(1)) for k, t in tensors.items()
                   if (m := re.match(rf"model\.{blocks[0]}\.conv_block\.(\d+)\.weight$", k)) and t.dim() == 4)
    if convs in ([1, 5], [1, 6]):
        found.dropout = convs[1] == 6
        found.evidence["dropout"] = (f"the second conv of a residual block is conv_block.{convs[1]}"
                                     + (" (a Dropout layer precedes it)" if found.dropout else ""))
    last = max((int(m.group(1)) for k, t in tensors.items()
                if (m := re.match(r"model\.(\d+)\.weight$", k)) and t.dim() == 4), default=None)
    if last is not None and last > blocks[-1]:
        found.out_channels = tensors[f"model.{last}.weight"].shape[0]
    if len(blocks) not in RESNET_ARCHS:
        raise Img2ImgError(f"{source} is a ResNet generator with {len(blocks)} residual blocks "
                           f"({found.evidence['n_blocks']}); img2img's ResNet generators have 9 (resnet_9blocks) "
                           "or 6 (resnet_6blocks)")
    return found


def _detect_unet(tensors: dict[str, torch.Tensor], source: str) -> Detected:
    levels = 1
    while any(k.startswith(unet_prefix(levels) + ".1.") for k in tensors):
        levels += 1
    found = Detected(family="unet", arch=UNET_ARCHS.get(levels, "unet"), num_downs=levels)
    found.evidence["num_downs"] = f"{levels} nested blocks, the innermost at {unet_prefix(levels - 1)}"
    stem = _shape(tensors, "model.model.0.weight")
    if stem is not None and len(stem) == 4:
        found.ngf, found.in_channels = stem[0], stem[1]
        found.evidence["ngf"] = f"model.model.0.weight is {'x'.join(map(str, stem))}"
    inner_norm = f"{unet_prefix(levels - 1)}.4.weight"
    if inner_norm in tensors:
        found.norm, found.evidence["norm"] = "batch", f"{inner_norm} (a batch-norm scale)"
    elif "model.model.0.bias" in tensors:
        found.norm, found.evidence["norm"] = "instance", "model.model.0.bias (convolutions before instance norm)"
    elif stem is not None:
        found.norm, found.evidence["norm"] = "none", f"model.model.0.weight without a bias and no {inner_norm}"
    head = _shape(tensors, "model.model.3.weight")
    if head is not None and len(head) == 4:
        found.out_channels = head[1]
    if not 5 <= levels <= 10:
        raise Img2ImgError(f"{source} is a U-Net with {levels} levels ({found.evidence['num_downs']}); img2img's "
                           "U-Nets have 5 to 10")
    return found

"""Map a reference generator's tensors onto ours: layer by layer, in the order the forward pass runs them.

Our generator is walked by running it once on the meta device (no memory, no arithmetic) with a
hook on every parametrised layer; the reference's layers come from `layouts.reference_layers`. The
two lists must pair up kind by kind (conv with conv, norm with norm, blur with blur); then each of
our tensors gets exactly one source key, and every shape is checked before anything loads.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from img2img.default_plugins.resnet import BlurDownsample, BlurUpsample
from img2img.importing.layouts import STALE_NORM_BUFFERS, RefLayer

_KINDS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.ConvTranspose2d, "convT"),
    (nn.Conv2d, "conv"),
    (nn.modules.batchnorm._BatchNorm, "norm"),
    (nn.modules.instancenorm._InstanceNorm, "norm"),
    (BlurDownsample, "blur_down"),
    (BlurUpsample, "blur_up"),
)


def layer_kind(module: nn.Module) -> str | None:
    for cls, kind in _KINDS:
        if isinstance(module, cls):
            return kind
    return None


def execution_order(meta_net: nn.Module, in_channels: int) -> list[tuple[str, str]]:
    """(kind, module name) of every parametrised layer of `meta_net`, in the order its forward runs them."""
    order: list[tuple[str, str]] = []
    handles = []
    for name, module in meta_net.named_modules():
        kind = layer_kind(module)
        if kind is not None:
            handles.append(module.register_forward_pre_hook(
                lambda _m, _args, _name=name, _kind=kind: order.append((_kind, _name))))
    multiple = int(getattr(meta_net, "size_multiple", 1))
    size = multiple * max(1, -(-64 // multiple))
    try:
        with torch.no_grad():
            meta_net.eval()(torch.zeros(1, in_channels, size, size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return order


@dataclass
class Mapping:
    """Our key -> the file's key, and what did not fit."""

    sources: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # file keys we need but the file lacks
    unexpected: list[str] = field(default_factory=list)  # file keys nothing of ours takes
    shapes: list[str] = field(default_factory=list)  # "key: file AxB, expected CxD"
    ignored: list[str] = field(default_factory=list)  # stale instance-norm buffers

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.shapes)

    def problems(self, limit: int = 3) -> str:
        """The first keys that don't fit, for a one-line message."""
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("wrong shape", self.shapes)):
            if items:
                more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
                parts.append(f"{label} {', '.join(items[:limit])}{more}")
        return "; ".join(parts)


def _dims(shape: torch.Size | tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def map_state(ours: nn.Module, order: list[tuple[str, str]], reference: list[RefLayer],
              tensors: dict[str, torch.Tensor]) -> Mapping:
    """Pair `order` (our layers, from `execution_order`) with `reference` and check `tensors` against ours."""
    if [k for k, _ in order] != [layer.kind for layer in reference]:
        raise RuntimeError(f"img2img's generator and the reference layout disagree: ours {[k for k, _ in order]}, "
                           f"reference {[layer.kind for layer in reference]}")
    modules = dict(ours.named_modules())
    mapping = Mapping()
    ignorable: set[str] = set()
    for (_, name), ref in zip(order, reference):
        own = modules[name].state_dict()
        for tensor_name in own:
            mapping.sources[f"{name}.{tensor_name}"] = f"{ref.prefix}.{tensor_name}"
        if ref.kind == "norm" and not own:  # our instance norm keeps nothing; old PyTorch saved these anyway
            ignorable.update(f"{ref.prefix}.{b}" for b in STALE_NORM_BUFFERS)
    wanted = ours.state_dict()
    if set(mapping.sources) != set(wanted) or len(set(mapping.sources.values())) != len(mapping.sources):
        raise RuntimeError("the layer walk did not give each of the generator's tensors exactly one source")
    used = set(mapping.sources.values())
    for key, source in mapping.sources.items():
        if source not in tensors:
            mapping.missing.append(source)
        elif tuple(tensors[source].shape) != tuple(wanted[key].shape):
            mapping.shapes.append(f"{source} is {_dims(tensors[source].shape)}, expected {_dims(wanted[key].shape)}")
    for key in tensors:
        if key in used:
            continue
        if key in ignorable:
            mapping.ignored.append(key)
        else:
            mapping.unexpected.append(key)
    return mapping


def mapped_state(mapping: Mapping, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict, each tensor taken from its one source key."""
    return {ours: tensors[source] for ours, source in mapping.sources.items()}

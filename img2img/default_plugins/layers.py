"""Building blocks shared by the built-in networks: normalisation, weight init, parameter types.

The type aliases are what factories annotate their keyword parameters with, so the pipeline
validator reports e.g. ``norm: 'group'`` as "expected 'instance', 'batch' or 'none'".
"""
from typing import Annotated, Literal

from pydantic import Field
from torch import nn

Norm = Literal["instance", "batch", "none"]
Init = Literal["normal", "xavier", "kaiming", "orthogonal"]
Padding = Literal["reflect", "zero"]
UpsampleMode = Literal["transposed", "resize-conv"]

Width = Annotated[int, Field(ge=1, le=1024)]
"""A channel count such as ``ngf`` or ``ndf``."""
DropoutP = Annotated[float, Field(ge=0, lt=1)]
Gain = Annotated[float, Field(gt=0)]

__all__ = ["Norm", "Init", "Padding", "UpsampleMode", "Width", "DropoutP", "Gain", "norm_layer", "uses_bias",
           "init_weights"]


def norm_layer(kind: Norm, channels: int) -> nn.Module:
    """A normalisation layer as the reference repository builds it.

    Instance norm has no affine parameters and no running statistics, so train and eval behave
    the same; batch norm is affine and tracks running statistics for eval mode.
    """
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected 'instance', 'batch' or 'none'")


def uses_bias(kind: Norm) -> bool:
    """Convolutions before batch norm drop their bias: the norm's affine shift replaces it."""
    return kind != "batch"


def init_weights(module: nn.Module, init: Init = "normal", gain: float = 0.02) -> nn.Module:
    """Initialise every convolution, linear and batch-norm layer in place, as the reference does.

    Conv/linear weights: N(0, gain) for ``normal``, Xavier-normal or orthogonal scaled by ``gain``,
    or Kaiming-normal (fan-in; ``gain`` unused); their biases 0. Batch-norm weights N(1, gain),
    biases 0. Returns ``module`` for chaining.
    """
    if init not in ("normal", "xavier", "kaiming", "orthogonal"):
        raise ValueError(f"unknown init {init!r}; expected 'normal', 'xavier', 'kaiming' or 'orthogonal'")

    def apply(m: nn.Module) -> None:
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            if init == "normal":
                nn.init.normal_(m.weight, 0.0, gain)
            elif init == "xavier":
                nn.init.xavier_normal_(m.weight, gain=gain)
            elif init == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            else:
                nn.init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)

    module.apply(apply)
    return module

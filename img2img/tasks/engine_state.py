"""What the engine keeps in every task, and the check that a task class does not hide it.

`img2img.tasks.Task` holds the engine's private state in one attribute no subclass meets by accident,
and sets the public attributes of `ENGINE_ATTRIBUTES`; a task class defining one of those is refused.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from img2img.errors import Img2ImgError


@dataclass
class EngineState:
    """What the engine keeps in a task, in one attribute that no subclass can meet by accident
    (``self.__engine``, stored as ``_Task__engine``): a task's own ``_plain`` or ``_agree`` stays its own."""

    setup: Callable[[nn.Module], nn.Module] | None
    agree: Callable[[bool], bool]
    set_up: weakref.WeakSet = field(default_factory=weakref.WeakSet)
    plain: int = 0  # depth of `plain_nets()` blocks


ENGINE_ATTRIBUTES = {
    "pipeline": "the validated pipeline", "device": "the training device", "amp": "the precision",
    "registry": "the component registry", "nets": "the task's networks", "optimizers": "the optimisers",
    "schedulers": "the learning-rate schedulers", "skip_nonfinite": "train.on_nan: skip",
    "skipped_updates": "the count of skipped updates", "_Task__engine": "the engine's own state",
}
"""Instance attributes `Task.__init__` sets; a subclass that defines one of these names would lose it."""


def check_engine_names(cls: type, base: type) -> None:
    """A task class whose members (methods, properties, class attributes) hide an attribute the engine
    sets is refused, naming both: otherwise one silently replaces the other."""
    for klass in cls.__mro__:
        if klass is base:
            break
        clashes = sorted(set(vars(klass)) & set(ENGINE_ATTRIBUTES))
        if clashes:
            name = clashes[0]
            kind = "method" if callable(vars(klass)[name]) else "attribute"
            raise Img2ImgError(
                f"task class {klass.__module__}.{klass.__qualname__} defines the {kind} '{name}', which is also "
                f"{base.__name__}.{name} ({ENGINE_ATTRIBUTES[name]}), set by the engine for every task; rename "
                f"{klass.__qualname__}.{name}" + (f" (and {', '.join(clashes[1:])})" if clashes[1:] else ""))

"""The translators of a run: which tensors they are made of, and their exponential moving average.

A translator (``task.translator(direction)``) may be one net of ``task.nets`` or a module composed of
several. A checkpoint records, for every tensor of each translator, the net and name it lives under
(`translator_sources`), so that translate, export and serve rebuild only the translator
(``task.build_translator``) and fill it from the checkpoint (`translator_state`), whatever the task.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from img2img.errors import Img2ImgError
from img2img.tasks.base import Task, unwrap


def written_for_generator(task_cls: type) -> bool:
    """A task written against img2img 0.1: it overrides `generator()` but not `build_translator()`, so a
    translator can only be had from the built task (the default `build_translator` may not match it)."""
    return task_cls.generator is not Task.generator and task_cls.build_translator is Task.build_translator


def fresh_translator(task, direction: str) -> nn.Module:
    """A separate plain module for `direction` with the tensor names of ``translator(direction)``."""
    if written_for_generator(type(task)):
        return copy.deepcopy(unwrap(_contract(task.translator, direction)))
    with task.plain_nets():
        return _contract(task.build_translator, direction).to(task.device)


def _contract(method, direction: str) -> nn.Module:
    """``task.translator(direction)`` or ``task.build_translator(direction)``; the NotImplementedError of a
    task that implements neither (no ``translator_nets``, no ``model.generator``) is a message for its author."""
    try:
        return method(direction)
    except NotImplementedError as exc:
        raise Img2ImgError(str(exc) or f"{method.__qualname__}('{direction}') is not implemented") from None


def check_translators(task) -> dict[str, dict[str, list[str]]]:
    """Check, before the first step, that each direction's ``translator`` is made of tensors in
    ``task.nets`` and that ``build_translator`` has the same tensor names; return `translator_sources`
    per direction. A task that breaks this gets an `Img2ImgError` naming the method and the tensors."""
    sources = {}
    for direction in task.directions:
        sources[direction] = translator_sources(task, direction)
        if not written_for_generator(type(task)):
            _check_names(task, direction, fresh_translator(task, direction).state_dict(keep_vars=True))
    return sources


def _check_names(task, direction: str, own: dict) -> None:
    live = plain_state(_contract(task.translator, direction))
    if set(own) != set(live):
        raise Img2ImgError(f"task '{task.name}': build_translator('{direction}') does not have the tensors of "
                           f"translator('{direction}') (differs in {', '.join(sorted(set(own) ^ set(live))[:5])}); "
                           "the two must give modules with the same state-dict names")


def plain_state(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors ``module.state_dict()`` would hold, named as if no DDP/compile wrapper were inside."""
    module = unwrap(module)
    out: dict[str, torch.Tensor] = {}
    for name, param in module._parameters.items():
        if param is not None:
            out[prefix + name] = param
    for name, buf in module._buffers.items():
        if buf is not None and name not in module._non_persistent_buffers_set:
            out[prefix + name] = buf
    for name, child in module._modules.items():
        if child is not None:
            out.update(plain_state(child, f"{prefix}{name}."))
    return out


def translator_sources(task, direction: str) -> dict[str, list[str]]:
    """``{translator tensor name: [net key, name inside that net]}`` for the translator of `direction`.

    Raises `Img2ImgError` (a task bug) for a tensor that lives in no net: it could not be checkpointed.
    """
    owners: dict[int, tuple[str, str]] = {}
    for key, net in task.nets.items():
        for name, tensor in plain_state(net).items():
            owners.setdefault(id(tensor), (key, name))
    sources: dict[str, list[str]] = {}
    missing = []
    for name, tensor in plain_state(_contract(task.translator, direction)).items():
        owner = owners.get(id(tensor))
        if owner is None:
            missing.append(name)
        else:
            sources[name] = list(owner)
    if missing:
        raise Img2ImgError(f"task '{task.name}': the {direction} translator uses tensors that are in none of "
                           f"task.nets ({', '.join(missing[:5])}); build its parts into self.nets so they are "
                           "trained, checkpointed and restored")
    return sources


def translator_state(nets: dict[str, dict[str, torch.Tensor]], sources: dict[str, list[str]]
                     ) -> dict[str, torch.Tensor]:
    """The translator's state dict assembled from a checkpoint's nets; KeyError names a missing tensor."""
    state = {}
    for name, (key, inner) in sources.items():
        try:
            state[name] = nets[key][inner]
        except (KeyError, TypeError):
            raise KeyError(f"{key}.{inner}") from None
    return state


class TranslatorEMA:
    """Exponential moving averages of the translators' weights (float tensors; others are copied).

    Each average lives in a plain module made by ``task.build_translator``, so samples, validation,
    checkpoints and exports use it like the translator itself. The first update copies the weights.
    """

    def __init__(self, task, decay: float) -> None:
        self.decay = float(decay)
        self.modules: dict[str, nn.Module] = {}
        self.updates = 0
        self._pairs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for direction in task.directions:
            module = fresh_translator(task, direction)
            live = plain_state(task.translator(direction))
            own = module.state_dict(keep_vars=True)
            _check_names(task, direction, own)
            module.requires_grad_(False).eval()
            self.modules[direction] = module
            self._pairs[direction] = [(own[name].data if isinstance(own[name], nn.Parameter) else own[name],
                                       live[name]) for name in own]

    @torch.no_grad()
    def update(self) -> None:
        first = self.updates == 0
        for pairs in self._pairs.values():
            floats = [(avg, cur) for avg, cur in pairs if avg.is_floating_point() and not first]
            if floats:
                torch._foreach_lerp_([a for a, _ in floats], [c.detach() for _, c in floats], 1.0 - self.decay)
            for avg, cur in pairs:
                if first or not avg.is_floating_point():
                    avg.copy_(cur.detach())
        self.updates += 1

    def state_dict(self) -> dict[str, dict]:
        return {d: {"state": m.state_dict(), "updates": self.updates} for d, m in self.modules.items()}

    def load_state_dict(self, state: dict) -> None:
        for direction, entry in state.items():
            if direction not in self.modules:
                continue
            module_state, updates = read_ema_entry(entry)
            self.modules[direction].load_state_dict(module_state)
            self.updates = updates


def read_ema_entry(entry: dict) -> tuple[dict[str, torch.Tensor], int]:
    """(state dict, number of updates) of one direction's EMA, also from img2img 0.1 checkpoints
    (a ``torch.optim.swa_utils.AveragedModel`` state: ``module.``-prefixed names and ``n_averaged``)."""
    if "state" in entry and isinstance(entry["state"], dict):
        return entry["state"], int(entry.get("updates", 1))
    state = {k[len("module."):]: v for k, v in entry.items() if k.startswith("module.")}
    count = entry.get("n_averaged")
    return state, int(count.item()) if torch.is_tensor(count) else 1

"""What a run was made with and how to replay it: plugin provenance and random-number state.

Every checkpoint records which distribution and version provided each component it uses, so a
checkpoint opened where a plugin is missing fails with one ``pip install`` to run, and every RNG
state, so ``--resume`` continues exactly.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from img2img.errors import Img2ImgError

COMPONENT_KINDS = ("generator", "discriminator", "loss", "task", "feature_extractor")


def check_components(ckpt: dict, path: Path) -> None:
    """Every component the checkpoint was made with must be registered now.

    The message names the distribution and version that provided each missing one, so the fix is
    one ``pip install``.
    """
    from img2img import plugins
    from img2img.registry import get_registry

    registry = get_registry()
    origins = ckpt.get("plugins") or {}
    if not isinstance(origins, dict):
        raise Img2ImgError(f"{path} is damaged: its plugin record is a {type(origins).__name__}, not a mapping")
    missing, installs = [], []
    excluded: list[str] = []  # installed, but IMG2IMG_LOAD_PLUGINS leaves them out
    for key, origin in origins.items():
        kind, _, name = str(key).partition(":")
        if kind not in COMPONENT_KINDS or not hasattr(registry, "has") or registry.has(kind, name):
            continue
        origin = origin if isinstance(origin, dict) else {}
        dist, version = origin.get("distribution"), origin.get("version")
        made_by = f"{dist or 'an unknown distribution'}{' ' + str(version) if version else ''}"
        if plugins.not_loaded_reason(dist) is not None:
            excluded.append(f"{kind} '{name}' from {made_by}")
            continue
        missing.append(f"{kind} '{name}' from {made_by}")
        if dist:
            spec = f"{dist}=={version}" if version else str(dist)
            if spec not in installs:
                installs.append(spec)
    problems = []
    if excluded:
        setting = f"{plugins.LOAD_ENV}={os.environ.get(plugins.LOAD_ENV, '')!r}"
        problems.append(f"{path} needs plugins that are installed but not loaded ({setting}): {'; '.join(excluded)}. "
                        f"Add them to {plugins.LOAD_ENV} or unset it.")
    if missing:
        how = f"pip install {' '.join(sorted(installs))}" if installs else "install the plugins that provide them"
        problems.append(f"{path} needs plugins that are not installed: {'; '.join(missing)}. "
                        f"Install them ({how}) and try again.")
    if problems:
        raise Img2ImgError(" ".join(problems))


def component_origins(pipeline, registry) -> dict[str, dict]:
    """``"kind:name" -> {plugin, distribution, version}`` for every component a pipeline uses."""
    from pydantic import BaseModel

    from img2img.config import ComponentSpec

    out = {}
    task = registry.get("task", pipeline.task)
    out[f"task:{task.name}"] = {"plugin": task.plugin, "distribution": task.distribution, "version": task.version}

    def walk(model) -> None:
        for fname in type(model).model_fields:
            value = getattr(model, fname)
            if isinstance(value, ComponentSpec):
                c = registry.get(value.kind, value.name)
                out[f"{c.kind}:{c.name}"] = {"plugin": c.plugin, "distribution": c.distribution, "version": c.version}
            elif isinstance(value, BaseModel):
                walk(value)

    walk(pipeline)
    return out


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": _to_plain(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def _to_plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value

"""Checkpoints: atomic writes, ``weights_only`` loads, and the checks that make them portable.

A checkpoint is self-describing: the resolved pipeline, the plugin versions that provided each
component and every piece of state, so translate and export need nothing else.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass
import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from img2img import __version__
from img2img.errors import Img2ImgError

FORMAT = 1


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A crash, Ctrl-C or a full disk leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = f"the previous {path.name} is intact" if path.exists() else "no earlier checkpoint existed"
            raise Img2ImgError(f"disk full while writing {path}; {kept}. Free space and resume.") from None
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def find_checkpoint(path: Path, name: str = "last.pt") -> Path:
    """A checkpoint file, or `name` inside a run folder (``RUN/checkpoints/last.pt``)."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / name, path / name):
            if candidate.is_file():
                return candidate
        raise Img2ImgError(f"{path} holds no checkpoints/{name}; point at a run folder written by "
                           "`img2img train` or at a .pt file")
    if not path.exists():
        raise Img2ImgError(f"no such checkpoint or run folder: {path}")
    return path


def load_checkpoint(path: Path, *, check_plugins: bool = True) -> dict:
    """Load with ``weights_only=True``: a file carrying pickled objects is refused, its code never runs."""
    path = find_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise Img2ImgError(
            f"refused to load {path}: it contains pickled Python objects that only a full unpickle could "
            f"restore, and unpickling can run arbitrary code. img2img checkpoints hold tensors only. "
            f"({str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise Img2ImgError(f"{path} is not a readable img2img checkpoint ({str(exc).splitlines()[0]}); "
                           "it may be truncated or of another program") from None
    if not isinstance(ckpt, dict) or "pipeline" not in ckpt or "nets" not in ckpt:
        raise Img2ImgError(f"{path} is not an img2img checkpoint (no pipeline/nets inside)")
    made_by = str(ckpt.get("img2img_version", "0"))
    if _version_tuple(made_by) > _version_tuple(__version__) or ckpt.get("format", 1) > FORMAT:
        raise Img2ImgError(f"{path} was written by img2img {made_by}, newer than this img2img {__version__}; "
                           "upgrade with `pip install -U img2img-pipeline`")
    if check_plugins:
        check_components(ckpt, path)
    ckpt["path"] = str(path)
    return ckpt


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_components(ckpt: dict, path: Path) -> None:
    """Every component the checkpoint was made with must be registered now."""
    from img2img.registry import get_registry

    registry = get_registry()
    missing = []
    for key, origin in (ckpt.get("plugins") or {}).items():
        kind, _, name = key.partition(":")
        if kind in ("generator", "discriminator", "loss", "task") and not registry.has(kind, name):
            dist = origin.get("distribution") or "an unknown distribution"
            version = origin.get("version")
            missing.append(f"{kind} '{name}' from {dist}{' ' + version if version else ''}")
    if missing:
        dists = sorted({(o.get("distribution"), o.get("version")) for k, o in ckpt["plugins"].items()
                        if not registry.has(k.partition(":")[0], k.partition(":")[2])
                        and k.partition(":")[0] in ("generator", "discriminator", "loss", "task")})
        install = " ".join(f"{d}=={v}" if v else str(d) for d, v in dists if d)
        raise Img2ImgError(f"{path} needs plugins that are not installed: {'; '.join(missing)}. "
                           f"Install them (pip install {install}) and try again.")


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


@dataclass
class LoadedGenerator:
    """A generator rebuilt from a checkpoint, in eval mode, with what translate and export need."""

    module: torch.nn.Module
    direction: str
    in_channels: int
    out_channels: int
    size_multiple: int
    pipeline: Any
    ema: bool
    checkpoint: Path

    @property
    def task(self) -> str:
        return self.pipeline.task

    @property
    def name(self) -> str:
        return self.pipeline.name


def load_generator(path: Path, direction: str = "a2b", *, use_ema: bool = True) -> LoadedGenerator:
    """Rebuild the task from a checkpoint's pipeline and return its generator for `direction`.

    With `use_ema` (the default) the exponential moving average of the generator is used when the
    run kept one (``train.ema``).
    """
    from img2img.config import pipeline_from_dict
    from img2img.registry import get_registry

    ckpt = load_checkpoint(path)
    pipeline = pipeline_from_dict(ckpt["pipeline"])
    task_cls = get_registry().get("task", pipeline.task).factory
    if direction not in task_cls.directions:
        raise Img2ImgError(f"the {pipeline.task} model in {ckpt['path']} translates "
                           f"{' and '.join(task_cls.directions)} only, not {direction}")
    task = task_cls(pipeline, device="cpu")
    generator = task.generator(direction)
    key = ckpt["generators"][direction]
    ema_state = (ckpt.get("ema") or {}).get(direction)
    used_ema = bool(use_ema and ema_state)
    if used_ema:
        state = {k[len("module."):]: v for k, v in ema_state.items() if k.startswith("module.")}
    else:
        state = ckpt["nets"][key]
    generator.load_state_dict(state)
    generator.eval()
    cin, cout = task.channels(direction)
    return LoadedGenerator(module=generator, direction=direction, in_channels=cin, out_channels=cout,
                           size_multiple=int(getattr(generator, "size_multiple", 1)), pipeline=pipeline,
                           ema=used_ema, checkpoint=Path(ckpt["path"]))

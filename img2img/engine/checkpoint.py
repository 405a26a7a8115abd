"""Checkpoints: atomic writes, ``weights_only`` loads, and the checks that make them portable.

A checkpoint is self-describing: the resolved pipeline, the plugin versions that provided each
component and every piece of state, so translate and export need nothing else.
"""
from __future__ import annotations

import errno
import os
import pickle
import random
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from img2img._version import __version__
from img2img.errors import Img2ImgError, first_line

FORMAT = 1


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A crash, Ctrl-C, ``kill -9`` or a full disk leaves the previous file intact; a file system
    error (disk full, permission denied, read-only) is an `Img2ImgError` that says so.
    """
    path = Path(path)
    tmp: str | None = None
    writer: _RecordingWriter | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            writer = _RecordingWriter(fh)
            torch.save(obj, writer)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        # torch's zip writer turns the OSError of a failed write into a RuntimeError; the writer kept it
        cause = exc if isinstance(exc, OSError) else writer.error if writer is not None else None
        if cause is None or not isinstance(exc, (OSError, RuntimeError)):
            raise
        kept = f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} existed"
        if cause.errno in (errno.ENOSPC, errno.EDQUOT):
            raise Img2ImgError(f"disk full while writing {path}; {kept}. Free some space, then continue with "
                               "--resume.") from None
        raise Img2ImgError(f"cannot write {path}: {cause.strerror or cause}; {kept}. Fix the folder's "
                           "permissions or free space, then continue with --resume.") from None
    _fsync_dir(path.parent)


class _RecordingWriter:
    """The file object torch.save writes to; remembers the OSError that torch would report only as a
    RuntimeError ("unexpected pos ..."), so a full disk can be named as such."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _mode_for(path: Path) -> int:
    """Keep an existing file's permissions; a new one gets what open() would give (0o666 less the umask).

    mkstemp creates files readable by their owner only, which would hide checkpoints from a group.
    """
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no portable way to read it without setting it
    os.umask(mask)
    return mask


def remove_partial_files(folder: Path) -> list[Path]:
    """Delete the temporary files that a killed `atomic_save` left behind (``.NAME.*.tmp``).

    Only the process that owns a run folder may call this: another writer's file in progress would go too.
    """
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


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
        if (path / "pipeline.yaml").is_file():
            raise Img2ImgError(f"the run in {path} stopped before its first checkpoint, so there is nothing to "
                               f"continue; start it again with `img2img train {path / 'pipeline.yaml'} --out {path} "
                               "--overwrite`")
        raise Img2ImgError(f"{path} holds no checkpoints/{name}; point at a run folder written by "
                           "`img2img train` or at a .pt file")
    if not path.exists():
        raise Img2ImgError(f"no such checkpoint or run folder: {path}")
    return path


# top-level entries every img2img checkpoint has, with their types
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "pipeline": dict, "nets": dict, "generators": dict, "step": int, "epoch": int, "step_in_epoch": int,
    "optimizers": dict, "rng": dict,
}


def load_checkpoint(path: Path, *, check_plugins: bool = True) -> dict:
    """Load with ``weights_only=True``: a file carrying pickled objects is refused, its code never runs.

    Every way a file can fail to be an img2img checkpoint (empty, truncated, another program's,
    written by a newer img2img, made with plugins not installed here) is an `Img2ImgError`.
    """
    path = find_checkpoint(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise Img2ImgError(f"cannot read {path} ({exc.strerror or exc})") from None
    if size == 0:
        raise Img2ImgError(f"{path} is empty (0 bytes), not a checkpoint; it may have been cut off while being "
                           "copied. Use another checkpoint (checkpoints/step-N.pt) or copy it again")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refused(path, exc) from None
    except Exception as exc:  # the zip and pickle readers fail in many ways on a damaged file
        detail = first_line(exc).split(". ")[0] if isinstance(exc, (RuntimeError, OSError, ValueError)) \
            else "not a PyTorch file"
        raise Img2ImgError(f"{path} is not a readable img2img checkpoint ({detail}); "
                           "it may be truncated or of another program") from None
    if not isinstance(ckpt, dict) or "pipeline" not in ckpt or "nets" not in ckpt:
        raise Img2ImgError(f"{path} is not an img2img checkpoint (no pipeline/nets inside)")
    made_by = str(ckpt.get("img2img_version", "0"))
    fmt = ckpt.get("format", 1)
    if _version_tuple(made_by) > _version_tuple(__version__) or not isinstance(fmt, int) or fmt > FORMAT:
        raise Img2ImgError(f"{path} was written by img2img {made_by} (checkpoint format {fmt}), newer than this "
                           f"img2img {__version__}; upgrade with `pip install -U img2img-pipeline`")
    wrong = [f"{key} (expected {_type_name(kind)})" for key, kind in _REQUIRED.items()
             if not isinstance(ckpt.get(key), kind) or isinstance(ckpt.get(key), bool)]
    if wrong:
        raise Img2ImgError(f"{path} is damaged or not an img2img checkpoint: missing or wrong {', '.join(wrong)}")
    if check_plugins:
        check_components(ckpt, path)
    ckpt["path"] = str(path)
    return ckpt


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _refused(path: Path, exc: pickle.UnpicklingError) -> Img2ImgError:
    """The message for a file the weights-only unpickler would not build; nothing in it was run."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if found:
        what = f"a pickled Python object ({found.group(1)})"
    else:
        detail = next((line.strip() for line in str(exc).splitlines() if "Unsupported" in line), "")
        what = f"pickled data that is not plain tensors{f' ({detail})' if detail else ''}"
    return Img2ImgError(
        f"refused to load {path}: it carries {what}. Building it would need a full unpickle, which can run "
        "arbitrary code, so img2img never does that and nothing in the file was run. img2img checkpoints hold "
        "only tensors and plain values: use one written by `img2img train`, and only files you trust.")


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_components(ckpt: dict, path: Path) -> None:
    """Every component the checkpoint was made with must be registered now.

    The message names the distribution and version that provided each missing one, so the fix is
    one ``pip install``.
    """
    from img2img.registry import get_registry

    registry = get_registry()
    origins = ckpt.get("plugins") or {}
    if not isinstance(origins, dict):
        raise Img2ImgError(f"{path} is damaged: its plugin record is a {type(origins).__name__}, not a mapping")
    missing, installs = [], []
    for key, origin in origins.items():
        kind, _, name = str(key).partition(":")
        if kind not in ("generator", "discriminator", "loss", "task") or registry.has(kind, name):
            continue
        origin = origin if isinstance(origin, dict) else {}
        dist, version = origin.get("distribution"), origin.get("version")
        made_by = f"{dist or 'an unknown distribution'}{' ' + str(version) if version else ''}"
        missing.append(f"{kind} '{name}' from {made_by}")
        if dist:
            spec = f"{dist}=={version}" if version else str(dist)
            if spec not in installs:
                installs.append(spec)
    if missing:
        how = f"pip install {' '.join(sorted(installs))}" if installs else "install the plugins that provide them"
        raise Img2ImgError(f"{path} needs plugins that are not installed: {'; '.join(missing)}. "
                           f"Install them ({how}) and try again.")


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
    from img2img.config import validate_pipeline
    from img2img.registry import get_registry

    ckpt = load_checkpoint(path)
    where = ckpt["path"]
    pipeline = validate_pipeline(ckpt["pipeline"], source=f"{where} (the pipeline stored in it)")
    task_cls = get_registry().get("task", pipeline.task).factory
    if direction not in task_cls.directions:
        raise Img2ImgError(f"the {pipeline.task} model in {where} translates "
                           f"{' and '.join(task_cls.directions)} only, not {direction}")
    task = task_cls(pipeline, device="cpu")
    generator = task.generator(direction)
    ema = ckpt.get("ema")
    ema_state = ema.get(direction) if isinstance(ema, dict) else None
    used_ema = bool(use_ema and isinstance(ema_state, dict) and ema_state)
    if used_ema:
        state = {k[len("module."):]: v for k, v in ema_state.items() if k.startswith("module.")}
    else:
        held = sorted(ckpt["generators"])
        if direction not in ckpt["generators"] and held:  # e.g. one imported generator of a CycleGAN pair
            raise Img2ImgError(f"{where} holds the {' and '.join(held)} generator only, not {direction}; "
                               f"use --direction {held[0]}")
        state = ckpt["nets"].get(ckpt["generators"].get(direction))
        if not isinstance(state, dict):
            raise Img2ImgError(f"{where} is damaged: it holds no weights for the {direction} generator")
    try:
        generator.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise Img2ImgError(f"{where} is damaged: its {direction} generator weights do not fit the generator its "
                           f"pipeline describes ({first_line(exc)})") from None
    generator.eval()
    cin, cout = task.channels(direction)
    return LoadedGenerator(module=generator, direction=direction, in_channels=cin, out_channels=cout,
                           size_multiple=int(getattr(generator, "size_multiple", 1)), pipeline=pipeline,
                           ema=used_ema, checkpoint=Path(where))


def save_inference_checkpoint(run_dir: Path, *, pipeline, nets: dict[str, dict[str, torch.Tensor]],
                              translators: dict[str, str], source: dict[str, Any]) -> Path:
    """Write a run folder holding only translators: ``pipeline.yaml``, ``plugins.json`` and
    ``checkpoints/last.pt`` (e.g. from weights trained elsewhere; see ``img2img import``).

    `nets` maps a key of the task's ``nets`` to its state dict, `translators` a direction to the key
    of the net that translates it, and `source` records where the weights came from. translate,
    export, evaluate and serve use the run like any other; ``--resume`` refuses it (no optimiser state).
    """
    import json

    import yaml

    from img2img.config import dump_pipeline
    from img2img.registry import get_registry

    run_dir = Path(run_dir)
    origins = component_origins(pipeline, get_registry())
    state = {
        "format": FORMAT, "img2img_version": __version__, "task": pipeline.task,
        "pipeline": dump_pipeline(pipeline), "plugins": origins,
        "step": 0, "epoch": 0, "step_in_epoch": 0, "world_size": 1,
        "nets": {k: {n: t.detach().cpu().contiguous() for n, t in sd.items()} for k, sd in nets.items()},
        "generators": dict(translators), "optimizers": {}, "amp": {}, "ema": {}, "extra": {}, "rng": {},
        "best": None, "source": source, "resumable": False,
    }
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    atomic_save(state, run_dir / "checkpoints" / "last.pt")
    (run_dir / "pipeline.yaml").write_text(yaml.safe_dump(state["pipeline"], sort_keys=False), encoding="utf-8")
    (run_dir / "plugins.json").write_text(json.dumps(origins, indent=2) + "\n", encoding="utf-8")
    return run_dir / "checkpoints" / "last.pt"

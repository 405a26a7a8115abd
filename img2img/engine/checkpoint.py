"""Checkpoints: atomic writes, ``weights_only`` loads, the checks that make them portable, and the
translator of a run rebuilt from one.

A checkpoint is self-describing: the resolved pipeline, the plugin versions that provided each
component, every piece of training state, and for each direction the tensors its translator is made
of, so translate, export and serve rebuild the translator alone (no discriminators, optimisers or
heads), EMA weights included.
"""
from __future__ import annotations

import errno
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from img2img import atomic
from img2img._version import __version__
from img2img.engine.provenance import check_components, component_origins
from img2img.engine.translators import read_ema_entry, translator_state, written_for_generator
from img2img.config.domains import check_direction
from img2img.errors import Img2ImgError, first_line
from img2img.tensorfile import NotATorchFile, build_checked, load_weights_only, shape_problems

FORMAT = 2
"""1: img2img 0.1 (a generator net per direction); 2: translators recorded tensor by tensor, schedulers."""


def atomic_save(obj: Any, path: Path, *, then: str | None = None) -> None:
    """`torch.save` to `path` atomically (see `img2img.atomic`).

    A crash, Ctrl-C, ``kill -9`` or a full disk leaves the previous file intact; a file system
    error (disk full, permission denied, read-only) is an `Img2ImgError` that says so and, with
    `then`, what to do once the space is free (e.g. "then continue with --resume runs/x").
    """
    path = Path(path)
    existed = path.exists()
    writer: _RecordingWriter | None = None
    try:
        with atomic.atomic_write(path, "wb") as fh:
            writer = _RecordingWriter(fh)
            torch.save(obj, writer)
    except (OSError, RuntimeError) as exc:
        # torch's zip writer turns the OSError of a failed write into a RuntimeError; the writer kept it
        cause = exc if isinstance(exc, OSError) else writer.error if writer is not None else None
        if cause is None:
            raise
        kept = f"the previous {path.name} is intact" if existed else f"no earlier {path.name} existed"
        if then is None:
            then = "then continue with --resume" if existed and path.name == "last.pt" else "then run the command again"
        if cause.errno in (errno.ENOSPC, errno.EDQUOT):
            raise Img2ImgError(f"disk full while writing {path}; {kept}. Free some space, {then}.") from None
        raise Img2ImgError(f"cannot write {path}: {cause.strerror or cause}; {kept}. Fix the folder's "
                           f"permissions or free space, {then}.") from None


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
    "pipeline": dict, "nets": dict, "step": int, "epoch": int, "step_in_epoch": int, "optimizers": dict,
    "rng": dict,
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
        ckpt = load_weights_only(path, REFUSAL_ADVICE)
    except NotATorchFile as exc:
        raise Img2ImgError(f"{path} is not an img2img checkpoint: it is {exc.kind}, not a file torch.save writes. "
                           "Give a run folder written by `img2img train`, one of its checkpoints (.pt), or an "
                           "exported .onnx or .safetensors file") from None
    except Img2ImgError:
        raise
    except Exception as exc:  # the zip and pickle readers fail in many ways on a damaged file
        detail = first_line(exc).split(". ")[0] if isinstance(exc, (RuntimeError, OSError, ValueError)) \
            else "not a PyTorch file"
        raise Img2ImgError(f"{path} is not a readable img2img checkpoint ({detail}); "
                           "it may be truncated or of another program") from None
    if not isinstance(ckpt, dict) or "pipeline" not in ckpt or "nets" not in ckpt:
        raise _not_ours(path, ckpt)
    made_by = str(ckpt.get("img2img_version", "0"))
    fmt = ckpt.get("format", 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise Img2ImgError(f"{path} is damaged or not an img2img checkpoint: its format is {fmt!r}, not a number")
    if _version_tuple(made_by) > _version_tuple(__version__):
        raise Img2ImgError(f"{path} was written by img2img {made_by}, newer than this img2img {__version__}; "
                           "upgrade with `pip install -U img2img-pipeline`")
    if fmt > FORMAT:
        raise Img2ImgError(f"{path} uses checkpoint format {fmt}, newer than the format {FORMAT} this img2img "
                           f"{__version__} reads (it says it was written by img2img {made_by}); upgrade with "
                           "`pip install -U img2img-pipeline`")
    wrong = [f"{key} (expected {_type_name(kind)})" for key, kind in _REQUIRED.items()
             if not isinstance(ckpt.get(key), kind) or isinstance(ckpt.get(key), bool)]
    if not isinstance(ckpt.get("translators" if fmt >= 2 else "generators"), dict):
        wrong.append("translators (expected dict)" if fmt >= 2 else "generators (expected dict)")
    if wrong:
        raise Img2ImgError(f"{path} is damaged or not an img2img checkpoint: missing or wrong {', '.join(wrong)}")
    if check_plugins:
        check_components(ckpt, path)
    ckpt["path"] = str(path)
    return ckpt


def _not_ours(path: Path, ckpt: Any) -> Img2ImgError:
    """A readable PyTorch file without the pipeline and nets every img2img checkpoint holds."""
    if isinstance(ckpt, dict):
        keys = [str(k) for k in ckpt]
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        holds = f"its entries are {shown}" if keys else "it is an empty mapping"
    else:
        holds = f"it holds a {type(ckpt).__name__}"
    hint = ""
    if isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        hint = (". It looks like a state dict: generator weights of the reference CycleGAN/pix2pix repository or "
                "of CUT become a run with `img2img import reference|cut FILE --out RUN` (see `img2img docs import`)")
    return Img2ImgError(f"{path} is not an img2img checkpoint (a PyTorch file with no pipeline/nets inside; {holds})"
                        f"{hint}")


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


REFUSAL_ADVICE = ("img2img checkpoints hold only tensors and plain values: use one written by `img2img train`, "
                  "and only files you trust.")


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)




remove_partial_files = atomic.remove_partial_files


# ---------------------------------------------------------------------------------------------
# the translator of a run


@dataclass
class LoadedTranslator:
    """A run's translator for one direction, rebuilt alone from a checkpoint, in eval mode."""

    module: torch.nn.Module
    direction: str
    in_channels: int
    out_channels: int
    size_multiple: int
    pipeline: Any
    ema: bool
    checkpoint: Path
    source: dict | None = None

    @property
    def task(self) -> str:
        return self.pipeline.task

    @property
    def name(self) -> str:
        return self.pipeline.name


LoadedGenerator = LoadedTranslator  # the name img2img 0.1 used


def size_multiple(module: torch.nn.Module) -> int:
    """Heights and widths `module` needs multiples of: its own `size_multiple`, else the least common
    multiple of its parts' (a translator composed of several networks)."""
    own = getattr(module, "size_multiple", None)
    if isinstance(own, int) and own >= 1:
        return own
    multiple = 1
    for part in module.modules():
        value = getattr(part, "size_multiple", None)
        if isinstance(value, int) and value > 1:
            multiple = math.lcm(multiple, value)
    return multiple


def translator_sources_of(ckpt: dict, direction: str) -> dict[str, list[str]]:
    """Where each tensor of the `direction` translator lives in ``ckpt["nets"]`` (format 1 or 2)."""
    if ckpt.get("format", 1) >= 2:
        sources = ckpt["translators"].get(direction)
        if not isinstance(sources, dict):
            raise KeyError(direction)
        return sources
    key = ckpt["generators"].get(direction)
    if not isinstance(ckpt["nets"].get(key), dict):
        raise KeyError(direction)
    return {name: [key, name] for name in ckpt["nets"][key]}


def load_translator(path: Path, direction: str | None = None, *, use_ema: bool = True) -> LoadedTranslator:
    """The `direction` translator of a run folder or checkpoint, built by its task's
    ``build_translator`` (nothing else of the task is built) and filled from the checkpoint.
    Without `direction`: a2b when the task translates it, else its first direction.

    With `use_ema` (the default) the exponential moving average is used when the run kept one.
    """
    from img2img.config import validate_pipeline
    from img2img.registry import get_registry

    ckpt = load_checkpoint(path)
    where = ckpt["path"]
    pipeline = validate_pipeline(ckpt["pipeline"], source=f"{where} (the pipeline stored in it)")
    task_cls = get_registry().get("task", pipeline.task).factory
    directions = task_cls.directions_for(pipeline)
    if direction is None:
        direction = "a2b" if "a2b" in directions or not directions else directions[0]
    check_direction(direction, directions, f"the {pipeline.task} model in {where}")
    held = sorted(ckpt["translators"] if ckpt.get("format", 1) >= 2 else ckpt["generators"])
    if direction not in held and held:  # e.g. one imported generator of a CycleGAN pair
        raise Img2ImgError(f"{where} holds the {' and '.join(held)} translator only, not {direction}; "
                           f"use --direction {held[0]}")
    ema = ckpt.get("ema")
    entry = ema.get(direction) if isinstance(ema, dict) else None
    used_ema = bool(use_ema and isinstance(entry, dict) and entry)
    try:
        if used_ema:
            state = read_ema_entry(entry)[0]
        else:
            state = translator_state(ckpt["nets"], translator_sources_of(ckpt, direction))
    except KeyError as exc:
        raise Img2ImgError(f"{where} is damaged: it holds no weights for the {direction} translator "
                           f"(missing {exc.args[0]})") from None
    what = f"{where} is damaged: its {direction} translator weights do not fit the translator its pipeline describes"
    tasks = []  # the task the real build made (the last one)

    def build(device: str) -> torch.nn.Module:
        if written_for_generator(task_cls):  # an img2img 0.1 task: its generator comes from the built task
            tasks.append(task_cls(pipeline, device=device))
            return tasks[-1].generator(direction)
        tasks.append(task_cls.for_inference(pipeline, device=device))
        return tasks[-1].build_translator(direction)

    # built first on the meta device: a pipeline that describes a far larger network than the weights
    # stored (ngf 1024 over a few kilobytes) allocates nothing
    module = build_checked(build, {k: tuple(v.shape) for k, v in state.items() if torch.is_tensor(v)}, what)
    _load_state(module, state, what)
    module.eval()
    cin, cout = tasks[-1].channels(direction)
    return LoadedTranslator(module=module, direction=direction, in_channels=cin, out_channels=cout,
                            size_multiple=size_multiple(module), pipeline=pipeline, ema=used_ema,
                            checkpoint=Path(where), source=ckpt.get("source"))


load_generator = load_translator  # the name img2img 0.1 used


def _load_state(module: torch.nn.Module, state: dict, what: str) -> None:
    """`load_state_dict` whose error names the first keys that are missing, unexpected or mis-shaped."""
    problems = shape_problems({k: tuple(v.shape) for k, v in module.state_dict().items()},
                              {k: tuple(v.shape) for k, v in state.items() if torch.is_tensor(v)})
    if problems:
        raise Img2ImgError(f"{what} ({problems})")
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise Img2ImgError(f"{what} ({first_line(exc)})") from None


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
    plain = {k: {n: t.detach().cpu().contiguous() for n, t in sd.items()} for k, sd in nets.items()}
    state = {
        "format": FORMAT, "img2img_version": __version__, "task": pipeline.task,
        "pipeline": dump_pipeline(pipeline), "plugins": origins,
        "step": 0, "epoch": 0, "step_in_epoch": 0, "world_size": 1, "nets": plain,
        "translators": {d: {n: [key, n] for n in plain[key]} for d, key in translators.items()},
        "optimizers": {}, "schedulers": {}, "amp": {}, "ema": {}, "extra": {}, "rng": {},
        "best": None, "source": source, "resumable": False,
    }
    atomic_save(state, run_dir / "checkpoints" / "last.pt")
    atomic.write_text(run_dir / "pipeline.yaml", yaml.safe_dump(state["pipeline"], sort_keys=False))
    atomic.write_text(run_dir / "plugins.json", json.dumps(origins, indent=2) + "\n")
    return run_dir / "checkpoints" / "last.pt"

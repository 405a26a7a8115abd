"""The models a server offers: parsing ``NAME=PATH`` arguments, loading, and their metadata.

Every direction of every model is loaded when the server starts (eagerly), so a model that cannot
load stops `img2img serve` with a message before it listens, and the first request is not slow.
Translation goes through `Translator`, the code path of `img2img translate`.
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from img2img.errors import Img2ImgError
from img2img.inference.tiling import check_tiling, tile_plan
from img2img.inference.translator import Translator

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ModelSpec:
    """One MODEL argument: the name it is served under and the path it is loaded from."""

    name: str
    path: Path


def _default_name(path: Path) -> str:
    """runs/h2z -> h2z; runs/h2z/checkpoints/last.pt -> h2z; .../step-400.pt -> h2z-step-400; g.onnx -> g."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        base = path.resolve().name if path.name in ("", ".", "..") else path.name
    elif path.parent.name == "checkpoints" and path.suffix.lower() == ".pt":
        run = path.parent.parent.resolve().name
        base = run if path.stem == "last" else f"{run}-{path.stem}"
    else:
        base = path.stem
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-._") or "model"
    return cleaned[:64]


def parse_model_specs(values: list[str]) -> list[ModelSpec]:
    """``PATH`` or ``NAME=PATH`` arguments -> specs with unique, URL-safe names."""
    if not values:
        raise Img2ImgError("give at least one model: a run folder, a checkpoint (.pt), a .safetensors export or an "
                           ".onnx file, optionally as NAME=PATH")
    specs: list[ModelSpec] = []
    for value in values:
        name, sep, rest = str(value).partition("=")
        if sep and NAME_PATTERN.fullmatch(name) and not Path(value).exists():
            spec = ModelSpec(name, Path(rest))
        elif sep and not Path(value).exists():
            raise Img2ImgError(f"model {value!r}: the name {name!r} may hold only letters, digits, '.', '_' and "
                               "'-' (it becomes part of the URL), and must start with a letter or digit")
        else:
            spec = ModelSpec(_default_name(Path(value)), Path(value))
        if not spec.path.exists():
            raise Img2ImgError(f"model {value!r}: no such run folder or file: {spec.path}")
        specs.append(spec)
    seen: dict[str, ModelSpec] = {}
    for spec in specs:
        if spec.name in seen:
            raise Img2ImgError(f"two models are named {spec.name!r} ({seen[spec.name].path} and {spec.path}); name "
                               f"them with NAME=PATH, e.g. {spec.name}-2={spec.path}")
        seen[spec.name] = spec
    return specs


def model_kind(path: Path) -> str:
    suffix = Path(path).suffix.lower()
    if Path(path).is_dir():
        return "run"
    return {".onnx": "onnx", ".safetensors": "safetensors"}.get(suffix, "checkpoint")


@dataclass(frozen=True)
class TileOptions:
    """How a request's image is tiled: `tile`/`overlap`/`tile_norm` as translate's flags, and
    `tile_above` (translate's ``--max-pixels``): tile automatically above this many pixels."""

    tile: int | None = None
    overlap: int | None = None
    tile_norm: str = "auto"
    tile_above: int | None = None

    def check(self) -> TileOptions:
        check_tiling(self.tile, self.overlap, self.tile_above, self.tile_norm)
        return self


@dataclass
class ServedModel:
    """A loaded model: one `Translator` per direction, and what `GET /v1/models` says about it."""

    name: str
    path: Path
    kind: str
    info: dict[str, Any]
    translators: dict[str, Translator]
    ema: dict[str, bool | None]
    max_batch: int
    _views: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def directions(self) -> list[str]:
        return list(self.translators)

    @property
    def default_direction(self) -> str:
        return self.directions[0]

    def translator(self, direction: str, options: TileOptions) -> Translator:
        """The direction's translator with these tiling options; it shares the loaded network."""
        base = self.translators[direction]
        key = (direction, options)
        with self._lock:
            view = self._views.get(key)
            if view is None:
                view = Translator(base.backend, batch_size=self.max_batch, tile=options.tile,
                                  overlap=options.overlap, max_pixels=options.tile_above,
                                  tile_norm=options.tile_norm)
                self._views[key] = view
                while len(self._views) > 32:
                    self._views.popitem(last=False)
            else:
                self._views.move_to_end(key)
            return view

    def tiled(self, direction: str, options: TileOptions, height: int, width: int) -> bool:
        """Whether an image of this size is translated in tiles (then it runs on its own, never batched)."""
        return tile_plan(height, width, tile=options.tile, overlap=options.overlap, max_pixels=options.tile_above,
                         multiple=self.translators[direction].size_multiple) is not None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "file": self.path.name, **self.info,
                "directions": {d: _direction_info(t, self.ema.get(d)) for d, t in self.translators.items()},
                "default_direction": self.default_direction}


def _direction_info(translator: Translator, ema: bool | None) -> dict[str, Any]:
    return {"in_channels": translator.in_channels, "out_channels": translator.out_channels,
            "size_multiple": translator.size_multiple, "ema": ema, "runs_on": translator.describe()}


def _checkpoint_info(path: Path, use_ema: bool) -> tuple[dict[str, Any], list[str], dict[str, bool]]:
    """Metadata of a run folder or checkpoint, and the directions its task translates."""
    from img2img.engine.checkpoint import load_checkpoint
    from img2img.registry import get_registry

    ckpt = load_checkpoint(path)
    pipeline = ckpt.get("pipeline") or {}
    task = str(ckpt.get("task") or pipeline.get("task") or "")
    registry = get_registry()
    if not registry.has("task", task):
        raise Img2ImgError(f"{ckpt['path']} was trained with the task {task!r}, which no installed plugin provides")
    task_cls = registry.get("task", task).factory
    try:
        from img2img.config import pipeline_from_dict

        directions = list(task_cls.directions_for(pipeline_from_dict(pipeline)))
    except Img2ImgError:  # a damaged stored pipeline: loading the translator says what is wrong
        directions = list(task_cls.directions)
    stored = ckpt.get("ema") if isinstance(ckpt.get("ema"), dict) else {}
    ema = {d: bool(use_ema and isinstance(stored.get(d), dict) and stored.get(d)) for d in directions}
    generator = ((pipeline.get("model") or {}).get("generator") or {}).get("name")
    plugins = ckpt.get("plugins") if isinstance(ckpt.get("plugins"), dict) else {}
    info = {"task": task, "pipeline": pipeline.get("name"), "generator": generator,
            "img2img_version": str(ckpt.get("img2img_version", "unknown")), "step": int(ckpt.get("step", 0)),
            "ema": any(ema.values()), "checkpoint": Path(ckpt["path"]).name,
            "plugins": {k: " ".join(str(x) for x in (v.get("distribution") or "unknown", v.get("version")) if x)
                        for k, v in plugins.items() if isinstance(v, dict)}}
    return info, directions, ema


def _safetensors_info(path: Path) -> tuple[dict[str, Any], list[str], dict[str, bool]]:
    from img2img.inference.export import load_safetensors_generator

    loaded = load_safetensors_generator(path)
    gen = getattr(getattr(loaded.pipeline, "model", None), "generator", None)
    info = {"task": loaded.task, "pipeline": loaded.name, "generator": getattr(gen, "name", None),
            "img2img_version": None, "step": None, "ema": bool(loaded.ema)}
    return info, [loaded.direction], {loaded.direction: bool(loaded.ema)}


def _onnx_info(translator: Translator) -> tuple[dict[str, Any], list[str], dict[str, bool]]:
    meta = dict(getattr(translator.backend, "metadata", {}) or {})
    ema = meta.get("ema")
    info = {"task": meta.get("task"), "pipeline": meta.get("pipeline"), "generator": meta.get("generator"),
            "img2img_version": meta.get("img2img_version"), "step": None,
            "ema": None if ema is None else ema == "true", "onnx_metadata": meta}
    return info, [translator.direction], {translator.direction: info["ema"]}


def load_model(spec: ModelSpec, *, device: str = "auto", precision: str = "fp32", use_ema: bool = True,
               max_batch: int = 8, tiling: TileOptions = TileOptions(), backend: str | None = None) -> ServedModel:
    """Load every direction of one model; errors name the model and say what to do."""
    kind = model_kind(spec.path)
    options = dict(device=device, precision=precision, backend=backend, batch_size=max_batch, tile=tiling.tile,
                   overlap=tiling.overlap, max_pixels=tiling.tile_above, tile_norm=tiling.tile_norm)
    try:
        if kind == "onnx":
            translator = Translator.load(spec.path, None, **options)  # the file knows its direction
            info, directions, ema = _onnx_info(translator)
            translators = {translator.direction: translator}
        else:
            if kind == "safetensors":
                info, directions, ema = _safetensors_info(spec.path)
            else:
                info, directions, ema = _checkpoint_info(spec.path, use_ema)
            translators = {d: Translator.load(spec.path, d, use_ema=use_ema, **options) for d in directions}
            if info.get("generator") is None:  # a task that builds its own translator: name its class, as export does
                module = getattr(next(iter(translators.values())).backend, "module", None)
                info["generator"] = type(module).__name__ if module is not None else None
    except Img2ImgError as exc:
        raise Img2ImgError(f"model '{spec.name}' ({spec.path}): {exc}") from None
    return ServedModel(name=spec.name, path=spec.path, kind=kind, info=info, translators=translators, ema=ema,
                       max_batch=max_batch)


class ModelTable:
    """The served models by name; `load` loads them all once (it is safe to call again)."""

    def __init__(self, specs: list[ModelSpec], *, device: str = "auto", precision: str = "fp32",
                 use_ema: bool = True, max_batch: int = 8, tiling: TileOptions = TileOptions(),
                 backend: str | None = None):
        from img2img.inference.choice import check_backend

        if max_batch < 1:
            raise Img2ImgError(f"--max-batch {max_batch}: must be >= 1")
        self.backend = check_backend(backend)
        self.specs = list(specs)
        self.device = device
        self.precision = precision
        self.use_ema = use_ema
        self.max_batch = max_batch
        self.tiling = tiling.check()
        self.models: dict[str, ServedModel] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_args(cls, values: list[str], **options: Any) -> ModelTable:
        return cls(parse_model_specs(values), **options)

    @property
    def loaded(self) -> bool:
        return len(self.models) == len(self.specs)

    def load(self) -> ModelTable:
        with self._lock:
            for spec in self.specs:
                if spec.name not in self.models:
                    self.models[spec.name] = load_model(spec, device=self.device, precision=self.precision,
                                                        use_ema=self.use_ema, max_batch=self.max_batch,
                                                        tiling=self.tiling, backend=self.backend)
        return self

    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def get(self, name: str) -> ServedModel | None:
        return self.models.get(name)

    def describe(self) -> list[dict[str, Any]]:
        return [self.models[n].describe() for n in self.names() if n in self.models]

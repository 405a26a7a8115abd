"""`load_pipeline` and `validate_pipeline`: one YAML file, validated in one pass against the registry.

Every problem is reported at once with its dotted YAML path (and line), unknown keys and names
come with a "did you mean". Relative paths in a pipeline resolve against the YAML file's folder
(against the current folder for a built-in pipeline, which `load_pipeline` also takes by name).
"""
from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel, ValidationError

from img2img.config.schema import PATH_FIELDS, ComponentSpec, PipelineBase
from img2img.config.yaml_io import _line_index, _nearest_line, apply_overrides, read_yaml
from img2img.errors import PipelineError, did_you_mean


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> PipelineBase:
    """Read, override, validate and resolve a pipeline file or a built-in pipeline's name.

    Relative data paths resolve against the file's folder, or the current folder for a built-in
    pipeline (see `img2img.config.builtin`). Raises `PipelineError` (`Img2ImgError` for an unknown name).
    """
    from img2img.config.builtin import resolve_pipeline

    from img2img.config.builtin import builtin_for_path

    path, base_dir = resolve_pipeline(path)
    raw, text = read_yaml(path)
    if raw is None:
        raw = {}
    overridden: set[str] = set()
    if isinstance(raw, dict) and overrides:
        raw = apply_overrides(raw, overrides, overridden)
    builtin = builtin_for_path(path)  # named as the user named it, not by its place inside the package
    source = f"the built-in pipeline '{builtin.name}'" if builtin is not None else str(path)
    return validate_pipeline(raw, source=source, base_dir=base_dir, text=text, overridden=overridden)


def pipeline_error(pipeline: PipelineBase, problems: list[tuple[str, str]],
                   source: str | None = None) -> PipelineError:
    """A `PipelineError` for problems found after validation (a training's checks), headed and marked
    (lines, ``(--set)``) like the problems found while loading; `source` where the pipeline has no origin."""
    origin = getattr(pipeline, "_origin", None)
    if origin is None:
        return PipelineError(problems, source)
    origin_source, lines, overridden = origin
    located = {p: _where(p, lines, overridden) for p, _ in problems}
    return PipelineError(problems, origin_source, {p: n for p, n in located.items() if n})


def _where(path: str, lines: dict, overridden: set[str] | frozenset[str]) -> int | str | None:
    """The line of the file that holds `path`, or ``"--set"`` for a value given on the command line."""
    if any(path == o or path.startswith(o + ".") for o in overridden):
        return "--set"
    return _nearest_line(lines, path)


def validate_pipeline(raw: Any, *, source: str | None = None, base_dir: Path | None = None,
                      text: str | None = None, overridden: set[str] | None = None) -> PipelineBase:
    """Validate `raw` against its task's schema and the registry; every problem in one `PipelineError`.

    `text` (the file's YAML) gives each problem its line; a problem at or under a path in
    `overridden` (set with ``--set``) is marked ``(--set)`` instead.
    """
    from img2img.registry import get_registry, unknown_message

    lines = _line_index(text) if text else {}
    overridden = set(overridden or ())

    def where(path: str) -> int | str | None:
        return _where(path, lines, overridden)

    def fail(problems: list[tuple[str, str]]) -> PipelineError:
        located = {p: where(p) for p, _ in problems}
        return PipelineError(problems, source, {p: n for p, n in located.items() if n})

    if not isinstance(raw, dict):
        raise fail([("", f"a pipeline is a YAML mapping (task:, data:, model:, ...), got {type(raw).__name__}")])
    registry = get_registry()
    task_name = raw.get("task")
    if not isinstance(task_name, str):
        raise fail([("task", f"required: one of {', '.join(registry.names('task'))}")])
    if not registry.has("task", task_name):
        raise fail([("task", unknown_message("task", task_name, registry.names("task")))])
    model_cls: type[PipelineBase] = registry.get("task", task_name).factory.Pipeline

    _fill_default_names(model_cls, raw)
    problems: list[tuple[str, str]] = []
    pipeline = None
    try:
        pipeline = model_cls.model_validate(raw)
    except ValidationError as exc:
        problems += _format_errors(exc, model_cls)
    problems += _check_components(model_cls, raw, (), registry)
    data = raw.get("data")
    if isinstance(data, dict):
        from img2img.data import sizes

        for key in ("transforms", "input_transforms"):
            if isinstance(data.get(key), list):
                problems += sizes.validate_stages(data[key], f"data.{key}")
    if problems:
        raise fail(_dedupe(problems))
    assert pipeline is not None
    _fill_component_defaults(pipeline, registry)
    if base_dir is not None:
        _resolve_paths(pipeline, base_dir)
    task_cls = registry.get("task", task_name).factory
    problems = list(task_cls.validate(pipeline)) if hasattr(task_cls, "validate") else []
    if problems:
        raise fail(problems)
    pipeline._origin = (source, lines, frozenset(overridden))  # plain values: the pipeline stays picklable
    return pipeline


def _dedupe(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen, out = set(), []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _model_type(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside ``X``, ``X | None`` or ``Optional[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_type(arg)
            if found is not None:
                return found
    return None


def _check_components(model_cls: type[BaseModel], raw: Any, prefix: tuple, registry) -> list[tuple[str, str]]:
    """Validate every ComponentSpec's name and params against the registry."""
    from img2img.registry import unknown_message

    problems: list[tuple[str, str]] = []
    if not isinstance(raw, dict):
        raw = {}
    for fname, finfo in model_cls.model_fields.items():
        sub = _model_type(finfo.annotation)
        if sub is None:
            continue
        value = raw.get(fname)
        path = prefix + (fname,)
        if issubclass(sub, ComponentSpec):
            if value is None:
                if fname in raw:
                    continue
                default = finfo.get_default(call_default_factory=True)
                if default is None:
                    continue
                value = default.ref() if isinstance(default, ComponentSpec) else default
            if isinstance(value, str):
                value = {"name": value}
            if not isinstance(value, dict) or not isinstance(value.get("name"), str):
                continue  # the structural pass reports it
            name = value["name"]
            if not registry.has(sub.kind, name):
                problems.append((".".join(path + ("name",)), unknown_message(sub.kind, name, registry.names(sub.kind))))
                continue
            params = {k: v for k, v in value.items() if k not in sub.model_fields}
            try:
                registry.validate(sub.kind, name, params)
            except ValidationError as exc:
                params_cls = registry.get(sub.kind, name).params
                for err in exc.errors():
                    loc = tuple(str(x) for x in err["loc"])
                    problems.append((".".join(path + loc), _message(err, params_cls, loc)))
        else:
            problems += _check_components(sub, value, path, registry)
    return problems


def _fill_default_names(model_cls: type[BaseModel], raw: Any) -> None:
    """``model.generator: {ngf: 32}`` keeps the default generator's name: only its params change."""
    if not isinstance(raw, dict):
        return
    for fname, finfo in model_cls.model_fields.items():
        sub = _model_type(finfo.annotation)
        value = raw.get(fname)
        if sub is None or not isinstance(value, dict):
            continue
        if issubclass(sub, ComponentSpec):
            if "name" not in value:
                default = finfo.get_default(call_default_factory=True)
                if isinstance(default, ComponentSpec):
                    value["name"] = default.name
        else:
            _fill_default_names(sub, value)


def _fill_component_defaults(model: BaseModel, registry) -> None:
    for fname in type(model).model_fields:
        value = getattr(model, fname)
        if isinstance(value, ComponentSpec):
            validated = registry.validate(value.kind, value.name, value.params)
            value.__pydantic_extra__ = {k: getattr(validated, k) for k in type(validated).model_fields}
        elif isinstance(value, BaseModel):
            _fill_component_defaults(value, registry)


def _resolve_paths(pipeline: PipelineBase, base_dir: Path) -> None:
    """Relative paths resolve against `base_dir` (the YAML file's folder): ``data.*``, the folders of
    ``data.domains`` and ``data.val``, and every ``Path`` field of a task's own sections."""
    def resolve(p: Path | None) -> Path | None:
        if p is None:
            return None
        p = p.expanduser()
        return p if p.is_absolute() else (base_dir / p).resolve()

    data = pipeline.data
    for f in PATH_FIELDS:
        setattr(data, f, resolve(getattr(data, f)))
    if data.test is not None:
        data.test = {name: resolve(folder) for name, folder in data.test.items()}
    if data.domains is not None:
        data.domains = {name: resolve(folder) for name, folder in data.domains.items()}
    if data.val is not None:
        data.val.a = resolve(data.val.a)
        data.val.b = resolve(data.val.b)
        data.val.pairs = resolve(data.val.pairs)
        extra = data.val.__pydantic_extra__ or {}
        for name in list(extra):
            extra[name] = resolve(Path(extra[name]))
    for name in type(pipeline).model_fields:
        if name != "data":
            _set_if_changed(pipeline, name, _resolve_own_paths(getattr(pipeline, name), resolve))


def _set_if_changed(model: BaseModel, name: str, value: Any) -> None:
    """Assign only a changed value: an assignment marks the field as given (``model_fields_set``), and a
    field left out must stay left out (``val_every`` left out means its default, given as null: off)."""
    if value != getattr(model, name):
        setattr(model, name, value)


def _resolve_own_paths(value: Any, resolve) -> Any:
    """`value` with its relative ``Path`` values resolved (in models, lists and dicts)."""
    if isinstance(value, Path):
        return resolve(value)
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _set_if_changed(value, name, _resolve_own_paths(getattr(value, name), resolve))
        return value
    if isinstance(value, list):
        return [_resolve_own_paths(v, resolve) for v in value]
    if isinstance(value, dict):
        return {k: _resolve_own_paths(v, resolve) for k, v in value.items()}
    return value


def _format_errors(exc: ValidationError, model_cls: type[BaseModel]) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        loc = tuple(str(x) for x in err["loc"])
        out.append((".".join(loc), _message(err, model_cls, loc)))
    return out


def _message(err: dict, model_cls: type[BaseModel] | None, loc: tuple) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _fields_at(model_cls, loc[:-1])
        hint = did_you_mean(loc[-1], known)
        if hint:
            return f"unknown key; {hint}"
        return f"unknown key; allowed: {', '.join(known)}" if known else "unknown key"
    if kind == "missing":
        return "required"
    msg = err["msg"]
    if kind == "value_error":  # a validator's own message, without pydantic's "Value error, " prefix
        msg = str((err.get("ctx") or {}).get("error", msg))
    if "input" in err and kind not in ("model_type", "dict_type"):
        msg += f" (got {err['input']!r})"
    return msg


def _fields_at(model_cls: type[BaseModel] | None, loc: tuple) -> list[str]:
    current = model_cls
    for part in loc:
        if current is None:
            return []
        finfo = current.model_fields.get(part)
        if finfo is None:
            return []
        current = _model_type(finfo.annotation)
    if current is None:
        return []
    return [f for f in current.model_fields]



def dump_pipeline(pipeline: PipelineBase) -> dict:
    """The resolved pipeline as plain YAML-able data (paths as strings, every default filled in)."""
    return pipeline.model_dump(mode="json")


def pipeline_from_dict(data: dict) -> PipelineBase:
    """Re-validate a resolved pipeline (from a checkpoint or a run's pipeline.yaml)."""
    return validate_pipeline(data, source="checkpoint pipeline")

"""Pipeline models and `load_pipeline`: one YAML file, validated in one pass.

Every problem is reported at once with its dotted YAML path (and line), unknown keys and names
come with a "did you mean". Relative paths in a pipeline resolve against the YAML file's folder.
"""
from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from img2img.errors import PipelineError

Direction = Literal["a2b", "b2a"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class ComponentSpec(BaseModel):
    """``{name: ..., **params}``: the params are checked against the component's factory."""

    model_config = ConfigDict(extra="allow")
    kind: ClassVar[str] = ""
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})

    def ref(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}


class GeneratorSpec(ComponentSpec):
    kind: ClassVar[str] = "generator"


class DiscriminatorSpec(ComponentSpec):
    kind: ClassVar[str] = "discriminator"


class LossSpec(ComponentSpec):
    kind: ClassVar[str] = "loss"
    weight: float = Field(1.0, ge=0)


class Channels(StrictModel):
    a: Literal[1, 3, 4] = 3
    b: Literal[1, 3, 4] = 3


class ValConfig(StrictModel):
    a: Path
    b: Path | None = None


class DataConfig(StrictModel):
    a: Path | None = None
    b: Path | None = None
    pairs: Path | None = None
    direction: Direction = "a2b"
    channels: Channels = Field(default_factory=Channels)
    transforms: list[dict[str, Any]] = Field(default_factory=list)
    input_transforms: list[dict[str, Any]] = Field(default_factory=list)
    test_a: Path | None = None
    test_b: Path | None = None
    val: ValConfig | None = None
    synthesize: str | None = None
    skip_unreadable: bool = False
    num_workers: int = Field(2, ge=0)

    @field_validator("channels", mode="before")
    @classmethod
    def _one_number_for_both(cls, value: Any) -> Any:
        return {"a": value, "b": value} if isinstance(value, int) else value


class TrainConfig(StrictModel):
    epochs: int = Field(100, ge=0)
    decay_epochs: int = Field(100, ge=0)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    lr_d: float | None = Field(None, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    betas_d: tuple[float, float] | None = None
    pool_size: int = Field(50, ge=0)
    device: str = "auto"
    precision: Literal["fp32", "bf16-mixed", "fp16-mixed"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    log_every: int = Field(10, ge=1)
    sample_every: int = Field(500, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(3, ge=0)
    tensorboard: bool = False
    on_nan: Literal["stop", "skip"] = "stop"
    ema: float | None = Field(None, gt=0, lt=1)
    val_every: int | None = Field(None, ge=1)
    val_metric: Literal["l1", "psnr", "ssim", "cycle_l1"] | None = None
    samples: int = Field(4, ge=1, le=16)


class PipelineBase(StrictModel):
    """Fields every task shares; a task's `Pipeline` subclasses it with its `model` and `losses`."""

    task: str
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


PATH_FIELDS = ("a", "b", "pairs", "test_a", "test_b")


# ---------------------------------------------------------------------------------------------
# loading


MAX_YAML_DEPTH = 50
"""Deepest nesting a pipeline may use; a real one needs fewer than ten levels."""
MAX_YAML_VALUES = 100_000
"""Most values a pipeline may expand to through anchors and aliases (a guard against "billion laughs")."""


def read_yaml(path: Path) -> tuple[Any, str]:
    """Parse a YAML file with the safe loader; syntax errors name the line and column.

    Before any value is built the node tree is checked: no anchor that contains itself, no nesting
    deeper than `MAX_YAML_DEPTH`, no expansion beyond `MAX_YAML_VALUES` and no key given twice
    (YAML would silently keep only the last one).
    """
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError([("", f"file not found: {path}")], source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError([("", f"cannot read {path}: {exc}")], source) from None
    try:
        return load_yaml_text(text, source), text
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "an unknown position"
        if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in str(exc.problem):
            problem = (f"YAML error at {where}: {exc.problem}; a pipeline holds plain values only, "
                       "so remove the tag (tags such as !!python/... are never executed)")
        else:
            problem = f"YAML syntax error at {where}: {exc.problem}"
            if exc.context:
                problem += f" ({exc.context})"
            problem += "; fix the indentation or quoting there"
        raise PipelineError([("", problem)], source) from None
    except yaml.reader.ReaderError as exc:
        before = text[: exc.position]
        where = f"line {before.count(chr(10)) + 1}, column {len(before) - before.rfind(chr(10))}"
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise PipelineError([("", f"character {char} at {where} is not allowed in YAML; remove it")],
                            source) from None
    except yaml.YAMLError as exc:
        raise PipelineError([("", f"YAML error: {exc}")], source) from None


def load_yaml_text(text: str, source: str | None = None) -> Any:
    """`yaml.safe_load` that checks the node tree before building values (see `read_yaml`).

    Raises PipelineError for a tree that is cyclic, too deep, too large or has duplicate keys, and
    yaml.YAMLError for text that is not YAML.
    """
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise PipelineError([("", f"YAML nested deeper than {MAX_YAML_DEPTH} levels; a pipeline needs only "
                                      "a few")], source) from None
        if node is None:
            return None
        problems, lines = _check_nodes(node)
        if problems:
            raise PipelineError(problems, source, lines)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Self-containing anchors, excessive depth or expansion, and duplicate keys, with their lines."""
    problems: list[tuple[str, str]] = []
    lines: dict[str, int] = {}
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    class Abort(Exception):
        pass

    def add(path: tuple[str, ...], node: yaml.Node, message: str) -> None:
        dotted = ".".join(path)
        problems.append((dotted, message))
        lines[dotted] = node.start_mark.line + 1

    def size(node: yaml.Node, path: tuple[str, ...]) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            add(path, node, "an anchor (&name) that contains itself; a pipeline cannot be infinite")
            raise Abort
        if len(path) > MAX_YAML_DEPTH:
            add(path[:MAX_YAML_DEPTH], node,
                f"nested deeper than {MAX_YAML_DEPTH} levels; a pipeline needs only a few")
            raise Abort
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
                if isinstance(key_node, yaml.ScalarNode) and name != "<<":
                    line = key_node.start_mark.line + 1
                    if name in seen:
                        add(path + (name,), key_node, f"key given twice (first on line {seen[name]}); YAML would "
                                                      "silently keep only the last value, so remove one")
                    seen.setdefault(name, line)
                total += size(key_node, path + (name,)) + size(value_node, path + (name,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                total += size(item, path + (str(i),))
        open_nodes.discard(key)
        if total > MAX_YAML_VALUES:
            add(path, node, f"expands to more than {MAX_YAML_VALUES} values through anchors and aliases; "
                            "a pipeline needs far fewer")
            raise Abort
        sizes[key] = total
        return total

    try:
        size(root, ())
    except Abort:
        pass
    return problems, lines


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` with the value parsed as YAML (``3``, ``true``, ``[1, 2]``, ``null``)."""
    if "=" not in text:
        raise PipelineError([("--set", f"'{text}' is not key=value (e.g. --set train.max_steps=100)")])
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise PipelineError([("--set", f"'{text}': empty key segment")])
    try:
        value = load_yaml_text(raw) if raw.strip() else None
    except PipelineError as exc:
        raise PipelineError([(".".join(filter(None, [key, path])), f"--set {key}=...: {message}")
                             for path, message in exc.problems]) from None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = raw
        for i, key in enumerate(keys[:-1]):
            if isinstance(node, list):
                try:
                    node = node[int(key)]
                    continue
                except (ValueError, IndexError):
                    raise PipelineError([(".".join(keys[: i + 1]), f"--set {text}: no list item {key}")]) from None
            if not isinstance(node, dict):
                raise PipelineError([(".".join(keys[:i]), f"--set {text}: not a mapping")])
            if not isinstance(node.get(key), (dict, list)):
                node[key] = {}
            node = node[key]
        last = keys[-1]
        if isinstance(node, list):
            try:
                node[int(last)] = value
            except (ValueError, IndexError):
                raise PipelineError([(".".join(keys), f"--set {text}: no list item {last}")]) from None
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise PipelineError([(".".join(keys[:-1]), f"--set {text}: not a mapping")])
    return raw


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> PipelineBase:
    """Read, override, validate and resolve a pipeline file. Raises `PipelineError`."""
    path = Path(path)
    raw, text = read_yaml(path)
    if raw is None:
        raw = {}
    if isinstance(raw, dict) and overrides:
        raw = apply_overrides(raw, overrides)
    return validate_pipeline(raw, source=str(path), base_dir=path.resolve().parent, text=text)


def validate_pipeline(raw: Any, *, source: str | None = None, base_dir: Path | None = None,
                      text: str | None = None) -> PipelineBase:
    from img2img.registry import get_registry, unknown_message

    lines = _line_index(text) if text else {}

    def fail(problems: list[tuple[str, str]]) -> PipelineError:
        located = {p: _nearest_line(lines, p) for p, _ in problems}
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
        from img2img import transforms

        for key in ("transforms", "input_transforms"):
            if isinstance(data.get(key), list):
                problems += transforms.validate_stages(data[key], f"data.{key}")
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
    def resolve(p: Path | None) -> Path | None:
        if p is None:
            return None
        p = p.expanduser()
        return p if p.is_absolute() else (base_dir / p).resolve()

    data = pipeline.data
    for f in PATH_FIELDS:
        setattr(data, f, resolve(getattr(data, f)))
    if data.val is not None:
        data.val.a = resolve(data.val.a)
        data.val.b = resolve(data.val.b)


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
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
        if close:
            return f"unknown key; did you mean '{close[0]}'?"
        return f"unknown key; allowed: {', '.join(known)}" if known else "unknown key"
    if kind == "missing":
        return "required"
    msg = err["msg"]
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


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map dotted YAML paths to 1-based line numbers, via the safe composer (no objects built)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return {}
    index: dict[tuple[str, ...], int] = {}

    visited: set[int] = set()

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if id(node) in visited or len(path) > MAX_YAML_DEPTH:  # an alias: its lines are where the anchor is
            return
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = path + (str(key_node.value),)
                index[key] = key_node.start_mark.line + 1
                walk(value_node, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                key = path + (str(i),)
                index[key] = item.start_mark.line + 1
                walk(item, key)

    if root is not None:
        walk(root, ())
    return index


def _nearest_line(index: dict[tuple[str, ...], int], dotted: str) -> int | None:
    parts = tuple(dotted.split(".")) if dotted else ()
    while parts:
        if parts in index:
            return index[parts]
        parts = parts[:-1]
    return None


def dump_pipeline(pipeline: PipelineBase) -> dict:
    """The resolved pipeline as plain YAML-able data (paths as strings, every default filled in)."""
    return pipeline.model_dump(mode="json")


def pipeline_from_dict(data: dict) -> PipelineBase:
    """Re-validate a resolved pipeline (from a checkpoint or a run's pipeline.yaml)."""
    return validate_pipeline(data, source="checkpoint pipeline")

"""Components by name: kind -> name -> factory plus the pydantic model of its parameters.

A factory's keyword parameters, all type-annotated, are its YAML parameters. The registry is built
from the plugin manager's ``register_<kind>s`` hooks, built-ins first; a later plugin cannot take a
name that is already registered (the clash is recorded on that plugin and shown by
``img2img plugins``).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from img2img import plugins
from img2img.errors import Img2ImgError, did_you_mean

KINDS = ("generator", "discriminator", "loss", "task", "feature_extractor")
HOOKS = {
    "generator": "register_generators",
    "discriminator": "register_discriminators",
    "loss": "register_losses",
    "task": "register_tasks",
    "feature_extractor": "register_feature_extractors",
}
IO_PARAMS = {
    "generator": ("in_channels", "out_channels"),
    "discriminator": ("in_channels",),
    "loss": (),
    "task": (),
    "feature_extractor": (),
}


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    params: type[BaseModel] | None  # None for tasks: their pipeline model is TaskClass.Pipeline
    plugin: str
    distribution: str | None
    version: str | None
    doc: str

    def describe(self) -> dict:
        """Parameters with types and defaults, for `img2img components`."""
        params = []
        if self.params is not None:
            for pname, f in self.params.model_fields.items():
                params.append({
                    "name": pname,
                    "type": _type_name(f.annotation),
                    "default": None if f.is_required() else _jsonable(f.get_default(call_default_factory=True)),
                    "required": f.is_required(),
                    "constraints": [_constraint(m) for m in f.metadata],
                })
        return {
            "kind": self.kind, "name": self.name, "plugin": self.plugin,
            "distribution": self.distribution, "version": self.version,
            "doc": self.doc, "parameters": params,
        }


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or str(annotation).replace("typing.", "")


_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "multiple_of": "a multiple of",
           "min_length": "length >=", "max_length": "length <="}


def _constraint(meta: Any) -> str:
    """``Ge(ge=1)`` -> ``>= 1``: a pydantic constraint as `img2img components` shows it."""
    for attr, symbol in _BOUNDS.items():
        value = getattr(meta, attr, None)
        if value is not None:
            return f"{symbol} {value}"
    return str(meta)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


class ParamsProblem(Exception):
    """A factory whose signature cannot be turned into a parameter model."""


def params_model(kind: str, name: str, factory: Callable[..., Any]) -> type[BaseModel]:
    """A pydantic model (unknown keys forbidden) from the factory's annotated keyword parameters."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError) as exc:
        raise ParamsProblem(f"{kind} '{name}': cannot read the factory's signature ({exc})") from exc
    hints = _parameter_annotations(kind, name, factory)
    fields: dict[str, Any] = {}
    for pname, p in sig.parameters.items():
        if pname in IO_PARAMS[kind] or pname == "self":
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            stars = "*" if p.kind is p.VAR_POSITIONAL else "**"
            raise ParamsProblem(f"{kind} '{name}': {stars}{pname} is not allowed; list each parameter with a type")
        if p.kind is p.POSITIONAL_ONLY:
            raise ParamsProblem(f"{kind} '{name}': parameter '{pname}' is positional-only; make it a keyword")
        if pname not in hints:
            raise ParamsProblem(
                f"{kind} '{name}': parameter '{pname}' has no type annotation; annotate it "
                f"(e.g. '{pname}: int = 8') so pipelines can be validated"
            )
        default = ... if p.default is p.empty else p.default
        fields[pname] = (hints[pname], default)
    missing_io = [io for io in IO_PARAMS[kind] if io not in sig.parameters]
    if missing_io:
        raise ParamsProblem(f"{kind} '{name}': the factory must accept {', '.join(IO_PARAMS[kind])}")
    model_name = "".join(part.capitalize() for part in f"{kind}_{name}".replace("-", "_").split("_"))
    return create_model(model_name, __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields)


def _parameter_annotations(kind: str, name: str, factory: Callable[..., Any]) -> dict[str, Any]:
    """Parameter annotations, resolving string ones (``from __future__ import annotations``).

    The return annotation is ignored: it is not a parameter and may name a type imported locally.
    """
    target = factory.__init__ if inspect.isclass(factory) else factory
    raw = dict(inspect.get_annotations(target))
    raw.pop("return", None)
    if not any(isinstance(v, str) for v in raw.values()):
        return raw
    namespace = dict(getattr(target, "__globals__", {}))
    try:
        namespace.update(inspect.getclosurevars(target).nonlocals)
    except (TypeError, ValueError):
        pass
    hints = {}
    for pname, annotation in raw.items():
        try:
            hints[pname] = eval(annotation, namespace) if isinstance(annotation, str) else annotation  # noqa: S307
        except Exception as exc:
            raise ParamsProblem(f"{kind} '{name}': cannot resolve the annotation of '{pname}' "
                                f"({annotation!r}: {exc})") from exc
    return hints


class Registry:
    def __init__(self) -> None:
        self._components: dict[str, dict[str, Component]] = {k: {} for k in KINDS}
        self.problems: list[tuple[str, str]] = []  # (plugin name, message)

    def add(self, component: Component) -> None:
        self._components[component.kind][component.name] = component

    def names(self, kind: str) -> list[str]:
        return sorted(self._components[kind])

    def all(self, kind: str | None = None) -> list[Component]:
        kinds = [kind] if kind else list(KINDS)
        return [self._components[k][n] for k in kinds for n in sorted(self._components[k])]

    def has(self, kind: str, name: str) -> bool:
        try:
            self.get(kind, name)
        except Img2ImgError:
            return False
        return True

    def get(self, kind: str, name: str) -> Component:
        """The component `name` of `kind`; ``<plugin>:<name>`` picks the one a given plugin registered."""
        found = self._components[kind].get(name)
        if found is None and isinstance(name, str) and ":" in name:
            plugin, _, base = name.rpartition(":")
            found = next((c for c in self._components[kind].values()
                          if c.plugin == plugin and c.name.rpartition(":")[2] == base), None)
        if found is None:
            raise Img2ImgError(unknown_message(kind, name, self.names(kind)))
        return found

    def validate(self, kind: str, name: str, params: Mapping[str, Any]) -> BaseModel:
        component = self.get(kind, name)
        assert component.params is not None
        return component.params.model_validate(dict(params))

    def build(self, kind: str, ref: Any, **io: Any) -> Any:
        """Build a component from a name, a ``{name: ..., **params}`` mapping or a spec model.

        ``io`` are the channel arguments (``in_channels``, ``out_channels``) the task supplies.
        """
        name, params = split_ref(ref)
        component = self.get(kind, name)
        if kind == "loss" and "weight" not in component.params.model_fields:
            params.pop("weight", None)  # the task's weight, not the factory's
        try:
            validated = component.params.model_validate(params)
        except ValidationError as exc:
            details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise Img2ImgError(f"{kind} '{name}': invalid parameters: {details}") from None
        values = {k: getattr(validated, k) for k in component.params.model_fields}
        return component.factory(**io, **values)


def split_ref(ref: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(ref, str):
        return ref, {}
    if isinstance(ref, BaseModel):
        data = ref.model_dump()
    else:
        data = dict(ref)
    name = data.pop("name")
    return name, data


def unknown_message(kind: str, name: str, known: list[str]) -> str:
    hint = did_you_mean(name, known)
    return (f"unknown {kind} '{name}'; {hint + ' ' if hint else ''}known: {', '.join(known) or 'none'} "
            f"(see `img2img components {kind}`)")


_cache: dict[tuple, Registry] = {}


def get_registry() -> Registry:
    """The registry for the plugins registered now (rebuilt when the plugin set changes)."""
    pm = plugins.get_plugin_manager()
    key = (plugins.generation(), tuple((name, id(p)) for name, p in pm.list_name_plugin()))
    if key not in _cache:
        _cache.clear()
        _cache[key] = _build_registry(pm)
    return _cache[key]


def plugin_listing() -> list[plugins.PluginInfo]:
    """Every plugin with the components it registered and any problem (what `img2img plugins` shows)."""
    get_registry()
    return plugins.plugin_infos()


def _build_registry(pm) -> Registry:
    """Ask every plugin for its components, built-ins first.

    Names are global per kind. A built-in name can never be taken. When two plugins register the same
    name, neither gets it -- whichever was installed first or sorts first -- and both are told; each
    stays reachable as ``<plugin>:<name>`` (e.g. ``generator: {name: "template:small_conv"}``).
    """
    registry = Registry()
    for info in plugins.plugin_infos():
        info.components.clear()
        info.errors[:] = [e for e in info.errors if not e.startswith("register:")]
    offered: list[tuple[str, str, Callable[..., Any], plugins.PluginInfo]] = []
    for kind in KINDS:
        hook = getattr(pm.hook, HOOKS[kind])
        for impl in hook.get_hookimpls():  # registration order: built-ins first, then entry points
            info = plugins.info_for(impl.plugin_name, impl.plugin)

            def register(name: str, factory: Callable[..., Any], *, _kind=kind, _info=info) -> None:
                offered.append((_kind, name, factory, _info))

            try:
                impl.function(register=register) if "register" in impl.argnames else impl.function()
            except Exception as exc:
                if plugins.strict():
                    raise
                info.errors.append(f"register: {HOOKS[kind]} raised {type(exc).__name__}: {exc}")
    owners: dict[tuple[str, str], list[plugins.PluginInfo]] = {}
    for kind, name, _, info in offered:
        if isinstance(name, str) and info not in owners.setdefault((kind, name), []):
            owners[(kind, name)].append(info)
    done: set[tuple[str, str, str]] = set()
    for kind, name, factory, info in offered:
        if (kind, name, info.name) in done:
            _problem(registry, info, f"{kind} '{name}' is registered twice by this plugin; the first is kept")
            continue
        done.add((kind, name, info.name))
        rivals = [o for o in owners.get((kind, name), []) if o is not info] if isinstance(name, str) else []
        builtin = next((o for o in owners.get((kind, name), []) if o.builtin), None) if rivals else None
        if builtin is not None and not info.builtin:
            _problem(registry, info, f"{kind} '{name}' is a built-in name (from {builtin.name}); rename it")
            continue
        if rivals and not info.builtin:
            named = ", ".join(f"{o.name} ({o.distribution or 'registered directly'})" for o in rivals)
            _problem(registry, info, f"{kind} '{name}' is also registered by {named}; neither gets the name. "
                                     f"Refer to it as '{info.name}:{name}', or uninstall one of them")
            _register_one(registry, kind, f"{info.name}:{name}", factory, info)
            continue
        _register_one(registry, kind, name, factory, info)
    return registry


def _problem(registry: Registry, info: plugins.PluginInfo, message: str) -> None:
    info.errors.append(f"register: {message}")
    registry.problems.append((info.name, message))
    if plugins.strict():
        raise Img2ImgError(f"plugin '{info.name}': {message}")


def _register_one(registry: Registry, kind: str, name: str, factory: Callable[..., Any], info) -> None:
    if not isinstance(name, str) or not name:
        return _problem(registry, info, f"{kind} name must be a non-empty string, got {name!r}")
    if kind == "task":
        params = None
        if not (inspect.isclass(factory) and hasattr(factory, "Pipeline")):
            return _problem(registry, info, f"task '{name}' must be a class with a `Pipeline` model "
                                            "(see img2img.tasks.Task)")
    else:
        try:
            params = params_model(kind, name.rpartition(":")[2], factory)
        except ParamsProblem as exc:
            return _problem(registry, info, str(exc))
    doc = (inspect.getdoc(factory) or "").strip().splitlines()
    registry.add(Component(kind=kind, name=name, factory=factory, params=params, plugin=info.name,
                           distribution=info.distribution, version=info.version, doc=doc[0] if doc else ""))
    info.components.append(f"{kind}:{name}")


def build(kind: str, ref: Any, **io: Any) -> Any:
    """Build a component of the current registry (see `Registry.build`)."""
    return get_registry().build(kind, ref, **io)

"""The plugin manager: built-in plugins first, then entry points of group ``img2img``, each isolated.

A plugin that fails to import, implements an unknown hook or clashes with another is recorded in
`plugin_infos()` and shown by ``img2img plugins``; it never breaks the command line. Set
``IMG2IMG_STRICT_PLUGINS=1`` to raise instead, and ``IMG2IMG_LOAD_PLUGINS=a,b`` to load only those
plugins (distribution or entry-point names; an empty value loads none). This module knows nothing of
components: `img2img.registry` asks the plugins it loads for them.
"""
from __future__ import annotations

import importlib
import importlib.util
import importlib.metadata as md
import os
import re
from pathlib import Path
from dataclasses import dataclass, field

import pluggy

from img2img import hookspecs
from img2img._version import __version__
from img2img.errors import PluginError

ENTRY_POINT_GROUP = "img2img"
LOAD_ENV = "IMG2IMG_LOAD_PLUGINS"
STRICT_ENV = "IMG2IMG_STRICT_PLUGINS"
OWN_DISTRIBUTION = "img2img-pipeline"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "img2img.default_plugins.resnet",
    "img2img.default_plugins.unet",
    "img2img.default_plugins.patchgan",
    "img2img.default_plugins.losses",
    "img2img.default_plugins.extractors",
    "img2img.tasks.cyclegan",
    "img2img.tasks.pix2pix",
    "img2img.default_plugins.pipelines",
)


@dataclass
class PluginInfo:
    """What `img2img plugins` shows about one plugin."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    builtin: bool = False
    hooks: list[str] = field(default_factory=list)
    components: list[str] = field(default_factory=list)  # "kind:name"
    errors: list[str] = field(default_factory=list)

    @property
    def loaded(self) -> bool:
        return not any(e.startswith(("load:", "hook:")) for e in self.errors)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "hooks": self.hooks,
            "components": self.components,
            "error": "; ".join(self.errors) or None,
        }


@dataclass
class _State:
    pm: pluggy.PluginManager | None = None
    infos: dict[str, PluginInfo] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # entry point -> why it was not loaded
    unknown_names: list[str] = field(default_factory=list)  # names in IMG2IMG_LOAD_PLUGINS matching nothing
    generation: int = 0


_state = _State()


def strict() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0", "false", "no")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def allowed_names() -> set[str] | None:
    """The plugins IMG2IMG_LOAD_PLUGINS allows (normalised names), or None when it is not set."""
    value = os.environ.get(LOAD_ENV)
    if value is None:
        return None
    return {normalise(v.strip()) for v in value.split(",") if v.strip()}


def hook_names(plugin: object) -> list[str]:
    return sorted(
        n for n in dir(plugin) if not n.startswith("_") and hasattr(getattr(plugin, n, None), "img2img_impl")
    )


def _register(pm: pluggy.PluginManager, plugin: object, info: PluginInfo) -> bool:
    """Register one plugin; a hook the contract does not know makes the plugin invalid."""
    info.hooks = hook_names(plugin)
    unknown = [h for h in info.hooks if not hasattr(pm.hook, h) or not hasattr(hookspecs, h)]
    if unknown:
        known = ", ".join(n for n in dir(hookspecs) if n.startswith("register_"))
        info.errors.append(f"hook: unknown hook(s) {', '.join(unknown)}; the hooks are: {known}")
        return False
    try:
        pm.register(plugin, name=info.name)
        pm.check_pending()
    except (pluggy.PluginValidationError, ValueError) as exc:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        info.errors.append(f"hook: {exc}")
        return False
    return True


def _module_sources(module: str) -> list[Path] | None:
    """The source files of `module` (every ``.py`` of a package), found without importing anything;
    None when they cannot be found (an extension module, a zip import)."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: finding it runs no code
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations is None:
        return [Path(spec.origin)] if not rest and spec.origin and spec.origin.endswith(".py") else None
    folders = [Path(p) for p in spec.submodule_search_locations]
    for part in rest:
        folders = [f / part for f in folders]
        files = [f.with_suffix(".py") for f in folders if f.with_suffix(".py").is_file()]
        if files:
            return files if part == rest[-1] else None
        folders = [f for f in folders if f.is_dir()]
    files = [f for folder in folders for f in sorted(folder.rglob("*.py"))]
    return files or None


def may_implement(ep_module: str, hook: str) -> bool:
    """Whether the plugin module `ep_module` (its package, for a package) may implement `hook`: its
    source names the hook, or its source cannot be read. Lets `img2img --help` and `img2img pipelines`
    skip importing plugins (and torch) that cannot add commands or pipelines."""
    files = _module_sources(ep_module)
    if files is None:
        return True
    for file in files:
        try:
            if hook in file.read_text(encoding="utf-8", errors="replace"):
                return True
        except OSError:
            return True
    return False


def _load_entry_points(pm: pluggy.PluginManager, hook: str | None = None, state: _State | None = None) -> None:
    """Load the entry points (only those that may implement `hook`, when given) into `state`."""
    _state = state if state is not None else globals()["_state"]
    allowed = allowed_names()
    matched: set[str] = set()
    seen: dict[str, PluginInfo] = {}
    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
        dist = ep.dist.name if ep.dist is not None else None
        version = ep.dist.version if ep.dist is not None else None
        if allowed is not None:
            names = {normalise(ep.name)} | ({normalise(dist)} if dist else set())
            if not names & allowed:
                _state.skipped[ep.name] = dist or ep.name
                continue
            matched |= names & allowed
        if hook is not None and not may_implement(ep.module, hook):
            continue
        info = PluginInfo(name=ep.name, module=ep.value, distribution=dist, version=version)
        if ep.name in _state.infos and _state.infos[ep.name].builtin:
            info.errors.append(f"load: the name '{ep.name}' belongs to a built-in plugin; rename the entry point")
        elif ep.name in seen:
            other = seen[ep.name]
            if other.distribution == dist and other.module == ep.value:
                continue  # the same distribution seen twice on sys.path
            info.errors.append(
                f"load: entry point name '{ep.name}' is already used by {other.distribution} "
                f"({other.module}); rename one of them"
            )
        else:
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not break the CLI
                if strict():
                    raise PluginError(f"plugin '{ep.name}' from {dist} failed to import: {exc}") from exc
                info.errors.append(f"load: {type(exc).__name__}: {exc}")
            else:
                if not _register(pm, plugin, info) and strict():
                    raise PluginError(f"plugin '{ep.name}' from {dist}: {'; '.join(info.errors)}")
        seen.setdefault(ep.name, info)
        key = ep.name if ep.name not in _state.infos else f"{ep.name} ({dist})"
        _state.infos[key] = info
    _state.unknown_names = sorted(allowed - matched) if allowed is not None else []
    if _state.unknown_names and strict():
        raise PluginError(f"{LOAD_ENV} names no installed plugin: {', '.join(_state.unknown_names)}")


def _load(state: _State, hook: str | None = None) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("img2img")
    pm.add_hookspecs(hookspecs)
    state.infos.clear()
    state.skipped.clear()
    for module_name in DEFAULT_PLUGINS:
        if hook is not None and not may_implement(module_name, hook):
            continue
        module = importlib.import_module(module_name)
        info = PluginInfo(name=module_name, module=module_name, builtin=True,
                          distribution=OWN_DISTRIBUTION, version=__version__)
        if not _register(pm, module, info):
            raise PluginError(f"built-in plugin {module_name}: {'; '.join(info.errors)}")
        state.infos[module_name] = info
    state.pm = pm
    _load_entry_points(pm, hook, state)
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loaded on first use."""
    if _state.pm is None:
        _load(_state)
        _state.generation += 1
        if _on_load is not None:
            warn_unknown_names_once(_on_load)
    return _state.pm


_on_load = None


def on_load(emit) -> None:
    """Have `emit(line)` called with the warning about unknown IMG2IMG_LOAD_PLUGINS names (once) when
    the plugins are loaded; the command line passes its warning printer."""
    global _on_load
    _on_load = emit


def loaded() -> bool:
    """Whether the plugin manager has been loaded in this process."""
    return _state.pm is not None


_partial: dict[str, _State] = {}


def plugins_for(hook: str) -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """A plugin manager for calling `hook` only, and the records of its plugins.

    Once the full manager is loaded, that one. Before, a manager holding only the built-ins and entry
    points whose source names the hook (see `may_implement`), so that listing pipelines or commands
    does not import every network plugin (and torch)."""
    if _state.pm is not None:
        return _state.pm, _state.infos
    key = f"{hook}|{os.environ.get(LOAD_ENV)}|{_state.generation}"
    state = _partial.get(key)
    if state is None:
        _partial.clear()
        state = _partial[key] = _State()
        _load(state, hook)
    return state.pm, state.infos


def generation() -> int:
    """Changes whenever the set of plugins may have changed (for caches built from the plugins)."""
    return _state.generation


def plugin_infos() -> list[PluginInfo]:
    """Every plugin seen, loaded or not, built-ins first (`img2img.registry.plugin_listing` adds the
    components each registered)."""
    pm = get_plugin_manager()
    for name, plugin in pm.list_name_plugin():
        info_for(name, plugin)
    return list(_state.infos.values())


def info_for(plugin_name: str, plugin: object | None = None) -> PluginInfo | None:
    """The record of a plugin; one registered directly (a test, an application) gets one made here."""
    info = _state.infos.get(plugin_name)
    if info is None and plugin is not None:
        info = PluginInfo(name=plugin_name, module=getattr(plugin, "__name__", type(plugin).__name__),
                          hooks=hook_names(plugin))
        _state.infos[plugin_name] = info
    return info


def not_loaded_reason(distribution: str | None) -> str | None:
    """Why the plugin of `distribution` is installed but not loaded (IMG2IMG_LOAD_PLUGINS), if it is."""
    if distribution is None:
        return None
    wanted = normalise(distribution)
    for ep_name, dist in _state.skipped.items():
        if normalise(dist) == wanted or normalise(ep_name) == wanted:
            return f"installed but not loaded ({LOAD_ENV}={os.environ.get(LOAD_ENV, '')!r})"
    return None


def not_loaded() -> dict[str, str]:
    """Installed plugins that IMG2IMG_LOAD_PLUGINS leaves out: entry-point name -> distribution."""
    get_plugin_manager()
    return dict(_state.skipped)


def unknown_load_names() -> list[str]:
    """Names in IMG2IMG_LOAD_PLUGINS that match no installed plugin (typos)."""
    get_plugin_manager()
    return list(_state.unknown_names)


def unknown_names_warning() -> str | None:
    """The warning line for names in IMG2IMG_LOAD_PLUGINS that match no installed plugin, or None."""
    unknown = unknown_load_names()
    if not unknown:
        return None
    installed = sorted({f"{dist} ({ep})" if normalise(dist) != normalise(ep) else dist
                        for ep, dist in _state.skipped.items()}
                       | {f"{i.distribution} ({i.name})" if i.distribution and normalise(i.distribution) != normalise(i.name)
                          else i.distribution or i.name for i in _state.infos.values() if not i.builtin})
    return (f"{LOAD_ENV} names no installed plugin: {', '.join(unknown)}; installed plugins (distribution and entry "
            f"point): {', '.join(installed) or 'none'}")


_warned = False


def warn_unknown_names_once(emit) -> None:
    """Call `emit(line)` with `unknown_names_warning()` the first time there is one in this process."""
    global _warned
    line = unknown_names_warning()
    if line is not None and not _warned:
        _warned = True
        emit(line)


def register_plugin(plugin: object, name: str) -> None:
    """Register a plugin object or module directly (tests, applications embedding img2img)."""
    pm = get_plugin_manager()
    info = PluginInfo(name=name, module=getattr(plugin, "__name__", type(plugin).__name__))
    _state.infos[name] = info
    if not _register(pm, plugin, info):
        raise PluginError(f"plugin '{name}': {'; '.join(info.errors)}")
    _state.generation += 1


def unregister_plugin(plugin_or_name: object) -> None:
    """Remove a plugin registered with `register_plugin` (or any registered plugin) and forget it."""
    pm = get_plugin_manager()
    plugin = pm.get_plugin(plugin_or_name) if isinstance(plugin_or_name, str) else plugin_or_name
    name = pm.get_name(plugin) if plugin is not None else plugin_or_name
    if plugin is not None and pm.is_registered(plugin):
        pm.unregister(plugin)
    _state.infos.pop(name, None)
    _state.generation += 1


def reset() -> None:
    """Forget the plugin manager (tests, or after installing a plugin in-process); reloaded on next use."""
    global _warned
    _warned = False
    _partial.clear()
    _state.pm = None
    _state.infos.clear()
    _state.skipped.clear()
    _state.generation += 1


def lazy_exports(package: str, where: dict[str, str]):
    """A plugin package's module ``__getattr__``: each name in `where` is imported from its submodule
    (``where[name]``) on first use, so that listing the plugin's pipelines or commands imports no torch."""
    def __getattr__(name: str):
        if name in where:
            return getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__

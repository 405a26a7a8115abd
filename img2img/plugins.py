"""The plugin manager: built-in plugins first, then entry points of group ``img2img``, each isolated.

A plugin that fails to import, implements an unknown hook or clashes with another is recorded in
`plugin_infos()` and shown by ``img2img plugins``; it never breaks the command line. Set
``IMG2IMG_STRICT_PLUGINS=1`` to raise instead, and ``IMG2IMG_LOAD_PLUGINS=dist-a,dist-b`` to load
only those distributions (an empty value loads none).
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import re
from dataclasses import dataclass, field

import pluggy

from img2img import hookspecs
from img2img.errors import PluginError

ENTRY_POINT_GROUP = "img2img"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "img2img.default_plugins.resnet",
    "img2img.default_plugins.unet",
    "img2img.default_plugins.patchgan",
    "img2img.default_plugins.losses",
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


_pm: pluggy.PluginManager | None = None
_infos: dict[str, PluginInfo] = {}


def strict() -> bool:
    return os.environ.get("IMG2IMG_STRICT_PLUGINS", "") not in ("", "0", "false", "no")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _allowed_distributions() -> set[str] | None:
    value = os.environ.get("IMG2IMG_LOAD_PLUGINS")
    if value is None:
        return None
    return {_normalise(v) for v in value.split(",") if v.strip()}


def _hook_names(plugin: object) -> list[str]:
    return sorted(
        n for n in dir(plugin) if not n.startswith("_") and hasattr(getattr(plugin, n, None), "img2img_impl")
    )


def _register(pm: pluggy.PluginManager, plugin: object, info: PluginInfo) -> bool:
    """Register one plugin; a hook the contract does not know makes the plugin invalid."""
    info.hooks = _hook_names(plugin)
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


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    allowed = _allowed_distributions()
    seen: dict[str, PluginInfo] = {}
    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
        dist = ep.dist.name if ep.dist is not None else None
        version = ep.dist.version if ep.dist is not None else None
        if allowed is not None and _normalise(dist or ep.name) not in allowed:
            continue
        info = PluginInfo(name=ep.name, module=ep.value, distribution=dist, version=version)
        if ep.name in _infos and _infos[ep.name].builtin:
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
        key = ep.name if ep.name not in _infos else f"{ep.name} ({dist})"
        _infos[key] = info


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loaded on first use."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager("img2img")
        pm.add_hookspecs(hookspecs)
        _infos.clear()
        for module_name in DEFAULT_PLUGINS:
            module = importlib.import_module(module_name)
            info = PluginInfo(name=module_name, module=module_name, builtin=True,
                              distribution="img2img-pipeline", version=_own_version())
            if not _register(pm, module, info):
                raise PluginError(f"built-in plugin {module_name}: {'; '.join(info.errors)}")
            _infos[module_name] = info
        _pm = pm
        _load_entry_points(pm)
    return _pm


def plugin_infos() -> list[PluginInfo]:
    """Every plugin seen, loaded or not, built-ins first; components filled in from the registry."""
    from img2img.registry import get_registry

    pm = get_plugin_manager()
    for name, plugin in pm.list_name_plugin():
        if name not in _infos:  # registered directly, e.g. by a test or an application
            _infos[name] = PluginInfo(name=name, module=getattr(plugin, "__name__", type(plugin).__name__),
                                      hooks=_hook_names(plugin))
    get_registry()  # fills components and registration problems
    return list(_infos.values())


def info_for(plugin_name: str) -> PluginInfo | None:
    return _infos.get(plugin_name)


def _own_version() -> str:
    from img2img._version import __version__

    return __version__


def reset() -> None:
    """Forget the plugin manager and registry (tests, or after installing a plugin in-process)."""
    global _pm
    _pm = None
    _infos.clear()
    from img2img import registry

    registry._cache.clear()

"""Built-in pipelines: YAML files that the core and plugins ship, found by name.

They come from the ``register_pipelines(register)`` hook (see `img2img.hookspecs`), built-ins first.
`resolve_pipeline` turns what the user typed into the file to read and the folder its relative data
paths resolve against: a path that exists always wins and resolves against its own folder, unless it
*is* a built-in file (through the checkout's ``pipelines`` link, say), which like a name resolves
against the current folder, because the package's folder is not the user's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from img2img import atomic
from img2img.errors import Img2ImgError, did_you_mean

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
PROBLEM = "pipelines:"  # prefix of the problems recorded on a plugin's PluginInfo


@dataclass(frozen=True)
class BuiltinPipeline:
    """One registered pipeline and the plugin that shipped it."""

    name: str
    path: Path
    plugin: str
    distribution: str | None
    version: str | None

    def text(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise Img2ImgError(f"the built-in pipeline '{self.name}' ({self.path}, from {self.source}) cannot be "
                               f"read: {exc.strerror or exc}; reinstall {self.distribution or self.plugin}") from None

    def raw(self) -> Any:
        from img2img.config.yaml_io import read_yaml

        return read_yaml(self.path)[0]

    @property
    def task(self) -> str:
        try:
            raw = self.raw()
        except Img2ImgError:
            return "?"
        return str(raw.get("task", "?")) if isinstance(raw, dict) else "?"

    @property
    def source(self) -> str:
        dist = self.distribution or self.plugin
        return f"{dist} {self.version}" if self.version else dist

    def as_dict(self) -> dict:
        return {"name": self.name, "task": self.task, "distribution": self.distribution, "version": self.version,
                "plugin": self.plugin, "path": str(self.path)}


@dataclass
class Catalogue:
    """Every pipeline name, and the names two plugins both claimed (those resolve to neither)."""

    pipelines: dict[str, BuiltinPipeline] = field(default_factory=dict)
    clashes: dict[str, list[BuiltinPipeline]] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (plugin, message)


_cache: dict[tuple, tuple[Any, Catalogue]] = {}


def catalogue() -> Catalogue:
    """The built-in pipelines of the plugins registered now (rebuilt when the plugin set or manager changes)."""
    from img2img import plugins

    pm, infos = plugins.plugins_for("register_pipelines")  # no network plugin is imported to list pipelines
    key = (id(pm), plugins.generation(), *((name, id(p)) for name, p in pm.list_name_plugin()))
    if key not in _cache:
        _cache.clear()
        _cache[key] = (pm, _collect(pm, infos))  # the manager is kept so that its id is not reused while cached
    return _cache[key][1]


def _collect(pm, infos: dict) -> Catalogue:
    from img2img import plugins

    found = Catalogue()
    if plugins.loaded():
        plugins.plugin_infos()  # records plugins registered directly
    for info in infos.values():
        info.errors[:] = [e for e in info.errors if not e.startswith(PROBLEM)]
    for impl in pm.hook.register_pipelines.get_hookimpls():  # registration order: built-ins first
        info = infos.get(impl.plugin_name) or plugins.info_for(impl.plugin_name, impl.plugin)
        builtin = info.builtin
        dist, version = info.distribution, info.version

        def problem(message: str, _info=info, _name=impl.plugin_name) -> None:
            found.problems.append((_name, message))
            _info.errors.append(f"{PROBLEM} {message}")
            if plugins.strict():
                raise Img2ImgError(f"plugin '{_name}': {message}")

        def register(name: str, path: Any, *, _plugin=impl.plugin_name, _dist=dist, _version=version,
                     _builtin=builtin, _problem=problem) -> None:
            if not isinstance(name, str) or not NAME.match(name):
                return _problem(f"pipeline name {name!r} must be letters, digits, '_', '.' or '-'")
            try:
                file = Path(path)
            except TypeError:
                return _problem(f"pipeline '{name}': {path!r} is not a path")
            if not file.is_file():
                return _problem(f"pipeline '{name}': no such file {file}")
            entry = BuiltinPipeline(name=name, path=file.resolve(), plugin=_plugin,
                                    distribution=_dist if not _builtin else "img2img-pipeline", version=_version)
            if name in found.clashes:
                found.clashes[name].append(entry)
                return _problem(f"pipeline '{name}' is also registered by "
                                f"{', '.join(e.source for e in found.clashes[name][:-1])}; neither is used")
            existing = found.pipelines.get(name)
            if existing is None:
                found.pipelines[name] = entry
            elif existing.distribution == "img2img-pipeline":
                _problem(f"pipeline '{name}' is built into img2img; not replaced (rename the plugin's)")
            else:  # two plugins: report both, choose neither
                del found.pipelines[name]
                found.clashes[name] = [existing, entry]
                _problem(f"pipeline '{name}' is also registered by {existing.source}; neither is used")

        try:
            impl.function(register=register)
        except Img2ImgError:
            raise
        except Exception as exc:  # a broken plugin must not break the command line
            if plugins.strict():
                raise
            problem(f"register_pipelines raised {type(exc).__name__}: {exc}")
    return found


def builtin_pipelines() -> dict[str, BuiltinPipeline]:
    return dict(sorted(catalogue().pipelines.items()))


def find_builtin(name: str) -> BuiltinPipeline:
    """The pipeline registered as `name`; `Img2ImgError` with a "did you mean" otherwise."""
    found = catalogue()
    if name in found.pipelines:
        return found.pipelines[name]
    if name in found.clashes:
        where = "; ".join(f"{e.source}: {e.path}" for e in found.clashes[name])
        raise Img2ImgError(f"the pipeline name '{name}' is registered by more than one plugin ({where}); give the "
                           "file you mean as a path, or uninstall one of them")
    known = sorted(found.pipelines)
    hint = did_you_mean(name, known)
    hint = f"{hint} " if hint else ""
    raise Img2ImgError(f"no pipeline file or built-in pipeline named '{name}'; {hint}built-in: "
                       f"{', '.join(known) or 'none'} (see `img2img pipelines`)")


def builtin_for_path(path: Path) -> BuiltinPipeline | None:
    """The built-in pipeline that `path` is (compared by real path, so links count), if any."""
    real = Path(path).resolve()
    for entry in catalogue().pipelines.values():
        if entry.path == real:
            return entry
    for entries in catalogue().clashes.values():
        for entry in entries:
            if entry.path == real:
                return entry
    return None


def resolve_pipeline(given: str | Path) -> tuple[Path, Path]:
    """(the YAML file to read, the folder its relative data paths resolve against) for a path or a name."""
    path = Path(given)
    if path.is_dir():
        raise Img2ImgError(f"{path} is a folder; give a pipeline YAML file or a built-in pipeline name "
                           "(see `img2img pipelines`)")
    if path.exists():
        return path, Path.cwd() if builtin_for_path(path) is not None else path.resolve().parent
    text = str(given)
    if "/" in text or "\\" in text or path.suffix.lower() in (".yaml", ".yml"):
        named = f" (the built-in pipeline is `{path.stem}`)" if path.stem in catalogue().pipelines else ""
        raise Img2ImgError(f"no such pipeline file: {path}{named}; see `img2img pipelines` for the built-in ones")
    return find_builtin(text).path, Path.cwd()


# ---------------------------------------------------------------------------------------------
# A copy to edit (`img2img pipelines init`)


def _data_paths(raw: Any) -> list[tuple[str, str]]:
    """(key, value) of every relative-or-absolute data path the pipeline names (a, b, pairs, test_*, val.*)."""
    from img2img.config.schema import PATH_FIELDS

    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, dict):
        return []
    found = [(k, data[k]) for k in PATH_FIELDS if isinstance(data.get(k), str)]
    val = data.get("val")
    if isinstance(val, dict):
        found += [(k, val[k]) for k in ("a", "b", "pairs") if isinstance(val.get(k), str)]
    return found


def _scalar(value: str) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10**6).splitlines()[0]


_RESOLVE_NOTE = re.compile(r"^# Data paths resolve against the current folder.*\n(#[^\n]*copy's folder\.\n)?",
                           re.MULTILINE)
_GET_DATA = re.compile(r"^# Get the data with:.*\n", re.MULTILINE)


def _copy_header(text: str, name: str, *, data: str | Path | None, common: str, changes: dict[str, str]) -> str:
    """The built-in's leading comments, made true of the copy: where its paths resolve, where its data is."""
    lines = text.splitlines(keepends=True)
    n = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    header, body = "".join(lines[:n]), "".join(lines[n:])
    header = _RESOLVE_NOTE.sub("", header)
    if data is not None:
        header = _GET_DATA.sub("", header)
        if common:  # e.g. "generated on first use into ./data/demo-shapes"
            header = re.sub(rf"(\./)?{re.escape(common)}\b", lambda m: str(data), header)
    else:
        for old, new in changes.items():
            header = re.sub(rf"(\./)?{re.escape(old)}\b", lambda m, v=new: v, header)
    note = (f"# A copy of the built-in pipeline '{name}' (`img2img pipelines init`): its relative data paths\n"
            "# resolve against this file's folder.\n")
    if data is not None:
        note += f"# Data folder: {data}\n"
    return note + header + body


def init_pipeline(name: str, out: Path, *, data: str | Path | None = None, overwrite: bool = False) -> dict[str, str]:
    """Write the built-in pipeline `name` to `out` for editing; returns {old data path: new data path}.

    The copy's relative data paths resolve against its own folder, so they are rewritten to point where
    the built-in's pointed from the current folder; `data` replaces the folder that holds them all
    (``data/horse2zebra`` in horse2zebra) with another, e.g. where the user keeps the images.
    """
    import os
    import posixpath

    entry = find_builtin(name)
    out = Path(out)
    if out.is_dir():
        raise Img2ImgError(f"{out} is a folder; give the file to write, e.g. {out / (name + '.yaml')}")
    if out.exists() and not overwrite:
        raise Img2ImgError(f"{out} exists; choose another file name or add --overwrite to replace it")
    text = entry.text()
    paths = _data_paths(entry.raw())
    values = sorted({v for _, v in paths})
    if data is not None and not values:
        raise Img2ImgError(f"the pipeline '{name}' names no data folders, so --data has nothing to replace")
    common = ""
    if data is not None:
        common = posixpath.commonpath(values) if len(values) > 1 else posixpath.dirname(values[0])
        if common in values:  # one folder named twice: replace its parent
            common = posixpath.dirname(common)
    target = out.resolve().parent
    changes: dict[str, str] = {}
    for value in values:
        new = value
        if data is not None:
            rest = posixpath.relpath(value, common) if common else value
            new = str(Path(data) / rest) if rest != "." else str(data)
        new_path = Path(new).expanduser()
        if not new_path.is_absolute():  # written as the user sees it from here; the copy reads it from its folder
            new = Path(os.path.relpath(Path.cwd() / new_path, target)).as_posix()
        if new != value:
            changes[value] = new
    for key, value in paths:
        if value in changes:
            pattern = re.compile(rf"^(\s*{key}:[ \t]*){re.escape(value)}([ \t]*(#.*)?)$", re.MULTILINE)
            text = pattern.sub(lambda m, v=changes[value]: m.group(1) + _scalar(v) + m.group(2), text)
    text = _copy_header(text, name, data=data, common=common, changes=changes)
    copied = _data_paths(__import__("yaml").safe_load(text))
    if sorted({v for _, v in copied}) != sorted({changes.get(v, v) for v in values}):
        raise Img2ImgError(f"could not rewrite the data paths of '{name}' ({entry.path}); copy it with "
                           f"`img2img pipelines show {name} > {out}` and edit them by hand")
    atomic.write_text(out, text)
    return changes

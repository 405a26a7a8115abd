"""Reading pipeline YAML safely, with line numbers, and ``--set key=value`` overrides.

Only ``yaml.SafeLoader`` is used; the node tree is checked before any value is built.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from img2img.errors import PipelineError

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


def apply_overrides(raw: dict, overrides: list[str], touched: set[str] | None = None) -> dict:
    """Apply ``--set key=value`` overrides to `raw` in place; `touched` collects the dotted paths they
    set or created, so that problems there are reported as ``(--set)`` rather than at a line of the file."""
    touched = set() if touched is None else touched
    for text in overrides:
        keys, value = parse_override(text)
        touched.add(".".join(keys))
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
                touched.add(".".join(keys[: i + 1]))
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


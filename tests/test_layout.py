"""The package's shape: imports run one way (no cycles), no module does several jobs in 400+ lines, every
imported distribution is declared, old import paths keep working, outputs get the usual permissions."""
from __future__ import annotations

import ast
import importlib
import os
import stat
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "img2img"
MAX_LINES = 420


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every img2img module `name` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def test_no_import_cycles():
    mods = modules()
    graph = {name: imports_of(name, path, set(mods)) for name, path in mods.items()}
    # a package's __init__ re-exporting its own modules is not a dependency of those modules on it
    for name in graph:
        graph[name] = {t for t in graph[name] if not (t != name and name.startswith(t + ".") and t in mods)}
    assert "img2img" not in set().union(*(graph[n] for n in graph if n != "img2img")), \
        "internal modules import from the package root (import hookimpl/__version__ from their modules)"
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_over_the_limit():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_imported_distribution_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [dep for name, deps in project["optional-dependencies"].items() if name != "dev" for dep in deps]
    declared = {dep.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower().replace("_", "-")
                for dep in [*project["dependencies"], *extras]}  # an optional extra (openvino) declares it too
    provided_by = {"yaml": "pyyaml", "PIL": "pillow", "cv2": "opencv-python-headless", "onnx_ir": "onnx-ir",
                   "albumentations": "albumentations", "starlette": "starlette", "uvicorn": "uvicorn",
                   "multipart": "python-multipart", "python_multipart": "python-multipart", "jinja2": "jinja2",
                   "markupsafe": "markupsafe"}
    stdlib = set(sys.stdlib_module_names)
    missing = set()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                tops = [(node.module or "").split(".")[0]]
            else:
                continue
            for top in tops:
                if top in stdlib or top in ("img2img", "__future__", ""):
                    continue
                dist = provided_by.get(top, top.lower().replace("_", "-"))
                if dist not in declared and top not in ("tensorboard", "pytest"):  # optional, guarded imports
                    missing.add(f"{top} ({name})")
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"


@pytest.mark.parametrize("old, new", [
    ("img2img.train", "img2img.engine.train"), ("img2img.checkpoint", "img2img.engine.checkpoint"),
    ("img2img.translate", "img2img.inference.translator"), ("img2img.export", "img2img.inference.export"),
    ("img2img.tiling", "img2img.inference.tiling"), ("img2img.metrics", "img2img.evaluation.metrics"),
    ("img2img.report", "img2img.evaluation.report"), ("img2img.transforms", "img2img.data.transforms"),
    ("img2img.synth", "img2img.datasets.synth"), ("img2img.validation", "img2img.engine.validation"),
])
def test_old_module_paths_are_the_new_modules(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_public_names_plugins_import():
    import img2img
    from img2img.config import DiscriminatorSpec, GeneratorSpec, LossSpec, PipelineBase, StrictModel  # noqa: F401
    from img2img.tasks import ImagePool, Task, set_requires_grad, unwrap  # noqa: F401

    assert callable(img2img.hookimpl) and img2img.Translator.__name__ == "Translator"
    assert issubclass(img2img.AdversarialLoss, object)
    from img2img.checkpoint import load_checkpoint, load_generator  # noqa: F401  (img2img 0.1 names)


def test_outputs_get_the_permissions_a_new_file_gets(translate_run, tmp_path):
    from typer.testing import CliRunner

    from img2img.cli import app
    from img2img.testing import write_images

    write_images(tmp_path / "in", 1, 32)
    old = os.umask(0o022)
    try:
        runner = CliRunner()
        assert runner.invoke(app, ["translate", str(tmp_path / "in"), "--model", str(translate_run), "--out",
                                   str(tmp_path / "out")]).exit_code == 0
        assert runner.invoke(app, ["export", str(translate_run), "--out", str(tmp_path / "g.onnx")]).exit_code == 0
        assert runner.invoke(app, ["export", str(translate_run), "--format", "safetensors", "--out",
                                   str(tmp_path / "g.safetensors")]).exit_code == 0
    finally:
        os.umask(old)
    for path in (tmp_path / "out" / "img000.png", tmp_path / "g.onnx", tmp_path / "g.safetensors",
                 tmp_path / "g.safetensors.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path

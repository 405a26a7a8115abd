"""A wheel works anywhere: the wheels of the core and of plugins/*, installed into a new venv, run the demo
from an empty folder (pipelines by name, data synthesised under ./data, translate, export).

The venv sees this interpreter's site-packages through a .pth file, so torch is not installed again;
the wheels themselves go in with ``pip install --no-deps`` and the test checks that their files, not
this source tree, are what runs. CI also runs the same commands in a truly fresh venv that installs
every dependency (.ci/wheels).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "runs", "build", "dist", ".pytest_cache", ".hypothesis", ".ruff_cache", "__pycache__"}


def _pip_can_build() -> str | None:
    """Why `pip wheel` cannot run here, or None."""
    if importlib.util.find_spec("pip") is None:
        return "pip is not installed in this interpreter"
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed (pip wheel --no-build-isolation needs it)"
    if importlib.util.find_spec("venv") is None:
        return "the venv module is missing"
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"pip does not run: {probe.stderr.strip()[:200]}"
    return None


pytestmark = pytest.mark.skipif(_pip_can_build() is not None, reason=str(_pip_can_build()))


def _copy_sources(dest: Path) -> Path:
    """The repository's files without build outputs, venvs, runs or the demo data (builds write into the tree)."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n in SKIP_DIRS or n.endswith(".egg-info")}
        if Path(folder).resolve() == ROOT:
            skipped |= {"data"} & set(names)
        return skipped

    shutil.copytree(ROOT, dest, symlinks=True, ignore=ignore)
    return dest


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "IMG2IMG_", "VIRTUAL_ENV"))}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(args: list[str], cwd: Path, timeout: int = 600) -> str:
    result = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed ({result.returncode}):\n{output[-4000:]}"
    return " ".join(output.split())


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> tuple[Path, Path]:
    """(the venv's bin folder, its site-packages) with the core and plugin wheels installed from wheel files."""
    root = tmp_path_factory.mktemp("wheels")
    sources = _copy_sources(root / "src")
    dist = root / "dist"
    projects = [sources, *sorted(p.parent for p in (sources / "plugins").glob("*/pyproject.toml"))]
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
          *map(str, projects)], cwd=root)
    wheels = sorted(dist.glob("*.whl"))
    assert {w.name.split("-")[0] for w in wheels} == {"img2img_pipeline", "img2img_cut", "img2img_pix2pixhd",
                                                       "img2img_stargan", "img2img_template"}
    env_dir = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=root)
    python = env_dir / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies (torch, onnx, ...) come from this interpreter's site-packages; the .pth lines add the
    # folders only (no .pth inside them runs), so an editable install of img2img here stays invisible there
    dev_sites = [p for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (purelib / "dev-site-packages.pth").write_text("\n".join(dict.fromkeys(dev_sites)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          *map(str, wheels)], cwd=root)
    return env_dir / "bin", purelib


def test_the_installed_wheel_is_what_runs(venv):
    bin_dir, purelib = venv
    empty = bin_dir.parent.parent / "where"
    empty.mkdir(exist_ok=True)
    out = _run([str(bin_dir / "python"), "-c", ("import img2img, img2img_cut; print(img2img.__file__); "
                                                "print(img2img_cut.__file__)")], cwd=empty)
    files = out.split()
    assert all(Path(f).is_relative_to(purelib) for f in files), files
    assert not any(str(ROOT) in f for f in files)


def test_the_wheel_ships_the_documentation(venv, tmp_path):
    """Messages and help say `img2img docs NAME`; a wheel user has no checkout, so the wheel carries them."""
    bin_dir, _ = venv
    listed = _run([str(bin_dir / "img2img"), "docs"], cwd=tmp_path)
    assert "troubleshooting When things go wrong" in listed and "import Importing pretrained generators" in listed
    text = _run([str(bin_dir / "img2img"), "docs", "troubleshooting"], cwd=tmp_path)
    assert text.startswith("# When things go wrong") and str(ROOT) not in _run(
        [str(bin_dir / "python"), "-c", "from img2img.docs import docs_folder; print(docs_folder())"], cwd=tmp_path)


def test_demo_from_an_empty_folder(venv, tmp_path):
    bin_dir, _ = venv
    img2img = str(bin_dir / "img2img")
    work = tmp_path / "empty"
    work.mkdir()
    listed = _run([img2img, "pipelines"], cwd=work)
    for name, task, dist in (("demo-cyclegan", "cyclegan", "img2img-pipeline"), ("horse2zebra", "cyclegan",
                             "img2img-pipeline"), ("horse2zebra-cut", "cut", "img2img-cut"),
                             ("demo-cut", "cut", "img2img-cut")):
        assert f"{name} {task} {dist}" in listed
    assert "task: cut" in _run([img2img, "pipelines", "show", "horse2zebra-cut"], cwd=work)
    _run([img2img, "train", "demo-cyclegan", "--set", "train.max_steps=4", "--set", "model.generator.ngf=8",
          "--out", "r"], cwd=work)
    assert (work / "r" / "checkpoints" / "last.pt").is_file()
    test_a = work / "data" / "demo-shapes" / "testA"  # synthesised under ./data, as documented
    assert any(test_a.iterdir())
    _run([img2img, "translate", str(test_a), "--model", "r", "--out", "t"], cwd=work)
    assert sorted(p.name for p in (work / "t").iterdir()) == sorted(p.name for p in test_a.iterdir())
    assert "max abs diff" in _run([img2img, "export", "r", "--out", "g.onnx"], cwd=work)
    assert (work / "g.onnx").is_file()
    _run([img2img, "pipelines", "init", "demo-pix2pix", "mine.yaml", "--data", "pairs-here"], cwd=work)
    assert "ok" in _run([img2img, "validate", "mine.yaml"], cwd=work)

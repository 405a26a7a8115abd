"""The first seconds of the command line: `--help`, `--version` and `pipelines` import no torch, and
plugin commands are still listed and run (checked in real processes, with `python -X importtime`)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None, importtime: bool = False) -> subprocess.CompletedProcess:
    flags = ["-X", "importtime"] if importtime else []
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, *flags, "-m", "img2img", *args], env=environment,
                          capture_output=True, text=True, timeout=300)


def imported(stderr: str) -> set[str]:
    """The module names `python -X importtime` reports."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["pipelines"], ["pipelines", "--json"]])
def test_listing_commands_and_pipelines_imports_no_torch(args):
    done = run_cli(*args, importtime=True)
    assert done.returncode == 0, done.stderr[-3000:]
    modules = imported(done.stderr)
    assert "img2img" in modules
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}, "torch was imported"
    if args == ["pipelines"]:
        assert "demo-cut" in done.stdout and "demo-pix2pix" in done.stdout  # a plugin's pipelines included
    if args == ["--help"]:
        assert "translate" in done.stdout and "pipelines" in done.stdout


def fake_site(tmp_path: Path, dist: str, module: str, source: str) -> Path:
    """A folder holding `module` and a .dist-info with an entry point in group img2img, for PYTHONPATH."""
    root = tmp_path / f"site-{dist}"
    root.mkdir()
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[img2img]\n{module} = {module}\n")
    return root


COMMAND_PLUGIN = """
import img2img


@img2img.hookimpl
def register_commands(app):
    @app.command("hello-plugin")
    def hello():
        '''Say hello from a plugin.'''
        print("hello from a plugin")
"""

HEAVY_PLUGIN = """
import os
import pathlib

import torch  # a network plugin: listing commands or pipelines must not import it
import img2img

pathlib.Path(os.environ["HEAVY_IMPORTED"]).touch()


@img2img.hookimpl
def register_generators(register):
    register("heavy", lambda in_channels, out_channels: torch.nn.Identity())
"""


def test_plugin_commands_are_listed_and_run_and_network_plugins_stay_unimported(tmp_path):
    sites = [fake_site(tmp_path, "img2img-hello", "img2img_hello", COMMAND_PLUGIN),
             fake_site(tmp_path, "img2img-heavy", "img2img_heavy", HEAVY_PLUGIN)]
    mark = tmp_path / "heavy-imported"
    env = {"PYTHONPATH": os.pathsep.join([*map(str, sites), str(ROOT)]), "HEAVY_IMPORTED": str(mark)}
    for args in (["--help"], ["pipelines"]):
        listed = run_cli(*args, env=env, importtime=True)
        assert listed.returncode == 0, listed.stderr[-3000:]
        assert "torch" not in imported(listed.stderr) and not mark.exists()
        if args == ["--help"]:
            assert "hello-plugin" in listed.stdout and "Say hello from a plugin." in listed.stdout
    ran = run_cli("hello-plugin", env=env)
    assert ran.returncode == 0 and "hello from a plugin" in ran.stdout, ran.stderr
    assert "img2img_heavy" in run_cli("plugins", env=env).stdout  # every plugin is still loaded where it is used


def test_strict_plugins_and_a_broken_plugin_still_give_the_version(tmp_path):
    site = fake_site(tmp_path, "img2img-broken", "img2img_broken", "raise ImportError('nope')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "IMG2IMG_STRICT_PLUGINS": "1"}
    done = run_cli("--version", env=env)
    assert done.returncode == 0 and done.stdout.startswith("img2img "), done.stderr  # bug reports need it
    failing = run_cli("components", env=env)
    assert failing.returncode == 1 and "nope" in failing.stderr and "Traceback" not in failing.stderr


def test_a_plugin_whose_register_commands_raises_is_listed_with_the_error(tmp_path):
    import json

    source = "import img2img\n\n@img2img.hookimpl\ndef register_commands(app):\n    raise RuntimeError('no commands today')\n"
    site = fake_site(tmp_path, "img2img-sulky", "img2img_sulky", source)
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    helped = run_cli("--help", env=env)
    assert helped.returncode == 0 and "translate" in helped.stdout  # the command line keeps working
    listed = run_cli("plugins", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    sulky = next(p for p in json.loads(listed.stdout) if p["name"] == "img2img_sulky")
    assert "register_commands raised RuntimeError: no commands today" in sulky["error"]

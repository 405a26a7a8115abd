"""Shared fixtures: throwaway plugins, fake installed distributions, tiny image folders."""
from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from img2img.testing import write_images  # noqa: F401  (tests import it from here too)

# Tests run in parallel workers on a small machine: one thread each, also in the processes they start
# (two OpenMP threads per process on two busy cores spin-wait each other into 10x slowdowns).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture
def plugin_manager():
    """The process plugin manager; throwaway plugins registered through it are removed afterwards."""
    from img2img import plugins

    pm = plugins.get_plugin_manager()
    before = {name for name, _ in pm.list_name_plugin()}
    yield pm
    for name, plugin in list(pm.list_name_plugin()):
        if name not in before:
            plugins.unregister_plugin(plugin)


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """Install a distribution on the fly: a module plus a .dist-info with an entry point in group img2img."""
    from img2img import plugins

    created: list[str] = []

    def make(dist: str, module: str, source: str, *, entry_name: str | None = None, version: str = "1.0") -> Path:
        root = tmp_path / f"site-{dist}"
        root.mkdir()
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[img2img]\n{entry_name or module} = {module}\n")
        monkeypatch.syspath_prepend(str(root))
        created.append(module)
        plugins.reset()
        return root

    yield make
    for module in created:
        sys.modules.pop(module, None)
    monkeypatch.undo()
    plugins.reset()


TINY_CYCLEGAN = """\
task: cyclegan
name: tiny
seed: 0
data:
  a: {a}
  b: {b}
  num_workers: 0
  transforms:
    - RandomCrop: {{height: 32, width: 32}}
    - HorizontalFlip: {{p: 0.5}}
model:
  generator: {{name: resnet_6blocks, ngf: 8}}
  discriminator: {{name: patchgan, ndf: 8, n_layers: 2}}
train:
  max_steps: 4
  log_every: 1
  sample_every: 2
  checkpoint_every: 2
"""

TINY_PIX2PIX = """\
task: pix2pix
name: tiny-p2p
seed: 0
data:
  a: {a}
  b: {b}
  num_workers: 0
  transforms:
    - RandomCrop: {{height: 32, width: 32}}
    - HorizontalFlip: {{p: 0.5}}
model:
  generator: {{name: unet, num_downs: 5, ngf: 8}}
  discriminator: {{name: patchgan, ndf: 8, n_layers: 2, norm: batch}}
train:
  max_steps: 4
  log_every: 1
  sample_every: 2
  checkpoint_every: 2
"""


@pytest.fixture
def tiny_cyclegan(tmp_path) -> Path:
    """A cyclegan pipeline file over two folders of 6 tinted 40px images."""
    write_images(tmp_path / "A", 6, 40, seed=1, colour=(220, 120, 60))
    write_images(tmp_path / "B", 6, 40, seed=2, colour=(40, 90, 200))
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CYCLEGAN.format(a=tmp_path / "A", b=tmp_path / "B"))
    return path


@pytest.fixture
def tiny_pix2pix(tmp_path) -> Path:
    """A pix2pix pipeline over 6 pairs matched by name (target = inverted input)."""
    inputs = write_images(tmp_path / "inA", 6, 40, seed=3)
    (tmp_path / "inB").mkdir()
    for p in inputs:
        Image.fromarray(255 - np.asarray(Image.open(p))).save(tmp_path / "inB" / p.name)
    path = tmp_path / "tiny-p2p.yaml"
    path.write_text(TINY_PIX2PIX.format(a=tmp_path / "inA", b=tmp_path / "inB"))
    return path


TRANSLATE_PIPELINE = """\
task: cyclegan
name: tiny-translate
seed: 0
data:
  a: {a}
  b: {b}
  num_workers: 0
model:
  generator: {{name: resnet_6blocks, ngf: 4}}
  discriminator: {{name: patchgan, ndf: 8, n_layers: 2}}
train:
  max_steps: 2
  batch_size: 2
  sample_every: 2
  checkpoint_every: 2
"""


@pytest.fixture(scope="session")
def translate_run(tmp_path_factory) -> Path:
    """A tiny cyclegan run (resnet_6blocks, ngf 4, 2 steps on 32 px images), trained once per session."""
    import io

    from rich.console import Console

    from img2img.engine.train import train

    root = tmp_path_factory.mktemp("translate-run")
    write_images(root / "a", 8, 32, seed=11, colour=(210, 110, 50))
    write_images(root / "b", 8, 32, seed=12, colour=(50, 100, 210))
    pipeline = root / "pipeline.yaml"
    pipeline.write_text(TRANSLATE_PIPELINE.format(a=root / "a", b=root / "b"))
    train(pipeline, out=root / "run", console=Console(file=io.StringIO()))
    return root / "run"


@pytest.fixture(scope="session")
def translate_onnx(translate_run, tmp_path_factory) -> Path:
    """`translate_run`'s a2b generator exported to ONNX (with the parity check), once per session."""
    import io

    from rich.console import Console

    from img2img.inference.export import export

    return export(translate_run, tmp_path_factory.mktemp("onnx") / "g.onnx", console=Console(file=io.StringIO()))

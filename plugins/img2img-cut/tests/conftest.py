"""Fixtures for the img2img-cut tests: tiny image folders and a tiny CUT pipeline.

The tests use the installed distribution (``pip install -e plugins/img2img-cut``), found through
its entry point exactly as a user's img2img would find it.
"""
from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

import pytest
import torch

from img2img.testing import write_images

torch.set_num_threads(1)  # tests run in parallel workers on a small machine


@pytest.fixture(autouse=True, scope="session")
def _installed() -> None:
    try:
        md.distribution("img2img-cut")
    except md.PackageNotFoundError:
        pytest.fail("img2img-cut is not installed; run: pip install -e plugins/img2img-cut", pytrace=False)


TINY_CUT = """\
task: cut
name: tiny-cut
mode: {mode}
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
nce:
  num_patches: 64
  head_units: 32
train:
  batch_size: 2
  max_steps: 4
  log_every: 1
  sample_every: 2
  checkpoint_every: 2
"""


def _make_cut_pipeline(root: Path, mode: str = "cut") -> Path:
    """A CUT pipeline over two folders of 6 tinted 36 px images, written under `root`."""
    if not (root / "A").exists():
        write_images(root / "A", 6, 36, seed=1, colour=(220, 120, 60))
        write_images(root / "B", 6, 36, seed=2, colour=(40, 90, 200))
    path = root / f"tiny-{mode}.yaml"
    path.write_text(TINY_CUT.format(mode=mode, a=root / "A", b=root / "B"))
    return path


@pytest.fixture(scope="session")
def make_cut_pipeline():
    """``make_cut_pipeline(root, mode="cut") -> Path``: write the images and a tiny CUT pipeline under `root`."""
    return _make_cut_pipeline


@pytest.fixture
def cut_pipeline(tmp_path) -> Path:
    return _make_cut_pipeline(tmp_path)


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

"""Fixtures for the img2img-stargan tests: three tiny image folders and a tiny StarGAN pipeline.

The tests use the installed distribution (``pip install -e plugins/img2img-stargan``), found through
its entry point exactly as a user's img2img would find it.
"""
from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

import pytest
import torch
import yaml

from img2img.testing import write_images

torch.set_num_threads(1)  # tests share a small machine

COLOURS = {"a": (220, 120, 60), "b": (40, 90, 200), "c": (60, 200, 80)}


@pytest.fixture(autouse=True, scope="session")
def _installed() -> None:
    try:
        md.distribution("img2img-stargan")
    except md.PackageNotFoundError:
        pytest.fail("img2img-stargan is not installed; run: pip install -e plugins/img2img-stargan", pytrace=False)


def make_stargan_pipeline(root: Path, **sections) -> Path:
    """A StarGAN pipeline over three folders of 6 tinted 20 px images (domains a, b, c) under `root`:
    paper's WGAN-GP with n_critic 2, tiny networks, relative folders (they resolve against the file)."""
    for i, (domain, colour) in enumerate(COLOURS.items()):
        if not (root / domain).exists():
            write_images(root / domain, 6, 20, seed=i + 1, colour=colour)
    raw = {
        "task": "stargan", "name": "tiny-stargan", "seed": 0,
        "data": {"domains": {d: d for d in COLOURS}, "num_workers": 0,
                 "transforms": [{"RandomCrop": {"height": 16, "width": 16}}, {"HorizontalFlip": {"p": 0.5}}]},
        "model": {"generator": {"name": "stargan_generator", "conv_dim": 8, "repeat_num": 1},
                  "discriminator": {"name": "stargan_discriminator", "conv_dim": 8, "repeat_num": 2}},
        "stargan": {"n_critic": 2},
        "train": {"batch_size": 2, "max_steps": 4, "log_every": 1, "sample_every": 2, "checkpoint_every": 2,
                  "lr": 0.0001},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    path = root / "stargan.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def make_pipeline():
    """``make_pipeline(root, **sections) -> Path``: the images and a tiny StarGAN pipeline under `root`."""
    return make_stargan_pipeline


@pytest.fixture(scope="module")
def stargan_run(tmp_path_factory) -> Path:
    """One tiny StarGAN run of 4 steps, shared by the tests that only read it."""
    from img2img.testing import train_steps

    root = tmp_path_factory.mktemp("stargan")
    return train_steps(make_stargan_pipeline(root), 4, out=root / "run")

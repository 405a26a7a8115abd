"""Fixtures for the img2img-pix2pixhd tests: the installed plugin and tiny pix2pixHD pipelines.

The tests use the installed distribution (``pip install -e plugins/img2img-pix2pixhd``), found
through its entry point exactly as a user's img2img would find it.
"""
from __future__ import annotations

import importlib.metadata as md
import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")  # also in the processes the tests start
torch.set_num_threads(1)  # tests run beside others on a small machine


@pytest.fixture(autouse=True, scope="session")
def _installed() -> None:
    try:
        md.distribution("img2img-pix2pixhd")
    except md.PackageNotFoundError:
        pytest.fail("img2img-pix2pixhd is not installed; run: pip install -e plugins/img2img-pix2pixhd", pytrace=False)

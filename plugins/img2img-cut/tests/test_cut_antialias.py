"""CUT with the paper's generator: ``antialias: true`` and the PatchNCE layers that go with it."""
from __future__ import annotations

from pathlib import Path

import torch
from img2img_cut import ANTIALIAS_NCE_LAYERS, RESNET_NCE_LAYERS
from rich.console import Console

from img2img.config import load_pipeline
from img2img.engine.checkpoint import load_generator
from img2img.engine.train import train

AA = "model.generator={name: resnet_6blocks, ngf: 8, antialias: true}"


def test_antialiased_generator_gets_cut_own_layer_indices(cut_pipeline):
    plain = load_pipeline(cut_pipeline)
    assert plain.nce.layers == RESNET_NCE_LAYERS == [0, 4, 7, 10, 14]
    aa = load_pipeline(cut_pipeline, [AA])
    assert aa.nce.layers == ANTIALIAS_NCE_LAYERS == [0, 4, 8, 12, 16]
    explicit = load_pipeline(cut_pipeline, [AA, "nce.layers=[0, 8, 12]"])
    assert explicit.nce.layers == [0, 8, 12]


def test_the_default_layers_are_the_generators_own(cut_pipeline):
    """The layers the pipeline picks are the ones each generator names as the paper's five."""
    from img2img.registry import build

    for override in ([], [AA]):
        p = load_pipeline(cut_pipeline, override)
        net = build("generator", p.model.generator.ref(), in_channels=3, out_channels=3)
        assert p.nce.layers == net.nce_layers


def test_trains_with_the_paper_architecture(tmp_path: Path, make_cut_pipeline):
    pipeline = make_cut_pipeline(tmp_path)
    last = train(pipeline, overrides=[AA, "train.max_steps=2", "train.checkpoint_every=2"], out=tmp_path / "run",
                 console=Console(quiet=True))
    loaded = load_generator(last, "a2b")
    assert loaded.module.antialias and loaded.pipeline.nce.layers == [0, 4, 8, 12, 16]
    y = loaded.module(torch.zeros(1, 3, 36, 44))
    assert y.shape == (1, 3, 36, 44) and torch.isfinite(y).all()

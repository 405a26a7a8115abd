"""cut with data.val: validated out of the box by kid with the weight-free random_conv extractor."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from img2img.config import load_pipeline
from img2img.engine.train import train
from img2img.errors import PipelineError


def val_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "val_kid" in r]


def test_cut_with_data_val_trains_and_keeps_best(tmp_path, cut_pipeline):
    data = cut_pipeline.parent
    run = tmp_path / "run"
    train(cut_pipeline, out=run, console=Console(quiet=True),
          overrides=[f"data.val.a={data / 'A'}", f"data.val.b={data / 'B'}", "train.val_every=1", "train.max_steps=3"])
    rows = val_rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all("val_kid_std" in r and "val_seconds" in r for r in rows)
    kids = [r["val_kid"] for r in rows]
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["best"]["metric"] == "kid" and best["best"]["extractor"] == "random_conv"
    assert best["step"] == rows[kids.index(min(kids))]["step"] and best["best"]["value"] == min(kids)


def test_cut_offers_kid_and_fid_only(cut_pipeline):
    from img2img_cut import CUT

    assert CUT.val_metrics(load_pipeline(cut_pipeline)) == ("kid", "fid")
    with pytest.raises(PipelineError, match="'cycle_l1' is not a metric the cut task can score"):
        load_pipeline(cut_pipeline, ["train.val_metric=cycle_l1"])

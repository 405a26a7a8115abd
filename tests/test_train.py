"""Training end to end on tiny data: run folder, exact resume, EMA, validation, run-folder safety."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from img2img.errors import Img2ImgError
from img2img.engine.train import train

TIMING = ("seconds_per_step", "images_per_s")


def rows(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        for key in TIMING:
            row.pop(key, None)
        out.append(row)
    return out


@pytest.mark.parametrize("fixture", ["tiny_cyclegan", "tiny_pix2pix"])
def test_run_folder_contents(fixture, request, tmp_path):
    pipeline = request.getfixturevalue(fixture)
    run = tmp_path / "run"
    last = train(pipeline, out=run)
    assert last == run / "checkpoints" / "last.pt"
    for name in ("pipeline.yaml", "plugins.json", "transforms.json", "metrics.jsonl"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-2.png", "step-4.png"]
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"last.pt", "step-2.pt", "step-4.pt"}
    logged = rows(run)
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert all({"step", "epoch", "lr"} <= set(r) for r in logged)
    resolved = yaml.safe_load((run / "pipeline.yaml").read_text())
    assert resolved["model"]["generator"]["ngf"] == 8 and "norm" in resolved["model"]["generator"]
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["step"] == 4 and ckpt["plugins"][f"task:{resolved['task']}"]["distribution"] == "img2img-pipeline"


@pytest.mark.parametrize("fixture", ["tiny_cyclegan", "tiny_pix2pix"])
def test_resume_logs_exactly_the_uninterrupted_numbers(fixture, request, tmp_path):
    pipeline = request.getfixturevalue(fixture)
    common = ["train.checkpoint_every=4", "train.log_every=1", "train.sample_every=100"]
    train(pipeline, out=tmp_path / "straight", overrides=common + ["train.max_steps=8"])
    train(pipeline, out=tmp_path / "split", overrides=common + ["train.max_steps=4"])
    train(None, resume=tmp_path / "split", overrides=["train.max_steps=8"])
    straight, split = rows(tmp_path / "straight"), rows(tmp_path / "split")
    assert [r["step"] for r in split] == list(range(1, 9))
    assert split == straight


def test_resume_from_a_mid_window_checkpoint_keeps_log_averages(tiny_cyclegan, tmp_path):
    """A crash after step 3 with logs every 2 steps: the resumed run averages steps 3-4 like the original."""
    import shutil

    common = ["train.checkpoint_every=3", "train.log_every=2", "train.sample_every=100", "train.max_steps=6"]
    train(tiny_cyclegan, out=tmp_path / "straight", overrides=common)
    shutil.copytree(tmp_path / "straight", tmp_path / "crashed")
    train(None, resume=tmp_path / "crashed" / "checkpoints" / "step-3.pt")
    assert [r["step"] for r in rows(tmp_path / "crashed")] == [2, 4, 6]
    assert rows(tmp_path / "crashed") == rows(tmp_path / "straight")


def test_resume_after_a_run_that_ended_between_log_steps(tiny_cyclegan, tmp_path):
    """Trained to step 3 with logs every 2 steps (a row at 3, made early), then resumed to 6: the early row
    gives way to the uninterrupted run's rows; the finished run's own row at 3 stays while nothing follows."""
    common = ["train.log_every=2", "train.sample_every=100", "train.checkpoint_every=100"]
    train(tiny_cyclegan, out=tmp_path / "straight", overrides=common + ["train.max_steps=6"])
    train(tiny_cyclegan, out=tmp_path / "split", overrides=common + ["train.max_steps=3"])
    assert [r["step"] for r in rows(tmp_path / "split")] == [2, 3]
    train(None, resume=tmp_path / "split", overrides=["train.max_steps=3"])  # nothing to do: the row stays
    assert [r["step"] for r in rows(tmp_path / "split")] == [2, 3]
    train(None, resume=tmp_path / "split", overrides=["train.max_steps=6"])
    straight, split = rows(tmp_path / "straight"), rows(tmp_path / "split")
    assert [r["step"] for r in split] == [2, 4, 6]
    assert any(k.startswith("health/") for k in straight[-1])  # the health monitor's rows are compared too
    assert split == straight


def test_existing_run_folder_is_never_reused_silently(tiny_cyclegan, tmp_path):
    run = tmp_path / "run"
    train(tiny_cyclegan, out=run, overrides=["train.max_steps=1"])
    with pytest.raises(Img2ImgError, match="already holds a run; continue it with --resume"):
        train(tiny_cyclegan, out=run, overrides=["train.max_steps=1"])
    train(tiny_cyclegan, out=run, overrides=["train.max_steps=2"], overwrite=True)
    assert [r["step"] for r in rows(run)] == [1, 2]
    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    with pytest.raises(Img2ImgError, match="is not an img2img run folder"):
        train(tiny_cyclegan, out=other, overwrite=True)
    assert (other / "keep.txt").read_text() == "user data"


def test_ema_generator_is_checkpointed_and_used(tiny_cyclegan, tmp_path):
    from img2img.engine.checkpoint import load_generator

    run = tmp_path / "run"
    train(tiny_cyclegan, out=run, overrides=["train.ema=0.9"])
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert set(ckpt["ema"]) == {"a2b", "b2a"}
    ema = load_generator(run, "a2b")
    raw = load_generator(run, "a2b", use_ema=False)
    assert ema.ema and not raw.ema
    diffs = [(p - q).abs().max().item() for p, q in zip(ema.module.parameters(), raw.module.parameters())]
    assert max(diffs) > 0


def test_validation_keeps_best_checkpoint(tiny_pix2pix, tmp_path):
    data = tiny_pix2pix.parent
    run = tmp_path / "run"
    train(tiny_pix2pix, out=run, overrides=[f"data.val.a={data / 'inA'}", f"data.val.b={data / 'inB'}",
                                            "train.val_every=1", "train.max_steps=4"])
    val_rows = [r for r in rows(run) if "val_l1" in r]
    assert [r["step"] for r in val_rows] == [1, 2, 3, 4]
    best_rows = [r for r in val_rows if r.get("val_best")]
    assert best_rows and best_rows[0]["step"] == 1
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    best_l1 = min(r["val_l1"] for r in val_rows)
    assert best["best"]["value"] == pytest.approx(best_l1)
    assert best["step"] == best_rows[-1]["step"]


def test_cyclegan_validation_uses_cycle_reconstruction(tiny_cyclegan, tmp_path):
    data = tiny_cyclegan.parent
    run = tmp_path / "run"
    train(tiny_cyclegan, out=run, overrides=[f"data.val.a={data / 'A'}", "train.val_every=2"])
    val_rows = [r for r in rows(run) if "val_cycle_l1" in r]
    assert [r["step"] for r in val_rows] == [2, 4] and (run / "checkpoints" / "best.pt").is_file()


def test_bf16_mixed_precision_trains_on_cpu(tiny_cyclegan, tmp_path):
    run = tmp_path / "run"
    train(tiny_cyclegan, out=run, overrides=["train.precision=bf16-mixed", "train.channels_last=true",
                                             "train.max_steps=2"])
    assert all(torch.isfinite(torch.tensor(v)) for r in rows(run) for k, v in r.items() if k != "epoch")


@pytest.fixture
def nan_loss(plugin_manager):
    """A cycle loss that turns NaN from the given step on (it is called twice per cyclegan step)."""
    import img2img
    from torch import nn

    class NanAfter(nn.Module):
        def __init__(self, after: int):
            super().__init__()
            self.after, self.calls = after, 0

        def forward(self, prediction, target):
            self.calls += 1
            loss = (prediction - target).abs().mean()
            return loss * float("nan") if self.calls > 2 * self.after else loss

    class Plugin:
        @img2img.hookimpl
        def register_losses(self, register):
            def nan_after(*, after: int = 2) -> nn.Module:
                """L1 that becomes NaN after `after` steps."""
                return NanAfter(after)

            register("nan_after", nan_after)

    plugin_manager.register(Plugin(), name="nan-plugin")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_cyclegan, tmp_path, nan_loss):
    run = tmp_path / "run"
    with pytest.raises(Img2ImgError, match=r"NaN or inf at step 3; .*last good checkpoint"):
        train(tiny_cyclegan, out=run, overrides=["train.max_steps=6", "train.checkpoint_every=1",
                                                 "train.log_every=10", "losses.cycle.name=nan_after"])
    kept = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert kept["step"] == 2
    assert all(torch.isfinite(t).all() for t in kept["nets"]["g_ab"].values() if t.is_floating_point())


def test_nan_loss_skip_mode_skips_updates(tiny_cyclegan, tmp_path, nan_loss):
    run = tmp_path / "run"
    train(tiny_cyclegan, out=run, overrides=["train.max_steps=4", "train.on_nan=skip",
                                             "losses.cycle.name=nan_after"])
    assert rows(run)[-1]["skipped_steps"] == 2
    kept = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in kept["nets"]["g_ab"].values() if t.is_floating_point())

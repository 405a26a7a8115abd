"""`img2img import` refuses what it cannot read faithfully: exit 1, one message naming the file and the first
keys that don't fit, no traceback, nothing written."""
from __future__ import annotations

import pytest
import torch
from reference_networks import ResnetGenerator, UnetGenerator, randomise
from typer.testing import CliRunner

from img2img.cli import app
from img2img.importing.layouts import resnet_layers, unet_layers

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("import-errors")
    resnet = randomise(ResnetGenerator(3, 3, 8, "instance", False, 9), seed=1)
    torch.save(resnet.state_dict(), root / "latest_net_G_A.pth")
    bn = randomise(ResnetGenerator(3, 3, 8, "batch", False, 9), seed=2)
    torch.save(bn.state_dict(), root / "latest_net_G_B.pth")
    unet = randomise(UnetGenerator(3, 3, 7, 4, "batch", True), seed=3)
    torch.save(unet.state_dict(), root / "unet_net_G.pth")
    return root


def fails(*args, out=None) -> str:
    """Run `img2img import ...`; it must exit 1 with a one-message error, no traceback, and write nothing."""
    result = runner.invoke(app, ["import", *[str(a) for a in args], "--out", str(out)])
    text = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert text.startswith("error:") and text.count("error:") == 1 and "Traceback" not in result.output, text
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no staging folder left
    return text


def test_a_file_that_is_not_a_checkpoint(files, tmp_path):
    (tmp_path / "notes.pth").write_text("just text\n")
    text = fails("reference", tmp_path / "notes.pth", out=tmp_path / "run")
    assert "notes.pth is not a PyTorch checkpoint" in text


def test_a_discriminator_is_not_a_generator(tmp_path):
    d = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, 2, 1), torch.nn.LeakyReLU(0.2), torch.nn.Conv2d(8, 1, 4, 1, 1))
    torch.save({f"model.{k}": v for k, v in d.state_dict().items()}, tmp_path / "latest_net_D_A.pth")
    text = fails("reference", tmp_path / "latest_net_D_A.pth", out=tmp_path / "run")
    assert "latest_net_D_A.pth is not a generator checkpoint" in text and "model.0.weight" in text
    assert "discriminator" in text


def test_a_truncated_file_is_named_as_truncated(files, tmp_path):
    """Both serialisations: a zip archive missing its end, and the old format ending early."""
    state = torch.load(files / "latest_net_G_A.pth", weights_only=True)
    for name, legacy in (("cut_net_G.pth", False), ("cut_legacy_net_G.pth", True)):
        torch.save(state, tmp_path / name, _use_new_zipfile_serialization=not legacy)
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) * 2 // 3])
        text = fails("reference", tmp_path / name, out=tmp_path / "run")
        assert f"{name} is truncated ({len(data) * 2 // 3} bytes" in text and "complete file" in text


def test_a_training_state_names_the_entry_that_holds_the_generator(files, tmp_path):
    state = torch.load(files / "latest_net_G_A.pth", weights_only=True)
    torch.save({"epoch": 3, "netG_A": state, "optimizer_G": {"state": {}, "param_groups": [{"lr": 2e-4}]}},
               tmp_path / "train_state.pth")
    text = fails("reference", tmp_path / "train_state.pth", out=tmp_path / "run")
    assert "train_state.pth is not a generator checkpoint" in text and "epoch (int)" in text
    assert "entry 'netG_A' holds a state dict" in text and "['netG_A'], 'latest_net_G.pth')" in text


@pytest.mark.parametrize("build", [lambda: ResnetGenerator(3, 3, 4, "none", False, 6),
                                   lambda: UnetGenerator(3, 3, 6, 4, "none", False)], ids=["resnet", "unet"])
def test_a_generator_without_normalisation_is_named(build, tmp_path):
    """The reference's --norm none: no norm layers and no convolution biases, which img2img cannot hold."""
    torch.save(randomise(build(), seed=4).state_dict(), tmp_path / "latest_net_G.pth")
    text = fails("reference", tmp_path / "latest_net_G.pth", out=tmp_path / "run")
    assert "latest_net_G.pth is a generator built with the reference's --norm none" in text
    assert "without a bias" in text and "cannot be imported" in text


def test_pickled_objects_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model.1.weight": torch.zeros(1), "extra": Payload()}, tmp_path / "latest_net_G.pth")
    text = fails("reference", tmp_path / "latest_net_G.pth", out=tmp_path / "run")
    assert "refused to load" in text and "latest_net_G.pth" in text
    assert not marker.exists()


def test_an_img2img_checkpoint_is_pointed_at_directly(translate_run, tmp_path):
    text = fails("reference", translate_run / "checkpoints" / "last.pt", out=tmp_path / "run")
    assert "already an img2img checkpoint" in text


def test_a_wrong_arch_names_the_keys_that_do_not_fit(files, tmp_path):
    text = fails("reference", files / "latest_net_G_A.pth", "--arch", "resnet_6blocks", out=tmp_path / "run")
    assert "latest_net_G_A.pth does not fit resnet_6blocks" in text and "--arch resnet_6blocks" in text
    assert "unexpected model.16.conv_block.1.weight" in text
    text = fails("reference", files / "latest_net_G_A.pth", "--arch", "unet_256", out=tmp_path / "run")
    assert "missing model.model.0.weight" in text and "unexpected model.1.weight" in text


def test_missing_and_unexpected_keys_are_listed(files, tmp_path):
    state = torch.load(files / "latest_net_G_A.pth", weights_only=True)
    del state["model.12.conv_block.5.weight"]
    state["model.12.conv_block.9.weight"] = torch.zeros(32, 32, 3, 3)
    torch.save(state, tmp_path / "damaged_net_G.pth")
    text = fails("reference", tmp_path / "damaged_net_G.pth", out=tmp_path / "run")
    assert "damaged_net_G.pth does not fit resnet_9blocks" in text
    assert "missing model.12.conv_block.5.weight" in text and "unexpected model.12.conv_block.9.weight" in text


def test_mismatched_shapes_and_contradicting_flags(files, tmp_path):
    text = fails("reference", files / "latest_net_G_A.pth", "--ngf", "16", out=tmp_path / "run")
    assert "wrong shape model.1.weight is 8x3x7x7, expected 16x3x7x7" in text
    text = fails("reference", files / "latest_net_G_A.pth", "--norm", "batch", out=tmp_path / "run")
    assert "missing model.2.weight" in text and "unexpected model.1.bias" in text and "instance norm" in text
    text = fails("reference", files / "latest_net_G_A.pth", "--dropout", out=tmp_path / "run")
    assert "conv_block.6.weight" in text
    text = fails("reference", files / "latest_net_G_A.pth", "--channels", "1", out=tmp_path / "run")
    assert "model.1.weight is 8x3x7x7, expected 8x1x7x7" in text


def test_a_pair_must_share_one_architecture(files, tmp_path):
    text = fails("reference", files / "latest_net_G_A.pth", files / "latest_net_G_B.pth", out=tmp_path / "run")
    assert "latest_net_G_A.pth" in text and "latest_net_G_B.pth" in text and "one generator architecture" in text


def test_usage_mistakes(files, tmp_path):
    text = fails("reference", files / "unet_net_G.pth", "--task", "pix2pix", "--direction", "b2a",
                 out=tmp_path / "run")
    assert "pix2pix run translates a2b only" in text
    text = fails("cut", files / "unet_net_G.pth", out=tmp_path / "run")
    assert "is a U-Net" in text
    text = fails("reference", tmp_path / "missing.pth", out=tmp_path / "run")
    assert "no such checkpoint file" in text


def test_an_existing_run_is_kept_unless_overwrite(files, tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, ["import", "reference", str(files / "unet_net_G.pth"), "--out", str(out)]).exit_code == 0
    before = (out / "checkpoints" / "last.pt").read_bytes()
    result = runner.invoke(app, ["import", "reference", str(files / "latest_net_G_A.pth"), "--out", str(out)])
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert (out / "checkpoints" / "last.pt").read_bytes() == before
    result = runner.invoke(app, ["import", "reference", str(files / "latest_net_G_A.pth"), "--out", str(out),
                                 "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "resnet_9blocks" in (out / "pipeline.yaml").read_text()


def test_every_layer_of_each_layout_has_its_own_key():
    for layers in (resnet_layers(9, False, False), resnet_layers(6, True, True), unet_layers(8), unet_layers(5)):
        prefixes = [layer.prefix for layer in layers]
        assert len(set(prefixes)) == len(prefixes)
    keys = set(randomise(UnetGenerator(3, 3, 8, 4, "batch", True), 0).state_dict())
    assert {f"{layer.prefix}.weight" for layer in unet_layers(8)} <= keys
    cut = set(ResnetGenerator(3, 3, 4, "instance", True, 6, antialias=True).state_dict())
    assert {f"{layer.prefix}.{'filt' if layer.kind.startswith('blur') else 'weight'}"
            for layer in resnet_layers(6, True, True) if layer.kind != "norm"} <= cut


def test_one_generator_of_a_pair_translates_its_own_direction(tmp_path):
    net = randomise(ResnetGenerator(3, 3, 4, "instance", False, 6), seed=5)
    torch.save(net.state_dict(), tmp_path / "latest_net_G_B.pth")
    result = runner.invoke(app, ["import", "reference", str(tmp_path / "latest_net_G_B.pth"), "--out",
                                 str(tmp_path / "run")])
    assert result.exit_code == 0 and "--direction b2a" in result.output
    (tmp_path / "in").mkdir()
    from PIL import Image

    Image.new("RGB", (24, 20), (90, 40, 200)).save(tmp_path / "in" / "x.png")
    result = runner.invoke(app, ["translate", str(tmp_path / "in"), "--model", str(tmp_path / "run"), "--out",
                                 str(tmp_path / "out")])
    assert result.exit_code == 1 and "holds the b2a translator only, not a2b; use --direction b2a" in " ".join(
        result.output.split())
    result = runner.invoke(app, ["translate", str(tmp_path / "in"), "--model", str(tmp_path / "run"), "--out",
                                 str(tmp_path / "out"), "--direction", "b2a"])
    assert result.exit_code == 0 and (tmp_path / "out" / "x.png").is_file()


def test_nested_half_precision_state_dicts_import(tmp_path):
    """Some tools save {"state_dict": ..., "epoch": n} and float16 weights; both read as the plain state dict."""
    from img2img.engine.checkpoint import load_generator

    net = randomise(UnetGenerator(3, 3, 5, 4, "batch", False), seed=6).eval()
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 7}, tmp_path / "g.pth")
    result = runner.invoke(app, ["import", "reference", str(tmp_path / "g.pth"), "--out", str(tmp_path / "run"),
                                 "--no-dropout"])
    assert result.exit_code == 0, result.output
    loaded = load_generator(tmp_path / "run", "a2b")
    assert loaded.pipeline.model.generator.params["num_downs"] == 5 and loaded.pipeline.task == "pix2pix"
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), net.half().float()(x), atol=1e-5, rtol=0)


def test_an_out_that_contains_the_input_is_refused_even_with_overwrite(files, tmp_path):
    run = tmp_path / "imp1"
    first = runner.invoke(app, ["import", "reference", str(files / "latest_net_G_A.pth"), "--out", str(run)])
    assert first.exit_code == 0, first.output
    inside = run / "latest_net_G_A.pth"
    inside.write_bytes((files / "latest_net_G_A.pth").read_bytes())
    result = runner.invoke(app, ["import", "reference", str(inside), "--out", str(run), "--overwrite"])
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"--out {run} contains the input {inside}" in text
    assert inside.read_bytes() == (files / "latest_net_G_A.pth").read_bytes()
    assert (run / "checkpoints" / "last.pt").is_file()

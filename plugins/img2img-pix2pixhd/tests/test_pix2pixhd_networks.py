"""pix2pixHD's networks and losses, and one training step of the built-in pix2pix task with them
against pix2pixHD's own code (transcribed in reference_pix2pixhd.py) from identical weights."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torchvision.models import vgg19

from img2img.config import load_pipeline
from img2img.errors import PipelineError
from img2img.losses import exposes_features
from img2img.registry import get_registry
from img2img.testing import tiny_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_pix2pixhd as ref  # noqa: E402

REGISTRY = get_registry()


def build(kind: str, name: str, **io_and_params):
    io = {k: io_and_params.pop(k) for k in ("in_channels", "out_channels") if k in io_and_params}
    return REGISTRY.build(kind, {"name": name, **io_and_params}, **io)


def copy_weights(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Parameter by parameter, in order (the two networks are built layer for layer alike)."""
    pairs = list(zip(source.parameters(), target.parameters(), strict=True))
    with torch.no_grad():
        for s, t in pairs:
            assert s.shape == t.shape
            t.copy_(s)


def test_components_are_registered_by_the_installed_distribution():
    for kind, name in (("generator", "pix2pixhd_global"), ("generator", "pix2pixhd_local"),
                       ("discriminator", "multiscale"), ("loss", "vgg19_perceptual")):
        assert REGISTRY.get(kind, name).distribution == "img2img-pix2pixhd"


@pytest.mark.parametrize("name", ["demo-pix2pixhd", "cityscapes-pix2pixhd"])
def test_the_shipped_pipelines_validate_with_the_papers_sizes(name):
    """The template's data folders are the user's to fill: only missing data may be reported."""
    from img2img.config.builtin import builtin_pipelines

    found = builtin_pipelines()[name]
    assert found.distribution == "img2img-pix2pixhd" and found.task == "pix2pix"
    pipeline = load_pipeline(found.path)
    assert pipeline.losses.feature_matching.weight == 10.0 and pipeline.losses.adversarial.params["scales"] == "sum"
    if name == "cityscapes-pix2pixhd":
        assert pipeline.model.generator.params.items() >= {"ngf": 64, "n_downsampling": 4, "n_blocks": 9}.items()
        assert pipeline.model.discriminator.params.items() >= {"ndf": 64, "n_layers": 3, "num_d": 3}.items()


def test_global_generator_is_pix2pixhds_function():
    torch.manual_seed(0)
    ours = build("generator", "pix2pixhd_global", in_channels=3, out_channels=3, ngf=4, n_downsampling=3, n_blocks=2)
    theirs = ref.GlobalGenerator(3, 3, 4, 3, 2)
    copy_weights(ours, theirs)
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    assert ours.size_multiple == 8
    torch.testing.assert_close(ours(x), theirs(x))


def test_local_enhancer_is_pix2pixhds_function():
    torch.manual_seed(0)
    ours = build("generator", "pix2pixhd_local", in_channels=3, out_channels=1, ngf=4, n_downsample_global=2,
                 n_blocks_global=1, n_local_enhancers=2, n_blocks_local=1)
    theirs = ref.LocalEnhancer(3, 1, 4, 2, 1, 2, 1)
    pairs = list(zip(ours.parameters(), theirs.ordered_parameters(), strict=True))
    with torch.no_grad():
        for p, q in pairs:
            q.copy_(p)
    assert ours.size_multiple == 16
    assert ours.model[1].out_channels == 16  # G1 has ngf * 2**n_local_enhancers channels
    x = torch.rand(1, 3, 32, 48) * 2 - 1
    y = ours(x)
    assert y.shape == (1, 1, 32, 48)
    torch.testing.assert_close(y, theirs(x))


@pytest.mark.parametrize("name", ["pix2pixhd_global", "pix2pixhd_local"])
def test_generators_export_to_onnx_with_dynamic_sizes(name, tmp_path):
    """img2img's exporter checks onnxruntime against torch at sizes other than the export's."""
    from img2img.inference.export import export_generator

    params = ({"ngf": 4, "n_downsampling": 2, "n_blocks": 1} if name == "pix2pixhd_global" else
              {"ngf": 4, "n_downsample_global": 2, "n_blocks_global": 1, "n_blocks_local": 1})
    g = build("generator", name, in_channels=3, out_channels=3, **params).eval()
    out = export_generator(g, tmp_path / f"{name}.onnx", in_channels=3, out_channels=3,
                           size_multiple=g.size_multiple)
    assert out.is_file()


def test_multiscale_discriminator_is_pix2pixhds_with_features():
    torch.manual_seed(0)
    ours = build("discriminator", "multiscale", in_channels=6, ndf=4, n_layers=3, num_d=3)
    theirs = ref.MultiscaleDiscriminator(6, 4, 3, 3)
    copy_weights(ours, theirs)
    x = torch.rand(2, 6, 64, 64) * 2 - 1
    expected = theirs(x)
    logits = ours(x)
    assert isinstance(logits, list) and len(logits) == 3
    out, features = ours(x, features=True)
    assert exposes_features(ours)
    for scale, (mine, feats, theirs_scale) in enumerate(zip(out, features, expected)):
        assert len(feats) == 4  # n_layers + 1 activations before the logits
        torch.testing.assert_close(mine, theirs_scale[-1])
        torch.testing.assert_close(logits[scale], theirs_scale[-1])
        for f, t in zip(feats, theirs_scale[:-1]):
            torch.testing.assert_close(f, t)
    assert [o.shape[-1] for o in out] == [11, 7, 5]  # 64, 32 and 16 pixels wide: padding 2 grows the map


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory) -> Path:
    """Random VGG-19 weights saved as torchvision's full state dict: nothing is downloaded."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("vgg") / "vgg19-random.pth"
    torch.save(vgg19().state_dict(), path)
    return path


def test_vgg_loss_reads_the_named_file_and_matches_pix2pixhd(vgg_weights):
    loss = build("loss", "vgg19_perceptual", weights=str(vgg_weights))
    features = vgg19()
    features.load_state_dict(torch.load(vgg_weights, weights_only=True))
    theirs = ref.VGGLoss(features.features)
    x, y = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(loss(x, y), theirs(x, y))
    assert not any(p.requires_grad for p in loss.parameters())


def test_vgg_loss_without_a_file_is_a_pipeline_problem_naming_the_key(tmp_path):
    pipeline = tiny_pipeline(tmp_path, "pix2pix", generator={"name": "pix2pixhd_global", "ngf": 4, "n_downsampling": 2,
                                                               "n_blocks": 1},
                             losses={"reconstruction": {"name": "vgg19_perceptual", "weights": str(tmp_path / "no.pth"),
                                                        "weight": 10.0}})
    with pytest.raises(PipelineError) as info:
        load_pipeline(pipeline)
    assert "losses.reconstruction.weights" in str(info.value) and "no.pth" in str(info.value)
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    from img2img import Img2ImgError

    with pytest.raises(Img2ImgError, match="bad.pth: not torchvision's VGG-19 weights"):
        build("loss", "vgg19_perceptual", weights=str(bad))


def test_one_pix2pix_step_equals_pix2pixhds_step_from_identical_weights(tmp_path, vgg_weights):
    """D step (LSGAN summed over 3 scales, halved), then G step: GAN + feature matching x 10 + VGG x 10,
    the real features from the updated discriminator, as the pix2pix task orders its two updates."""
    from img2img.tasks.pix2pix import Pix2Pix

    ngf, n_down, n_blocks, ndf, n_layers, num_d = 4, 2, 1, 4, 3, 3
    path = tiny_pipeline(
        tmp_path, "pix2pix",
        generator={"name": "pix2pixhd_global", "ngf": ngf, "n_downsampling": n_down, "n_blocks": n_blocks},
        discriminator={"name": "multiscale", "ndf": ndf, "n_layers": n_layers, "num_d": num_d},
        losses={"adversarial": {"name": "lsgan", "scales": "sum"},
                "feature_matching": {"name": "feature_matching", "weight": 10.0},
                "reconstruction": {"name": "vgg19_perceptual", "weights": str(vgg_weights), "weight": 10.0}})
    torch.manual_seed(0)
    task = Pix2Pix(load_pipeline(path), device="cpu")
    g_ref, d_ref = ref.GlobalGenerator(3, 3, ngf, n_down, n_blocks), ref.MultiscaleDiscriminator(6, ndf, n_layers, num_d)
    copy_weights(task.nets["g"], g_ref)
    copy_weights(task.nets["d"], d_ref)
    features = vgg19()
    features.load_state_dict(torch.load(vgg_weights, weights_only=True))
    vgg_loss = ref.VGGLoss(features.features)
    opt_g = torch.optim.Adam(g_ref.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d_ref.parameters(), lr=2e-4, betas=(0.5, 0.999))

    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    losses = task.train_step({"a": a, "b": b})

    fake = g_ref(a)
    pred_fake_pool = d_ref(torch.cat((a, fake.detach()), dim=1))
    pred_real = d_ref(torch.cat((a, b), dim=1))
    loss_d = (ref.gan_loss(pred_fake_pool, False) + ref.gan_loss(pred_real, True)) * 0.5
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()
    for p in d_ref.parameters():
        p.requires_grad_(False)
    pred_fake = d_ref(torch.cat((a, fake), dim=1))
    pred_real = d_ref(torch.cat((a, b), dim=1))
    loss_g_gan = ref.gan_loss(pred_fake, True)
    loss_g_feat = ref.feature_matching(pred_fake, pred_real, n_layers, num_d, 10.0)
    loss_g_vgg = vgg_loss(fake, b) * 10.0
    opt_g.zero_grad()
    (loss_g_gan + loss_g_feat + loss_g_vgg).backward()
    opt_g.step()

    torch.testing.assert_close(losses["d"], loss_d.detach())
    torch.testing.assert_close(losses["g_adv"], loss_g_gan.detach())
    torch.testing.assert_close(losses["feature_matching"], loss_g_feat.detach())
    torch.testing.assert_close(losses["rec"], loss_g_vgg.detach())
    for mine, theirs in ((task.nets["g"], g_ref), (task.nets["d"], d_ref)):
        for (name, p), q in zip(mine.named_parameters(), theirs.parameters(), strict=True):
            if q.grad.abs().max() < 1e-5:
                # a conv bias right before instance norm: its gradient is zero but for rounding, which
                # Adam's first step turns into +-lr either way; it can move no further than that
                assert (p - q).abs().max() <= 2 * 2e-4, name
            else:
                torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)

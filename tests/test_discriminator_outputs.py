"""The discriminator contract beyond one logits tensor: lists of logits (one per scale) and features.

A discriminator may return a list of logits tensors (one per scale) and may expose its intermediate
features (``forward(x, features=True) -> (logits, features)``). The built-in adversarial losses take
lists, ``feature_matching`` compares features as pix2pixHD does, health averages over scales, and a
single-tensor discriminator trains exactly as it always did.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from img2img import AdversarialLoss, hookimpl
from img2img.config import load_pipeline
from img2img.engine.checkpoint import load_checkpoint
from img2img.errors import PipelineError
from img2img.losses import exposes_features
from img2img.registry import get_registry
from img2img.testing import registered, tiny_pipeline, train_steps

ADVERSARIAL = ["lsgan", "vanilla", "hinge", "wgan_gp"]


def logits(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_a_list_of_logits_is_judged_per_scale_and_averaged_or_summed(name):
    loss = get_registry().build("loss", {"name": name})
    summed = get_registry().build("loss", {"name": name, "scales": "sum"})
    real = [logits(0, 2, 1, 8, 8), logits(1, 2, 1, 4, 4), logits(2, 2, 1, 2, 2)]
    fake = [logits(3, 2, 1, 8, 8), logits(4, 2, 1, 4, 4), logits(5, 2, 1, 2, 2)]
    d_each = [loss.d_loss(r, f) for r, f in zip(real, fake)]
    g_each = [loss.g_loss(f) for f in fake]
    torch.testing.assert_close(loss.d_loss(real, fake), sum(d_each) / 3)
    torch.testing.assert_close(loss.g_loss(fake), sum(g_each) / 3)
    torch.testing.assert_close(summed.d_loss(real, fake), sum(d_each))
    torch.testing.assert_close(summed.g_loss(tuple(fake)), sum(g_each))
    # one scale in a list is exactly the tensor's loss
    assert torch.equal(loss.d_loss([real[0]], [fake[0]]), loss.d_loss(real[0], fake[0]))
    assert torch.equal(loss.g_loss([fake[0]]), loss.g_loss(fake[0]))
    with pytest.raises(ValueError, match="different numbers of scales"):
        loss.d_loss(real, fake[:2])


def test_a_plugins_adversarial_loss_written_for_one_tensor_takes_lists():
    class Softplus(AdversarialLoss):
        def d_loss(self, real_logits, fake_logits):
            return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()

        def g_loss(self, fake_logits):
            return F.softplus(-fake_logits).mean()

    loss = Softplus()
    real, fake = [logits(0, 1, 1, 6, 6), logits(1, 1, 1, 3, 3)], [logits(2, 1, 1, 6, 6), logits(3, 1, 1, 3, 3)]
    torch.testing.assert_close(loss.d_loss(real, fake), (loss.d_loss(real[0], fake[0]) + loss.d_loss(real[1], fake[1])) / 2)
    torch.testing.assert_close(loss.g_loss(fake), (loss.g_loss(fake[0]) + loss.g_loss(fake[1])) / 2)


def test_wgan_gp_penalty_sums_the_critic_over_scales():
    class TwoScales(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 1, 3, padding=1)

        def forward(self, x):
            return [self.conv(x), self.conv(F.avg_pool2d(x, 2))]

    torch.manual_seed(0)
    critic, loss = TwoScales(), get_registry().build("loss", {"name": "wgan_gp", "gp_weight": 1.0})
    real, fake = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    state = torch.random.get_rng_state()
    penalty = loss.penalty(critic, real, fake)
    torch.random.set_rng_state(state)  # the same interpolation, by hand
    alpha = torch.rand(2, 1, 1, 1)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    out = critic(mixed)
    (grad,) = torch.autograd.grad(out[0].sum() + out[1].sum(), mixed)
    torch.testing.assert_close(penalty, ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean())


def test_feature_matching_weighs_layers_and_scales_as_pix2pixhd_and_detaches_the_real_features():
    n_layers, num_d = 3, 2
    fake = [[logits(10 * s + j, 1, 4, 8 >> j, 8 >> j).requires_grad_(True) for j in range(n_layers + 1)]
            for s in range(num_d)]
    real = [[logits(100 + 10 * s + j, 1, 4, 8 >> j, 8 >> j).requires_grad_(True) for j in range(n_layers + 1)]
            for s in range(num_d)]
    loss = get_registry().build("loss", {"name": "feature_matching"})(fake, real)
    # pix2pixHD's models/pix2pixHD_model.py, lambda_feat aside
    feat_weights, d_weights = 4.0 / (n_layers + 1), 1.0 / num_d
    expected = sum(d_weights * feat_weights * F.l1_loss(fake[i][j], real[i][j].detach())
                   for i in range(num_d) for j in range(n_layers + 1))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(t.grad is not None for s in fake for t in s)
    assert all(t.grad is None for s in real for t in s)
    one_scale = get_registry().build("loss", {"name": "feature_matching"})(fake[0], real[0])  # a flat list
    torch.testing.assert_close(one_scale, sum(feat_weights * F.l1_loss(f, r) for f, r in zip(fake[0], real[0])))


def test_patchgan_exposes_its_features_and_gives_the_same_logits():
    d = get_registry().build("discriminator", {"name": "patchgan", "ndf": 4, "n_layers": 3}, in_channels=3)
    x = torch.rand(2, 3, 48, 48) * 2 - 1
    plain = d(x)
    out, features = d(x, features=True)
    assert torch.equal(out, plain)
    assert [f.shape[1] for f in features] == [4, 8, 16, 32]  # after each LeakyReLU: n_layers + 1
    assert exposes_features(d) and exposes_features(nn.parallel.DistributedDataParallel.__new__(
        nn.parallel.DistributedDataParallel)) is False
    pixel = get_registry().build("discriminator", {"name": "pixel", "ndf": 4}, in_channels=3)
    assert not exposes_features(pixel)


# ---------------------------------------------------------------------------------------------
# through training


class OneScaleList:
    """A third party's discriminator returning [patchgan logits]: a list of one scale."""

    @hookimpl
    def register_discriminators(self, register):
        def patchgan_list(in_channels: int, *, ndf: int = 64, n_layers: int = 3, norm: str = "instance") -> nn.Module:
            """patchgan whose logits come in a list of one scale."""
            inner = get_registry().build("discriminator", {"name": "patchgan", "ndf": ndf, "n_layers": n_layers,
                                                           "norm": norm}, in_channels=in_channels)

            class AsList(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.inner = inner

                def forward(self, x):
                    return [self.inner(x)]

            return AsList()

        def two_scales(in_channels: int, *, ndf: int = 8) -> nn.Module:
            """Two patchgans, the second on a half-size image."""
            build = get_registry().build

            class TwoScales(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.full = build("discriminator", {"name": "patchgan", "ndf": ndf, "n_layers": 2}, in_channels=in_channels)
                    self.coarse = build("discriminator", {"name": "patchgan", "ndf": ndf, "n_layers": 1}, in_channels=in_channels)

                def forward(self, x):
                    return [self.full(x), self.coarse(F.avg_pool2d(x, 2))]

            return TwoScales()

        register("patchgan_list", patchgan_list)
        register("two_scales", two_scales)


def nets_and_rows(run: Path) -> tuple[dict, list[dict]]:
    nets = load_checkpoint(run)["nets"]
    rows = [{k: v for k, v in json.loads(line).items() if k not in ("seconds_per_step", "images_per_s")}
            for line in (run / "metrics.jsonl").read_text().splitlines()]
    return nets, rows


@pytest.mark.parametrize("task", ["pix2pix", "cyclegan"])
def test_a_discriminator_returning_a_list_of_one_scale_trains_bit_identically(task, tmp_path):
    """The list-aware losses, pool and health paths give exactly the single tensor's numbers."""
    disc = {"ndf": 8, "n_layers": 2, "norm": "batch" if task == "pix2pix" else "instance"}
    train = {"health": "warn", "log_every": 1}
    plain = train_steps(tiny_pipeline(tmp_path / "plain", task, discriminator={"name": "patchgan", **disc},
                                      train=train), steps=3)
    with registered(OneScaleList(), "one-scale-list"):
        listed = train_steps(tiny_pipeline(tmp_path / "list", task, discriminator={"name": "patchgan_list", **disc},
                                           train=train), steps=3)
        list_nets, list_rows = nets_and_rows(listed)
    plain_nets, plain_rows = nets_and_rows(plain)
    assert any(k.startswith("health/d_separation") for k in plain_rows[0])
    assert plain_rows == list_rows
    for key in plain_nets:
        inner = {k.removeprefix("inner."): v for k, v in list_nets[key].items()} if key.startswith("d") else list_nets[key]
        assert inner.keys() == plain_nets[key].keys()
        assert all(torch.equal(inner[k], v) for k, v in plain_nets[key].items()), key


def test_a_two_scale_discriminator_trains_with_every_adversarial_loss_and_health_sees_it(tmp_path):
    with registered(OneScaleList(), "one-scale-list"):
        for name in ADVERSARIAL:
            run = train_steps(tiny_pipeline(tmp_path / name, "cyclegan", discriminator={"name": "two_scales"},
                                            losses={"adversarial": {"name": name}},
                                            train={"health": "warn", "log_every": 1}), steps=2)
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            for row in rows:
                assert all(torch.isfinite(torch.tensor(row[k])) for k in ("d_a", "d_b", "g_ab", "g_ba")), name
            assert 0.0 <= rows[0]["health/d_separation_a2b"] <= 1.0


def test_pix2pix_feature_matching_trains_and_logs_its_term(tmp_path):
    pipeline = tiny_pipeline(tmp_path, "pix2pix", discriminator={"name": "patchgan", "ndf": 8, "n_layers": 2},
                             losses={"feature_matching": {"name": "feature_matching", "weight": 10.0}})
    _, rows = nets_and_rows(train_steps(pipeline, steps=2))
    assert all(row["feature_matching"] > 0 for row in rows)
    # off (the default): no term, no extra forward
    _, rows = nets_and_rows(train_steps(tiny_pipeline(tmp_path / "off", "pix2pix"), steps=1))
    assert "feature_matching" not in rows[0]


def test_feature_matching_with_a_discriminator_without_features_is_refused_at_validate(tmp_path):
    pipeline = tiny_pipeline(tmp_path, "pix2pix", discriminator={"name": "pixel", "ndf": 8},
                             losses={"feature_matching": {"name": "feature_matching", "weight": 10.0}})
    with pytest.raises(PipelineError) as info:
        load_pipeline(pipeline)
    text = str(info.value)
    assert "losses.feature_matching.weight" in text and "'pixel' does not expose its features" in text


def test_the_discriminator_snippet_of_plugins_readme_works_as_written(tmp_path):
    """The code and the pipeline under "Discriminators with several outputs or features", as written."""
    import types

    import yaml

    readme = (Path(__file__).resolve().parents[1] / "plugins" / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Discriminators with several outputs or features", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    pipeline_yaml = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    module = types.ModuleType("two_scale_snippet")
    exec(compile(code, "plugins/README.md", "exec", dont_inherit=True), module.__dict__)

    with registered(module):
        d = get_registry().build("discriminator", {"name": "two_scale", "ndf": 4}, in_channels=6)
        logits, features = d(torch.rand(1, 6, 32, 32), features=True)
        assert len(logits) == 2 and [len(f) for f in features] == [2, 2] and exposes_features(d)
        disc = {**pipeline_yaml["model"]["discriminator"], "ndf": 4}
        pipeline = tiny_pipeline(tmp_path, pipeline_yaml["task"], discriminator=disc, losses=pipeline_yaml["losses"],
                                 train={"health": "warn", "log_every": 1})
        load_pipeline(pipeline)
        run = train_steps(pipeline, steps=2)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(row["feature_matching"] > 0 for row in rows)
    assert 0.0 <= rows[0]["health/d_separation_a2b"] <= 1.0

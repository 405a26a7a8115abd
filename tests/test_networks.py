"""The built-in generators, discriminators and losses: reference architectures, shapes, maths."""
import importlib.util
import inspect
import math
from pathlib import Path

import pydantic
import pytest
import torch
from torch import nn

from img2img import AdversarialLoss
from img2img.default_plugins import layers, losses, patchgan, resnet, unet

REFERENCE_STEP = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_step.py"  # the published recipe

GENERATORS = {"resnet_6blocks": resnet.resnet_6blocks, "resnet_9blocks": resnet.resnet_9blocks,
              "unet_128": unet.unet_128, "unet_256": unet.unet_256, "unet": unet.unet}
DISCRIMINATORS = {"patchgan": patchgan.patchgan, "pixel": patchgan.pixel}
LOSSES = {"lsgan": losses.lsgan, "vanilla": losses.vanilla, "hinge": losses.hinge, "wgan_gp": losses.wgan_gp,
          "l1": losses.l1, "mse": losses.mse, "feature_matching": losses.feature_matching}
# the smallest image each generator accepts, and a channel width that keeps the test fast
SMALL = {"resnet_6blocks": (32, 8), "resnet_9blocks": (32, 8), "unet_128": (128, 4), "unet_256": (256, 4), "unet": (64, 4)}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def image(n: int, size: int | tuple[int, int], channels: int = 3, seed: int = 0) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.rand(n, channels, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def reference():
    spec = importlib.util.spec_from_file_location("reference_step", REFERENCE_STEP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- registration and parameter declarations ---------------------------------------------------

def collect(hook) -> dict:
    found = {}
    hook(register=lambda name, factory: found.__setitem__(name, factory))
    return found


def test_hooks_register_every_component():
    generators = collect(resnet.register_generators) | collect(unet.register_generators)
    assert generators == GENERATORS
    assert collect(patchgan.register_discriminators) == DISCRIMINATORS
    assert collect(losses.register_losses) == LOSSES


@pytest.mark.parametrize("factory", [*GENERATORS.values(), *DISCRIMINATORS.values(), *LOSSES.values()],
                         ids=[*GENERATORS, *DISCRIMINATORS, *LOSSES])
def test_factory_parameters_are_keyword_only_annotated_and_described(factory):
    params = list(inspect.signature(factory).parameters.values())
    io = {"in_channels", "out_channels"}
    assert all(p.name in io for p in params if p.kind is p.POSITIONAL_OR_KEYWORD)
    options = [p for p in params if p.name not in io]
    assert all(p.kind is p.KEYWORD_ONLY and p.annotation is not p.empty for p in options)
    assert all(p.default is not p.empty for p in options)
    assert factory.__doc__ and factory.__doc__.strip().splitlines()[0]
    # the annotations make a valid pydantic model whose defaults validate
    fields = {p.name: (p.annotation, p.default) for p in options}
    model = pydantic.create_model(f"{factory.__name__}_params", **fields)
    assert model().model_dump() == {p.name: p.default for p in options}


def test_annotations_reject_bad_values():
    fields = {p.name: (p.annotation, p.default)
              for p in inspect.signature(resnet.resnet_9blocks).parameters.values() if p.kind is p.KEYWORD_ONLY}
    model = pydantic.create_model("resnet_params", **fields)
    for bad in ({"ngf": 0}, {"norm": "group"}, {"dropout": 1.0}, {"init_gain": 0.0}, {"upsample": "bilinear"}):
        with pytest.raises(pydantic.ValidationError):
            model(**bad)


# -- architectures -------------------------------------------------------------------------------

def test_parameter_counts_match_reference(reference):
    assert count(resnet.resnet_9blocks(3, 3, ngf=64)) == count(reference.resnet_generator())
    assert count(resnet.resnet_6blocks(3, 3, ngf=64)) == count(reference.resnet_generator(blocks=6))
    assert count(patchgan.patchgan(3, ndf=64)) == count(reference.patch_discriminator())
    assert count(patchgan.patchgan(6, ndf=64, n_layers=2)) == count(reference.patch_discriminator(cin=6, n=2))


class ReferenceUnetBlock(nn.Module):
    """The reference repository's recursive U-Net block, kept to check our unrolled one against."""

    def __init__(self, outer, inner, input_nc=None, submodule=None, outermost=False, innermost=False, dropout=False):
        super().__init__()
        self.outermost = outermost
        down = nn.Conv2d(input_nc or outer, inner, 4, 2, 1, bias=False)
        relu_down, relu_up = nn.LeakyReLU(0.2, True), nn.ReLU(True)
        if outermost:
            body = [down, submodule, relu_up, nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
        elif innermost:
            body = [relu_down, down, relu_up, nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=False),
                    nn.BatchNorm2d(outer)]
        else:
            body = [relu_down, down, nn.BatchNorm2d(inner), submodule, relu_up,
                    nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=False), nn.BatchNorm2d(outer)]
            body += [nn.Dropout(0.5)] if dropout else []
        self.model = nn.Sequential(*body)
        self.own = [m for m in body if m is not submodule]

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


def reference_unet(cin, cout, num_downs, ngf):
    block = ReferenceUnetBlock(ngf * 8, ngf * 8, innermost=True)
    for _ in range(num_downs - 5):
        block = ReferenceUnetBlock(ngf * 8, ngf * 8, submodule=block, dropout=True)
    for mult in (4, 2, 1):
        block = ReferenceUnetBlock(ngf * mult, ngf * mult * 2, submodule=block)
    return ReferenceUnetBlock(cout, ngf, input_nc=cin, submodule=block, outermost=True)


def leaves(*modules: nn.Module) -> list[torch.Tensor]:
    return [t for parent in modules for m in parent.modules() if not list(m.children())
            for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]]


def test_unet_computes_the_reference_function():
    """Same layers, skips (the reference's in-place LeakyReLU included) and dropout placement."""
    torch.manual_seed(0)
    ours = unet.unet_128(3, 2, ngf=4, norm="batch", dropout=0.5)
    ref = reference_unet(3, 2, 7, ngf=4)
    assert count(ours) == count(ref)
    block, level = ref, 0
    while block is not None:  # copy our weights into the reference, level by level, outermost first
        ref_state = [t for m in block.own for t in leaves(m)]
        our_state = leaves(ours.down[level], ours.up[level])
        assert [t.shape for t in ref_state] == [t.shape for t in our_state]
        with torch.no_grad():
            for r, o in zip(ref_state, our_state):
                r.copy_(o)
        block = next((m for m in block.model if isinstance(m, ReferenceUnetBlock)), None)
        level += 1
    assert level == 7
    x = image(2, 128)
    for train in (True, False):
        ours.train(train), ref.train(train)
        torch.manual_seed(1)
        expected = ref(x)
        torch.manual_seed(1)  # the same dropout masks, drawn in the same order
        torch.testing.assert_close(ours(x), expected)


@pytest.mark.parametrize("name", list(GENERATORS))
def test_generator_output_shape_and_range(name):
    size, ngf = SMALL[name]
    net = GENERATORS[name](1, 3, ngf=ngf)
    x = image(2, (size, size * 2), channels=1)
    y = net(x)
    assert y.shape == (2, 3, size, size * 2)
    assert torch.isfinite(y).all() and y.abs().max() <= 1


def test_size_multiples():
    assert resnet.resnet_9blocks(3, 3, ngf=4).size_multiple == 4
    assert unet.unet_128(3, 3, ngf=4).size_multiple == 128
    assert unet.unet_256(3, 3, ngf=4).size_multiple == 256


@pytest.mark.parametrize("padding", ["reflect", "zero"])
def test_resnet_resize_conv(padding):
    net = resnet.resnet_6blocks(3, 3, ngf=8, upsample="resize-conv", padding=padding)
    modules = list(net.modules())
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in modules)
    assert sum(isinstance(m, nn.Upsample) for m in modules) == 2
    reflect_1px = any(isinstance(m, nn.ReflectionPad2d) and m.padding == (1, 1, 1, 1) for m in modules)
    assert reflect_1px == (padding == "reflect")
    assert net(image(1, (36, 44))).shape == (1, 3, 36, 44)


def test_unet_resize_conv():
    net = unet.unet_128(3, 3, ngf=4, upsample="resize-conv")
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in net.modules())
    assert sum(isinstance(m, nn.Upsample) for m in net.modules()) == 7
    assert net(image(2, 128)).shape == (2, 3, 128, 128)


def test_dropout_is_where_pix2pix_puts_it():
    net = unet.unet_256(3, 3, ngf=4)
    with_dropout = [i for i, block in enumerate(net.up) if any(isinstance(m, nn.Dropout) for m in block)]
    assert with_dropout == [4, 5, 6]
    assert not any(isinstance(m, nn.Dropout) for m in unet.unet_256(3, 3, ngf=4, dropout=0).modules())
    blocks = resnet.resnet_6blocks(3, 3, ngf=4, dropout=0.3).model
    assert [m.p for m in blocks.modules() if isinstance(m, nn.Dropout)] == [0.3] * 6
    assert not any(isinstance(m, nn.Dropout) for m in resnet.resnet_6blocks(3, 3, ngf=4).modules())


def test_norm_choices():
    assert isinstance(layers.norm_layer("none", 4), nn.Identity)
    inst = layers.norm_layer("instance", 4)
    assert isinstance(inst, nn.InstanceNorm2d) and not inst.affine and not inst.track_running_stats
    bn = layers.norm_layer("batch", 4)
    assert isinstance(bn, nn.BatchNorm2d) and bn.affine
    # convolutions before batch norm carry no bias; before instance norm they do (reference)
    body = resnet.resnet_6blocks(3, 3, ngf=4, norm="batch").model[:-3]  # the head conv keeps its bias
    convs = [m for m in body.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    convs = [m for m in resnet.resnet_6blocks(3, 3, ngf=4).model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None for c in convs)


# -- features --------------------------------------------------------------------------------------

def test_resnet_features_are_encoder_activations_and_differentiable():
    net = resnet.resnet_9blocks(3, 3, ngf=8)
    x = image(2, 32)
    feats = net.features(x, [0, 4, 8, 12, 16])
    assert [tuple(f.shape) for f in feats] == [(2, 3, 38, 38), (2, 16, 16, 16), (2, 32, 8, 8), (2, 32, 8, 8),
                                               (2, 32, 8, 8)]
    torch.testing.assert_close(feats[4], net.model[:17](x))
    torch.testing.assert_close(feats[2], net.model[:9](x))  # the norm's output, not rewritten by the ReLU after it
    assert (feats[2] < 0).any()
    sum(f.square().mean() for f in feats[1:]).backward()
    assert net.model[1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.model[net.encoder_layers:].parameters())  # decoder not run
    assert [f.shape[1] for f in net.features(x, [8, 4])] == [32, 16]  # in the order asked for
    with pytest.raises(ValueError, match="encoder"):
        net.features(x, [net.encoder_layers])


def test_unet_features_are_down_block_outputs_and_differentiable():
    net = unet.unet_128(3, 3, ngf=4)
    feats = net.features(image(2, 128), [0, 3, 6])
    assert [tuple(f.shape) for f in feats] == [(2, 4, 64, 64), (2, 32, 8, 8), (2, 32, 1, 1)]
    sum(f.mean() for f in feats).backward()
    assert net.down[0][0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.up.parameters())
    with pytest.raises(ValueError):
        net.features(image(1, 128), [7])


# -- discriminators --------------------------------------------------------------------------------

def test_discriminator_output_shapes():
    x = image(2, 64, channels=6)
    assert patchgan.patchgan(6, ndf=8)(x).shape == (2, 1, 6, 6)
    assert patchgan.patchgan(6, ndf=8, n_layers=2)(x).shape == (2, 1, 14, 14)
    assert patchgan.pixel(6, ndf=8)(x).shape == (2, 1, 64, 64)


def test_patchgan_sees_70x70_patches():
    net = patchgan.patchgan(3, ndf=4, norm="none")
    x = image(1, 128).requires_grad_(True)
    logits = net(x)
    logits[0, 0, 7, 7].backward()
    rows, cols = x.grad[0].abs().sum(0).nonzero(as_tuple=True)
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


# -- initialisation --------------------------------------------------------------------------------

def middle_conv(init: str, gain: float) -> nn.Conv2d:
    torch.manual_seed(0)
    return patchgan.patchgan(3, ndf=32, init=init, init_gain=gain)[5]  # 64 -> 128 channels, 4x4


@pytest.mark.parametrize("init", ["normal", "xavier", "kaiming", "orthogonal"])
def test_init_modes(init):
    gain = 0.5
    conv = middle_conv(init, gain)
    w = conv.weight.detach()
    fan_in, fan_out = w[0].numel(), w.shape[0] * w[0, 0].numel()
    expected = {"normal": gain, "xavier": gain * math.sqrt(2 / (fan_in + fan_out)),
                "kaiming": math.sqrt(2 / fan_in), "orthogonal": gain / math.sqrt(fan_in)}[init]
    assert w.std().item() == pytest.approx(expected, rel=0.05)
    assert abs(w.mean().item()) < expected * 0.05
    if init == "orthogonal":
        rows = w.flatten(1)
        torch.testing.assert_close(rows @ rows.T, gain**2 * torch.eye(rows.shape[0]), atol=1e-4, rtol=0)
    net = patchgan.patchgan(3, ndf=8, norm="none", init=init, init_gain=gain)
    assert all((m.bias == 0).all() for m in net.modules() if isinstance(m, nn.Conv2d))


def test_init_batch_norm_weights():
    torch.manual_seed(0)
    net = unet.unet_256(3, 3, ngf=16, init_gain=0.02)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    weights = torch.cat([m.weight.detach() for m in bns])
    assert weights.mean().item() == pytest.approx(1.0, abs=0.002)
    assert weights.std().item() == pytest.approx(0.02, rel=0.1)
    assert all((m.bias == 0).all() for m in bns)


def test_init_rejects_unknown_mode():
    with pytest.raises(ValueError, match="init"):
        layers.init_weights(nn.Conv2d(1, 1, 1), "uniform", 0.02)


# -- batch norm, autocast --------------------------------------------------------------------------

def test_batch_norm_eval_uses_running_stats():
    torch.manual_seed(0)
    net = unet.unet_128(3, 3, ngf=4, norm="batch", dropout=0.5)
    x = image(2, 128)
    net.train()
    assert not torch.equal(net(x), net(x))  # dropout is active while training
    bn = net.down[1][1]
    assert torch.count_nonzero(bn.running_mean) > 0  # the training passes updated the running statistics
    net.eval()
    with torch.no_grad():
        batch, again, alone = net(x), net(x), net(x[:1])
    assert torch.equal(batch, again)
    torch.testing.assert_close(batch[:1], alone)  # no batch statistics: a sample's output ignores its batch
    bn.running_mean.add_(1.0)
    with torch.no_grad():
        assert not torch.allclose(net(x), batch)


@pytest.mark.parametrize("name", ["resnet_9blocks", "unet_128"])
def test_forward_under_bf16_autocast(name):
    size, ngf = SMALL[name]
    g = GENERATORS[name](3, 3, ngf=ngf, norm="instance")
    d = patchgan.patchgan(6, ndf=8)
    x = image(1, size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = g(x)
        logits = d(torch.cat([x, y], 1))
        for factory in (losses.lsgan, losses.vanilla, losses.hinge, losses.wgan_gp):
            loss = factory()
            value = loss.d_loss(logits, logits) + loss.g_loss(logits)
            assert torch.isfinite(value)
        gp = losses.wgan_gp().penalty(d, torch.cat([x, x], 1), torch.cat([x, y], 1))
    assert y.shape == x.shape and y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    assert torch.isfinite(gp)
    (gp + value.float()).backward()
    assert all(p.grad is not None for p in d.parameters())


# -- losses ----------------------------------------------------------------------------------------

def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_pairwise_losses():
    prediction, target = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 0.0])
    assert losses.l1()(prediction, target).item() == pytest.approx(5 / 3)
    assert losses.mse()(prediction=prediction, target=target).item() == pytest.approx(13 / 3)


def test_adversarial_losses_are_adversarial():
    for name in ("lsgan", "vanilla", "hinge", "wgan_gp"):
        assert isinstance(LOSSES[name](), AdversarialLoss)


def test_lsgan_maths():
    real, fake = torch.tensor([0.5, 1.0]), torch.tensor([0.0, 2.0])
    loss = losses.lsgan()
    assert loss.d_loss(real, fake).item() == pytest.approx(0.5 * ((0.25 + 0) / 2 + (0 + 4) / 2))
    assert loss.g_loss(fake).item() == pytest.approx((1 + 1) / 2)
    smooth = losses.lsgan(real_label=0.9, fake_label=0.1)
    assert smooth.d_loss(real, fake).item() == pytest.approx(0.5 * ((0.16 + 0.01) / 2 + (0.01 + 3.61) / 2))
    assert smooth.g_loss(fake).item() == pytest.approx((0.81 + 1.21) / 2)
    bf16 = loss.d_loss(real.bfloat16(), fake.bfloat16())  # labels follow the logits' dtype
    assert bf16.dtype == torch.bfloat16 and bf16.item() == pytest.approx(1.0625, rel=1e-2)


def test_vanilla_maths():
    real, fake = torch.tensor([0.0, 2.0]), torch.tensor([0.0, -1.0])
    loss = losses.vanilla()
    # BCE with logits: -log(sigmoid(x)) = softplus(-x) for label 1, softplus(x) for label 0
    d = 0.5 * ((softplus(0) + softplus(-2)) / 2 + (softplus(0) + softplus(-1)) / 2)
    assert loss.d_loss(real, fake).item() == pytest.approx(d)
    assert loss.g_loss(fake).item() == pytest.approx((softplus(0) + softplus(1)) / 2)
    smooth = losses.vanilla(real_label=0.9)
    g = (0.9 * softplus(-0.0) + 0.1 * softplus(0.0) + 0.9 * softplus(1) + 0.1 * softplus(-1)) / 2
    assert smooth.g_loss(fake).item() == pytest.approx(g)


def test_hinge_and_wgan_maths():
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-2.0, 0.5])
    hinge = losses.hinge()
    assert hinge.d_loss(real, fake).item() == pytest.approx((0.5 + 0) / 2 + (0 + 1.5) / 2)
    assert hinge.g_loss(fake).item() == pytest.approx(0.75)
    wgan = losses.wgan_gp()
    assert wgan.d_loss(real, fake).item() == pytest.approx(-0.75 - 1.25)
    assert wgan.g_loss(fake).item() == pytest.approx(0.75)
    assert losses.lsgan().penalty(nn.Identity(), real, fake) is None


def linear_critic(weight_norm: float, features: int = 3 * 8 * 8) -> nn.Module:
    linear = nn.Linear(features, 1)
    with torch.no_grad():
        linear.weight.normal_()
        linear.weight.mul_(weight_norm / linear.weight.norm())
    return nn.Sequential(nn.Flatten(), linear)


def test_wgan_gp_penalty():
    real, fake = image(4, 8, seed=1), image(4, 8, seed=2).requires_grad_(True)
    loss = losses.wgan_gp(gp_weight=10.0)
    assert loss.penalty(linear_critic(1.0), real, fake).item() == pytest.approx(0.0, abs=1e-4)
    critic = linear_critic(2.0)
    gp = loss.penalty(critic, real, fake)
    assert gp.item() == pytest.approx(10.0 * (2.0 - 1.0) ** 2, rel=1e-4)
    gp.backward()  # the penalty trains D: d/dw 10 (|w| - 1)^2 = 20 (|w| - 1) w / |w|
    w = critic[1].weight
    torch.testing.assert_close(w.grad, 10.0 * w.detach(), rtol=1e-3, atol=1e-5)
    assert fake.grad is None  # the generator's output is detached
    assert losses.wgan_gp(gp_weight=0.5).penalty(critic, real, fake).item() == pytest.approx(0.5, rel=1e-4)
    assert loss.penalty(patchgan.patchgan(3, ndf=4), image(2, 32), image(2, 32, seed=3)).item() > 0


# -- export ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "upsample"), [("resnet_9blocks", "transposed"), ("resnet_6blocks", "resize-conv"),
                                              ("unet_128", "transposed"), ("unet_256", "resize-conv")])
def test_generators_export_with_dynamic_height_and_width(name, upsample):
    _, ngf = SMALL[name]
    net = GENERATORS[name](3, 3, ngf=ngf, upsample=upsample).eval()
    m = net.size_multiple
    # torch.export specialises a dimension traced at 1 and guards against 1 where it traced more,
    # so the traced and tested sizes keep the bottleneck at 2 px or more
    h, w = torch.export.Dim("h", min=2, max=64), torch.export.Dim("w", min=2, max=64)
    sample = image(2, m * (8 if name.startswith("resnet") else 2))
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(net, (sample,), dynamic_shapes={"x": {0: batch, 2: m * h, 3: m * w}})
    x = image(3, (m * 3, m * 2), seed=4)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), net(x))

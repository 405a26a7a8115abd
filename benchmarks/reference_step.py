"""A plain training step with the published recipes, the yardstick `train_step.py --vs-reference`
measures img2img against. No img2img code: plain PyTorch, fp32, eager, NCHW.

- ``cyclegan`` (Zhu et al. 2017, the reference repository's defaults): two ResNet generators with 9
  residual blocks (ngf 64, instance norm without affine parameters, reflection padding, transposed
  convolutions up), two 70x70 PatchGANs (ndf 64, 3 layers, instance norm), LSGAN, cycle weight 10,
  identity 0.5 of it, a history pool of 50 fakes per direction, Adam 2e-4 with betas (0.5, 0.999).
- ``pix2pix`` (Isola et al. 2017): a U-Net with 8 downsamplings (U-Net-256; fewer when the image is
  smaller, down to a 1x1 bottleneck) with batch norm and dropout 0.5 in the three inner ngf*8 decoder
  blocks, a conditional 70x70 PatchGAN on the 6-channel input+output pair with batch norm, the vanilla
  GAN loss (binary cross-entropy on logits), L1 weight 100, no pool, the same Adam.
- ``pix2pix-resnet``: the ResNet generator with an instance-norm conditional PatchGAN, LSGAN and L1
  100: what the shared yardstick (``shared/bench/reference_step.py``) runs as its pix2pix.

The discriminators are updated after the generators for CycleGAN (from the pools) and before them for
pix2pix, as the reference repository does. The last stdout line is one JSON object:
``{"model", "size", "batch", "seconds_per_step", "min", "max", "flops_per_step"}``; the two lines
before it say the same for scripts that read ``seconds_per_step`` / ``flops_per_step`` lines.

    python benchmarks/reference_step.py --model cyclegan --size 256 --steps 3 --flops
"""
from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

MODELS = ("cyclegan", "pix2pix", "pix2pix-resnet")


# -- networks -------------------------------------------------------------------------------------

def instance_norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), instance_norm(channels),
                                  nn.ReLU(True), nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3),
                                  instance_norm(channels))

    def forward(self, x):
        return x + self.body(x)


def resnet_generator(cin: int = 3, cout: int = 3, ngf: int = 64, blocks: int = 9) -> nn.Module:
    """7x7 stem, two stride-2 3x3 convolutions, `blocks` residual blocks, two transposed convolutions, 7x7 out."""
    layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(cin, ngf, 7), instance_norm(ngf), nn.ReLU(True)]
    for mult in (1, 2):
        layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, 2, 1), instance_norm(ngf * mult * 2), nn.ReLU(True)]
    layers += [ResidualBlock(ngf * 4) for _ in range(blocks)]
    for mult in (4, 2):
        layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, 2, 1, output_padding=1),
                   instance_norm(ngf * mult // 2), nn.ReLU(True)]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, cout, 7), nn.Tanh()]
    return nn.Sequential(*layers)


def patch_discriminator(cin: int = 3, ndf: int = 64, n: int = 3, batch_norm: bool = False) -> nn.Module:
    """`n` stride-2 4x4 convolutions, one stride-1, then one logit per 70x70 patch (n = 3).

    Convolutions before batch norm have no bias (the norm's shift replaces it); before instance norm
    they keep it.
    """
    def norm(c: int) -> nn.Module:
        return nn.BatchNorm2d(c) if batch_norm else instance_norm(c)

    bias = not batch_norm
    layers: list[nn.Module] = [nn.Conv2d(cin, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    mult = 1
    for i in range(1, n):
        prev, mult = mult, min(2**i, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=bias), norm(ndf * mult), nn.LeakyReLU(0.2, True)]
    prev, mult = mult, min(2**n, 8)
    layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=bias), norm(ndf * mult), nn.LeakyReLU(0.2, True)]
    layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
    return nn.Sequential(*layers)


class UnetBlock(nn.Module):
    """One level of the U-Net, wrapping the levels inside it: down, inner levels, up, skip concatenated."""

    def __init__(self, outer: int, inner: int, *, cin: int | None = None, inside: nn.Module | None = None,
                 outermost: bool = False, innermost: bool = False, dropout: bool = False):
        super().__init__()
        self.outermost = outermost
        down = nn.Conv2d(cin or outer, inner, 4, 2, 1, bias=False)
        if outermost:
            body = [down, inside, nn.ReLU(True), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
        elif innermost:
            body = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True),
                    nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=False), nn.BatchNorm2d(outer)]
        else:
            body = [nn.LeakyReLU(0.2, True), down, nn.BatchNorm2d(inner), inside, nn.ReLU(True),
                    nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=False), nn.BatchNorm2d(outer)]
            body += [nn.Dropout(0.5)] if dropout else []
        self.body = nn.Sequential(*body)

    def forward(self, x):
        return self.body(x) if self.outermost else torch.cat([x, self.body(x)], 1)


def unet_generator(cin: int = 3, cout: int = 3, num_downs: int = 8, ngf: int = 64) -> nn.Module:
    """U-Net-256 for num_downs 8: the innermost level, num_downs - 5 ngf*8 levels with dropout, then
    ngf*4, ngf*2, ngf and the outermost level."""
    block = UnetBlock(ngf * 8, ngf * 8, innermost=True)
    for _ in range(num_downs - 5):
        block = UnetBlock(ngf * 8, ngf * 8, inside=block, dropout=True)
    for mult in (4, 2, 1):
        block = UnetBlock(ngf * mult, ngf * mult * 2, inside=block)
    return UnetBlock(cout, ngf, cin=cin, inside=block, outermost=True)


def unet_downs(size: int) -> int:
    """8 (U-Net-256) for 256 px and more, else as many as the size allows (at least 5)."""
    downs = min(8, int(math.log2(size)))
    if downs < 5 or size % 2**downs:
        raise SystemExit(f"--size {size}: the pix2pix U-Net needs a multiple of {2 ** max(downs, 5)} (32, 64, ... 256)")
    return downs


def init_normal(*nets: nn.Module) -> None:
    """The reference's init: conv weights N(0, 0.02), norm scales N(1, 0.02), biases 0."""
    for net in nets:
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)


# -- losses and the pool --------------------------------------------------------------------------

def lsgan(logits: torch.Tensor, real: bool) -> torch.Tensor:
    return ((logits - (1.0 if real else 0.0)) ** 2).mean()


def vanilla(logits: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return nn.functional.binary_cross_entropy_with_logits(logits, target)


class HistoryPool:
    """Up to `size` earlier fakes; once full, half of the time a stored one is returned instead."""

    def __init__(self, size: int = 50):
        self.size, self.items = size, []

    def query(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for image in x.detach():
            image = image.unsqueeze(0)
            if len(self.items) < self.size:
                self.items.append(image.clone())
                out.append(image)
            elif random.random() > 0.5:
                i = random.randrange(self.size)
                out.append(self.items[i].clone())
                self.items[i] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)


def adam(*nets: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam([p for n in nets for p in n.parameters()], lr=2e-4, betas=(0.5, 0.999))


def requires_grad(nets, flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def images(batch: int, size: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    return ((torch.rand(batch, 3, size, size) * 2 - 1).to(device),
            (torch.rand(batch, 3, size, size) * 2 - 1).to(device))


# -- the steps ------------------------------------------------------------------------------------

def cyclegan(size: int, batch: int, device: str = "cpu") -> Callable[[], None]:
    g_ab, g_ba = resnet_generator(), resnet_generator()
    d_a, d_b = patch_discriminator(), patch_discriminator()
    init_normal(g_ab, g_ba, d_a, d_b)
    for net in (g_ab, g_ba, d_a, d_b):
        net.to(device)
    opt_g, opt_d = adam(g_ab, g_ba), adam(d_a, d_b)
    pool_a, pool_b = HistoryPool(), HistoryPool()
    a, b = images(batch, size, device)

    def step() -> None:
        fake_b, fake_a = g_ab(a), g_ba(b)
        rec_a, rec_b = g_ba(fake_b), g_ab(fake_a)
        requires_grad((d_a, d_b), False)
        opt_g.zero_grad()
        identity = ((g_ab(b) - b).abs().mean() + (g_ba(a) - a).abs().mean()) * 10 * 0.5
        cycle = ((rec_a - a).abs().mean() + (rec_b - b).abs().mean()) * 10
        loss_g = lsgan(d_b(fake_b), True) + lsgan(d_a(fake_a), True) + cycle + identity
        loss_g.backward()
        opt_g.step()
        requires_grad((d_a, d_b), True)
        opt_d.zero_grad()
        old_b, old_a = pool_b.query(fake_b), pool_a.query(fake_a)
        loss_d_b = (lsgan(d_b(b), True) + lsgan(d_b(old_b), False)) * 0.5
        loss_d_a = (lsgan(d_a(a), True) + lsgan(d_a(old_a), False)) * 0.5
        loss_d_b.backward()
        loss_d_a.backward()
        opt_d.step()

    return step


def _pix2pix(g: nn.Module, d: nn.Module, gan, size: int, batch: int, device: str = "cpu") -> Callable[[], None]:
    g.to(device), d.to(device)
    opt_g, opt_d = adam(g), adam(d)
    a, b = images(batch, size, device)

    def step() -> None:
        fake = g(a)
        requires_grad((d,), True)
        opt_d.zero_grad()
        loss_d = (gan(d(torch.cat([a, fake.detach()], 1)), False) + gan(d(torch.cat([a, b], 1)), True)) * 0.5
        loss_d.backward()
        opt_d.step()
        requires_grad((d,), False)
        opt_g.zero_grad()
        loss_g = gan(d(torch.cat([a, fake], 1)), True) + (fake - b).abs().mean() * 100
        loss_g.backward()
        opt_g.step()

    return step


def pix2pix(size: int, batch: int, device: str = "cpu") -> Callable[[], None]:
    g, d = unet_generator(num_downs=unet_downs(size)), patch_discriminator(cin=6, batch_norm=True)
    init_normal(g, d)
    return _pix2pix(g, d, vanilla, size, batch, device)


def pix2pix_resnet(size: int, batch: int, device: str = "cpu") -> Callable[[], None]:
    g, d = resnet_generator(), patch_discriminator(cin=6)
    init_normal(g, d)
    return _pix2pix(g, d, lsgan, size, batch, device)


STEPS = {"cyclegan": cyclegan, "pix2pix": pix2pix, "pix2pix-resnet": pix2pix_resnet}


def build(model: str, size: int, batch: int, device: str = "cpu") -> Callable[[], None]:
    """The step function of `model` on `device` (plain fp32 eager, as the reference trains), seeded as
    `main` seeds it."""
    torch.manual_seed(0)
    random.seed(0)
    return STEPS[model](size, batch, device)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cyclegan", choices=MODELS)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    ap.add_argument("--flops", action="store_true", help="count the FLOPs of one step first")
    args = ap.parse_args(argv)
    step = build(args.model, args.size, args.batch)
    step()  # warm-up
    flops = None
    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step()
        flops = int(counter.get_total_flops())
        print(f"flops_per_step {flops:.6e}")
    times = []
    for _ in range(max(1, args.steps)):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    result = {"model": args.model, "size": args.size, "batch": args.batch,
              "seconds_per_step": statistics.median(times), "min": min(times), "max": max(times),
              "flops_per_step": flops}
    print(f"seconds_per_step {result['seconds_per_step']:.4f} (min {result['min']:.4f} max {result['max']:.4f})")
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
